# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Forward-only CPU kernels for inference, on layouts where the channels are contiguous (``csrc/inference_cpu.cpp``,
built into the C++ extension of :mod:`shared_networks.ssm.cpp_scan`):

- :func:`mamba_directions_inference`: the inner part of a (multi-directional) Mamba layer, from ``in_proj``'s output
  to ``out_proj``'s input, on token-major ``(batch, L, channels)`` tensors. Each direction's causal conv1d reads the
  tokens in its scan order and its scan adds the gated output straight into natural order, so no permuted copy,
  transpose or inverse permutation is made; x_proj and dt_proj are plain matrix products on the rows.
- :func:`instance_norm_channels_last`: instance normalisation of a channels-last tensor (ATen's converts it to the
  contiguous format first), statistics summed in double; :func:`instance_norm_channels_last_` writes it over its
  input.
- :func:`conv3d_winograd_channels_last`: a 3x3x3 convolution (stride 1, zero padding 1) of a channels-last float32
  volume by Winograd's F(2x2x2, 3x3x3) or F(3x3x3, 3x3x3), on weights transformed once by
  :func:`winograd_weight_transform`.
- :func:`cpu_buffer_pool`: a CPU allocator that keeps freed memory mapped for the length of a sliding-window
  inference, so that the windows after the first run on memory the system has already mapped instead of
  page-faulting fresh memory.

They store nothing for a backward pass: :func:`inference_kernels_apply` says when the layers may call them (CPU,
float32/float64, the C++ backend selected, no gradient wanted); otherwise the layers run their differentiable ops,
which compute the same values.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from shared_networks.ssm.backends import selective_scan_backend
from shared_networks.ssm.cpp_scan import _require_extension, load_extension

__all__ = [
    "inference_kernels_apply",
    "causal_conv1d_silu_tokens",
    "selective_scan_tokens_",
    "mamba_directions_inference",
    "instance_norm_channels_last",
    "instance_norm_channels_last_",
    "winograd_weight_transform",
    "conv3d_winograd_channels_last",
    "cpu_buffer_pool",
    "cpu_buffer_pool_stats",
]

# conv1d weight, conv1d bias, x_proj weight, dt_proj weight, dt_proj bias, A_log, D of one direction, and its scan
# order (the permutation of the token positions, or None for the natural order)
DirectionInputs = Tuple[
    torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    Optional[torch.Tensor],
]


def inference_kernels_apply(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether the forward-only kernels may replace the differentiable ops for these inputs and parameters: all on
    the CPU in float32 or float64, the scan backend resolves to ``"cpp"`` (so ``SHARED_NETWORKS_SCAN_BACKEND=torch``
    also turns them off), autocast is off, no gradient is wanted (``torch.no_grad``/``torch.inference_mode``, or
    nothing requires grad), and no graph is being recorded (``torch.jit.trace``, ``torch.compile``,
    ``torch.export``: traced and exported models keep the portable ops)."""
    present = [t for t in tensors if t is not None]
    if not present or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    first = present[0]
    if first.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return False
    if any(t.device != first.device or t.dtype not in (torch.float32, torch.float64) for t in present):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False
    return selective_scan_backend(first.device) == "cpp"


@torch.library.custom_op("shared_networks::causal_conv1d_silu_tokens", mutates_args=(), device_types="cpu")
def causal_conv1d_silu_tokens(
    x: torch.Tensor, order: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """``silu(causal_conv1d)`` of the sequence whose step ``t`` is row ``order[t]`` of ``x`` (batch, L, dim) (row
    ``t`` when ``order`` is None), with ``weight`` (width, dim) (tap ``width - 1`` on the current step); returns
    (batch, L, dim) in the order's sequence, contiguous."""
    return _require_extension().causal_conv1d_silu_tokens(x, order, weight, bias)


@causal_conv1d_silu_tokens.register_fake
def _(x, order, weight, bias):
    return x.new_empty(x.shape)


@torch.library.custom_op("shared_networks::selective_scan_tokens_", mutates_args=("out",), device_types="cpu")
def selective_scan_tokens_(
    out: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    order: Optional[torch.Tensor],
    accumulate: bool,
    delta_proj: Optional[torch.Tensor] = None,
) -> None:
    """The selective scan of :func:`shared_networks.ssm.selective_scan` on token-major rows: ``u``, ``delta``
    (batch, L, dim) and ``B``, ``C`` (batch, L, N) in the scan's order; the gated result of step ``t`` is stored in
    (``accumulate=False``) or added to (``True``) row ``order[t]`` of ``out`` (batch, L, dim), and the gate ``z`` is
    read from that row. Every tensor needs contiguous channels (stride 1 in its last dimension).

    With ``delta_proj`` (dim, rank), ``delta`` is (batch, L, rank) and the scan's delta is
    ``F.linear(delta, delta_proj)``, formed step by step inside the scan (Mamba's ``dt_proj`` without its bias,
    which stays ``delta_bias``)."""
    _require_extension().selective_scan_tokens(out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, order,
                                               accumulate, delta_proj)


@selective_scan_tokens_.register_fake
def _(out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, order, accumulate, delta_proj=None):
    return None


@torch.library.custom_op("shared_networks::instance_norm_channels_last", mutates_args=(), device_types="cpu")
def instance_norm_channels_last(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float
) -> torch.Tensor:
    """``F.instance_norm(x, weight=weight, bias=bias, eps=eps)`` (batch statistics, biased variance) of a
    channels-last contiguous 4D or 5D tensor; the result is channels-last too."""
    return _require_extension().instance_norm_channels_last(x, weight, bias, eps)


@instance_norm_channels_last.register_fake
def _(x, weight, bias, eps):
    return torch.empty_like(x)


@torch.library.custom_op("shared_networks::instance_norm_channels_last_", mutates_args=("x",), device_types="cpu")
def instance_norm_channels_last_(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float
) -> None:
    """:func:`instance_norm_channels_last` written over ``x``: no new buffer of ``x``'s size, for a caller that holds
    the only reference to ``x``."""
    _require_extension().instance_norm_channels_last_(x, weight, bias, eps)


@instance_norm_channels_last_.register_fake
def _(x, weight, bias, eps):
    return None


# G of Winograd's F(m, 3) for m = 2 (points 0, 1, -1, infinity) and m = 3 (points 0, 1, -1, 1/2, infinity); the
# kernel holds the matching B^T and A^T
_WINOGRAD_G = {
    2: ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0)),
    3: ((2.0, 0.0, 0.0), (1.0, 1.0, 1.0), (-1 / 3, 1 / 3, -1 / 3), (-8 / 3, -4 / 3, -2 / 3), (0.0, 0.0, 1.0)),
}


def winograd_weight_transform(weight: torch.Tensor, output_tile: int = 2) -> torch.Tensor:
    """The weights of a 3x3x3 convolution (out_channels, in_channels, 3, 3, 3) in Winograd F(m x m x m, 3x3x3) form
    for :func:`conv3d_winograd_channels_last`, ``m = output_tile`` (2 or 3): ``G g G^T`` along each axis, as float32
    ((m + 2)^3, in_channels rounded up to a multiple of 8 with zero rows, out_channels), computed in float64."""
    if weight.dim() != 5 or tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(
            f"a 3x3x3 convolution weight (out_channels, in_channels, 3, 3, 3) is needed, got {tuple(weight.shape)}"
        )
    if output_tile not in _WINOGRAD_G:
        raise ValueError(f"output_tile must be 2 or 3, got {output_tile!r}")
    g = torch.tensor(_WINOGRAD_G[output_tile], dtype=torch.float64)
    out_channels, in_channels = weight.shape[:2]
    transformed = torch.einsum("ai,bj,ck,oxijk->abcxo", g, g, g, weight.detach().to(torch.float64))
    transformed = transformed.reshape((output_tile + 2) ** 3, in_channels, out_channels)
    padding = -in_channels % 8
    return F.pad(transformed, (0, 0, 0, padding)).to(torch.float32).contiguous()


@torch.library.custom_op("shared_networks::conv3d_winograd_channels_last", mutates_args=(), device_types="cpu")
def conv3d_winograd_channels_last(
    x: torch.Tensor, weight_transform: torch.Tensor, bias: Optional[torch.Tensor]
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, padding=1)`` of a channels-last contiguous float32 ``x`` (batch, channels, D, H, W)
    for a 3x3x3 ``weight`` given as ``winograd_weight_transform(weight, m)``, m = 2 or 3 (read from its shape); the
    result is channels-last. Within float32 rounding of the direct convolution: about 5e-7 of the largest output for
    m = 2, whose transforms only add, subtract and halve, and about 7e-6 for m = 3."""
    return _require_extension().conv3d_winograd_channels_last(x, weight_transform, bias)


@conv3d_winograd_channels_last.register_fake
def _(x, weight_transform, bias):
    shape = (x.shape[0], weight_transform.shape[2], *x.shape[2:])
    return x.new_empty(shape).contiguous(memory_format=torch.channels_last_3d)


def mamba_directions_inference(
    xz: torch.Tensor, directions: Sequence[DirectionInputs], dt_rank: int, d_state: int
) -> torch.Tensor:
    """The summed gated scan outputs of a Mamba layer's directions (batch, L, d_inner), from ``in_proj``'s output
    ``xz`` (batch, L, 2 * d_inner): what ``Mamba.forward`` feeds ``out_proj``."""
    d_inner = xz.shape[-1] // 2
    x, z = xz[..., :d_inner], xz[..., d_inner:]
    y = torch.empty(xz.shape[0], xz.shape[1], d_inner, dtype=xz.dtype)
    for index, (conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, a_log, d, order) in enumerate(
        directions
    ):
        weight = conv_weight.reshape(d_inner, -1).t().contiguous()  # (width, d_inner): taps of a channel block adjacent
        u = causal_conv1d_silu_tokens(x, order, weight, conv_bias)
        x_dbl = F.linear(u, x_proj_weight)  # (batch, L, dt_rank + 2N), rows in the scan's order
        dt, b, c = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
        a = -torch.exp(a_log.to(xz.dtype))
        # dt_proj is applied inside the scan (no (batch, L, d_inner) delta stored)
        selective_scan_tokens_(y, u, dt, a, b, c, d.to(xz.dtype), z, dt_bias.to(xz.dtype), True, order, index > 0,
                               dt_proj_weight.to(xz.dtype).contiguous())
    return y


@contextlib.contextmanager
def cpu_buffer_pool() -> Iterator[bool]:
    """
    Within this context, CPU tensors of 1 MB and more take memory that earlier tensors freed in it, still mapped,
    instead of fresh memory that the system must page-fault and zero (PyTorch's CPU allocator maps every block above
    32 MB anew and unmaps it when freed). A 128^3 SegMamba window allocates about 10 GB over a forward in
    hundred-megabyte tensors; inside the pool, the windows after the first run without page faults. No value
    computed changes.

    Freed memory is kept in 2 MB units and rearranged with ``mremap`` (``csrc/cpu_buffer_pool.cpp``), so the pool
    holds no more than the most the tensors held at once: the peak memory is that of PyTorch's allocator. It is
    given back to the system when the context ends; tensors that outlive the context keep theirs until they are freed.
    While any thread is inside, the pool is PyTorch's CPU allocator for the whole process (nested and concurrent
    contexts share it; the last one out restores the previous allocator).

    Yields:
        whether the pool is in use: ``False`` (and nothing changes) off Linux, or where the CPU scan backend is not
        the C++ extension (it cannot be built, or ``SHARED_NETWORKS_SCAN_BACKEND=torch``), as for the kernels above.
    """
    extension = load_extension() if selective_scan_backend(torch.device("cpu")) == "cpp" else None
    if extension is None or not extension.cpu_buffer_pool_enter():
        yield False
        return
    try:
        yield True
    finally:
        extension.cpu_buffer_pool_leave()


def cpu_buffer_pool_stats() -> Dict[str, int]:
    """The pool's state in bytes: ``users`` (contexts inside it, a count), ``lent_bytes`` (held by live tensors),
    ``idle_bytes`` (kept for reuse), ``fresh_bytes`` / ``reused_bytes`` (requests served by newly mapped memory / by
    idle memory, since the process started)."""
    values = _require_extension().cpu_buffer_pool_stats()
    return dict(zip(("users", "lent_bytes", "idle_bytes", "fresh_bytes", "reused_bytes"), values))
