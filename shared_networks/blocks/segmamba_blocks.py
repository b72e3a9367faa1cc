# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Blocks of SegMamba (Xing et al., "SegMamba: Long-range Sequential Modeling Mamba for 3D Medical Image
Segmentation", MICCAI 2024, arXiv:2401.13560).

Two faithful variants live side by side:

- the authors' release (github.com/ge-xing/SegMamba): additive GSC with two 3x3x3 convolutions, a MambaLayer of
  LayerNorm -> tri-orientated Mamba -> residual, one GSC per stage, and an InstanceNorm + channel MLP output branch;
- the paper: the gated GSC of Eq. 2, the TSMamba block of Eq. 1 (GSC, LN -> ToM -> residual, LN -> MLP -> residual)
  and the feature-level uncertainty estimation (FUE) of Eq. 4 on the skips.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers import Conv, Norm

from shared_networks.blocks.mamba import Mamba
from shared_networks.blocks.scan_orders import tri_orientated_orders, tri_orientated_orders_scripted
from shared_networks.utils import look_up_argument

__all__ = [
    "GatedSpatialConvolution",
    "TriOrientatedMambaLayer",
    "ChannelMlp",
    "TSMambaBlock",
    "FeatureUncertaintyEstimation",
    "SegMambaEncoder",
]

TRI_ORIENTATED_SUFFIXES = ("", "_b", "_s")
GSC_GATES = ("add", "multiply")
ENCODER_MODES = ("release", "paper")


def _instance_norm(spatial_dims: int, channels: int) -> nn.Module:
    """InstanceNorm without affine parameters, as the release builds it (``nn.InstanceNorm3d(channels)``)."""
    return Norm[Norm.INSTANCE, spatial_dims](channels)


class GatedSpatialConvolution(nn.Module):
    """Gated spatial convolution (GSC) placed before each tri-orientated Mamba.

    ``gate="add"`` is the released block (its attribute names, so release checkpoints load):
    ``x + CNR1(CNR3(CNR3(x)) + CNR1(x))`` with CNR = conv -> InstanceNorm -> ReLU.
    ``gate="multiply"`` is Eq. 2 of the paper: ``x + C3(C3(x) * C1(x))`` with the convolution blocks in the paper's
    order norm -> conv -> ReLU.
    """

    def __init__(self, spatial_dims: int, channels: int, gate: str = "add") -> None:
        super().__init__()
        self.gate = look_up_argument("gate", gate, GSC_GATES)
        conv = Conv[Conv.CONV, spatial_dims]
        if gate == "add":
            # in-place ReLUs: each follows a norm, whose output nothing else reads (and whose backward does not need it)
            self.proj = conv(channels, channels, 3, 1, 1)
            self.norm = _instance_norm(spatial_dims, channels)
            self.nonliner = nn.ReLU(inplace=True)
            self.proj2 = conv(channels, channels, 3, 1, 1)
            self.norm2 = _instance_norm(spatial_dims, channels)
            self.nonliner2 = nn.ReLU(inplace=True)
            self.proj3 = conv(channels, channels, 1, 1, 0)
            self.norm3 = _instance_norm(spatial_dims, channels)
            self.nonliner3 = nn.ReLU(inplace=True)
            self.proj4 = conv(channels, channels, 1, 1, 0)
            self.norm4 = _instance_norm(spatial_dims, channels)
            self.nonliner4 = nn.ReLU(inplace=True)
        else:
            self.spatial_branch = nn.Sequential(
                _instance_norm(spatial_dims, channels), conv(channels, channels, 3, 1, 1), nn.ReLU()
            )
            self.gate_branch = nn.Sequential(
                _instance_norm(spatial_dims, channels), conv(channels, channels, 1, 1, 0), nn.ReLU()
            )
            self.fuse = nn.Sequential(
                _instance_norm(spatial_dims, channels), conv(channels, channels, 3, 1, 1), nn.ReLU()
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # hasattr rather than self.gate: TorchScript then compiles only the branch whose modules exist
        if hasattr(self, "fuse"):
            return x + self.fuse(self.spatial_branch(x) * self.gate_branch(x))
        spatial = self.nonliner(self.norm(self.proj(x)))
        spatial = self.nonliner2(self.norm2(self.proj2(spatial)))
        pointwise = self.nonliner3(self.norm3(self.proj3(x)))
        return x + self.nonliner4(self.norm4(self.proj4(spatial + pointwise)))


# The released GSC's norms that may normalise in place (shared_networks.blocks.channels_last): its forward feeds each
# a convolution's fresh output that nothing else reads. The paper's GSC normalises its input, which it reads again.
RELEASED_GSC_IN_PLACE_NORMS = ("norm", "norm2", "norm3", "norm4")


class TriOrientatedMambaLayer(nn.Module):
    """Released SegMamba ``MambaLayer``: tokens -> LayerNorm -> tri-orientated Mamba (ToM, Eq. 3) -> + input.

    The forward, reversed and inter-slice scan orders are derived from the spatial shape of each input, so any
    patch size works (the release hard-codes the slice count of a 128^3 patch).
    """

    def __init__(
        self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, init_all_directions: bool = False
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(
            d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand,
            direction_suffixes=TRI_ORIENTATED_SUFFIXES, init_all_directions=init_all_directions,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, spatial = x.shape[0], x.shape[1], list(x.shape[2:])
        tokens = x.reshape(batch, channels, -1).transpose(1, 2)
        if torch.jit.is_scripting():
            orders = tri_orientated_orders_scripted(spatial, x.device)
        else:
            orders = tri_orientated_orders(spatial, x.device)
        out = self.mamba(self.norm(tokens), scan_orders=orders)
        return out.transpose(1, 2).reshape(x.shape) + x


class ChannelMlp(nn.Module):
    """Point-wise (1x1x1 convolution) MLP C -> hidden -> C with exact GELU, the release's ``MlpChannel``."""

    def __init__(self, spatial_dims: int, channels: int, hidden_channels: int) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.fc1 = conv(channels, hidden_channels, 1)
        self.act = nn.GELU()
        self.fc2 = conv(hidden_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TSMambaBlock(nn.Module):
    """TSMamba block of the paper, Eq. 1: ``z^ = GSC(z); z~ = ToM(LN(z^)) + z^; z' = MLP(LN(z~)) + z~``."""

    def __init__(self, spatial_dims: int, dim: int, mlp_ratio: float = 2.0, d_state: int = 16) -> None:
        super().__init__()
        self.gsc = GatedSpatialConvolution(spatial_dims, dim, gate="multiply")
        self.tri_orientated_mamba = TriOrientatedMambaLayer(dim, d_state=d_state, init_all_directions=True)
        self.norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tri_orientated_mamba(self.gsc(x))
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.mlp(self.norm(tokens))
        return tokens.transpose(1, 2).reshape(x.shape)


class FeatureUncertaintyEstimation(nn.Module):
    """FUE, Eq. 4 of the paper: ``z~ = z + z * (1 - u)``, ``u = -m log m``, ``m = sigmoid(mean over channels of z)``.

    It has no parameters.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.sigmoid(x.mean(dim=1, keepdim=True))
        uncertainty = -torch.xlogy(mean, mean)  # m log m, 0 where m underflows to 0
        return x + x * (1.0 - uncertainty)


class SegMambaEncoder(nn.Module):
    """SegMamba's multi-scale encoder: stem (7^3, stride 2), then per stage [downsample], GSC and tri-orientated
    Mamba layers; returns the four stage outputs.

    ``mode="release"`` reproduces the released ``MambaEncoder`` (attribute names ``downsample_layers``, ``gscs``,
    ``stages``, ``mlps``; outputs through InstanceNorm + ChannelMlp). ``mode="paper"`` stacks ``depths[i]`` TSMamba
    blocks (Eq. 1) per stage and returns the stage features through FUE (Eq. 4).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        depths: Sequence[int] = (2, 2, 2, 2),
        feature_sizes: Sequence[int] = (48, 96, 192, 384),
        mode: str = "release",
        d_state: int = 16,
    ) -> None:
        super().__init__()
        self.mode = look_up_argument("mode", mode, ENCODER_MODES)
        if len(depths) != len(feature_sizes):
            raise ValueError(f"depths and feature_sizes must have the same length, got {depths} and {feature_sizes}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(conv(in_channels, feature_sizes[0], kernel_size=7, stride=2, padding=3))]
        )
        for i in range(1, len(feature_sizes)):
            self.downsample_layers.append(
                nn.Sequential(
                    _instance_norm(spatial_dims, feature_sizes[i - 1]),
                    conv(feature_sizes[i - 1], feature_sizes[i], kernel_size=2, stride=2),
                )
            )
        if mode == "release":
            self.gscs = nn.ModuleList([GatedSpatialConvolution(spatial_dims, c, gate="add") for c in feature_sizes])
            self.stages = nn.ModuleList(
                [
                    nn.Sequential(*[TriOrientatedMambaLayer(c, d_state=d_state) for _ in range(depth)])
                    for c, depth in zip(feature_sizes, depths)
                ]
            )
            self.output_norms = nn.ModuleList([_instance_norm(spatial_dims, c) for c in feature_sizes])
            self.mlps = nn.ModuleList([ChannelMlp(spatial_dims, c, 2 * c) for c in feature_sizes])
        else:
            self.stages = nn.ModuleList(
                [
                    nn.Sequential(*[TSMambaBlock(spatial_dims, c, d_state=d_state) for _ in range(depth)])
                    for c, depth in zip(feature_sizes, depths)
                ]
            )
            self.uncertainty = FeatureUncertaintyEstimation()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        if hasattr(self, "gscs"):  # release mode (see GatedSpatialConvolution.forward for why hasattr)
            layers = zip(self.downsample_layers, self.gscs, self.stages, self.output_norms, self.mlps)
            for downsample, gsc, stage, output_norm, mlp in layers:
                x = stage(gsc(downsample(x)))
                # The output branch is normalised; the main path continues with the un-normalised x.
                outs.append(mlp(output_norm(x)))
        else:
            for downsample, stage in zip(self.downsample_layers, self.stages):
                x = stage(downsample(x))
                outs.append(self.uncertainty(x))
        return outs
