# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Causal depthwise 1D convolution as in Mamba's block (Gu & Dao, 2023, Sec. 3.4 / Fig. 3) with the layout of
``causal_conv1d.causal_conv1d_fn`` (Tri Dao's causal-conv1d package).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from shared_networks.ssm.backends import causal_conv1d_backend, causal_conv1d_cuda_fn

__all__ = ["causal_conv1d"]

logger = logging.getLogger(__name__)

_ACTIVATIONS = (None, "silu", "swish")


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """
    ``out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k])`` with ``x`` zero for
    ``t < 0``: each output step sees only the current and the ``width - 1`` previous inputs of its own channel.

    Args:
        x: (batch, dim, L) input.
        weight: (dim, width) depthwise filters.
        bias: optional (dim,) bias.
        activation: ``None`` or ``"silu"`` (``"swish"`` is accepted as a synonym, as in causal-conv1d).
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``; ``None`` reads ``SHARED_NETWORKS_SCAN_BACKEND``.
            Only ``"cuda"`` (``causal_conv1d_fn``) has a dedicated kernel; the others use ``F.conv1d``.

    Returns:
        (batch, dim, L) tensor with ``x``'s dtype.

    Raises:
        ValueError: wrong shapes or an unknown activation.
        RuntimeError: ``"cuda"`` was forced but cannot run.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be (batch, dim, L), got {shape}.")
    dim = x.shape[1]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != dim or weight.shape[1] < 1:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"weight must be (dim, width) = ({dim}, width) with width >= 1, got {shape}.")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must be (dim,) = ({dim},), got {tuple(bias.shape)}.")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device} but x is on {x.device}; all tensors must share a device.")

    name = causal_conv1d_backend(x.device, backend)
    logger.debug("causal_conv1d backend=%s device=%s shape=%s", name, x.device, tuple(x.shape))
    if name == "cuda":
        return causal_conv1d_cuda_fn()(x, weight, bias, activation=activation)
    width = weight.shape[1]
    weight = weight.to(x.dtype).unsqueeze(1)
    bias = None if bias is None else bias.to(x.dtype)
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight, bias, groups=dim)
    return F.silu(out) if activation is not None else out
