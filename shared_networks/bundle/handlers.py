# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Ignite/MONAI handlers used by the bundle configs for what MONAI's own handlers do not cover:

- :class:`GradientClipping`: global gradient-norm clipping inside :class:`monai.engines.SupervisedTrainer`
  (unscaled first under AMP), as in the SegMamba release (clip at 12).
- :class:`NonFiniteGuard`: stops training at the first non-finite loss (naming epoch, iteration and the batch's
  files) and at non-finite weights, before anything is saved.
- :class:`AtomicCheckpointSaver`: :class:`monai.handlers.CheckpointSaver` whose files are written atomically, and
  never with non-finite weights.
- :class:`TrainingCheckpoint`: one resumable file with network, optimizer, LR scheduler, trainer, AMP scaler and
  best-metric state, written atomically every epoch; loads it back (``weights_only=True``) when resuming, and
  continues the configured LR schedule when the run was made longer.
- :class:`MetricsSummarySaver`: the final metrics of an evaluator as a JSON file.

The checkpoint loader for configs (:class:`SafeCheckpointLoader`) is in :mod:`shared_networks.bundle.checkpoints`.
They hold nothing specific to a dataset or a network; every file they write goes through :mod:`shared_networks.io`,
and the savers remove the temporary files an interrupted write left in their folder when they start.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.engines import IterationEvents
from monai.handlers import CheckpointSaver

from shared_networks.bundle.checkpoints import (
    TRAINING_CHECKPOINT_KEYS,
    CheckpointError,
    NonFiniteError,
    _examples,
    check_finite,
    find_non_finite,
    load_state_dict_checked,
    read_checkpoint,
    unwrap_module,
)
from shared_networks.io import atomic_write, remove_stale_temporaries, save_atomically, write_text_atomically

__all__ = [
    "EncoderFreezing",
    "GradientClipping",
    "NonFiniteGuard",
    "AtomicCheckpointSaver",
    "TrainingCheckpoint",
    "MetricsSummarySaver",
    "clean_checkpoint_folder",
]

logger = logging.getLogger(__name__)


def _is_rank_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


_unwrap = unwrap_module

#: Temporary files younger than this (seconds) are left alone by the savers' clean-up: another process may be
#: writing them right now.
STALE_TEMP_MIN_AGE_S = 60.0
# the names of ignite's DiskSaver(atomic=True) temporaries (tempfile.NamedTemporaryFile in the folder)
_IGNITE_TEMP_NAME = re.compile(r"^tmp[a-z0-9_]{8}$")


def clean_checkpoint_folder(folder: str | os.PathLike, min_age_s: float = STALE_TEMP_MIN_AGE_S) -> list[str]:
    """
    Remove the stale temporary files of :func:`shared_networks.io.atomic_write` in ``folder`` (see
    :func:`shared_networks.io.remove_stale_temporaries`), and warn about files that look like the temporaries of
    ignite's own atomic ``DiskSaver`` (``tmpXXXXXXXX``), which are left in place. Rank 0 only.

    Returns:
        The removed paths.
    """
    if not _is_rank_zero():
        return []
    removed = remove_stale_temporaries(folder, min_age_s=min_age_s)
    if os.path.isdir(folder):
        others = sorted(name for name in os.listdir(folder) if _IGNITE_TEMP_NAME.match(name))
        if others:
            logger.warning(
                "'%s' holds %s, which look like temporary files of an interrupted ignite checkpoint write; they are "
                "left in place: delete them by hand if no other process writes to this folder.",
                os.fspath(folder),
                ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else ""),
            )
    return removed


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


class EncoderFreezing:
    """
    Keeps a network's pretrained encoder frozen for the first ``epochs`` epochs of training, then trains it too (the
    Swin-UMamba recipe: 10 epochs). At the start of every epoch it calls the network's ``freeze_encoder()`` or
    ``unfreeze_encoder()`` (a DistributedDataParallel wrapper is unwrapped), so a resumed run lands in the right phase.

    Frozen parameters get ``requires_grad=False`` and their gradient is cleared (``grad = None``): the optimizer then
    skips them entirely (no step, no weight decay, no moment estimates), and they start with fresh optimizer state when
    unfrozen. Under DDP the wrapper must be built with ``find_unused_parameters=True``, as frozen parameters receive
    no gradient.

    Args:
        network: the network (with ``freeze_encoder`` / ``unfreeze_encoder``).
        epochs: epochs with a frozen encoder; 0 never freezes.
    """

    def __init__(self, network: torch.nn.Module, epochs: int = 10) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}.")
        module = unwrap_module(network)
        for method in ("freeze_encoder", "unfreeze_encoder"):
            if not callable(getattr(module, method, None)):
                raise TypeError(f"EncoderFreezing needs a network with {method}(), got {type(module).__name__}.")
        self.network = module
        self.epochs = epochs
        self._frozen: bool | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        frozen = engine.state.epoch <= self.epochs
        if frozen:
            self.network.freeze_encoder()
            for parameter in self.network.parameters():
                if not parameter.requires_grad:
                    parameter.grad = None
        else:
            self.network.unfreeze_encoder()
        if frozen != self._frozen:
            count = sum(p.numel() for p in self.network.parameters() if not p.requires_grad)
            logger.info(
                "Epoch %d: encoder %s (%d frozen parameters).", engine.state.epoch,
                f"frozen for the first {self.epochs} epochs" if frozen else "trainable", count,
            )
        self._frozen = frozen


def _loss_of(output: Any) -> Any:
    """The loss in an iteration output: the ``loss`` entry of a dict (or of the first dict of a decollated list),
    a tensor or a number; None when there is none."""
    if isinstance(output, (list, tuple)) and output:
        output = output[0]
    if isinstance(output, Mapping):
        return output.get("loss")
    if isinstance(output, (torch.Tensor, float, int)):
        return output
    return None


def _batch_sources(batch: Any, limit: int = 8) -> list[str]:
    """The source files of a batch (``filename_or_obj`` of its MetaTensors or meta-data dicts), in order."""
    names: list[str] = []

    def add(value: Any) -> None:
        if isinstance(value, (str, os.PathLike)):
            name = os.fspath(value)
            if name not in names:
                names.append(name)
        elif isinstance(value, (list, tuple)):
            for item in value:
                add(item)

    def visit(obj: Any, depth: int) -> None:
        if depth > 3:
            return
        meta = getattr(obj, "meta", None)  # MetaTensor
        if isinstance(meta, Mapping) and "filename_or_obj" in meta:
            add(meta["filename_or_obj"])
        if isinstance(obj, Mapping):
            if "filename_or_obj" in obj:
                add(obj["filename_or_obj"])
            for value in obj.values():
                if isinstance(value, (Mapping, list, tuple)) or hasattr(value, "meta"):
                    visit(value, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value, depth + 1)

    visit(batch, 0)
    return names[:limit] + ([f"... ({len(names) - limit} more)"] if len(names) > limit else [])


def _count_non_finite(value: Any) -> int | None:
    """Number of non-finite values of a floating-point tensor, None for anything else."""
    if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
        return int((~torch.isfinite(value.detach())).sum())
    return None


class NonFiniteGuard:
    """
    Stops training at the first non-finite (NaN or infinite) loss, and when the network weights become non-finite,
    with an error that says where and why (:class:`shared_networks.bundle.checkpoints.NonFiniteError`), instead of
    training on and saving a model of NaNs.

    - The loss is checked right after it is computed (``IterationEvents.LOSS_COMPLETED`` of a
      :class:`monai.engines.SupervisedTrainer`, i.e. before the backward pass and the optimizer step, so the weights
      stay as they were; ``ITERATION_COMPLETED`` on other engines). The message gives the epoch, the iteration, the
      source files of the batch (``filename_or_obj`` of its meta data) and whether the input, the label and the
      weights were finite, which tells a data problem from a diverging training.
    - The weights are checked at every epoch end (and, with ``check_weights_every_iteration``, after every
      iteration). Attach it before the ``ValidationHandler`` and the checkpoint handlers, so that it runs before any
      save of that epoch (the savers refuse non-finite weights anyway).

    Under torch.distributed every rank runs it and the loss check is shared (one all-reduce of a flag per
    iteration), so all ranks stop at the same iteration instead of waiting for the one that stopped.

    Args:
        network: the network whose weights are checked; the engine's ``network`` by default.
        output_transform: engine output -> loss; by default the ``loss`` entry of the output.
        check_weights_every_iteration: also check the weights after every iteration (a pass over all parameters).
        sync_distributed: share the loss check between ranks under torch.distributed.
    """

    def __init__(
        self,
        network: torch.nn.Module | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        check_weights_every_iteration: bool = False,
        sync_distributed: bool = True,
    ) -> None:
        self.network = network
        self.output_transform = output_transform or _loss_of
        self.check_weights_every_iteration = bool(check_weights_every_iteration)
        self.sync_distributed = bool(sync_distributed)

    def attach(self, engine: Engine) -> None:
        """Registers the loss check (after the loss, or at iteration end) and the weight checks on ``engine``."""
        try:
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self.check_loss)
        except ValueError:  # an engine without MONAI's iteration events
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.check_loss)
        if self.check_weights_every_iteration:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.check_weights)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.check_weights)

    def _network(self, engine: Engine) -> torch.nn.Module | None:
        return self.network if self.network is not None else getattr(engine, "network", None)

    def _any_rank(self, bad: bool, device: torch.device) -> bool:
        if not (self.sync_distributed and dist.is_available() and dist.is_initialized()):
            return bad
        if dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        flag = torch.tensor([1.0 if bad else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    @staticmethod
    def _where(engine: Engine) -> str:
        state = engine.state
        where = f"epoch {state.epoch}, iteration {state.iteration}"
        if state.epoch_length:
            where += f" ({(state.iteration - 1) % state.epoch_length + 1} of {state.epoch_length} in the epoch)"
        if dist.is_available() and dist.is_initialized():
            where += f", rank {dist.get_rank()}"
        return where

    def check_loss(self, engine: Engine) -> None:
        """Raises :class:`NonFiniteError` when the loss of this iteration is NaN or infinite (on any rank)."""
        loss = self.output_transform(engine.state.output)
        if loss is None:
            return
        if isinstance(loss, torch.Tensor):
            device = loss.device
            bad = not bool(torch.isfinite(loss.detach()).all())
            value = loss.detach().float().mean().item() if loss.numel() else float("nan")
        else:
            device = torch.device("cpu")
            value = float(loss)
            bad = not math.isfinite(value)
        if not self._any_rank(bad, device):
            return
        if not bad:
            raise NonFiniteError(
                f"training stopped at {self._where(engine)}: another rank's loss is NaN or infinite (see its log)."
            )
        raise NonFiniteError(self._loss_message(engine, value))

    def _loss_message(self, engine: Engine, value: float) -> str:
        parts = [f"the training loss is {value} at {self._where(engine)}"]
        sources = _batch_sources(getattr(engine.state, "batch", None))
        parts.append(f"batch files: {', '.join(sources)}" if sources else "the batch has no filename_or_obj meta data")
        output = engine.state.output if isinstance(engine.state.output, Mapping) else {}
        data_bad = False
        for key in ("image", "label"):
            count = _count_non_finite(output.get(key))
            if count is not None:
                data_bad |= count > 0
                parts.append(f"{key}: {count} non-finite values" if count else f"{key}: finite")
        network = self._network(engine)
        weights = find_non_finite(network) if network is not None else []
        if weights:
            cause = (
                f"the network weights are already non-finite ({_examples(weights)}): an earlier optimizer step "
                "diverged; lower the learning rate or clip the gradients"
            )
        elif data_bad:
            cause = "the input batch holds NaN or infinite values: fix or exclude the files above"
        else:
            cause = (
                "the input and the weights are finite, so the forward pass or the loss overflowed (lower the "
                "learning rate; with AMP, try amp: false)"
            )
        return (
            "; ".join(parts)
            + f". Cause: {cause}. Training was stopped before the optimizer step; any checkpoint on disk is from an "
            "earlier, finite state."
        )

    def check_weights(self, engine: Engine) -> None:
        """Raises :class:`NonFiniteError` when a weight or buffer of the network is NaN or infinite."""
        network = self._network(engine)
        if network is None:
            raise ValueError("NonFiniteGuard needs a network: pass network=... or use an engine with a 'network'.")
        found = find_non_finite(network)
        if found:
            raise NonFiniteError(
                f"the network weights are NaN or infinite after {self._where(engine)}: {len(found)} tensor(s), "
                f"{_examples(found)}. Training was stopped before this state was saved; any checkpoint on disk is from "
                "an earlier, finite state (lower the learning rate, check the data, or turn AMP off)."
            )


class _AtomicDiskSaver(DiskSaver):
    """Ignite DiskSaver writing through :func:`shared_networks.io.atomic_write` (ignite's own atomic mode leaves
    ``tmpXXXX`` files behind on a kill and does not sync), optionally always to one file name, and refusing
    checkpoints with non-finite tensors."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        check_finite(checkpoint, f"refusing to write '{os.path.join(self.dirname, filename)}'")
        super().__call__(checkpoint, filename, metadata)

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

    It never writes non-finite weights: a checkpoint with a NaN or infinite tensor raises
    :class:`shared_networks.bundle.checkpoints.NonFiniteError` naming the file and the tensors, and the file on disk
    stays as it was. When its engine first starts it removes the stale temporary files of interrupted writes in
    ``save_dir`` (:func:`clean_checkpoint_folder`).

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
        self._cleaned = False
        for checkpoint, filename in (
            (self._final_checkpoint, final_filename),
            (self._key_metric_checkpoint, key_metric_filename),
            (self._interval_checkpoint, None),
        ):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(dirname=save_dir, filename=filename)

    def attach(self, engine: Engine) -> None:
        """Attaches the savers of ``CheckpointSaver`` and the clean-up of ``save_dir`` at the first start."""
        engine.add_event_handler(Events.STARTED, self.clean)
        super().attach(engine)

    def clean(self, engine: Engine | None = None) -> None:
        """Removes the stale temporary files in ``save_dir`` (once)."""
        if not self._cleaned:
            self._cleaned = True
            clean_checkpoint_folder(self.save_dir)

    def key_metric_state_dict(self) -> dict:
        """The key-metric tracking state (best scores and file names), for :meth:`load_state_dict` after a resume."""
        if self._key_metric_checkpoint is None:
            return {}
        return dict(self._key_metric_checkpoint.state_dict())


# entries of an LR scheduler's state that record its progress, not its configuration
_SCHEDULER_PROGRESS = frozenset({"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial"})
# hyper-parameters that give the length of a schedule, in steps
_SCHEDULE_LENGTHS = ("total_iters", "T_max", "total_steps")


def _scheduler_hyper_parameters(scheduler: Any, state: Mapping) -> list[str]:
    """The entries of ``state`` that are constructor arguments of ``scheduler`` (its configuration), and
    ``base_lrs``."""
    try:
        parameters = set(inspect.signature(type(scheduler).__init__).parameters)
    except (TypeError, ValueError):
        parameters = set()
    parameters -= {"self", "optimizer", "last_epoch", "verbose"}
    keys = [key for key in state if key in parameters and key not in _SCHEDULER_PROGRESS]
    return keys + (["base_lrs"] if "base_lrs" in state else [])


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return False


def _has_closed_form(scheduler: Any) -> bool:
    """Whether the learning rate of ``scheduler`` at any step follows from its hyper-parameters alone."""
    return callable(getattr(scheduler, "_get_closed_form_lr", None)) or (
        type(scheduler) is torch.optim.lr_scheduler.LambdaLR
    )


def _closed_form_lrs(scheduler: Any) -> list[float]:
    """The learning rates of ``scheduler`` at its ``last_epoch`` from its closed form (see :func:`_has_closed_form`)."""
    if type(scheduler) is torch.optim.lr_scheduler.LambdaLR:
        return [float(base * fn(scheduler.last_epoch)) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    return [float(lr) for lr in scheduler._get_closed_form_lr()]


class TrainingCheckpoint:
    """
    Writes the whole training state to one file every ``save_interval`` epochs, atomically (temporary file +
    ``os.replace``), and, with ``resume=True``, restores it when the trainer starts so that training continues
    where it stopped. The file holds: ``network`` (state dict), ``optimizer``, ``lr_scheduler``, ``trainer``
    (epoch/iteration), ``scaler`` (AMP, if the trainer has one), ``validator`` (best metric and its epoch) and
    ``key_metric_saver`` (so a resumed run only replaces the best model when it beats the earlier best). It loads
    with ``torch.load(..., weights_only=True)`` (:func:`shared_networks.bundle.checkpoints.read_checkpoint`).

    A state with non-finite tensors is never written (:class:`~shared_networks.bundle.checkpoints.NonFiniteError`
    naming the file; the previous file stays) nor resumed from. When the trainer starts, the stale temporary files
    of interrupted writes in the checkpoint's folder are removed (:func:`clean_checkpoint_folder`).

    **Longer runs.** The configured number of epochs wins over the saved one. When the configured LR scheduler
    differs from the saved one in its hyper-parameters (e.g. ``PolynomialLR(total_iters=epochs * iterations)`` after
    ``--epochs`` was raised, or ``CosineAnnealingLR``'s ``T_max``), the configured hyper-parameters are kept with the
    saved progress (``last_epoch``), the optimizer's learning rate is set to the schedule's closed-form value at that
    step, and a warning gives the old and new lengths and the new learning rate. Schedulers without a closed form
    (e.g. ``OneCycleLR``, ``SequentialLR``) refuse such a resume with a clear error. Resuming with a learning rate of
    0 while iterations remain is refused (``allow_zero_lr=True`` makes it a warning).

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
        allow_zero_lr: only warn (instead of raising) when the resumed learning rate is 0 while iterations remain.
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
        allow_zero_lr: bool = False,
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
        self.allow_zero_lr = bool(allow_zero_lr)

    def attach(self, engine: Engine) -> None:
        """Cleans the folder on ``STARTED`` (and on ``COMPLETED``), loads on ``STARTED`` with ``resume``, and saves
        on ``EPOCH_COMPLETED`` of ``engine``."""
        engine.add_event_handler(Events.STARTED, self.clean)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.clean)

    def clean(self, engine: Engine | None = None) -> None:
        """Removes the stale temporary files in the checkpoint's folder (rank 0 only)."""
        clean_checkpoint_folder(os.path.dirname(os.path.abspath(self.checkpoint_path)))

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
        """Writes the training state (rank 0 only); raises :class:`NonFiniteError` instead of writing NaN/Inf."""
        if not _is_rank_zero():
            return
        state = self.state_dict(engine)
        check_finite(
            {"network": state["network"], "optimizer": state["optimizer"]},
            f"refusing to write the training state of epoch {engine.state.epoch} to '{self.checkpoint_path}' (the "
            "file keeps the last finite state)",
        )
        save_atomically(state, self.checkpoint_path)
        logger.info("Saved the training state of epoch %d to '%s'.", engine.state.epoch, self.checkpoint_path)

    def _read(self) -> Mapping:
        """The training state in the file, checked to be one (entries, finite tensors)."""
        if not os.path.isfile(self.checkpoint_path):
            raise FileNotFoundError(
                f"resume=True but there is no training checkpoint at '{self.checkpoint_path}'; train without "
                "resume first (the file is written after every epoch)."
            )
        state = read_checkpoint(self.checkpoint_path, map_location=self.map_location)
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"'{self.checkpoint_path}' holds a {type(state).__name__}, not a training checkpoint (a dict with the "
                f"entries {', '.join(TRAINING_CHECKPOINT_KEYS)})."
            )
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(
                f"'{self.checkpoint_path}' holds network weights only (a state dict such as models/model.pt), not a "
                f"training checkpoint (entries {', '.join(TRAINING_CHECKPOINT_KEYS)}, ...): it cannot be resumed "
                "from. To start a new run from these weights, fine-tune from it (--finetune True "
                "--finetune_model_path <file>) instead of --resume."
            )
        required = list(TRAINING_CHECKPOINT_KEYS) + (["lr_scheduler"] if self.lr_scheduler is not None else [])
        missing = [key for key in required if key not in state]
        if missing:
            raise CheckpointError(
                f"training checkpoint '{self.checkpoint_path}' lacks the entries {missing}; it holds {sorted(state)}."
            )
        found = find_non_finite({"network": state["network"], "optimizer": state["optimizer"]})
        if found:
            raise CheckpointError(
                f"training checkpoint '{self.checkpoint_path}' holds NaN or infinite values in {len(found)} "
                f"tensor(s): {_examples(found)}; it was saved from a diverged training and cannot be resumed."
            )
        return state

    def _restore_lr_scheduler(self, saved: Mapping, configured: Mapping, saved_total: int | None, total: int) -> None:
        """Loads the saved scheduler state, keeping the configured hyper-parameters (and recomputing the learning
        rate) when they differ from the saved ones."""
        scheduler = self.lr_scheduler
        name = type(scheduler).__name__
        keys = _scheduler_hyper_parameters(scheduler, configured)
        changed = [key for key in keys if key in saved and not _same(saved[key], configured[key])]
        changes = ", ".join(f"{key} {saved[key]!r} -> {configured[key]!r}" for key in changed)
        step = saved.get("last_epoch")
        run_changed = saved_total is not None and saved_total != total
        # ReduceLROnPlateau follows the metric, not the length of the run: its saved state always continues
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if plateau or not _has_closed_form(scheduler):
            if not plateau and changed and (run_changed or any(key in _SCHEDULE_LENGTHS for key in changed)):
                raise ValueError(
                    f"cannot resume '{self.checkpoint_path}' with a changed LR schedule ({name}: {changes}): this "
                    f"scheduler has no closed form, so its learning rate at step {step} of the new schedule cannot be "
                    "recomputed. Resume with the settings of the interrupted run (e.g. the same number of epochs), or "
                    "start a new run from its weights with finetune."
                )
            if not plateau and run_changed and not changed:
                logger.warning(
                    "Resuming '%s' for a run of %d instead of %d iterations: %s has no closed form, so its saved state "
                    "is continued as it was; if its length was derived from the number of epochs, it still ends at "
                    "the old length.",
                    self.checkpoint_path,
                    total,
                    saved_total,
                    name,
                )
            if changed:
                logger.warning(
                    "Resuming '%s': the configured %s differs from the saved one (%s); the saved state is continued.",
                    self.checkpoint_path,
                    name,
                    changes,
                )
            scheduler.load_state_dict(saved)
            return
        if not changed:
            scheduler.load_state_dict(saved)
            return
        merged = dict(saved)
        merged.update({key: configured[key] for key in keys})
        scheduler.load_state_dict(merged)
        lrs = _closed_form_lrs(scheduler)
        for group, lr, base in zip(self.optimizer.param_groups, lrs, scheduler.base_lrs):
            group["lr"] = lr
            group["initial_lr"] = base
        scheduler._last_lr = list(lrs)
        length = next((key for key in _SCHEDULE_LENGTHS if key in changed), None)
        if length is not None:
            old, new = saved[length], configured[length]
            how = f"the {name} schedule was {'extended' if new > old else 'shortened'} from {old} to {new} steps"
        else:
            how = f"the {name} schedule changed"
        run = f" (a run of {saved_total} -> {total} iterations)" if saved_total not in (None, total) else ""
        saved_lrs = saved.get("_last_lr")
        before = f" instead of the saved {', '.join(f'{lr:.6g}' for lr in saved_lrs)}" if saved_lrs else ""
        logger.warning(
            "Resuming '%s'%s: %s (%s; the configured values replace the saved ones); the learning rate at step %s is "
            "now %s%s.",
            self.checkpoint_path,
            run,
            how,
            changes,
            step,
            ", ".join(f"{lr:.6g}" for lr in lrs),
            before,
        )

    def load(self, engine: Engine) -> None:
        """Restores the training state into the network, optimizer, scheduler, scaler, validator and ``engine``."""
        state = self._read()
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
        saved_length = trainer_state.get("epoch_length")
        saved_total = None
        if saved_length is not None and trainer_state.get("max_epochs") is not None:
            saved_total = int(trainer_state["max_epochs"]) * int(saved_length)
        configured_scheduler = None if self.lr_scheduler is None else dict(self.lr_scheduler.state_dict())

        load_state_dict_checked(self.network, state["network"], f"'{self.checkpoint_path}' (entry 'network')")
        self.optimizer.load_state_dict(state["optimizer"])
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        engine.load_state_dict(trainer_state)
        engine.state.max_epochs = max_epochs  # the configured length wins over the saved one
        total = (engine.state.max_epochs or 0) * (engine.state.epoch_length or 0)
        if self.lr_scheduler is not None:
            self._restore_lr_scheduler(state["lr_scheduler"], configured_scheduler, saved_total, total)
        if self.validator is not None and "validator" in state:
            self.validator.state.best_metric = state["validator"]["best_metric"]
            self.validator.state.best_metric_epoch = state["validator"]["best_metric_epoch"]
        if self.key_metric_saver is not None and state.get("key_metric_saver"):
            self.key_metric_saver.load_state_dict(state["key_metric_saver"])
        self._check_learning_rate(engine, total)
        logger.info(
            "Resumed training from '%s' at epoch %d (iteration %d).",
            self.checkpoint_path,
            engine.state.epoch,
            engine.state.iteration,
        )

    def _check_learning_rate(self, engine: Engine, total: int) -> None:
        """Refuses (or warns about) a resumed learning rate of 0 while iterations remain."""
        remaining = total - engine.state.iteration
        lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        if remaining <= 0 or any(lr != 0.0 for lr in lrs):
            return
        step = getattr(self.lr_scheduler, "last_epoch", None)
        message = (
            f"resuming '{self.checkpoint_path}' at iteration {engine.state.iteration} with {remaining} iterations "
            f"left, but the learning rate is 0"
            + (f" (the LR schedule ended at step {step})" if step is not None else "")
            + ", so the remaining iterations would not change the weights. Make the scheduler's length follow the "
            "number of epochs (e.g. PolynomialLR total_iters: \"$@epochs * @iterations_per_epoch\"), or start a new "
            "run from the weights with finetune."
        )
        if not self.allow_zero_lr:
            raise ValueError(message)
        logger.warning(message[0].upper() + message[1:])


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


def _flat_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``("val_dice_TC", "0.8")`` rows of a summary; lists get their index, missing values read ``nan``."""
    rows = []
    for name, value in summary.items():
        if isinstance(value, Mapping):
            items = [(f"{name}_{key}", v) for key, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{name}_{index}", v) for index, v in enumerate(value)]
        else:
            items = [(name, value)]
        rows += [(key, "nan" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)) for key, v in items]
    return rows


class MetricsSummarySaver:
    """
    Writes the metrics of an evaluator to a JSON file when it completes (atomically; rank 0 only)::

        {"metrics": {"val_mean_dice": 0.81, "val_dice": {"TC": 0.8, "WT": 0.9, "ET": 0.73}, ...},
         "num_cases": 250}

    and, with ``csv_path``, the same values as one ``name<TAB>value`` row each (``val_dice_TC  0.8``), and logs them
    by name. Per-class metrics (1-D tensors, e.g. ``MeanDice(reduction="mean_batch")``) are keyed by
    ``class_names`` when the lengths match. NaN/infinite values (e.g. HD95 of a region no case has) are written as
    ``null`` in the JSON and ``nan`` in the CSV.

    Args:
        save_path: the JSON file.
        metric_names: metrics to write; all metrics of the engine if None.
        class_names: names of the classes/channels of per-class metrics, e.g. ``["TC", "WT", "ET"]``.
        csv_path: also write the flat table there (e.g. ``metrics.csv``).
    """

    def __init__(
        self,
        save_path: str,
        metric_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        csv_path: str | None = None,
    ) -> None:
        self.save_path = os.fspath(save_path)
        self.metric_names = None if metric_names is None else list(metric_names)
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.csv_path = None if csv_path is None else os.fspath(csv_path)

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
        rows = _flat_rows(summary)
        for row_name, row_value in rows:
            logger.info("%s: %s", row_name, row_value)
        if self.csv_path is not None:
            write_text_atomically("".join(f"{n}\t{v}\n" for n, v in rows), self.csv_path)
        logger.info("Saved the metric summary to '%s'.", self.save_path)
