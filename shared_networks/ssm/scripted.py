# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
The selective scan and the causal conv1d as TorchScript compiles them inside a scripted network
(``torch.jit.script``, ``monai.bundle ckpt_export``).

TorchScript cannot run the Python dispatch of :func:`shared_networks.ssm.selective_scan`, so a scripted network calls
operators instead:

- on CPU, the C++ kernel's own operator ``torch.ops.shared_networks.selective_scan_cpu_forward`` (its backward too);
- on any other device, ``torch.ops.shared_networks.selective_scan``, an operator that runs that Python dispatch (the
  mamba-ssm CUDA kernel, else the PyTorch backend) and differentiates by recomputing the scan with autograd.

The convolution runs as ``F.conv1d``. A saved TorchScript network needs ``import shared_networks`` (which registers
the operators) before ``torch.jit.load``; on CPU it needs the C++ kernel to build, as its operator is the only scan
a scripted network can call there.
"""

from typing import List, Optional

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d_silu_scripted", "selective_scan_scripted", "selective_scan_dispatch_op"]


def causal_conv1d_silu_scripted(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``causal_conv1d(x, weight, bias, activation="silu")`` of the ``"torch"`` backend: x (batch, dim, L), weight
    (dim, width), bias (dim,)."""
    width = weight.shape[1]
    if bias is not None:
        bias = bias.to(x.dtype)
    out = F.conv1d(F.pad(x, [width - 1, 0]), weight.to(x.dtype).unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(out)


def _contiguous_as(tensor: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    if tensor is None:
        return None
    return tensor.to(dtype).contiguous()


def selective_scan_scripted(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
) -> torch.Tensor:
    """``selective_scan(...)`` (output only) through an operator (see the module docstring); ``B``/``C`` (batch, N,
    L) or grouped (batch, G, N, L), the other shapes as there. On CPU the casts are those of
    :func:`shared_networks.ssm.cpp_scan.selective_scan_cpp`."""
    if u.device.type != "cpu":
        return torch.ops.shared_networks.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    save_checkpoints = False
    if torch.is_grad_enabled():
        for tensor in (u, delta, A, B, C, D, z, delta_bias):
            if tensor is not None and tensor.requires_grad:
                save_checkpoints = True
    out, _, _ = torch.ops.shared_networks.selective_scan_cpu_forward(
        u.contiguous(), delta.to(u.dtype).contiguous(), A.to(acc).contiguous(), B.to(acc).contiguous(),
        C.to(acc).contiguous(), _contiguous_as(D, acc), _contiguous_as(z, u.dtype), _contiguous_as(delta_bias, acc),
        delta_softplus, save_checkpoints,
    )
    return out


@torch.library.custom_op("shared_networks::selective_scan", mutates_args=())
def selective_scan_dispatch_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    z: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
) -> torch.Tensor:
    """:func:`shared_networks.ssm.selective_scan` (output only, backend chosen as there) as an operator."""
    from shared_networks.ssm.selective_scan import selective_scan

    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@selective_scan_dispatch_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return torch.empty_like(u)


def _setup_context(ctx, inputs, output) -> None:
    *tensors, delta_softplus = inputs
    ctx.present = tuple(t is not None for t in tensors)
    ctx.save_for_backward(*(t for t in tensors if t is not None))
    ctx.delta_softplus = delta_softplus


def _backward(ctx, grad_output: torch.Tensor):
    """Recompute the scan with autograd and differentiate it (mamba-ssm's kernels and the PyTorch backend each have
    their own backward; this reaches it)."""
    from shared_networks.ssm.selective_scan import selective_scan

    saved = iter(ctx.saved_tensors)
    tensors: List[Optional[torch.Tensor]] = [next(saved) if present else None for present in ctx.present]
    needs = ctx.needs_input_grad[: len(tensors)]
    inputs = [None if t is None else t.detach().requires_grad_(need) for t, need in zip(tensors, needs)]
    with torch.enable_grad():
        out = selective_scan(*inputs, delta_softplus=ctx.delta_softplus)
    wanted = [t for t, need in zip(inputs, needs) if t is not None and need]
    grads = iter(torch.autograd.grad(out, wanted, grad_output, allow_unused=True) if wanted else ())
    return (*(next(grads) if t is not None and need else None for t, need in zip(inputs, needs)), None)


selective_scan_dispatch_op.register_autograd(_backward, setup_context=_setup_context)
