# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Selective scan (S6) of Mamba: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023
(arXiv:2312.00752), Algorithm 2 with the zero-order-hold discretisation of Sec. 3.2 as implemented by
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (same argument layout and semantics).
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple, Union

import torch

from shared_networks.ssm.backends import mamba_selective_scan_fn, selective_scan_backend
from shared_networks.ssm.torch_scan import selective_scan_torch

__all__ = ["selective_scan"]

logger = logging.getLogger(__name__)


def _check_shape(name: str, tensor: Optional[torch.Tensor], expected: Tuple[int, ...], description: str) -> None:
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} must be {description} = {expected}, got {tuple(tensor.shape)}.")


def _check_bc(name: str, tensor: torch.Tensor, batch: int, dim: int, dstate: int, length: int) -> int:
    """Validate B or C; return its number of groups G."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}.")
    shape = tuple(tensor.shape)
    expected = (batch, dstate, length)
    message = f"{name} must be (batch, N, L) = {expected} or (batch, G, N, L) with dim % G == 0, got {shape}."
    if tensor.is_complex():
        raise ValueError(f"{name} must be real; complex selective scans are not supported.")
    if shape == expected:
        return 1
    if len(shape) == 4 and shape[0] == batch and shape[2:] == (dstate, length) and shape[1] > 0 and dim % shape[1] == 0:
        return shape[1]
    raise ValueError(message)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """
    Selective state-space scan, numerically equivalent to mamba-ssm's ``selective_scan_fn``.

    With ``delta = softplus(delta + delta_bias)`` (bias and softplus optional), per batch ``b``, channel ``d`` and
    state index ``n``::

        h_t = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t        (h_0 = 0)
        y_t = sum_n C_t[n] * h_t[n] + D[d] * u_t,        out = y * silu(z)  (when z is given)

    Channel ``d`` reads group ``d // (dim // G)`` of grouped ``B``/``C``. The state and all sums are float32;
    the output has ``u``'s dtype. All inputs are differentiable.

    Args:
        u: (batch, dim, L) input.
        delta: (batch, dim, L) step sizes (before ``delta_bias``/softplus).
        A: (dim, N) real state matrix (diagonal per channel), usually negative.
        B: (batch, N, L) or (batch, G, N, L) input projections.
        C: (batch, N, L) or (batch, G, N, L) output projections.
        D: optional (dim,) skip connection.
        z: optional (batch, dim, L) gate.
        delta_bias: optional (dim,) added to ``delta``.
        delta_softplus: apply softplus to ``delta`` (after adding ``delta_bias``).
        return_last_state: also return the final state (batch, dim, N) in float32.
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``; ``None`` reads the environment variable
            ``SHARED_NETWORKS_SCAN_BACKEND`` (default ``"auto"``), see :mod:`shared_networks.ssm.backends`.

    Returns:
        the output (batch, dim, L), or ``(output, last_state)`` when ``return_last_state``.

    Raises:
        ValueError: a tensor has the wrong rank or size (the message names it and the expected shape).
        RuntimeError: the forced backend cannot run.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be (batch, dim, L), got {shape}.")
    batch, dim, length = u.shape
    if batch == 0 or dim == 0 or length == 0:
        raise ValueError(f"u must be (batch, dim, L) with all sizes >= 1, got {tuple(u.shape)}.")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim or A.shape[1] == 0:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A must be (dim, N) = ({dim}, N) with N >= 1, got {shape}.")
    if A.is_complex():
        raise ValueError("A must be real; complex selective scans are not supported.")
    dstate = A.shape[1]
    _check_shape("delta", delta, (batch, dim, length), "(batch, dim, L)")
    groups_b = _check_bc("B", B, batch, dim, dstate, length)
    groups_c = _check_bc("C", C, batch, dim, dstate, length)
    if groups_b != groups_c:
        raise ValueError(
            "B and C must have the same number of groups G (as in mamba-ssm), "
            f"got {tuple(B.shape)} and {tuple(C.shape)}."
        )
    _check_shape("D", D, (dim,), "(dim,)")
    _check_shape("z", z, (batch, dim, length), "(batch, dim, L)")
    _check_shape("delta_bias", delta_bias, (dim,), "(dim,)")
    named = (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias))
    for name, tensor in named:
        if tensor is not None and tensor.device != u.device:
            raise ValueError(f"{name} is on {tensor.device} but u is on {u.device}; all tensors must share a device.")
        if tensor is not None and not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}.")
    if not u.is_floating_point():
        raise ValueError(f"u must be a floating-point tensor, got {u.dtype}.")

    name = selective_scan_backend(u.device, backend)
    logger.debug("selective_scan backend=%s device=%s shape=%s N=%d", name, u.device, tuple(u.shape), dstate)
    if name == "cuda":
        # mamba-ssm's kernel wants delta, z and time-varying B/C in u's dtype and A, D, delta_bias in float32 (it
        # checks, it does not cast), and unit stride along L; grouped B/C (batch, G, N, L) are native there.
        def as_input(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(u.dtype).contiguous()

        def as_weight(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(torch.float32).contiguous()

        return mamba_selective_scan_fn()(
            u.contiguous(),
            as_input(delta),
            as_weight(A),
            as_input(B),
            as_input(C),
            D=as_weight(D),
            z=as_input(z),
            delta_bias=as_weight(delta_bias),
            delta_softplus=delta_softplus,
            return_last_state=return_last_state,
        )
    B4 = B if B.dim() == 4 else B.unsqueeze(1)
    C4 = C if C.dim() == 4 else C.unsqueeze(1)
    if name == "cpp":
        from shared_networks.ssm.cpp_scan import selective_scan_cpp

        out, last_state = selective_scan_cpp(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus)
    else:
        out, last_state = selective_scan_torch(u, delta, A, B4, C4, D, z, delta_bias, delta_softplus)
    return (out, last_state) if return_last_state else out
