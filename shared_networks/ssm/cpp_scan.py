"""
The ``"cpp"`` selective-scan backend: the C++/OpenMP kernel in ``csrc/selective_scan_cpu.cpp``, compiled with
``torch.utils.cpp_extension.load`` at first use and cached in the torch extensions directory
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``). A failed build is logged once as a warning and
the backend is then reported unavailable, so ``"auto"`` falls back to the ``"torch"`` backend.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import ModuleType
from typing import Optional, Sequence, Tuple

import torch

__all__ = ["build_extension", "load_extension", "extension_build_seconds", "selective_scan_cpp"]

logger = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "selective_scan_cpu.cpp")
COMPILE_FLAGS = ("-O3", "-fopenmp", "-std=c++17")
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
# one cached build per instruction set, so a shared cache never hands an AVX-512 build to an AVX2-only CPU
EXTENSION_NAME = f"shared_networks_selective_scan_cpu_{CPU_CAPABILITY.lower()}"

_lock = threading.Lock()
_extension: Optional[ModuleType] = None
_attempted = False
_build_seconds: Optional[float] = None


def build_extension(sources: Sequence[str] = (SOURCE,), name: str = EXTENSION_NAME) -> Optional[ModuleType]:
    """
    Compile (or load from the cache) the C++ scan extension.

    Returns:
        the extension module, or ``None`` after logging a warning when compiling or loading fails.
    """
    from torch.utils import cpp_extension

    try:
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


def _optional(tensor: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    return None if tensor is None else tensor.to(dtype).contiguous()


class SelectiveScanCppFunction(torch.autograd.Function):
    """Autograd wrapper of the C++ kernel; the backward recomputes states from chunk-start checkpoints."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):  # type: ignore[override]
        extension = load_extension()
        acc = torch.float64 if u.dtype == torch.float64 else torch.float32
        inputs = (
            u.contiguous(),
            delta.to(u.dtype).contiguous(),
            A.to(acc).contiguous(),
            B.to(acc).contiguous(),
            C.to(acc).contiguous(),
            _optional(D, acc),
            _optional(z, u.dtype),
            _optional(delta_bias, acc),
        )
        needs_grad = any(ctx.needs_input_grad[:8])
        out, last_state, checkpoints = extension.forward(*inputs, delta_softplus, needs_grad)
        if needs_grad:
            ctx.save_for_backward(*(t if t is not None else torch.empty(0) for t in inputs), checkpoints)
            ctx.present = tuple(t is not None for t in inputs)
            ctx.dtypes = tuple(None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias))
            ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(last_state)
        return out, last_state

    @staticmethod
    def backward(ctx, dout, _dlast_state):  # type: ignore[override]
        *saved, checkpoints = ctx.saved_tensors
        u, delta, A, B, C, D, z, delta_bias = (t if present else None for t, present in zip(saved, ctx.present))
        grads = load_extension().backward(
            dout.to(u.dtype).contiguous(), u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, checkpoints
        )
        du, ddelta, dA, dB, dC, dD, dz, dbias = grads
        result = []
        for grad, dtype, needed in zip((du, ddelta, dA, dB, dC, dD, dz, dbias), ctx.dtypes, ctx.needs_input_grad):
            result.append(grad.to(dtype) if needed and dtype is not None else None)
        return (*result, None)


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

    Returns:
        output (batch, dim, L) in ``u``'s dtype and the last state (batch, dim, N) in float32 (float64 for float64
        inputs), which is not differentiable (as in mamba-ssm).
    """
    if load_extension() is None:
        raise RuntimeError("the C++ selective-scan kernel is not available (its build failed; see the log).")
    return SelectiveScanCppFunction.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
