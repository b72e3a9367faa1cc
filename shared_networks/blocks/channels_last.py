# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Channels-last execution of convolutional networks on the CPU.

oneDNN runs 3D convolutions on channels-last tensors (``torch.channels_last_3d``) markedly faster than on contiguous
ones, and a channels-last feature map is already the token-major ``(batch, L, channels)`` layout of a Mamba layer.
ATen's instance norm, however, converts a channels-last input to the contiguous format and back, which costs more
than the convolutions gain; :class:`ChannelsLastInstanceNorm3d` (and 2d) normalise it in place of its layout.
A network converts its input with :func:`to_channels_last` when :func:`channels_last_applies`; every module that
follows keeps the layout (convolutions, instance norms, elementwise operations, the Mamba layers' token view).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_networks.ssm.cpu_inference import inference_kernels_apply, instance_norm_channels_last

__all__ = [
    "ChannelsLastInstanceNorm2d",
    "ChannelsLastInstanceNorm3d",
    "use_channels_last_instance_norms",
    "channels_last_applies",
    "to_channels_last",
]


def _instance_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float
                   ) -> torch.Tensor:
    if not torch.jit.is_scripting():
        if x.dim() in (4, 5) and inference_kernels_apply(x, weight, bias):
            # a contiguous input (from one of the small convolutions ATen runs without oneDNN) is converted, so the
            # layers after it run channels-last again
            return instance_norm_channels_last(to_channels_last(x), weight, bias, eps)
    # without running statistics InstanceNorm always normalises with the input's own statistics
    return F.instance_norm(x, None, None, weight, bias, True, 0.0, eps)


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` without running statistics (the only kind :func:`use_channels_last_instance_norms`
    installs) that, when no gradient is wanted on the CPU, normalises into a channels-last result without converting
    a channels-last input to the contiguous format; elsewhere it is ``F.instance_norm``. Same arguments, parameters,
    state dict and values as ``nn.InstanceNorm3d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _instance_norm(x, self.weight, self.bias, self.eps)


class ChannelsLastInstanceNorm2d(nn.InstanceNorm2d):
    """The 2D counterpart of :class:`ChannelsLastInstanceNorm3d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _instance_norm(x, self.weight, self.bias, self.eps)


def use_channels_last_instance_norms(module: nn.Module) -> nn.Module:
    """Replace, in place, every ``nn.InstanceNorm2d`` / ``nn.InstanceNorm3d`` inside ``module`` that keeps no running
    statistics (MONAI's and PyTorch's default) by its channels-last aware counterpart with the same ``eps`` and the
    same affine parameters (the same ``Parameter`` objects), so state dicts and outputs do not change.

    Returns:
        ``module``.
    """
    kinds = {nn.InstanceNorm3d: ChannelsLastInstanceNorm3d, nn.InstanceNorm2d: ChannelsLastInstanceNorm2d}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            replacement = kinds.get(type(child))
            if replacement is None or child.track_running_stats:
                continue
            norm = replacement(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine)
            if child.affine:
                norm.weight, norm.bias = child.weight, child.bias
            norm.train(child.training)
            setattr(parent, name, norm)
    return module


def channels_last_applies(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether ``module`` should run ``x`` channels-last: a batched 4D or 5D CPU input on which the forward-only CPU
    kernels apply (see :func:`shared_networks.ssm.cpu_inference.inference_kernels_apply`: no gradient wanted, no
    graph being recorded)."""
    return x.dim() in (4, 5) and inference_kernels_apply(x, *module.parameters())


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, channels, *spatial) in the channels-last memory format of its rank (a view when it already is)."""
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
