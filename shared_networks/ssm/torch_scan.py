# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Pure PyTorch selective scan (the ``"torch"`` backend): runs on any device, with a hand-written backward.

The sequence is cut into blocks; inside a block of length ``T * K`` the steps are laid out as ``K`` rows of ``T``
consecutive steps (stored time-major). A first sweep over the ``T`` positions advances all ``K`` rows at once from a
zero state, which gives each row's own final state. The rows are then chained sequentially (the decay over a whole
row is ``exp(A * sum(delta))``) to get the true state at each row start, and a second sweep recomputes the outputs
from those states. Only ``(batch, dim, N, K)`` states live at a time, never the ``(batch, dim, L, N)`` tensor. With
gradients enabled the sequence is cut into blocks of about 2**23 state elements: the forward keeps only each block's
start state, and the backward (:class:`_SelectiveScanTorch`) recomputes one block's states at a time.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_torch"]

# elements of a (batch, dim, N, block length) tensor per block when gradients are needed: the backward holds about ten
# such tensors (float32: 10 x 32 MiB), and fewer, longer blocks mean fewer small operations
_GRAD_BLOCK_ELEMENTS = 1 << 23


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


def _step_sizes(
    delta: torch.Tensor, delta_bias: Optional[torch.Tensor], delta_softplus: bool, acc: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``delta + delta_bias`` (before softplus) and the step sizes ``dt``, in ``acc``."""
    raw = delta.to(acc)
    if delta_bias is not None:
        raw = raw + delta_bias.to(acc)[:, None]
    return raw, (F.softplus(raw) if delta_softplus else raw)


class _Rows(NamedTuple):
    """A sequence of ``length`` steps laid out as ``rows`` rows of ``row_len`` steps, ``pad`` steps added at the end
    (with dt = 0: decay 1 and no input, so the state passes unchanged)."""

    length: int
    row_len: int
    rows: int
    pad: int

    @staticmethod
    def of(length: int) -> "_Rows":
        row_len = math.isqrt(length - 1) + 1  # ceil(sqrt(length))
        rows = -(-length // row_len)
        return _Rows(length, row_len, rows, rows * row_len - length)

    def time_major(self, x: torch.Tensor, lead: Tuple[int, ...]) -> torch.Tensor:
        """(..., L) -> (row_len, *lead, rows): each step reads contiguous memory."""
        rows_view = F.pad(x, (0, self.pad)).reshape(*lead, self.rows, self.row_len)
        return rows_view.permute(rows_view.dim() - 1, *range(rows_view.dim() - 1)).contiguous()

    def sequence(self, x: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
        """The inverse of :meth:`time_major`: (row_len, ..., rows) -> (*shape, L)."""
        return x.permute(*range(1, x.dim()), 0).reshape(*shape, self.rows * self.row_len)[..., :self.length]


def _chain_rows(row_end: torch.Tensor, row_decay: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """The true state at each row start from the rows' own end states (swept from zero) and whole-row decays, both
    (..., rows); returns the starts (..., rows) and the state after the last row."""
    starts = []
    for k in range(row_end.shape[-1]):
        starts.append(state)
        state = torch.addcmul(row_end[..., k], row_decay[..., k], state)
    return torch.stack(starts, dim=-1), state


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
    _, dt = _step_sizes(delta, delta_bias, delta_softplus, acc)
    layout = _Rows.of(length)
    channel = (batch, groups, dim_per_group, 1)
    dt_rows = layout.time_major(dt, channel)
    du_rows = layout.time_major(dt * u_acc, channel)
    B_rows = layout.time_major(B.to(acc), (batch, groups, 1, dstate))
    C_rows = layout.time_major(C.to(acc), (batch, groups, 1, dstate))
    A_log2e = A.to(acc).reshape(groups, dim_per_group, dstate, 1) * math.log2(math.e)

    zeros = h0.new_zeros(batch, groups, dim_per_group, dstate, layout.rows)
    row_states, _ = _sweep(dt_rows, du_rows, A_log2e, B_rows, None, zeros)
    row_decay = torch.exp2(dt_rows.sum(dim=0) * A_log2e)  # (batch, G, dim_per_group, N, K)
    starts, state = _chain_rows(row_states, row_decay, h0.reshape(batch, groups, dim_per_group, dstate))
    _, y = _sweep(dt_rows, du_rows, A_log2e, B_rows, C_rows, starts)
    y = y.reshape(batch, dim, layout.rows * layout.row_len)[..., :length]
    if D is not None:
        y = torch.addcmul(y, u_acc, D.to(acc)[:, None])
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y.to(u.dtype), state.reshape(batch, dim, dstate)


def _scan_blocks(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    block_length: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scan block after block: output, last state and the state before every block (n_blocks, batch, dim, N)."""
    batch, dim, length = u.shape
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    state = torch.zeros(batch, dim, A.shape[1], device=u.device, dtype=acc)
    outputs, starts = [], []
    for start in range(0, length, block_length):
        part = slice(start, min(start + block_length, length))
        starts.append(state)
        y, state = _scan_block(u[..., part], delta[..., part], A, B[..., part], C[..., part], D,
                               None if z is None else z[..., part], delta_bias, state, delta_softplus)
        outputs.append(y)
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)), state, torch.stack(starts)


def _block_backward(
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
    dout: torch.Tensor,
    carry: torch.Tensor,
) -> Tuple[torch.Tensor, ...]:
    """
    Gradients of one block (inputs as for :func:`_scan_block`) from ``dout`` (batch, dim, L), the gradient of its
    output, and ``carry`` (batch, dim, N), the gradient reaching its last state from the blocks after it.

    It works on the forward's time-major rows: the states are recomputed row-wise and kept, then the state gradient
    ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}`` runs the same decomposition backwards (rows swept from their ends, then
    chained from the last row with the row decays), and each step's gradients are formed from (batch, dim, N, K) slabs.

    Returns:
        du, ddelta (batch, dim, L), dA (dim, N), dB, dC (batch, G, N, L), dD (dim,) or None, dz (batch, dim, L) or None,
        ddelta_bias (dim,) or None, and the carry for the block before (batch, dim, N), all in the accumulation dtype.
    """
    batch, dim, length = u.shape
    groups, dstate = B.shape[1], B.shape[2]
    per_group = dim // groups
    acc = h0.dtype
    u_acc = u.to(acc)
    raw, dt = _step_sizes(delta, delta_bias, delta_softplus, acc)
    layout = _Rows.of(length)  # padded steps also get no output gradient
    row_len, rows = layout.row_len, layout.rows
    time_major_rows, sequence = layout.time_major, layout.sequence
    channel = (batch, groups, per_group, 1)
    dt_r, u_r = time_major_rows(dt, channel), time_major_rows(u_acc, channel)
    du_r = dt_r * u_r
    B_r = time_major_rows(B.to(acc), (batch, groups, 1, dstate))
    C_r = time_major_rows(C.to(acc), (batch, groups, 1, dstate))
    A_acc = A.to(acc).reshape(groups, per_group, dstate, 1)
    A_log2e = A_acc * math.log2(math.e)
    decay = torch.exp2(dt_r * A_log2e)  # (T, batch, G, per_group, N, K)
    drive = du_r * B_r

    # states: rows from zero, chained with the row decays, then swept again from their true starts (kept)
    row_end = h0.new_zeros(batch, groups, per_group, dstate, rows)
    for step in range(row_len):
        row_end = torch.addcmul(drive[step], decay[step], row_end)
    row_decay = torch.exp2(dt_r.sum(dim=0) * A_log2e)
    start, _ = _chain_rows(row_end, row_decay, h0.reshape(batch, groups, per_group, dstate))
    states = torch.empty_like(decay)
    h = start
    for step in range(row_len):
        h = torch.addcmul(drive[step], decay[step], h, out=states[step])

    # the gate: dz and the gradient of y before gating
    dout_r = time_major_rows(dout.to(acc), channel)
    dz = None
    if z is not None:
        z_r = time_major_rows(z.to(acc), channel)
        y = (states * C_r).sum(dim=4, keepdim=True)
        if D is not None:
            y = torch.addcmul(y, u_r, D.to(acc).reshape(groups, per_group, 1, 1))
        sig = torch.sigmoid(z_r)
        dz = sequence(dout_r * y * sig * (1 + z_r * (1 - sig)), (batch, dim))
        dy_r = dout_r * z_r * sig
    else:
        dy_r = dout_r
    drive_g = C_r * dy_r  # the direct part of the state gradient

    # state gradient: rows swept backwards from zero, chained from the last row, swept again with the true carries
    own = None
    for step in reversed(range(row_len)):
        own = drive_g[step] if own is None else torch.addcmul(drive_g[step], decay[step + 1], own)
    inner_decay = torch.exp2((dt_r.sum(dim=0) - dt_r[0]) * A_log2e)  # decay over steps 1 .. row_len - 1 of a row
    row_carry = [None] * rows
    incoming = carry.reshape(batch, groups, per_group, dstate)
    for k in reversed(range(rows)):
        row_carry[k] = incoming
        incoming = decay[0, ..., k] * torch.addcmul(own[..., k], inner_decay[..., k], incoming)
    g = torch.stack(row_carry, dim=-1)
    ddt, g_B, dB, dC = [None] * row_len, [None] * row_len, [None] * row_len, [None] * row_len
    dA = torch.zeros_like(start)
    for step in reversed(range(row_len)):
        g = drive_g[step] + (g if step == row_len - 1 else decay[step + 1] * g)
        previous = states[step - 1] if step > 0 else start
        w = g * decay[step] * previous  # gradient of dt * A at this step
        ddt[step] = (w * A_acc).sum(dim=3, keepdim=True)
        g_B[step] = (g * B_r[step]).sum(dim=3, keepdim=True)
        dA = torch.addcmul(dA, w, dt_r[step])
        dB[step] = (g * du_r[step]).sum(dim=2)
        dC[step] = (states[step] * dy_r[step]).sum(dim=2)
    g_B = torch.stack(g_B)
    ddt = torch.stack(ddt) + u_r * g_B
    du = dt_r * g_B
    dD = None
    if D is not None:
        du = torch.addcmul(du, dy_r, D.to(acc).reshape(groups, per_group, 1, 1))
        dD = (dy_r * u_r).sum(dim=(0, 1, 4, 5)).reshape(dim)
    ddelta = sequence(ddt, (batch, dim))
    if delta_softplus:
        ddelta = ddelta * torch.sigmoid(raw)
    ddelta_bias = None if delta_bias is None else ddelta.sum(dim=(0, 2))
    carry_out = (decay[0, ..., 0] * torch.addcmul(own[..., 0], inner_decay[..., 0], row_carry[0])).reshape(
        batch, dim, dstate
    )
    return (sequence(du, (batch, dim)), ddelta, dA.sum(dim=(0, 4)).reshape(dim, dstate),
            sequence(torch.stack(dB), (batch, groups, dstate)), sequence(torch.stack(dC), (batch, groups, dstate)),
            dD, dz, ddelta_bias, carry_out)


class _SelectiveScanTorch(torch.autograd.Function):
    """The scan with a hand-written backward: the forward runs the blocks without a graph and keeps each block's start
    state; the backward walks the blocks from the last, recomputes a block's states from its start, runs the reverse
    recurrence of the state gradient ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}`` and forms every input's gradient
    from whole-block tensors (a few large operations instead of a graph of per-step ones)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_length):
        out, state, starts = _scan_blocks(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_length)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, starts)
        ctx.delta_softplus, ctx.block_length = delta_softplus, block_length
        ctx.mark_non_differentiable(state)
        return out, state

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_state):
        u, delta, A, B, C, D, z, delta_bias, starts = ctx.saved_tensors
        length = u.shape[-1]
        parts = []
        carry = torch.zeros_like(starts[0])
        for index in reversed(range(starts.shape[0])):
            part = slice(index * ctx.block_length, min((index + 1) * ctx.block_length, length))
            *grads, carry = _block_backward(
                u[..., part], delta[..., part], A, B[..., part], C[..., part], D,
                None if z is None else z[..., part], delta_bias, starts[index], ctx.delta_softplus,
                grad_out[..., part], carry,
            )
            parts.append(grads)
        parts.reverse()

        def joined(i: int, like: torch.Tensor) -> torch.Tensor:
            return torch.cat([p[i] for p in parts], dim=-1).to(like.dtype)

        def summed(i: int, like: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if like is None else torch.stack([p[i] for p in parts]).sum(dim=0).to(like.dtype)

        return (joined(0, u), joined(1, delta), summed(2, A), joined(3, B), joined(4, C), summed(5, D),
                None if z is None else joined(6, z), summed(7, delta_bias), None, None)


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
            2**23 state elements (the backward recomputes one block at a time).

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
    if needs_grad:
        return _SelectiveScanTorch.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_length)
    out, state, _ = _scan_blocks(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_length)
    return out, state
