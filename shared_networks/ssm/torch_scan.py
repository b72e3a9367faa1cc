# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Pure PyTorch selective scan (the ``"torch"`` backend): runs on any device and is differentiable by autograd.

The sequence is cut into blocks; inside a block of length ``T * K`` the steps are laid out as ``K`` rows of ``T``
consecutive steps (stored time-major). A first sweep over the ``T`` positions advances all ``K`` rows at once from a
zero state, which gives each row's own final state. The rows are then chained sequentially (the decay over a whole
row is ``exp(A * sum(delta))``) to get the true state at each row start, and a second sweep recomputes the outputs
from those states. Only ``(batch, dim, N, K)`` states live at a time, never the ``(batch, dim, L, N)`` tensor; with
gradients enabled each block is checkpointed so that autograd keeps one block's graph at a time.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["selective_scan_torch"]

# elements of a (batch, dim, N, block length) tensor per checkpointed block when gradients are needed
_GRAD_BLOCK_ELEMENTS = 1 << 21


def _sweep(
    dt: torch.Tensor,
    du: torch.Tensor,
    A_log2e: torch.Tensor,
    B: torch.Tensor,
    C: Optional[torch.Tensor],
    h: torch.Tensor,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """
    Advance ``K`` independent rows over ``T`` steps.

    Args:
        dt, du: (T, batch, G, dim_per_group, 1, K) step sizes and ``delta * u``, time-major so that each step reads
            contiguous memory.
        A_log2e: (G, dim_per_group, N, 1), ``A * log2(e)``: the decays are computed as ``exp2(dt * A * log2(e))``
            because ``torch.exp`` goes through MKL's vector math, which with several threads costs a thread wake-up
            per call (milliseconds on busy machines) whatever the tensor size, while ``torch.exp2`` does not.
        B, C: (T, batch, G, 1, N, K); ``C=None`` skips the outputs.
        h: (batch, G, dim_per_group, N, K) initial states.

    Returns:
        final states like ``h`` and, when ``C`` is given, outputs (batch, G, dim_per_group, K, T).
    """
    outputs = []
    # unbind once: its backward stacks the step gradients, where indexing per step would make autograd allocate a
    # zero tensor of the whole block for every step
    steps = zip(dt.unbind(0), du.unbind(0), B.unbind(0), C.unbind(0) if C is not None else [None] * dt.shape[0])
    for dt_t, du_t, B_t, C_t in steps:
        h = torch.addcmul(du_t * B_t, torch.exp2(dt_t * A_log2e), h)
        if C_t is not None:
            outputs.append((h * C_t).sum(dim=3))
    return h, (torch.stack(outputs, dim=-1) if C is not None else None)


def _scan_block(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    h0: torch.Tensor,
    delta_softplus: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Scan one block: ``u, delta, z`` (batch, dim, L), ``B, C`` (batch, G, N, L), ``h0`` (batch, dim, N) in the
    accumulation dtype (float32, or float64 for float64 inputs).
    """
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], B.shape[2]
    dim_per_group = dim // groups
    acc = h0.dtype
    u_acc = u.to(acc)
    dt = delta.to(acc)
    if delta_bias is not None:
        dt = dt + delta_bias.to(acc)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    row_len = math.isqrt(length - 1) + 1  # ceil(sqrt(length))
    rows = -(-length // row_len)
    pad = rows * row_len - length  # padded steps have dt = 0: decay 1 and no input, the state passes unchanged

    def time_major_rows(x: torch.Tensor, lead: Tuple[int, ...]) -> torch.Tensor:
        rows_view = F.pad(x, (0, pad)).reshape(*lead, rows, row_len)
        return rows_view.permute(rows_view.dim() - 1, *range(rows_view.dim() - 1)).contiguous()

    dt_rows = time_major_rows(dt, (batch, groups, dim_per_group, 1))
    du_rows = time_major_rows(dt * u_acc, (batch, groups, dim_per_group, 1))
    B_rows = time_major_rows(B.to(acc), (batch, groups, 1, dstate))
    C_rows = time_major_rows(C.to(acc), (batch, groups, 1, dstate))
    A_log2e = A.to(acc).reshape(groups, dim_per_group, dstate, 1) * math.log2(math.e)

    zeros = h0.new_zeros(batch, groups, dim_per_group, dstate, rows)
    row_states, _ = _sweep(dt_rows, du_rows, A_log2e, B_rows, None, zeros)
    row_decay = torch.exp2(dt_rows.sum(dim=0) * A_log2e)  # (batch, G, dim_per_group, N, K)
    state = h0.reshape(batch, groups, dim_per_group, dstate)
    starts = []
    for k in range(rows):
        starts.append(state)
        state = torch.addcmul(row_states[..., k], row_decay[..., k], state)
    _, y = _sweep(dt_rows, du_rows, A_log2e, B_rows, C_rows, torch.stack(starts, dim=-1))
    y = y.reshape(batch, dim, rows * row_len)[..., :length]
    if D is not None:
        y = torch.addcmul(y, u_acc, D.to(acc)[:, None])
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(u.dtype), state.reshape(batch, dim, dstate)


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    block_length: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Selective scan of Gu & Dao (2023), "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", Alg. 2,
    in plain PyTorch. Inputs must already be validated; ``B`` and ``C`` are grouped (batch, G, N, L).

    Args:
        block_length: steps per block; default: the whole sequence without gradients, else blocks holding about
            2**21 state elements (each checkpointed).

    Returns:
        output (batch, dim, L) in ``u``'s dtype and the last state (batch, dim, N) in float32 (float64 when ``u`` is
        float64: float64 inputs are computed in float64 throughout).
    """
    batch, dim, length = u.shape
    dstate = A.shape[1]
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias)
    )
    if block_length is None:
        block_length = max(64, _GRAD_BLOCK_ELEMENTS // (batch * dim * dstate)) if needs_grad else length
    acc_dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    state = torch.zeros(batch, dim, dstate, device=u.device, dtype=acc_dtype)
    outputs = []
    for start in range(0, length, block_length):
        part = slice(start, min(start + block_length, length))
        args = (
            u[..., part],
            delta[..., part],
            A,
            B[..., part],
            C[..., part],
            D,
            None if z is None else z[..., part],
            delta_bias,
            state,
            delta_softplus,
        )
        if needs_grad and length > block_length:
            y, state = checkpoint(_scan_block, *args, use_reentrant=False)
        else:
            y, state = _scan_block(*args)
        outputs.append(y)
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)), state
