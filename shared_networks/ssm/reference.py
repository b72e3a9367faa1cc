# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Reference operators: the plain sequential selective scan and the direct causal depthwise convolution, written for
clarity rather than speed (like ``selective_scan_ref`` beside mamba-ssm's fused op and ``causal_conv1d_ref`` in
causal-conv1d). They are the oracle of the tests and the baseline of the benchmarks; the networks never call them.

Both accept float64 inputs and then compute in float64 throughout, which is what the tests compare the fast
backends against. :func:`selective_scan_ref_numpy` is the same recurrence in numpy, forward only, for sequences long
enough that the torch loop would be slow.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["selective_scan_ref", "selective_scan_ref_numpy", "selective_scan_ref_output", "causal_conv1d_ref"]


def _accumulation_dtype(dtype: torch.dtype | None, u: torch.Tensor) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Selective scan (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023, Alg. 2) as
    a Python loop over time, with the argument layout of :func:`shared_networks.ssm.selective_scan`. The decays
    ``exp(delta * A)`` and the inputs ``delta * B * u`` of all steps are formed first as (batch, dim, L, N) tensors,
    as mamba-ssm's ``selective_scan_ref`` does, so the memory grows with L * N. Differentiable by autograd.

    Args:
        u, delta: (batch, dim, L).
        A: (dim, N).
        B, C: (batch, N, L) or grouped (batch, G, N, L); channel ``d`` reads group ``d // (dim // G)``.
        D, delta_bias: optional (dim,).
        z: optional (batch, dim, L) gate.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        dtype: the dtype every input is cast to and the loop runs in; default float32, or float64 for float64 ``u``.

    Returns:
        the output (batch, dim, L) and the last state (batch, dim, N), both in ``dtype``.
    """
    acc = _accumulation_dtype(dtype, u)
    u, delta, A, B, C = (t.to(acc) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.to(acc)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    decay = torch.exp(delta[..., None] * A[:, None, :])  # (batch, dim, L, N)
    drive = (delta * u)[..., None] * B.transpose(2, 3)  # (batch, dim, L, N)
    state = u.new_zeros(batch, dim, A.shape[1])
    outputs = []
    for t in range(length):
        state = decay[:, :, t] * state + drive[:, :, t]
        outputs.append((state * C[..., t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.to(acc)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(acc))
    return y, state


def selective_scan_ref_output(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, **_):
    """:func:`selective_scan_ref` in the call signature of :func:`shared_networks.ssm.selective_scan` (output only, in
    ``u``'s dtype), so benchmarks can put the sequential scan in place of the fast one inside a layer."""
    out, _ = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return out.to(u.dtype)


def selective_scan_ref_numpy(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray | None = None,
    z: np.ndarray | None = None,
    delta_bias: np.ndarray | None = None,
    delta_softplus: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """
    :func:`selective_scan_ref` in float64 numpy, forward only: only the two-operation state update runs in the
    Python loop, so sequences of 10^5 steps take seconds. Same arguments (as arrays); returns (output, last state).
    """
    u, delta, A, B, C = (np.asarray(t, dtype=np.float64) for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, dtype=np.float64)[:, None]
    if delta_softplus:
        delta = np.where(delta > 20.0, delta, np.log1p(np.exp(np.minimum(delta, 20.0))))
    if B.ndim == 3:
        B, C = B[:, None], C[:, None]
    B = np.repeat(B, dim // B.shape[1], axis=1)  # (batch, dim, N, L)
    C = np.repeat(C, dim // C.shape[1], axis=1)
    decay = np.exp(np.einsum("bdl,dn->bdln", delta, A))
    drive = np.einsum("bdl,bdnl->bdln", delta * u, B)
    states = np.empty_like(decay)
    state = np.zeros((batch, dim, A.shape[1]))
    for t in range(length):
        state = decay[:, :, t] * state + drive[:, :, t]
        states[:, :, t] = state
    y = np.einsum("bdln,bdnl->bdl", states, C)
    if D is not None:
        y = y + np.asarray(D, dtype=np.float64)[:, None] * u
    if z is not None:
        z = np.asarray(z, dtype=np.float64)
        y = y * z / (1.0 + np.exp(-z))
    return y, state


def causal_conv1d_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """
    Causal depthwise convolution as an explicit sum over the taps: ``out[b, d, t] = bias[d] + sum_k weight[d, k] *
    x[b, d, t - (width - 1) + k]`` with ``x`` zero before the sequence, then SiLU for ``activation="silu"``.

    Args:
        x: (batch, dim, L); weight: (dim, width); bias: optional (dim,).
        activation: ``None``, ``"silu"`` or ``"swish"``.
        dtype: computation and output dtype; default float32, or float64 for float64 ``x``.
    """
    acc = _accumulation_dtype(dtype, x)
    x, weight = x.to(acc), weight.to(acc)
    width, length = weight.shape[1], x.shape[-1]
    out = torch.zeros_like(x)
    for k in range(width):
        shift = width - 1 - k  # tap k multiplies x[t - shift]
        if shift < length:
            out[..., shift:] += weight[:, k, None] * x[..., : length - shift]
    if bias is not None:
        out = out + bias.to(acc)[:, None]
    if activation in ("silu", "swish"):
        out = F.silu(out)
    return out
