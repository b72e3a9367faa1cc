"""
Float64 oracles for the selective-scan tests: a plain sequential loop over time following mamba-ssm's
``selective_scan_ref`` (Gu & Dao, 2023, Algorithm 2) and a direct causal convolution. Tests only.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch


def selective_scan_reference(
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
    """Sequential scan in float64; differentiable. Returns (out, last_state), both float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.nn.functional.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    groups = B.shape[1]
    # channel d reads group d // (dim // G)
    B = B.repeat_interleave(dim // groups, dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(dim // groups, dim=1)
    # all decays and inputs at once (as mamba-ssm's selective_scan_ref), then the plain sequential recurrence
    decay = torch.exp(delta[..., None] * A[:, None, :])  # (batch, dim, L, N)
    drive = (delta * u)[..., None] * B.transpose(2, 3)  # (batch, dim, L, N)
    state = u.new_zeros(batch, dim, A.shape[1])
    outputs = []
    for t in range(length):
        state = decay[:, :, t] * state + drive[:, :, t]
        outputs.append((state * C[..., t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * torch.nn.functional.silu(z.double())
    return y, state


def causal_conv1d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, activation: Optional[str] = None
) -> torch.Tensor:
    """Causal depthwise convolution as an explicit sum over taps, in float64."""
    x, weight = x.double(), weight.double()
    width = weight.shape[1]
    length = x.shape[-1]
    out = torch.zeros_like(x)
    for k in range(width):
        shift = width - 1 - k  # tap k multiplies x[t - shift]
        if shift < length:
            out[..., shift:] += weight[:, k, None] * x[..., : length - shift]
    if bias is not None:
        out = out + bias.double()[:, None]
    if activation in ("silu", "swish"):
        out = torch.nn.functional.silu(out)
    return out


def selective_scan_reference_numpy(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: Optional[np.ndarray] = None,
    z: Optional[np.ndarray] = None,
    delta_bias: Optional[np.ndarray] = None,
    delta_softplus: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """
    The same recurrence in float64 numpy, forward only, for long sequences: the per-step decays and inputs are
    computed for all steps at once and only the two-operation state update runs in the Python loop.
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
