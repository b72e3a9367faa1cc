# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""U-Mamba networks: ``UMambaBot`` (one U-Mamba layer at the bottleneck) and ``UMambaEnc`` (one after every encoder
stage), and :func:`umamba_from_plans`, which builds either from an nnU-Net v2 plans file.

Ma, Li, Wang: "U-Mamba: Enhancing Long-range Dependency for Biomedical Image Segmentation", arXiv:2401.04722,
https://arxiv.org/abs/2401.04722. Authors' code: https://github.com/bowang-lab/U-Mamba (a fork of nnU-Net v2).

This module follows the **January-2024 release** (commit ``92a741a``, ``umamba/nnunetv2/nets/UMambaBot.py`` and
``UMambaEnc.py``), the architecture behind the published parameter counts: with the stock 2D AbdomenMR plan it has
63,344,180 (Bot) and 67,333,428 (Enc) parameters, the 63 M / 67 M of the Swin-UMamba papers' comparison. The March-2024
code at the repository's HEAD (``UMambaBot_2d.py`` ... ``UMambaEnc_3d.py``) is a different network (a custom first
residual block per stage, fewer blocks in the deep stages, nearest upsampling with 1x1 convolutions instead of
transposed convolutions, Mamba on alternate stages and channel tokens in 2D Enc): 47.5 M / 47.0 M parameters for the
same plan, and its checkpoints do not load here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import Any

import torch
import torch.nn as nn

from shared_networks.blocks.mamba import Mamba
from shared_networks.blocks.umamba_blocks import (
    UMambaBasicBlockD,
    UMambaResidualDecoder,
    UMambaResidualEncoder,
    in_full_precision,
    mamba_over_spatial_tokens,
    per_axis,
)
from shared_networks.utils import check_network_input, look_up_argument

__all__ = ["UMambaBot", "UMambaEnc", "umamba_from_plans"]

_AXES = {2: "HW", 3: "DHW"}
# the stock nnU-Net v2 2D plan of the paper's AbdomenMR dataset (320 x 320 patches, 7 stages)
_FEATURES = (32, 64, 128, 256, 512, 512, 512)
_STRIDES = (1, 2, 2, 2, 2, 2, 2)


def _per_stage(name: str, value: int | Sequence[Any], n_stages: int) -> list[Any]:
    """One entry per stage: an int is repeated, a sequence must have ``n_stages`` entries."""
    if isinstance(value, int):
        return [value] * n_stages
    value = list(value)
    if len(value) != n_stages:
        raise ValueError(f"{name} needs {n_stages} entries, got {len(value)}: {value}.")
    return value


def _init_he(module: nn.Module) -> None:
    """nnU-Net's ``InitWeights_He(1e-2)``: Kaiming-normal weights (negative slope 0.01) and zero biases for every 2D /
    3D convolution and transposed convolution; the Mamba layers' Linear / Conv1d keep their own initialisation."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _zero_last_norm(module: nn.Module) -> None:
    """DNA's ``init_last_bn_before_add_to_0``: the last InstanceNorm of a residual block starts at weight 0 and bias 0,
    so the block starts as its skip."""
    if isinstance(module, UMambaBasicBlockD):
        nn.init.zeros_(module.conv2.norm.weight)
        nn.init.zeros_(module.conv2.norm.bias)


class _UMamba(nn.Module):
    """The part both variants share: argument checks, encoder, decoder, initialisation and the input check."""

    _name = "UMamba"
    __constants__ = ["_name"]  # TorchScript reads class attributes only as constants

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        features_per_stage: Sequence[int],
        kernel_sizes: int | Sequence[int | Sequence[int]],
        strides: Sequence[int | Sequence[int]],
        n_blocks_per_stage: int | Sequence[int],
        n_conv_per_stage_decoder: int | Sequence[int],
        deep_supervision: bool,
        conv_bias: bool,
        encoder_mamba_layers: bool,
    ) -> None:
        super().__init__()
        self.axes = look_up_argument("spatial_dims", spatial_dims, _AXES)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        n_stages = len(features_per_stage)
        if n_stages < 2:
            raise ValueError(f"{self._name} needs at least 2 stages (features_per_stage entries), got {n_stages}.")
        kernel_sizes = _per_stage("kernel_sizes", kernel_sizes, n_stages)
        strides = _per_stage("strides", strides, n_stages)
        strides = [per_axis(s, spatial_dims, f"strides[{i}]") for i, s in enumerate(strides)]
        kernel_sizes = [per_axis(k, spatial_dims, f"kernel_sizes[{i}]") for i, k in enumerate(kernel_sizes)]
        self.divisors = tuple(math.prod(axis) for axis in zip(*strides))
        self.encoder = UMambaResidualEncoder(
            spatial_dims, in_channels, features_per_stage, kernel_sizes, strides,
            _per_stage("n_blocks_per_stage", n_blocks_per_stage, n_stages), conv_bias,
            mamba_layers=encoder_mamba_layers,
        )
        self._build_bottleneck(features_per_stage[-1])
        self.decoder = UMambaResidualDecoder(
            spatial_dims, self.encoder, out_channels,
            _per_stage("n_conv_per_stage_decoder", n_conv_per_stage_decoder, n_stages - 1), deep_supervision,
        )
        for module in self.modules():
            _init_he(module)

    def _build_bottleneck(self, channels: int) -> None:
        """Add the variant's bottleneck modules (none by default)."""

    def _bottleneck(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        return skips

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.decoder.deep_supervision = bool(value)

    def _check_input(self, x: torch.Tensor) -> None:
        check_network_input(self._name, x, self.in_channels, self.axes, 1)
        sizes = list(x.shape[2:])
        divisible = True
        for index, divisor in enumerate(self.divisors):
            divisible = divisible and sizes[index] % divisor == 0
        if not divisible:
            raise ValueError(
                f"{self._name} needs spatial sizes {self.axes} divisible by {self.divisors} (the product of the "
                f"strides per axis), got {sizes}. Crop or pad the input, or use a sliding-window inferer with such "
                "a window (e.g. the plan's patch size)."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self._check_input(x)
        return self.decoder(self._bottleneck(self.encoder(x)))


class UMambaBot(_UMamba):
    """U-Mamba_Bot as in the January-2024 release (``UMambaBot``): nnU-Net's residual encoder (DNA
    ``ResidualEncoder``), one U-Mamba layer on the bottleneck (the deepest encoder output, replaced by LayerNorm ->
    Mamba over its flattened positions, no residual) and the residual decoder with transposed convolutions. He
    initialisation as nnU-Net's ``InitWeights_He(1e-2)``.

    State-dict keys as released: ``encoder.stem.convs.0.*``, ``encoder.stages.S.blocks.B.{conv1, conv2, skip}.*``,
    ``ln.*`` and ``mamba.*`` (the bottleneck LayerNorm and Mamba, direct attributes), ``decoder.transpconvs.S.*``,
    ``decoder.stages.S.blocks.B.*``, ``decoder.seg_layers.S.*``, and the encoder again under ``decoder.encoder.*``.
    63,344,180 parameters for the 2D AbdomenMR plan (the defaults, 1 -> 14).

    The release runs the bottleneck Mamba of this variant under AMP; here it runs in float32 under autocast, as the
    release's ``MambaLayer`` of U-Mamba_Enc does (no change to the parameters or the float32 results).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: classes, background included (nnU-Net's segmentation heads); the outputs are logits.
        features_per_stage: channels of each encoder stage; their number is the number of stages (nnU-Net:
            min(32 * 2**i, 512) in 2D, min(32 * 2**i, 320) in 3D).
        kernel_sizes: per stage, a kernel size per axis or one int; or one int for every stage.
        strides: per stage, a stride per axis or one int (the first is 1 in nnU-Net's plans). Every spatial size of
            the input must be divisible by the product of the strides of its axis.
        n_blocks_per_stage: residual blocks per encoder stage (nnU-Net's ``n_conv_per_stage_encoder``), one int or
            one per stage.
        n_conv_per_stage_decoder: residual blocks per decoder stage, lowest resolution first, one int or one per
            decoder stage (stages - 1).
        deep_supervision: in training mode, return the logits of all stages - 1 heads, full resolution first (the
            resolution of encoder stage i at position i); in eval mode, and without it, only the full-resolution
            logits. (The release returns the list whenever the flag is set; nnU-Net switches it off to predict.)
        conv_bias: whether the k x k convolutions and the transposed convolutions have a bias (True in nnU-Net's
            plans).
    """

    _name = "UMambaBot"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 14,
        features_per_stage: Sequence[int] = _FEATURES,
        kernel_sizes: int | Sequence[int | Sequence[int]] = 3,
        strides: Sequence[int | Sequence[int]] = _STRIDES,
        n_blocks_per_stage: int | Sequence[int] = 2,
        n_conv_per_stage_decoder: int | Sequence[int] = 2,
        deep_supervision: bool = False,
        conv_bias: bool = True,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, out_channels, features_per_stage, kernel_sizes, strides, n_blocks_per_stage,
            n_conv_per_stage_decoder, deep_supervision, conv_bias, encoder_mamba_layers=False,
        )

    def _build_bottleneck(self, channels: int) -> None:
        self.ln = nn.LayerNorm(channels)
        self.mamba = Mamba(d_model=channels, d_state=16, d_conv=4, expand=2)

    def _bottleneck(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        if torch.jit.is_scripting():
            # as in UMambaLayer.forward
            x = in_full_precision(skips[-1])
            return skips[:-1] + [self.mamba(self.ln(x.flatten(2).transpose(1, 2))).transpose(1, 2).reshape(x.shape)]
        return skips[:-1] + [mamba_over_spatial_tokens(self.ln, self.mamba, skips[-1])]


class UMambaEnc(_UMamba):
    """U-Mamba_Enc as in the January-2024 release (``UMambaEnc``): nnU-Net's residual encoder with a U-Mamba layer
    (LayerNorm -> Mamba over the flattened positions, in float32, no residual) after **every** stage, the full-
    resolution one included (the release's ``ResidualMambaEncoder``), and the residual decoder with transposed
    convolutions. He initialisation as nnU-Net's ``InitWeights_He(1e-2)``, then the last InstanceNorm of every
    residual block (encoder and decoder) zeroed (DNA's ``init_last_bn_before_add_to_0``), as released.

    State-dict keys as released: those of :class:`UMambaBot` without ``ln`` / ``mamba``, plus
    ``encoder.mamba_layers.S.{norm, mamba}.*`` (and their copy under ``decoder.encoder.*``). 67,333,428 parameters
    for the 2D AbdomenMR plan (the defaults, 1 -> 14). At full resolution the Mamba scans every pixel / voxel
    (102,400 tokens for a 320 x 320 patch), so this variant is much slower and hungrier than :class:`UMambaBot`.

    The arguments are those of :class:`UMambaBot`.
    """

    _name = "UMambaEnc"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 14,
        features_per_stage: Sequence[int] = _FEATURES,
        kernel_sizes: int | Sequence[int | Sequence[int]] = 3,
        strides: Sequence[int | Sequence[int]] = _STRIDES,
        n_blocks_per_stage: int | Sequence[int] = 2,
        n_conv_per_stage_decoder: int | Sequence[int] = 2,
        deep_supervision: bool = False,
        conv_bias: bool = True,
    ) -> None:
        super().__init__(
            spatial_dims, in_channels, out_channels, features_per_stage, kernel_sizes, strides, n_blocks_per_stage,
            n_conv_per_stage_decoder, deep_supervision, conv_bias, encoder_mamba_layers=True,
        )
        for module in self.modules():
            _zero_last_norm(module)


_VARIANTS = {"bot": UMambaBot, "enc": UMambaEnc}


def _resolve_configuration(plans: Mapping[str, Any], configuration: str) -> dict[str, Any]:
    """The configuration's dict with nnU-Net's ``inherits_from`` chain applied (a child's keys override)."""
    configurations = plans.get("configurations")
    if not isinstance(configurations, Mapping):
        raise ValueError("plans has no 'configurations' dict: not an nnU-Net v2 plans file.")
    chain: list[str] = []
    name = configuration
    while True:
        if name not in configurations:
            raise ValueError(
                f"configuration {name!r} is not in the plans; available: {sorted(configurations)}."
            )
        if name in chain:
            raise ValueError(f"circular 'inherits_from' in the plans: {' -> '.join([*chain, name])}.")
        chain.append(name)
        parent = configurations[name].get("inherits_from")
        if parent is None:
            break
        name = parent
    resolved: dict[str, Any] = {}
    for name in reversed(chain):
        resolved.update(deepcopy(dict(configurations[name])))
    return resolved


def _architecture_kwargs(config: Mapping[str, Any], configuration: str) -> dict[str, Any]:
    """The network arguments of a configuration, in the format of nnU-Net 2.1-2.4 (keys of the configuration) or of
    nnU-Net >= 2.5 (``architecture.arch_kwargs``)."""
    try:
        if "architecture" in config:
            arch = config["architecture"]["arch_kwargs"]
            blocks = arch["n_blocks_per_stage"] if "n_blocks_per_stage" in arch else arch["n_conv_per_stage"]
            return {
                "features_per_stage": list(arch["features_per_stage"]),
                "kernel_sizes": arch["kernel_sizes"],
                "strides": arch["strides"],
                "n_blocks_per_stage": blocks,
                "n_conv_per_stage_decoder": arch["n_conv_per_stage_decoder"],
                "conv_bias": bool(arch.get("conv_bias", True)),
            }
        kernel_sizes = config["conv_kernel_sizes"]
        base, most = config["UNet_base_num_features"], config["unet_max_num_features"]
        return {
            "features_per_stage": [min(base * 2**i, most) for i in range(len(kernel_sizes))],
            "kernel_sizes": kernel_sizes,
            "strides": config["pool_op_kernel_sizes"],
            "n_blocks_per_stage": config["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"],
            "conv_bias": True,
        }
    except KeyError as err:
        raise ValueError(f"configuration {configuration!r} of the plans lacks the key {err.args[0]!r}.") from err


def umamba_from_plans(
    plans: Mapping[str, Any],
    configuration: str,
    in_channels: int,
    out_channels: int,
    variant: str = "bot",
    deep_supervision: bool = True,
) -> UMambaBot | UMambaEnc:
    """
    U-Mamba_Bot or U-Mamba_Enc for one configuration of an nnU-Net v2 plans file (the dict of ``nnUNetPlans.json``),
    as the release's ``get_umamba_bot_from_plans`` / ``get_umamba_enc_from_plans`` build it: stages, kernel sizes,
    strides (``pool_op_kernel_sizes``) and blocks per stage from the plan, features min(``UNet_base_num_features``
    * 2**i, ``unet_max_num_features``), conv bias True. Both the nnU-Net 2.1-2.4 format (U-Mamba's fork is 2.1.1)
    and the ``architecture`` / ``arch_kwargs`` format of nnU-Net >= 2.5 are read; ``inherits_from`` is resolved.

    Args:
        plans: the plans dict (``json.load`` of ``nnUNetPlans.json``).
        configuration: e.g. ``"2d"``, ``"3d_fullres"``.
        in_channels: input channels (the dataset's channels; for a cascade stage plus the previous stage's classes).
        out_channels: segmentation heads (classes with background; the plans do not record them).
        variant: ``"bot"`` or ``"enc"``.
        deep_supervision: as in the networks (True, as nnU-Net trains).

    The network's input must be divisible by the stride products; the plan's ``patch_size`` always is.
    """
    network = look_up_argument("variant", variant, _VARIANTS)
    config = _resolve_configuration(plans, configuration)
    kwargs = _architecture_kwargs(config, configuration)
    first_kernel = kwargs["kernel_sizes"][0]
    if isinstance(first_kernel, int):
        raise ValueError(
            f"configuration {configuration!r}: the conv kernel sizes must be given per axis, got {first_kernel}."
        )
    spatial_dims = len(first_kernel)  # as nnU-Net infers it
    return network(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
        deep_supervision=deep_supervision, **kwargs,
    )
