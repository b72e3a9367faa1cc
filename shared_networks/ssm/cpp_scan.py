# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
The ``"cpp"`` selective-scan backend: the C++/OpenMP kernel in ``csrc/selective_scan_cpu.cpp``, compiled with
``torch.utils.cpp_extension.load`` at first use and cached in the torch extensions directory
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). The same extension carries the forward-only CPU
inference kernels of ``csrc/inference_cpu.cpp`` (see :mod:`shared_networks.ssm.cpu_inference`). A failed build is
logged once as a warning and the backend is then reported unavailable, so ``"auto"`` falls back to the ``"torch"``
backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import threading
import time
from types import ModuleType
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "build_extension",
    "load_extension",
    "extension_build_seconds",
    "selective_scan_cpu_forward",
    "selective_scan_cpu_backward",
    "selective_scan_cpp",
]

logger = logging.getLogger(__name__)

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
SOURCE = os.path.join(CSRC, "selective_scan_cpu.cpp")
SOURCES = (SOURCE, os.path.join(CSRC, "inference_cpu.cpp"), os.path.join(CSRC, "cpu_buffer_pool.cpp"))
HEADERS = (os.path.join(CSRC, "lane_math.h"),)
# no -std flag: torch passes the C++ standard its headers need (torch 2.14 refuses anything before C++20)
COMPILE_FLAGS = ("-O3", "-fopenmp")
# vector instruction sets by the capability PyTorch detected on this CPU (its own kernels dispatch the same way)
_ISA_FLAGS = {
    "AVX512": ("-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"),
    "AVX2": ("-mavx2", "-mfma"),
}


def _cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old torch or an unusual platform: build for the baseline instruction set
        return "DEFAULT"


CPU_CAPABILITY = _cpu_capability()


def _source_digest() -> str:
    digest = hashlib.sha256()
    try:
        for path in SOURCES + HEADERS:
            with open(path, "rb") as f:
                digest.update(f.read())
    except OSError:  # the build reports the missing source
        return "nosource"
    return digest.hexdigest()[:10]


def _build_digest() -> str:
    """The torch build and Python the extension is compiled against (the cache folder already names the Python
    minor version and the CUDA flavour, but not torch's version or its C++ ABI)."""
    tag = f"{torch.__version__}|{sys.version_info.major}.{sys.version_info.minor}|{torch.compiled_with_cxx11_abi()}"
    return hashlib.sha256(tag.encode()).hexdigest()[:8]


# one cached build per instruction set, source version and torch build: a shared cache never hands an AVX-512 build to
# an AVX2-only CPU, and two environments (or two versions of the package) on one machine do not keep rebuilding over
# each other's build
EXTENSION_NAME = f"shared_networks_selective_scan_cpu_{CPU_CAPABILITY.lower()}_{_source_digest()}_{_build_digest()}"

_lock = threading.Lock()
_extension: Optional[ModuleType] = None
_attempted = False
_build_seconds: Optional[float] = None


def build_extension(sources: Sequence[str] = SOURCES, name: str = EXTENSION_NAME) -> Optional[ModuleType]:
    """
    Compile (or load from the cache) the C++ scan extension.

    Returns:
        the extension module, or ``None`` after logging a warning when compiling or loading fails.
    """
    from torch.utils import cpp_extension

    _announce_build(name)
    try:
        with _ninja_on_path():
            return cpp_extension.load(
                name=name,
                sources=list(sources),
                extra_cflags=list(COMPILE_FLAGS) + list(_ISA_FLAGS.get(CPU_CAPABILITY, ())),
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except Exception as exc:  # compiler missing, compile error, or loading the shared object failed
        logger.warning(
            "Could not build the C++ selective-scan kernel (%s: %s); using the pure PyTorch backend instead.",
            type(exc).__name__,
            str(exc).strip().splitlines()[-1] if str(exc).strip() else "",
        )
        return None


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """``cpp_extension.load`` runs the first ``ninja`` on ``PATH``. The build uses the one the ``ninja`` package (a
    dependency) installs beside the environment's Python whenever that package imports, whatever ``PATH`` holds:
    ninja versions write different build logs, and a cached build that another version logged is compiled again
    (about a minute on 2 cores). Without this, calling ``.venv/bin/python`` directly (a system ninja first on
    ``PATH``) and with the environment activated (the package's ninja first) rebuilt the kernel at every switch."""
    try:
        import ninja
    except ImportError:  # load() then uses PATH's ninja, or reports that none is there
        yield
        return
    previous = os.environ.get("PATH")
    os.environ["PATH"] = os.pathsep.join(filter(None, (ninja.BIN_DIR, previous)))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = previous


def _announce_build(name: str) -> None:
    """Say so when the kernel is about to be compiled (a minute or two of silence otherwise), and when a lock file
    will make loading wait."""
    from torch.utils import cpp_extension

    try:
        build_dir = cpp_extension._get_build_directory(name, verbose=False)  # the folder load() itself uses
    except Exception:  # a private helper of torch: if it changes, only the message is lost
        return
    lock = os.path.join(build_dir, "lock")
    # torch up to 2.13 locks the build with the file's existence (cpp_extension.FileBaton): load() waits, silently
    # and without a time limit, until it is gone, and a process stopped while it compiled leaves it behind. Later
    # torch (cpp_extension.FileLock) holds an OS lock on a file that stays, which a stopped process releases.
    if not hasattr(cpp_extension, "FileLock") and os.path.exists(lock):
        logger.warning(
            "'%s' exists (since %s): another process is compiling the C++ selective-scan kernel, or one was stopped "
            "while compiling it. Loading waits until that file is gone: delete it if no other process is compiling.",
            lock, time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(lock))),
        )
    if not os.path.isfile(os.path.join(build_dir, f"{name}.so")):
        logger.warning(
            "Compiling the C++ selective-scan kernel for this CPU and torch build (first use only, about 1-2 minutes "
            "on 2 cores); it is cached in '%s'.", build_dir
        )


def load_extension() -> Optional[ModuleType]:
    """The compiled extension (built once per process, thread-safe), or ``None`` when it cannot be built."""
    global _extension, _attempted, _build_seconds
    if _attempted:
        return _extension
    with _lock:
        if not _attempted:
            start = time.perf_counter()
            _extension = build_extension()
            _build_seconds = time.perf_counter() - start
            _attempted = True
    return _extension


def extension_build_seconds() -> Optional[float]:
    """Seconds the first :func:`load_extension` took in this process (compile or cache load); ``None`` before."""
    return _build_seconds


# The kernel is registered as PyTorch operators (``torch.ops.shared_networks.*``) rather than called from an
# autograd.Function: an operator with a fake (shape-only) implementation is what lets ``torch.jit.trace``,
# ``torch.export`` and ``torch.compile`` see through the network. A traced or exported model therefore refers to these
# operators by name and needs ``import shared_networks.ssm`` before it is loaded.


@torch.library.custom_op("shared_networks::selective_scan_cpu_forward", mutates_args=(), device_types="cpu")
def selective_scan_cpu_forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    save_checkpoints: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    The kernel's forward. ``u``, ``delta``, ``z`` share one dtype; ``A``, ``B``, ``C``, ``D``, ``delta_bias`` are in
    the accumulation dtype (float32, float64 for float64 ``u``); all contiguous, ``B``/``C`` grouped.

    Returns:
        output (batch, dim, L), last state (batch, dim, N) and, when ``save_checkpoints``, the states before every
        chunk of the sequence (batch, dim, n_chunks, N) that the backward starts from (else an empty tensor).
    """
    out, last_state, checkpoints = _require_extension().forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                        save_checkpoints)
    return out, last_state, checkpoints


@selective_scan_cpu_forward.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints):
    batch, dim, length = u.shape
    n_state = A.shape[1]
    chunks = -(-length // _require_extension().checkpoint_chunk)
    checkpoints = A.new_empty((batch, dim, chunks, n_state) if save_checkpoints else (0,))
    return torch.empty_like(u), A.new_empty(batch, dim, n_state), checkpoints


@torch.library.custom_op("shared_networks::selective_scan_cpu_backward", mutates_args=(), device_types="cpu")
def selective_scan_cpu_backward(
    dout: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    checkpoints: torch.Tensor,
) -> List[torch.Tensor]:
    """
    The kernel's backward from the forward's checkpoints: ``[du, ddelta, dA, dB, dC, dD, dz, ddelta_bias]`` with
    the dtypes and shapes of the inputs; ``dD``, ``dz``, ``ddelta_bias`` are empty when the input is absent.
    """
    return list(_require_extension().backward(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints))


@selective_scan_cpu_backward.register_fake
def _(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, checkpoints):
    def like_or_empty(tensor: Optional[torch.Tensor], dtype_of: torch.Tensor) -> torch.Tensor:
        return dtype_of.new_empty(0) if tensor is None else torch.empty_like(tensor, dtype=dtype_of.dtype)

    return [
        torch.empty_like(u),
        torch.empty_like(u),
        torch.empty_like(A),
        torch.empty_like(B),
        torch.empty_like(C),
        like_or_empty(D, A),
        like_or_empty(z, u),
        like_or_empty(delta_bias, A),
    ]


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_checkpoints = inputs
    if not save_checkpoints:
        return
    ctx.present = tuple(t is not None for t in (D, z, delta_bias))
    optional = tuple(t for t in (D, z, delta_bias) if t is not None)
    ctx.save_for_backward(u, delta, A, B, C, output[2], *optional)
    ctx.delta_softplus = delta_softplus


def _backward(ctx, dout, _dlast_state, _dcheckpoints):
    if not hasattr(ctx, "present"):
        raise RuntimeError("selective_scan_cpu_forward was called with save_checkpoints=False; it has no backward.")
    u, delta, A, B, C, checkpoints, *optional = ctx.saved_tensors
    optional_iter = iter(optional)
    D, z, delta_bias = (next(optional_iter) if present else None for present in ctx.present)
    grads = selective_scan_cpu_backward(
        dout.to(u.dtype).contiguous(), u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, checkpoints
    )
    du, ddelta, dA, dB, dC, dD, dz, dbias = grads
    return du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None, \
        dbias if delta_bias is not None else None, None, None


selective_scan_cpu_forward.register_autograd(_backward, setup_context=_setup_context)


def _require_extension() -> ModuleType:
    extension = load_extension()
    if extension is None:
        raise RuntimeError("the C++ selective-scan kernel is not available (its build failed; see the log).")
    return extension


def selective_scan_cpp(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Selective scan with the C++ kernel; inputs validated, CPU, ``B``/``C`` grouped (batch, G, N, L).

    The casts to the kernel's dtypes happen here, outside the operator, so autograd casts the gradients back.

    Returns:
        output (batch, dim, L) in ``u``'s dtype and the last state (batch, dim, N) in float32 (float64 for float64
        inputs), which is not differentiable (as in mamba-ssm).
    """
    _require_extension()
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32

    def cast(tensor: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
        return None if tensor is None else tensor.to(dtype).contiguous()

    inputs = (u.contiguous(), cast(delta, u.dtype), cast(A, acc), cast(B, acc), cast(C, acc), cast(D, acc),
              cast(z, u.dtype), cast(delta_bias, acc))
    save_checkpoints = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    out, last_state, _ = selective_scan_cpu_forward(*inputs, delta_softplus, save_checkpoints)
    return out, last_state.detach()
