# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Ignite/MONAI handlers used by the bundle configs for what MONAI's own handlers do not cover:

- :class:`GradientClipping`: global gradient-norm clipping inside :class:`monai.engines.SupervisedTrainer`
  (unscaled first under AMP), as in the SegMamba release (clip at 12).
- :class:`AtomicCheckpointSaver`: :class:`monai.handlers.CheckpointSaver` whose files are written atomically.
- :class:`TrainingCheckpoint`: one resumable file with network, optimizer, LR scheduler, trainer, AMP scaler and
  best-metric state, written atomically every epoch; loads it back (``weights_only=True``) when resuming.
- :class:`MetricsSummarySaver`: the final metrics of an evaluator as a JSON file.

They hold nothing specific to a dataset or a network; every file they write goes through :mod:`shared_networks.io`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.engines import IterationEvents
from monai.handlers import CheckpointSaver

from shared_networks.io import atomic_write, save_atomically, write_text_atomically

__all__ = ["GradientClipping", "AtomicCheckpointSaver", "TrainingCheckpoint", "MetricsSummarySaver"]

logger = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


class GradientClipping:
    """
    Clips the global norm of the gradients of a :class:`monai.engines.SupervisedTrainer` after every backward pass
    and before the optimizer step (it runs on ``IterationEvents.BACKWARD_COMPLETED``). With AMP the gradients are
    first unscaled (``GradScaler.unscale_``), so ``max_norm`` applies to the true gradients; ``GradScaler.step`` then
    skips its own unscaling. This is nnU-Net's training loop, which the SegMamba release uses with global norm 12.

    Args:
        max_norm: maximum global norm of all gradients (12 in the SegMamba release).
        norm_type: type of the norm (2 = Euclidean).
    """

    def __init__(self, max_norm: float = 12.0, norm_type: float = 2.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be positive, got {max_norm!r}.")
        if not norm_type > 0:
            raise ValueError(f"norm_type must be positive, got {norm_type!r}.")
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def attach(self, engine: Engine) -> None:
        """Registers the clipping on ``engine`` (a SupervisedTrainer; it checks the trainer at the first call, as
        MONAI attaches handlers before the trainer's optimizer is set)."""
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is None:
            raise ValueError("GradientClipping needs a trainer with an 'optimizer' (a SupervisedTrainer).")
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError(
                "GradientClipping clips after every backward pass and does not support accumulation_steps > 1, "
                f"got accumulation_steps={engine.accumulation_steps}."
            )
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(parameters, max_norm=self.max_norm, norm_type=self.norm_type)


class _AtomicDiskSaver(DiskSaver):
    """Ignite DiskSaver writing through :func:`shared_networks.io.atomic_write` (ignite's own atomic mode leaves
    ``tmpXXXX`` files behind on a kill and does not sync), optionally always to one file name."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Any, func: Callable) -> None:
        with atomic_write(path) as f:
            func(checkpoint, f, **self.kwargs)

    def remove(self, filename: str) -> None:
        # a fixed file name is replaced atomically by the next save: deleting it first would leave a window without
        # any checkpoint on disk
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """
    :class:`monai.handlers.CheckpointSaver` whose files are written atomically (MONAI's writes in place, so a crash or
    a concurrent reader such as MONAI Label can meet a truncated ``model.pt``). Files are written to a temporary name
    in ``save_dir`` and moved over the target with ``os.replace``; a fixed ``key_metric_filename`` or
    ``final_filename`` is replaced, never deleted first. All arguments are those of ``CheckpointSaver``.

    With a single entry in ``save_dict`` (e.g. ``{"model": network}``) the file holds the flat state dict.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        final_filename: str | None = None,
        key_metric_filename: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            final_filename=final_filename,
            key_metric_filename=key_metric_filename,
            **kwargs,
        )
        for checkpoint, filename in (
            (self._final_checkpoint, final_filename),
            (self._key_metric_checkpoint, key_metric_filename),
            (self._interval_checkpoint, None),
        ):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(dirname=save_dir, filename=filename)

    def key_metric_state_dict(self) -> dict:
        """The key-metric tracking state (best scores and file names), for :meth:`load_state_dict` after a resume."""
        if self._key_metric_checkpoint is None:
            return {}
        return dict(self._key_metric_checkpoint.state_dict())


class TrainingCheckpoint:
    """
    Writes the whole training state to one file every ``save_interval`` epochs, atomically (temporary file +
    ``os.replace``), and, with ``resume=True``, restores it when the trainer starts so that training continues
    where it stopped. The file holds: ``network`` (state dict), ``optimizer``, ``lr_scheduler``, ``trainer``
    (epoch/iteration), ``scaler`` (AMP, if the trainer has one), ``validator`` (best metric and its epoch) and
    ``key_metric_saver`` (so a resumed run only replaces the best model when it beats the earlier best). It loads
    with ``torch.load(..., weights_only=True)``.

    Attach it after the ``ValidationHandler`` so the validation of the same epoch is included, and after any
    fine-tuning ``CheckpointLoader`` so the resumed weights win. Only rank 0 writes under torch.distributed; every
    rank loads.

    Args:
        checkpoint_path: the file, e.g. ``models/checkpoint_last.pt``.
        network: the trained network (a DDP wrapper is unwrapped).
        optimizer: its optimizer.
        lr_scheduler: LR scheduler to save/restore, if any.
        validator: evaluator whose ``best_metric``/``best_metric_epoch`` are saved/restored, if any.
        key_metric_saver: the :class:`AtomicCheckpointSaver` writing the best model, if any.
        resume: load ``checkpoint_path`` when the trainer starts.
        save_interval: save every this many epochs.
        map_location: ``map_location`` of ``torch.load``.
    """

    def __init__(
        self,
        checkpoint_path: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        validator: Engine | None = None,
        key_metric_saver: AtomicCheckpointSaver | None = None,
        resume: bool = False,
        save_interval: int = 1,
        map_location: Any = None,
    ) -> None:
        if isinstance(save_interval, bool) or not isinstance(save_interval, int) or save_interval < 1:
            raise ValueError(f"save_interval must be a positive integer, got {save_interval!r}.")
        self.checkpoint_path = os.fspath(checkpoint_path)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.validator = validator
        self.key_metric_saver = key_metric_saver
        self.resume = bool(resume)
        self.save_interval = save_interval
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        """Saves on ``EPOCH_COMPLETED`` of ``engine`` and, with ``resume``, loads on ``STARTED``."""
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)

    def state_dict(self, engine: Engine) -> dict:
        """The training state of ``engine`` as a dict of tensors and plain Python values."""
        state: dict[str, Any] = {
            "network": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": dict(engine.state_dict()),
        }
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        if self.validator is not None:
            state["validator"] = {
                "best_metric": float(getattr(self.validator.state, "best_metric", -1)),
                "best_metric_epoch": int(getattr(self.validator.state, "best_metric_epoch", -1)),
            }
        if self.key_metric_saver is not None:
            state["key_metric_saver"] = self.key_metric_saver.key_metric_state_dict()
        return state

    def save(self, engine: Engine) -> None:
        """Writes the training state (rank 0 only)."""
        if not _is_rank_zero():
            return
        save_atomically(self.state_dict(engine), self.checkpoint_path)
        logger.info("Saved the training state of epoch %d to '%s'.", engine.state.epoch, self.checkpoint_path)

    def load(self, engine: Engine) -> None:
        """Restores the training state into the network, optimizer, scheduler, scaler, validator and ``engine``."""
        if not os.path.isfile(self.checkpoint_path):
            raise FileNotFoundError(
                f"resume=True but there is no training checkpoint at '{self.checkpoint_path}'; train without "
                "resume first (the file is written after every epoch)."
            )
        state = torch.load(self.checkpoint_path, map_location=self.map_location, weights_only=True)
        required = ["network", "optimizer", "trainer"] + (["lr_scheduler"] if self.lr_scheduler is not None else [])
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(f"training checkpoint '{self.checkpoint_path}' lacks the entries {missing}.")

        max_epochs = engine.state.max_epochs
        trainer_state = state["trainer"]
        if "epoch" in trainer_state:  # ignite saves either the epoch or the iteration
            saved_epoch = int(trainer_state["epoch"])
        else:
            saved_epoch = int(trainer_state.get("iteration", 0)) // int(trainer_state["epoch_length"])
        if max_epochs is not None and saved_epoch > max_epochs:
            raise ValueError(
                f"training checkpoint '{self.checkpoint_path}' is at epoch {saved_epoch}, beyond max_epochs="
                f"{max_epochs}; raise the number of epochs to resume."
            )
        _unwrap(self.network).load_state_dict(state["network"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        engine.load_state_dict(trainer_state)
        engine.state.max_epochs = max_epochs  # the configured length wins over the saved one
        if self.validator is not None and "validator" in state:
            self.validator.state.best_metric = state["validator"]["best_metric"]
            self.validator.state.best_metric_epoch = state["validator"]["best_metric_epoch"]
        if self.key_metric_saver is not None and state.get("key_metric_saver"):
            self.key_metric_saver.load_state_dict(state["key_metric_saver"])
        logger.info(
            "Resumed training from '%s' at epoch %d (iteration %d).",
            self.checkpoint_path,
            engine.state.epoch,
            engine.state.iteration,
        )


def _to_json_value(value: Any) -> Any:
    """Tensors/arrays to (nested) lists of floats, with NaN and infinities as ``None`` (strict JSON)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


class MetricsSummarySaver:
    """
    Writes the metrics of an evaluator to a JSON file when it completes (atomically; rank 0 only)::

        {"metrics": {"val_mean_dice": 0.81, "val_dice": {"TC": 0.8, "WT": 0.9, "ET": 0.73}, ...},
         "num_cases": 250}

    Per-class metrics (1-D tensors, e.g. ``MeanDice(reduction="mean_batch")``) are keyed by ``class_names`` when
    the lengths match. NaN/infinite values (e.g. HD95 with an empty prediction) are written as ``null``.

    Args:
        save_path: the JSON file.
        metric_names: metrics to write; all metrics of the engine if None.
        class_names: names of the classes/channels of per-class metrics, e.g. ``["TC", "WT", "ET"]``.
    """

    def __init__(
        self,
        save_path: str,
        metric_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.save_path = os.fspath(save_path)
        self.metric_names = None if metric_names is None else list(metric_names)
        self.class_names = None if class_names is None else [str(name) for name in class_names]

    def attach(self, engine: Engine) -> None:
        """Writes the file on ``Events.COMPLETED`` of ``engine``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _is_rank_zero():
            return
        metrics = engine.state.metrics
        names = list(metrics) if self.metric_names is None else self.metric_names
        unknown = [name for name in names if name not in metrics]
        if unknown:
            raise ValueError(f"MetricsSummarySaver: metrics {unknown} were not computed; available: {list(metrics)}.")
        summary = {}
        for name in names:
            value = _to_json_value(metrics[name])
            if isinstance(value, list) and self.class_names is not None and len(value) == len(self.class_names):
                value = dict(zip(self.class_names, value))
            summary[name] = value
        data_loader = getattr(engine.state, "dataloader", None)
        num_cases = len(data_loader.dataset) if data_loader is not None and hasattr(data_loader, "dataset") else None
        text = json.dumps({"metrics": summary, "num_cases": num_cases}, indent=4) + "\n"
        write_text_atomically(text, self.save_path)
        logger.info("Saved the metric summary to '%s'.", self.save_path)
