# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Loading weights with errors a user can act on, and the finiteness checks shared by the handlers.

- :func:`read_checkpoint`: ``torch.load(..., weights_only=True)`` whose errors name the file and say what it is
  (missing, empty, text, an HTML page, a Git LFS pointer, a truncated archive, TorchScript, a plain pickle, a pickle
  of Python objects that ``weights_only`` refuses, ...).
- :func:`load_network_weights`: a state dict file into a network: the ``network`` entry of a training checkpoint
  (:class:`shared_networks.bundle.TrainingCheckpoint`), a ``module.`` prefix (DDP) stripped, key or shape mismatches
  summarised in one message, non-finite tensors refused. For scripts and MONAI Label.
- :class:`SafeCheckpointLoader`: the same as an ignite handler, a drop-in for :class:`monai.handlers.CheckpointLoader`
  in bundle configs.
- :func:`find_non_finite` / :func:`check_finite`: the NaN/Inf checks of the non-finite guard and the savers.

Nothing here depends on a dataset or a network.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = [
    "CheckpointError",
    "NonFiniteError",
    "TRAINING_CHECKPOINT_KEYS",
    "find_non_finite",
    "check_finite",
    "read_checkpoint",
    "load_network_weights",
    "load_state_dict_checked",
    "load_checkpoint_into",
    "SafeCheckpointLoader",
]

logger = logging.getLogger(__name__)

#: The entries that mark a file of :class:`shared_networks.bundle.TrainingCheckpoint` (the whole training state).
TRAINING_CHECKPOINT_KEYS = ("network", "optimizer", "trainer")

_MODULE_PREFIX = "module."
_EXAMPLES = 3  # examples of each kind of problem in a message


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or does not fit what it is loaded into; the message names the file."""


class NonFiniteError(RuntimeError):
    """A non-finite (NaN or infinite) loss, weight or tensor to be saved."""


def unwrap_module(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


# ---------------------------------------------------------------------------------------------------------------
# finiteness


def _named_tensors(obj: Any, prefix: str) -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield from _named_tensors(value, f"{prefix}.{index}" if prefix else str(index))


def find_non_finite(obj: Any, prefix: str = "") -> list[str]:
    """
    The floating-point tensors in ``obj`` (a tensor, a module, or nested mappings/lists such as a state dict or a
    training checkpoint) that hold NaN or infinite values, each described as ``"name (3 NaN, 1 inf of 64 values)"``.

    Args:
        obj: what to check; a ``torch.nn.Module`` is checked through its ``state_dict()``.
        prefix: prepended to the names (e.g. ``"network"``).
    """
    if isinstance(obj, torch.nn.Module):
        obj = unwrap_module(obj).state_dict()
    found = []
    for name, tensor in _named_tensors(obj, prefix):
        if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
            continue
        if bool(torch.isfinite(tensor).all()):
            continue
        detached = tensor.detach()
        num_nan = int(torch.isnan(detached).sum())
        num_inf = int(torch.isinf(detached).sum())
        parts = [f"{num_nan} NaN"] if num_nan else []
        parts += [f"{num_inf} inf"] if num_inf else []
        found.append(f"{name or 'tensor'} ({', '.join(parts)} of {detached.numel()} values)")
    return found


def _examples(items: Sequence[str], limit: int = _EXAMPLES) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def check_finite(obj: Any, what: str, prefix: str = "") -> None:
    """
    Raise :class:`NonFiniteError` when ``obj`` holds non-finite tensors (see :func:`find_non_finite`).

    Args:
        obj: what to check.
        what: the start of the message, naming the object and the file, e.g.
            ``"refusing to write 'models/model.pt'"``.
        prefix: prepended to the tensor names.
    """
    found = find_non_finite(obj, prefix)
    if found:
        raise NonFiniteError(
            f"{what}: {len(found)} tensor(s) hold NaN or infinite values: {_examples(found)}. A model with "
            "non-finite weights produces NaN everywhere; the training diverged (lower the learning rate, check the "
            "data for NaN values, or turn AMP off)."
        )


# ---------------------------------------------------------------------------------------------------------------
# reading a file


def _sniff(path: str, size: int) -> tuple[str, str]:
    """(kind, description) of a file from its first bytes; kind is one of torch-zip, torchscript, export, zip,
    bad-zip, pickle, text, other."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            return "bad-zip", (
                f"a truncated or corrupted zip archive ({size} bytes; PyTorch checkpoints are zip archives): an "
                "interrupted copy, download or write"
            )
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(name.endswith("/constants.pkl") for name in names) and any("/code/" in name for name in names):
            return "torchscript", (
                "a TorchScript archive (torch.jit.save): a compiled model, not a state dict; load it with "
                "torch.jit.load, or use the state-dict file (models/model.pt) here"
            )
        if not any(name.endswith("/data.pkl") for name in names):
            if any(name.endswith("/archive_format") for name in names):
                return "export", (
                    "a torch.export archive (torch.export.save), not a state dict; load it with torch.export.load"
                )
            return "zip", f"a zip archive that is not a PyTorch checkpoint (it holds {_examples(names)})"
        return "torch-zip", "a PyTorch checkpoint"
    if head[:1] == b"\x80" and len(head) > 1:
        protocol = head[1]
        if protocol > 2:
            return "pickle", (
                f"a plain Python pickle (protocol {protocol}, e.g. written by pickle.dump), not a file written by "
                "torch.save"
            )
        return "pickle", "a PyTorch checkpoint in the legacy (non-zip) format"
    if head.startswith(b"\x89HDF"):
        return "other", "an HDF5 file (e.g. Keras weights), not a PyTorch checkpoint"
    if head.startswith(b"\x93NUMPY"):
        return "other", "a NumPy .npy array, not a PyTorch checkpoint"
    if len(head) > 10 and head[8:10] == b'{"':
        return "other", "a safetensors file; load it with safetensors.torch.load_file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # possibly a character cut at the end of the 512 bytes
        text = head[: error.start].decode("utf-8") if error.start >= len(head) - 3 else ""
    if not text or not all(c.isprintable() or c in "\r\n\t" for c in text):
        return "other", f"a binary file of an unknown format (starts with {head[:8]!r}), not a PyTorch checkpoint"
    first_line = text.strip().splitlines()[0][:80] if text.strip() else ""
    if text.startswith("version https://git-lfs"):
        return "text", (
            "a Git LFS pointer, not the file itself: fetch the weights (git lfs pull, or the URL in "
            "large_files.yml: python -m monai.bundle download ...)"
        )
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        return "text", "an HTML page (a failed download or a login page?), not a PyTorch checkpoint"
    return "text", f"a text file (first line: {first_line!r}), not a PyTorch checkpoint"


def _weights_only_refusal(path: str, error: Exception) -> str | None:
    """The explanation of a ``weights_only=True`` refusal, or None when ``error`` is not one."""
    message = str(error)
    if "Weights only load failed" not in message:
        return None
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found is None:
        operand = re.search(r"Unsupported operand (\d+)", message)
        detail = f" (pickle operand {operand.group(1)})" if operand else ""
        return f"it is not a file torch.load can read with weights_only=True{detail}"
    name = found.group(1)
    if not _resolves(name):
        return (
            f"it refers to the Python object {name}, which does not exist here: the file is probably truncated (an "
            "interrupted write, copy or download), or was written by a PyTorch version with other internals"
        )
    if name.startswith("numpy"):
        what = f"NumPy arrays or scalars ({name})"
    elif name.startswith("torch.nn.modules.") or ".nets." in name or ".networks." in name:
        what = f"a whole pickled network ({name}, saved with torch.save(model))"
    else:
        what = f"an object of class {name}"
    return (
        f"it holds {what}, not only tensors and plain containers. torch.load(weights_only=True) refuses to "
        "unpickle Python objects because unpickling can run arbitrary code. If you trust the file, load it once with "
        f"torch.load('{path}', weights_only=False) and re-save only the weights as a state dict, e.g. "
        "torch.save(network.state_dict(), 'model_state.pt') for a pickled network, or the dict of tensors inside "
        "the object (numpy arrays converted with torch.as_tensor); that file loads with weights_only=True"
    )


def _resolves(qualified_name: str) -> bool:
    """False for a name in torch's own namespace that does not exist (a cut name in a truncated file); True for any
    other name (nothing is imported: the name comes from an untrusted file)."""
    module_name, _, attribute = qualified_name.rpartition(".")
    if not qualified_name.startswith("torch.") or module_name not in sys.modules:
        return True
    return hasattr(sys.modules[module_name], attribute)


def read_checkpoint(path: str | os.PathLike, map_location: Any = None) -> Any:
    """
    ``torch.load(path, map_location=map_location, weights_only=True)`` with errors that name the file and say what
    it is instead of a bare ``EOFError`` or ``Unsupported operand``.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is a folder, empty, not a PyTorch checkpoint, truncated, or holds Python objects
            that ``weights_only=True`` refuses.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        where = "" if os.path.isdir(folder) else f" (the folder '{folder}' does not exist either)"
        raise FileNotFoundError(f"checkpoint file '{path}' does not exist{where}.")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path '{path}' is a folder, expected a file written by torch.save.")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(
            f"checkpoint file '{path}' is empty (0 bytes): its write, copy or download was interrupted; replace it "
            "with the complete file."
        )
    kind, description = _sniff(path, size)
    if kind in ("text", "other", "bad-zip", "torchscript", "export", "zip"):
        raise CheckpointError(f"checkpoint file '{path}' is {description}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError, AttributeError, IndexError) as error:
        refusal = _weights_only_refusal(path, error)
        if refusal is not None:
            detail = f"{description}; {refusal}" if kind == "pickle" and "plain" in description else refusal
            raise CheckpointError(f"cannot load checkpoint file '{path}': {detail}.") from error
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        hint = (
            " The file is probably truncated (an interrupted write, copy or download)."
            if isinstance(error, (EOFError, pickle.UnpicklingError)) or "zip archive" in reason
            else ""
        )
        raise CheckpointError(
            f"cannot load checkpoint file '{path}' ({description}, {size} bytes) with torch.load(weights_only=True): "
            f"{type(error).__name__}: {reason}.{hint}"
        ) from error


# ---------------------------------------------------------------------------------------------------------------
# state dicts into networks


def _is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of names to tensors (``_extra_state`` entries may be anything)."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) or k.endswith("_extra_state") for k, v in obj.items())
    )


def is_training_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` is the content of a :class:`shared_networks.bundle.TrainingCheckpoint` file."""
    return isinstance(obj, Mapping) and all(key in obj for key in TRAINING_CHECKPOINT_KEYS)


def _entries(obj: Mapping) -> str:
    return _examples([repr(k) for k in obj], limit=8)


def _select_state_dict(checkpoint: Any, key: str, path: str, log: logging.Logger) -> tuple[Mapping, str]:
    """The state dict to load for the ``load_dict`` entry ``key``, and the name of its source for messages."""
    source = f"'{path}'"
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"checkpoint file {source} holds a {type(checkpoint).__name__}, expected a state dict (a mapping of "
            "parameter names to tensors, as written by torch.save(network.state_dict(), path))."
        )
    if _is_state_dict(checkpoint):
        return checkpoint, source
    if key in checkpoint and isinstance(checkpoint[key], Mapping):
        return checkpoint[key], f"{source} (entry '{key}')"
    if is_training_checkpoint(checkpoint):
        log.info(
            "'%s' is a training checkpoint (entries %s): loading the network weights of its 'network' entry.",
            path,
            _entries(checkpoint),
        )
        return checkpoint["network"], f"{source} (entry 'network')"
    candidates = [repr(k) for k, v in checkpoint.items() if _is_state_dict(v)]
    hint = f"; the entries {', '.join(candidates)} look like state dicts" if candidates else ""
    raise CheckpointError(
        f"checkpoint file {source} holds a dict with the entries {_entries(checkpoint) or 'none'}, neither a state "
        f"dict of tensors nor an entry {key!r} nor a training checkpoint (entries "
        f"{', '.join(TRAINING_CHECKPOINT_KEYS)}){hint}."
    )


def load_state_dict_checked(
    module: torch.nn.Module,
    state_dict: Mapping,
    source: str,
    strict: bool = True,
    log: logging.Logger | None = None,
) -> None:
    """
    ``module.load_state_dict(state_dict, strict)`` (unwrapped from DDP/DataParallel) after checks whose errors name
    ``source``: a ``module.`` prefix on every key is stripped (and logged); missing or unexpected keys (with
    ``strict``) and shape mismatches raise one :class:`CheckpointError` with their counts and a few examples; NaN or
    infinite tensors raise :class:`CheckpointError`.

    Args:
        module: the network.
        state_dict: its weights.
        source: where they come from, for the messages, e.g. ``"'models/model.pt'"``.
        strict: require exactly the network's keys.
        log: logger for the notes; this module's by default.
    """
    log = log or logger
    target = unwrap_module(module)
    expected = target.state_dict()
    state = dict(state_dict)
    if (
        state
        and all(k.startswith(_MODULE_PREFIX) for k in state)
        and not any(k.startswith(_MODULE_PREFIX) for k in expected)
    ):
        state = {k[len(_MODULE_PREFIX):]: v for k, v in state.items()}
        log.info(
            "%s was saved from a DistributedDataParallel/DataParallel wrapper: stripped the '%s' prefix of its %d "
            "keys.",
            source,
            _MODULE_PREFIX,
            len(state),
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k!r}: file {tuple(state[k].shape)}, network {tuple(expected[k].shape)}"
        for k in expected
        if k in state
        and isinstance(state[k], torch.Tensor)
        and isinstance(expected[k], torch.Tensor)
        and state[k].shape != expected[k].shape
    ]
    if shapes or (strict and (missing or unexpected)):
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} of the network's {len(expected)} keys are missing from the file (e.g. "
                f"{_examples([repr(k) for k in missing])})"
            )
        if unexpected:
            problems.append(
                f"{len(unexpected)} of the file's {len(state)} keys are not in the network (e.g. "
                f"{_examples([repr(k) for k in unexpected])})"
            )
        if shapes:
            problems.append(f"{len(shapes)} tensors differ in shape (e.g. {_examples(shapes)})")
        matching = len(expected) - len(missing) - len(shapes)
        hint = "" if shapes else f" (strict=False would load only the {matching} matching keys)"
        raise CheckpointError(
            f"checkpoint {source} does not fit the network {type(target).__name__}: {'; '.join(problems)}. The file "
            "holds the weights of a different network or configuration (architecture, mode, widths, depths or "
            f"numbers of channels); load it into the network it was trained with{hint}."
        )
    found = find_non_finite(state)
    if found:
        raise CheckpointError(
            f"checkpoint {source} holds NaN or infinite values in {len(found)} tensor(s): {_examples(found)}. It "
            "was saved from a diverged training; refusing to load it (use an earlier checkpoint)."
        )
    target.load_state_dict(state, strict=strict)
    if missing or unexpected:
        log.warning(
            "%s loaded with strict=False: %d network keys were not in the file (e.g. %s), %d file keys were ignored "
            "(e.g. %s).",
            source,
            len(missing),
            _examples(missing),
            len(unexpected),
            _examples(unexpected),
        )


def load_checkpoint_into(
    load_dict: Mapping[str, Any],
    path: str | os.PathLike,
    strict: bool = True,
    map_location: Any = None,
    log: logging.Logger | None = None,
) -> None:
    """
    Load the checkpoint file ``path`` into the objects of ``load_dict`` (as :class:`monai.handlers.CheckpointLoader`
    does, with :func:`read_checkpoint` and the checks of :func:`load_network_weights` for every module).

    With a single entry the file may be a flat state dict, hold that entry, or be a training checkpoint (its
    ``network`` entry is loaded). With several entries the file must hold each of them; modules are loaded with the
    checks, other objects (optimizer, scheduler, engine) with their ``load_state_dict``.

    Args:
        load_dict: name -> object with ``load_state_dict``, e.g. ``{"model": network}``.
        path: the file.
        strict: require exactly the network's keys.
        map_location: ``map_location`` of ``torch.load``.
        log: logger for the notes (training checkpoint, ``module.`` prefix); this module's by default.
    """
    if not load_dict:
        raise ValueError("load_dict must name at least one object to load, e.g. {'model': network}.")
    log = log or logger
    path = os.fspath(path)
    checkpoint = read_checkpoint(path, map_location=map_location)
    if len(load_dict) == 1:
        key, obj = next(iter(load_dict.items()))
        if isinstance(obj, torch.nn.Module):
            state, source = _select_state_dict(checkpoint, key, path, log)
            load_state_dict_checked(obj, state, source, strict, log)
            return
        if not isinstance(checkpoint, Mapping) or key not in checkpoint:
            checkpoint = {key: checkpoint}
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"checkpoint file '{path}' holds a {type(checkpoint).__name__}, expected a dict with the entries "
            f"{_entries(load_dict)}."
        )
    absent = [key for key in load_dict if key not in checkpoint]
    if absent:
        raise CheckpointError(
            f"checkpoint file '{path}' lacks the entries {_examples([repr(k) for k in absent])} to load; it holds "
            f"{_entries(checkpoint) or 'no entries'}."
        )
    for key, obj in load_dict.items():
        source = f"'{path}' (entry '{key}')"
        if isinstance(obj, torch.nn.Module):
            if not _is_state_dict(checkpoint[key]):
                raise CheckpointError(f"checkpoint {source} is not a state dict of tensors.")
            load_state_dict_checked(obj, checkpoint[key], source, strict, log)
            continue
        try:
            obj.load_state_dict(checkpoint[key])
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(
                f"cannot load checkpoint {source} into the {type(obj).__name__}: {error}"
            ) from error


def load_network_weights(
    network: torch.nn.Module,
    path: str | os.PathLike,
    strict: bool = True,
    map_location: Any = None,
) -> torch.nn.Module:
    """
    Load the weights in ``path`` into ``network`` (unwrapped from DDP/DataParallel) and return it; for scripts and
    MONAI Label. ``path`` may be a state dict (``models/model.pt``), a dict with an entry ``model``, or a training
    checkpoint (``models/checkpoint_last.pt``: its ``network`` entry). A ``module.`` prefix is stripped. Every error
    names the file: see :func:`read_checkpoint`; keys or shapes that do not fit the network, and non-finite tensors,
    raise :class:`CheckpointError`.

    Example::

        net = load_network_weights(SegMamba(...), "models/model.pt", map_location="cpu").eval()
    """
    load_checkpoint_into({"model": network}, path, strict=strict, map_location=map_location)
    return network


class SafeCheckpointLoader:
    """
    Drop-in for :class:`monai.handlers.CheckpointLoader` in bundle configs (same ``load_path``, ``load_dict``,
    ``name``, ``map_location`` and ``strict``) that loads with ``weights_only=True`` through
    :func:`load_checkpoint_into`: every error names the file and says what is wrong with it, a training checkpoint
    passed for the weights loads its ``network`` entry, a ``module.`` prefix is stripped, and non-finite weights are
    refused. It loads on ``Events.STARTED`` of the engine it is attached to, or when called with an engine::

        - _target_: shared_networks.bundle.SafeCheckpointLoader
          load_path: "$@ckpt_dir + '/model.pt'"
          load_dict: {model: "@network"}
          strict: true
          map_location: "@device"

    Args:
        load_path: the checkpoint file.
        load_dict: name -> object to load, e.g. ``{"model": network}``.
        name: logger name; this module's logger by default.
        map_location: ``map_location`` of ``torch.load``.
        strict: require exactly the network's keys.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        load_dict: Mapping[str, Any],
        name: str | None = None,
        map_location: Any = None,
        strict: bool = True,
    ) -> None:
        if load_path is None:
            raise ValueError("SafeCheckpointLoader needs a load_path (the checkpoint file).")
        if not load_dict:
            raise ValueError("SafeCheckpointLoader needs a non-empty load_dict, e.g. {'model': network}.")
        self.load_path = os.fspath(load_path)
        self.load_dict = dict(load_dict)
        self.map_location = map_location
        self.strict = bool(strict)
        self.logger = logging.getLogger(name) if name else logger

    def attach(self, engine: Engine) -> None:
        """Loads on ``Events.STARTED`` of ``engine`` (a trainer or an evaluator)."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        prior_max_epochs = None if engine is None else engine.state.max_epochs
        load_checkpoint_into(
            self.load_dict, self.load_path, strict=self.strict, map_location=self.map_location, log=self.logger
        )
        if engine is not None and prior_max_epochs is not None:
            # an engine in load_dict must not shorten the configured run
            if engine.state.epoch > prior_max_epochs:
                raise CheckpointError(
                    f"checkpoint file '{self.load_path}' is at epoch {engine.state.epoch}, beyond max_epochs="
                    f"{prior_max_epochs} of the engine; raise the number of epochs."
                )
            engine.state.max_epochs = prior_max_epochs
        # the wording of monai.handlers.CheckpointLoader, which logs and scripts look for
        self.logger.info(f"Restored all variables from {self.load_path}")
