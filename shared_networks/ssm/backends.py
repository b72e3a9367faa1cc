# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Backend selection for the selective scan and the causal depthwise convolution.

Three implementations of the selective scan exist:

- ``"cuda"``: the fused kernels of ``mamba_ssm`` (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective
  State Spaces", 2023) for tensors on a CUDA device; only usable when ``mamba_ssm`` imports.
- ``"cpp"``: a C++/OpenMP kernel for CPU tensors, compiled at first use with ``torch.utils.cpp_extension.load``.
- ``"torch"``: a pure PyTorch implementation, always available on every device.

``"auto"`` (the default) picks the first usable one in that order. The environment variable
``SHARED_NETWORKS_SCAN_BACKEND`` (``auto|cuda|cpp|torch``) or the ``backend`` argument of the ops force a choice;
forcing a backend that cannot run raises a ``RuntimeError``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from types import ModuleType
from typing import Callable, List, Optional, Union

import torch

__all__ = [
    "BACKEND_ENV_VAR",
    "SCAN_BACKENDS",
    "available_backends",
    "selective_scan_backend",
    "causal_conv1d_backend",
    "mamba_selective_scan_fn",
    "causal_conv1d_cuda_fn",
]

logger = logging.getLogger(__name__)

BACKEND_ENV_VAR = "SHARED_NETWORKS_SCAN_BACKEND"
SCAN_BACKENDS = ("cuda", "cpp", "torch")
_CHOICES = ("auto",) + SCAN_BACKENDS


def _import_attribute(module_name: str, attribute: str) -> Optional[Callable]:
    """Import ``module_name.attribute``; ``None`` (logged once at INFO level) when the import fails for any reason."""
    try:
        module: ModuleType = importlib.import_module(module_name)
        return getattr(module, attribute)
    except Exception as exc:  # a broken CUDA build raises ImportError, OSError or RuntimeError alike
        logger.info("%s.%s is not usable (%s: %s)", module_name, attribute, type(exc).__name__, exc)
        return None


@functools.lru_cache(maxsize=None)
def mamba_selective_scan_fn() -> Optional[Callable]:
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` when importable, else ``None``."""
    return _import_attribute("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")


@functools.lru_cache(maxsize=None)
def causal_conv1d_cuda_fn() -> Optional[Callable]:
    """``causal_conv1d.causal_conv1d_fn`` when importable, else ``None``."""
    return _import_attribute("causal_conv1d", "causal_conv1d_fn")


def _cuda_usable(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and mamba_selective_scan_fn() is not None


def _cpp_usable(device: torch.device) -> bool:
    if device.type != "cpu":
        return False
    from shared_networks.ssm.cpp_scan import load_extension

    return load_extension() is not None


def _requested(backend: Optional[str]) -> str:
    """The backend asked for: the argument, else the environment variable, else ``"auto"``."""
    source = "backend"
    if backend is None:
        backend = os.environ.get(BACKEND_ENV_VAR, "") or "auto"
        source = BACKEND_ENV_VAR
    name = str(backend).strip().lower()
    if name not in _CHOICES:
        raise ValueError(f"{source} must be one of {_CHOICES}, got {backend!r}.")
    return name


def available_backends(device: Union[str, torch.device, None] = None) -> List[str]:
    """
    Names of the selective-scan backends that can run here, in the order ``"auto"`` prefers them.

    Args:
        device: restrict to backends able to run on this device; ``None`` lists every backend usable on some
            device of this machine (``"cuda"`` needs a GPU and ``mamba_ssm``, ``"cpp"`` a working C++ build).
    """
    if device is None:
        names = []
        if torch.cuda.is_available() and mamba_selective_scan_fn() is not None:
            names.append("cuda")
        if _cpp_usable(torch.device("cpu")):
            names.append("cpp")
        return names + ["torch"]
    device = torch.device(device)
    return [name for name, usable in (("cuda", _cuda_usable), ("cpp", _cpp_usable)) if usable(device)] + ["torch"]


def selective_scan_backend(device: Union[str, torch.device] = "cpu", backend: Optional[str] = None) -> str:
    """
    The selective-scan backend used for tensors on ``device``.

    Args:
        device: device of the scan's tensors.
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``; ``None`` reads ``SHARED_NETWORKS_SCAN_BACKEND``
            (default ``"auto"``).

    Raises:
        ValueError: unknown backend name.
        RuntimeError: a forced backend cannot run on ``device``.
    """
    device = torch.device(device)
    name = _requested(backend)
    if name == "auto":
        if _cuda_usable(device):
            return "cuda"
        if _cpp_usable(device):
            return "cpp"
        return "torch"
    if name == "cuda" and not _cuda_usable(device):
        raise RuntimeError(
            f"selective-scan backend 'cuda' was forced but cannot run on device {device}: it needs tensors on a CUDA "
            "device and an importable mamba_ssm (pip install 'shared_networks[cuda]')."
        )
    if name == "cpp" and not _cpp_usable(device):
        reason = "it runs on CPU tensors only" if device.type != "cpu" else "the C++ extension failed to build"
        raise RuntimeError(f"selective-scan backend 'cpp' was forced but cannot run on device {device}: {reason}.")
    return name


def causal_conv1d_backend(device: Union[str, torch.device] = "cpu", backend: Optional[str] = None) -> str:
    """
    The causal conv1d implementation used for tensors on ``device``: ``"cuda"`` (``causal_conv1d.causal_conv1d_fn``)
    or ``"torch"`` (``torch.nn.functional.conv1d``). There is no C++ CPU kernel, so ``"cpp"`` maps to ``"torch"``.

    Args:
        device: device of the convolution's tensors.
        backend: as for :func:`selective_scan_backend`.

    Raises:
        RuntimeError: ``"cuda"`` was forced but ``causal_conv1d`` does not import or ``device`` is not CUDA.
    """
    device = torch.device(device)
    name = _requested(backend)
    cuda_usable = device.type == "cuda" and torch.cuda.is_available() and causal_conv1d_cuda_fn() is not None
    if name == "cuda" and not cuda_usable:
        raise RuntimeError(
            f"causal_conv1d backend 'cuda' was forced but cannot run on device {device}: it needs tensors on a CUDA "
            "device and an importable causal_conv1d (pip install 'shared_networks[cuda]')."
        )
    if name == "auto" and cuda_usable:
        return "cuda"
    return "cuda" if name == "cuda" else "torch"
