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

oneDNN's direct 3D convolutions already run at about this CPU's matrix-product rate, so :class:`WinogradConv3d` runs
the 3x3x3 ones with fewer multiplications instead: Winograd's F(3x3x3, 3x3x3) (125 products per 27 outputs and input
channel instead of 729) or F(2x2x2, 3x3x3) (64 per 8 instead of 216), on the same channels-last tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock

from shared_networks.ssm.cpu_inference import (
    conv3d_winograd_channels_last,
    inference_kernels_apply,
    instance_norm_channels_last,
    instance_norm_channels_last_,
    winograd_weight_transform,
)

__all__ = [
    "ChannelsLastInstanceNorm2d",
    "ChannelsLastInstanceNorm3d",
    "use_channels_last_instance_norms",
    "IN_PLACE_INSTANCE_NORMS",
    "WinogradConv3d",
    "use_winograd_convolutions",
    "WINOGRAD_MAX_CHANNEL_PRODUCT",
    "WINOGRAD_F3_MAX_CHANNEL_PRODUCT",
    "channels_last_applies",
    "to_channels_last",
]


def _instance_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                   in_place: bool) -> torch.Tensor:
    if not torch.jit.is_scripting():
        if x.dim() in (4, 5) and inference_kernels_apply(x, weight, bias):
            # a contiguous input (from one of the small convolutions ATen runs without oneDNN) is converted, so the
            # layers after it run channels-last again
            x = to_channels_last(x)
            if in_place:
                instance_norm_channels_last_(x, weight, bias, eps)
                return x
            return instance_norm_channels_last(x, weight, bias, eps)
    # without running statistics InstanceNorm always normalises with the input's own statistics
    return F.instance_norm(x, None, None, weight, bias, True, 0.0, eps)


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` without running statistics (the only kind :func:`use_channels_last_instance_norms`
    installs) that, when no gradient is wanted on the CPU, normalises into a channels-last result without converting
    a channels-last input to the contiguous format; elsewhere it is ``F.instance_norm``. Same arguments, parameters,
    state dict and values as ``nn.InstanceNorm3d``.

    With ``normalise_in_place = True`` that result is written over the input (no new buffer of its size): only for a
    norm whose caller holds the input's only reference, such as a convolution's fresh output.
    """

    normalise_in_place = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _instance_norm(x, self.weight, self.bias, self.eps, self.normalise_in_place)


class ChannelsLastInstanceNorm2d(nn.InstanceNorm2d):
    """The 2D counterpart of :class:`ChannelsLastInstanceNorm3d`."""

    normalise_in_place = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _instance_norm(x, self.weight, self.bias, self.eps, self.normalise_in_place)


# The norms (attribute names, by the exact type of the block holding them) that MONAI's U-Net blocks feed with a
# convolution's fresh output and nothing else reads: they may normalise in place. At SegMamba's full resolution each
# spares a new 400 MB buffer, whose first touch costs a page fault per 4 KB.
IN_PLACE_INSTANCE_NORMS: dict[type, tuple[str, ...]] = {
    UnetResBlock: ("norm1", "norm2", "norm3"),
    UnetBasicBlock: ("norm1", "norm2"),
}


def use_channels_last_instance_norms(
    module: nn.Module, in_place: Mapping[type, Sequence[str]] = IN_PLACE_INSTANCE_NORMS
) -> nn.Module:
    """Replace, in place, every ``nn.InstanceNorm2d`` / ``nn.InstanceNorm3d`` inside ``module`` that keeps no running
    statistics (MONAI's and PyTorch's default) by its channels-last aware counterpart with the same ``eps`` and the
    same affine parameters (the same ``Parameter`` objects), so state dicts and outputs do not change.

    Args:
        module: the network.
        in_place: attribute names of the norms that may normalise in place, by the exact type of the module holding
            them (a subclass may change the forward, so it is not matched): only norms that the holder's forward
            feeds with a tensor nothing else reads. Defaults to those of MONAI's ``UnetResBlock`` and
            ``UnetBasicBlock``.

    Returns:
        ``module``.
    """
    kinds = {nn.InstanceNorm3d: ChannelsLastInstanceNorm3d, nn.InstanceNorm2d: ChannelsLastInstanceNorm2d}
    for parent in list(module.modules()):
        in_place_names = in_place.get(type(parent), ())
        for name, child in list(parent.named_children()):
            replacement = kinds.get(type(child))
            if replacement is None or child.track_running_stats:
                continue
            norm = replacement(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine)
            if child.affine:
                norm.weight, norm.bias = child.weight, child.bias
            norm.normalise_in_place = name in in_place_names
            norm.train(child.training)
            setattr(parent, name, norm)
    return module


# The transformed weights are 125/27 (F(3)) or 64/27 (F(2)) times the size of the weights and stay cached, and the
# wide convolutions of a network's deepest stages work on few voxels, so the widest keep oneDNN's direct algorithm and
# the next ones use F(2), whose weights are half as large: on a 16^3 map it is as fast as F(3). In SegMamba at 128^3
# (2 cores, batch 2): 768 -> 384 at 16^3 takes 0.97 s direct, 0.56 s by F(2), 0.49 s by F(3); 384 -> 384 0.23 /
# 0.14 / 0.14 s (batch 1); 768 -> 768 at 8^3 0.28 / 0.18 / 0.20 s. F(3) up to 192 x 384 keeps 196 MB of weights, F(2)
# up to 768 x 384 another 189 MB; the 768 x 768 convolution (151 MB by F(2)) stays direct.
# in_channels x out_channels up to which a convolution runs by Winograd (larger: oneDNN's direct algorithm)
WINOGRAD_MAX_CHANNEL_PRODUCT = 768 * 384
# in_channels x out_channels above which the convolution runs by F(2) whatever output tile was asked for
WINOGRAD_F3_MAX_CHANNEL_PRODUCT = 192 * 384


class WinogradConv3d(nn.Conv3d):
    """``nn.Conv3d`` for 3x3x3 kernels, stride 1, zero padding 1, no dilation or groups (the only kind
    :func:`use_winograd_convolutions` installs) that, when no gradient is wanted on the CPU and its input is a
    channels-last float32 volume, convolves by Winograd's F(m x m x m, 3x3x3) (Lavin & Gray, CVPR 2016),
    ``m = winograd_output_tile`` (3 by default, or 2), with weights transformed once per weight version; elsewhere it
    is ``nn.Conv3d``. Same arguments, parameters and state dict; the values differ from the direct convolution's by
    float32 rounding only (about 7e-6 of the largest output for m = 3, 5e-7 for m = 2)."""

    winograd_output_tile = 3
    _winograd_cache: Optional[tuple] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if (
                x.dim() == 5
                and x.dtype == torch.float32
                and x.is_contiguous(memory_format=torch.channels_last_3d)
                and inference_kernels_apply(x, self.weight, self.bias)
            ):
                return conv3d_winograd_channels_last(x, self._weight_transform(), self.bias)
        return self._conv_forward(x, self.weight, self.bias)

    def _weight_transform(self) -> torch.Tensor:
        # keyed on the weight's storage and version: loading a state dict or an optimiser step changes the version
        key = (self.weight.data_ptr(), self.weight._version, self.winograd_output_tile)
        if self._winograd_cache is None or self._winograd_cache[0] != key:
            self._winograd_cache = (key, winograd_weight_transform(self.weight, self.winograd_output_tile))
        return self._winograd_cache[1]


def _winograd_applies(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv3d
        and conv.kernel_size == (3, 3, 3)
        and conv.stride == (1, 1, 1)
        and conv.padding == (1, 1, 1)
        and conv.dilation == (1, 1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.out_channels % 8 == 0
        and conv.in_channels * conv.out_channels <= WINOGRAD_MAX_CHANNEL_PRODUCT
    )


def use_winograd_convolutions(module: nn.Module, output_tile: int = 3) -> nn.Module:
    """Replace, in place, every ``nn.Conv3d`` inside ``module`` that :class:`WinogradConv3d` can run (3x3x3, stride 1,
    zero padding 1, no dilation or groups, out_channels a multiple of 8, in_channels x out_channels at most
    ``WINOGRAD_MAX_CHANNEL_PRODUCT``) by a :class:`WinogradConv3d` holding the same ``Parameter`` objects, so state
    dicts do not change.

    Args:
        module: the network.
        output_tile: m of Winograd's F(m x m x m, 3x3x3): 3 (fewer multiplications) or 2 (about 15x smaller float32
            error). Convolutions wider than ``WINOGRAD_F3_MAX_CHANNEL_PRODUCT`` (in x out channels) take 2 whatever
            is asked: their transformed weights are half as large, at the same speed on the small maps they work on.

    Returns:
        ``module``.
    """
    if output_tile not in (2, 3):
        raise ValueError(f"output_tile must be 2 or 3, got {output_tile!r}")
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not _winograd_applies(child):
                continue
            conv = torch.nn.utils.skip_init(
                WinogradConv3d, child.in_channels, child.out_channels, 3, padding=1, bias=child.bias is not None,
                device=child.weight.device, dtype=child.weight.dtype,
            )
            conv.weight, conv.bias = child.weight, child.bias
            wide = child.in_channels * child.out_channels > WINOGRAD_F3_MAX_CHANNEL_PRODUCT
            conv.winograd_output_tile = 2 if wide else output_tile
            conv.train(child.training)
            setattr(parent, name, conv)
    return module


def channels_last_applies(x: torch.Tensor, module: nn.Module) -> bool:
    """Whether ``module`` should run ``x`` channels-last: a batched 4D or 5D CPU input on which the forward-only CPU
    kernels apply (see :func:`shared_networks.ssm.cpu_inference.inference_kernels_apply`: no gradient wanted, no
    graph being recorded)."""
    return x.dim() in (4, 5) and inference_kernels_apply(x, *module.parameters())


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, channels, *spatial) in the channels-last memory format of its rank (a view when it already is)."""
    return x.contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
