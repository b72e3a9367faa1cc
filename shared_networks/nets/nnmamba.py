# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""nnMamba networks: segmentation / landmark heatmaps (``nnMambaSeg``) and classification (``nnMambaClassifier``).

Gong, Wang, Ye, Wang, Li et al.: "nnMamba: 3D Biomedical Image Segmentation, Classification and Landmark Detection
with State Space Model", ISBI 2025, https://arxiv.org/abs/2402.03526. Authors' code: https://github.com/lhaof/nnMamba
(``nnMamba.py``: segmentation and landmarks; ``nnMamba4cls.py``: the ADNI classifier).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_networks.blocks.nnmamba_blocks import (
    HierarchicalSequenceMamba,
    MambaInConvolution,
    nnMambaDoubleConv,
    nnMambaResidualStage,
    nnMambaSkipScaling,
)
from shared_networks.utils import check_network_input, look_up_argument

__all__ = ["nnMambaSeg", "nnMambaClassifier"]

# The input check divides by 16 (four stride-2 steps: stem and three residual stages); a literal there, as TorchScript
# reads no module-level ints.
_SEG_MAMBA_LAYERS = ("miccss", "nnunet")


def _check_3d(network: str, spatial_dims: int) -> None:
    if spatial_dims != 3:
        raise ValueError(f"{network} is 3D only (as released), got spatial_dims={spatial_dims}.")


class nnMambaSeg(nn.Module):
    """nnMamba for segmentation and landmark heatmaps, exactly as released (``nnMamba.py``, class ``nnMambaSeg``).

    A stride-2 DoubleConv stem (``feature_size`` channels), three residual stages of ``blocks`` blocks (2, 4 and
    8 times ``feature_size`` channels, stride 2) whose blocks 1 ... ``blocks - 1`` share one MICCSS layer (Mamba in
    convolution with channel-spatial siamese learning), and a decoder of trilinear x2 upsampling and DoubleConvs fed
    by the squeeze-excitation-scaled skips of the stem and the first two stages (Eq. 3); a last x2 upsampling and
    DoubleConv give ``out_channels`` maps at the input's resolution. As released, that last DoubleConv ends in
    BatchNorm and ReLU, so the outputs are non-negative; for segmentation they serve as logits (softmax / argmax),
    for landmark detection as heatmaps (one channel per landmark, trained with MSE).

    The state-dict keys and shapes equal the release's (``in_conv``, ``att1..3``, ``layer1..3``, ``conv5..8``; the
    shared Mamba layer of a stage is listed under each block that carries it, ``layerK.1.mamba_layer.*`` and
    ``layerK.2.mamba_layer.*``): 15,959,598 parameters for 1 input channel and 16 outputs. The paper reports
    15.55 M parameters for its AMOS network; no configuration of the released code gives that number.

    Args:
        in_channels: input channels.
        out_channels: classes (background included) or landmarks.
        spatial_dims: must be 3.
        feature_size: channels of the stem; the stages have 2, 4 and 8 times as many.
        blocks: residual blocks per stage.
        d_state: SSM state size of the Mamba layers.
        d_conv: width of their causal convolution.
        expand: their inner width factor.
        deep_supervision: add 1x1x1 heads on the decoder features at 1/2, 1/4 and 1/8 of the input size (named
            ``ds1_cls_conv``, ``ds2_cls_conv``, ``ds3_cls_conv`` as in the authors' nnU-Net variant); in training mode
            the forward then returns the four outputs, finest first, and in eval mode only the full-resolution one.
        mamba_layer: ``"miccss"`` (the MICCSS layer of the paper and of ``nnMamba.py``) or ``"nnunet"``, the layer of
            the authors' nnU-Net v1 BraTS trainers (``nnunet/network_architecture/nnMamba.py``): one Mamba pass, no
            inner residual and no output convolution. That release always has the deep-supervision heads, so its
            checkpoints load with ``mamba_layer="nnunet", deep_supervision=True``: 15,876,318 parameters at 1 / 16,
            15,859,266 at 4 / 4.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 16,
        spatial_dims: int = 3,
        feature_size: int = 32,
        blocks: int = 3,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        deep_supervision: bool = False,
        mamba_layer: str = "miccss",
    ) -> None:
        super().__init__()
        _check_3d("nnMambaSeg", spatial_dims)
        nnunet_layer = look_up_argument("mamba_layer", mamba_layer, _SEG_MAMBA_LAYERS) == "nnunet"
        if feature_size < 16:
            raise ValueError(
                f"nnMambaSeg needs feature_size >= 16 (its skip scaling reduces channels 16-fold), got {feature_size}."
            )
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        f = feature_size

        def stage(cin: int, cout: int) -> nnMambaResidualStage:
            layer = MambaInConvolution(
                cout, d_state=d_state, d_conv=d_conv, expand=expand, channel_spatial_siamese=not nnunet_layer,
                output_convolution=not nnunet_layer,
            )
            return nnMambaResidualStage(cin, cout, blocks, stride=2, mamba_layer=layer)

        self.in_conv = nnMambaDoubleConv(in_channels, f, stride=2)
        self.att1 = nnMambaSkipScaling(f)
        self.layer1 = stage(f, 2 * f)
        self.att2 = nnMambaSkipScaling(2 * f)
        self.layer2 = stage(2 * f, 4 * f)
        self.att3 = nnMambaSkipScaling(4 * f)
        self.layer3 = stage(4 * f, 8 * f)
        self.conv5 = nnMambaDoubleConv(12 * f, 4 * f)
        self.conv6 = nnMambaDoubleConv(6 * f, 2 * f)
        self.conv7 = nnMambaDoubleConv(3 * f, f)
        self.conv8 = nnMambaDoubleConv(f, out_channels)
        if deep_supervision:
            self.ds1_cls_conv = nn.Conv3d(f, out_channels, kernel_size=1)
            self.ds2_cls_conv = nn.Conv3d(2 * f, out_channels, kernel_size=1)
            self.ds3_cls_conv = nn.Conv3d(4 * f, out_channels, kernel_size=1)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="trilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_network_input("nnMambaSeg", x, self.in_channels, "DHW", 16)
        c1 = self.in_conv(x)
        c2 = self.layer1(c1)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.conv5(torch.cat([self._up(c4), self.att3(c3)], dim=1))
        c6 = self.conv6(torch.cat([self._up(c5), self.att2(c2)], dim=1))
        c7 = self.conv7(torch.cat([self._up(c6), self.att1(c1)], dim=1))
        c8 = self.conv8(self._up(c7))
        # hasattr: TorchScript compiles the heads only where they were built
        if hasattr(self, "ds1_cls_conv") and self.deep_supervision and self.training:
            return [c8, self.ds1_cls_conv(c7), self.ds2_cls_conv(c6), self.ds3_cls_conv(c5)]
        return c8


_CLASSIFIER_MODES = ("paper", "release")
_POOLING = {"avg": nn.AdaptiveAvgPool3d, "max": nn.AdaptiveMaxPool3d}


class nnMambaClassifier(nn.Module):
    """nnMamba for volume classification (ADNI: AD vs NC, sMCI vs pMCI), the released ``nnMambaEncoder``.

    A stride-2 DoubleConv stem with a MIC layer right after it (one Mamba pass, d_state 8, with an outer residual),
    three Mamba-free residual stages (2, 4 and 8 times ``feature_size`` channels, stride 2), global pooling of the
    three stage outputs, and an MLP head (Linear(14 * feature_size -> feature_size) -> ReLU -> Dropout ->
    Linear(feature_size -> num_classes)). Any input size works (global pooling).

    - ``mode="paper"`` (Sec. 2.3, the first released classifier, July 2024): the pooled vectors, reshaped to
      2 * ``feature_size`` rows (1, 2 and 4 tokens), form a (batch, 2C, 7) hierarchical sequence that passes a small
      Mamba (d_state 8, d_conv 2) with a residual before the head; 12,905,633 parameters for 1 input channel and
      1 output. The paper pools with max, that release with average (``pooling``).
    - ``mode="release"`` (the current release, February 2025): the pooled vectors go straight to the head;
      12,876,321 parameters.

    State-dict keys and shapes equal the respective release (``in_conv``, ``mamba_layer_stem``, ``layer1..3``,
    ``mamba_seq`` in paper mode, ``mlp``).

    Args:
        in_channels: input channels.
        num_classes: outputs: 1 for a binary task (one logit, BCE with logits, as released), else one logit per class.
        mode: ``"paper"`` or ``"release"`` (see above).
        pooling: ``"max"`` or ``"avg"``; None takes max in paper mode and average in release mode.
        spatial_dims: must be 3.
        feature_size: channels of the stem.
        blocks: residual blocks per stage.
        dropout: dropout of the head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        mode: str = "paper",
        pooling: str | None = None,
        spatial_dims: int = 3,
        feature_size: int = 32,
        blocks: int = 3,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_3d("nnMambaClassifier", spatial_dims)
        self.mode = look_up_argument("mode", mode, _CLASSIFIER_MODES)
        pool = look_up_argument("pooling", pooling or ("max" if self.mode == "paper" else "avg"), _POOLING)
        self.in_channels = in_channels
        f = feature_size
        self.in_conv = nnMambaDoubleConv(in_channels, f, stride=2)
        self.mamba_layer_stem = MambaInConvolution(f, d_state=8, d_conv=4, expand=2, channel_spatial_siamese=False)
        self.layer1 = nnMambaResidualStage(f, 2 * f, blocks, stride=2)
        self.layer2 = nnMambaResidualStage(2 * f, 4 * f, blocks, stride=2)
        self.layer3 = nnMambaResidualStage(4 * f, 8 * f, blocks, stride=2)
        self.pooling = pool(1)
        if self.mode == "paper":
            self.mamba_seq = HierarchicalSequenceMamba(2 * f, d_state=8, d_conv=2, expand=2)
        self.mlp = nn.Sequential(
            nn.Linear(14 * f, f), nn.ReLU(), nn.Dropout(dropout), nn.Linear(f, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"nnMambaClassifier expects a (batch, {self.in_channels}, D, H, W) input, got shape {list(x.shape)}."
            )
        c1 = self.in_conv(x)
        c2 = self.layer1(self.mamba_layer_stem(c1) + c1)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        pooled = [self.pooling(c).flatten(1) for c in (c2, c3, c4)]
        if hasattr(self, "mamba_seq"):  # paper mode (hasattr: TorchScript compiles the branch only where it exists)
            features = self.mamba_seq(pooled).flatten(1)  # row-major over (2C rows, 7 tokens), as released
        else:
            features = torch.cat(pooled, dim=1)
        return self.mlp(features)
