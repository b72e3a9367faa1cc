# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""SegMamba network.

Xing, Ye, Yang, Ning, Zhu: "SegMamba: Long-range Sequential Modeling Mamba for 3D Medical Image Segmentation",
MICCAI 2024, https://arxiv.org/abs/2401.13560. Authors' code: https://github.com/ge-xing/SegMamba.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock

from shared_networks.blocks.channels_last import (
    IN_PLACE_INSTANCE_NORMS,
    channels_last_applies,
    to_channels_last,
    use_channels_last_instance_norms,
    use_winograd_convolutions,
)
from shared_networks.blocks.segmamba_blocks import (
    RELEASED_GSC_IN_PLACE_NORMS,
    GatedSpatialConvolution,
    SegMambaEncoder,
)

__all__ = ["SegMamba"]


_IN_PLACE_NORMS = {**IN_PLACE_INSTANCE_NORMS, GatedSpatialConvolution: RELEASED_GSC_IN_PLACE_NORMS}


class SegMamba(nn.Module):
    """SegMamba: a Mamba encoder of tri-orientated spatial Mamba (TSMamba) blocks with a UNETR-style residual
    convolutional decoder.

    Two faithful variants are selected by ``mode``:

    - ``"release"`` (default): exactly the authors' released network. Additive GSC with two 3x3x3 convolutions, one
      GSC per stage, MambaLayer = LayerNorm -> tri-orientated Mamba -> + input (no MLP inside), an
      InstanceNorm + channel-MLP branch on every stage output, no FUE, a stem without norm. The state-dict keys and
      shapes equal the release's (``vit.*``, ``encoder1..5``, ``decoder1..5``, ``out``; 291 tensors and 67,416,196
      parameters for 4 input and 4 output channels), so released checkpoints load with ``strict=True``.
    - ``"paper"``: the network as the paper describes it. GSC with the multiplicative gate of Eq. 2, TSMamba blocks
      of Eq. 1 (GSC, LN -> ToM -> + residual, LN -> MLP -> + residual), and the feature-level uncertainty
      estimation (FUE) of Eq. 4 on every encoder skip. Its state dict differs from the release's.

    In both variants the inter-slice scan of the tri-orientated Mamba follows the real first spatial axis of each
    stage's input, so any spatial size divisible by 16 works (the release hard-codes the slice counts of a 128^3
    patch; at 128^3 both give identical results). Feed volumes with the axial axis first, as the release does.

    Args:
        spatial_dims: number of spatial dimensions (3 for volumes).
        in_channels: input channels (BraTS: 4, ordered t2w, t2f, t1n, t1c in the release).
        out_channels: output channels (classes); the output is logits, no softmax.
        depths: tri-orientated Mamba layers (release) or TSMamba blocks (paper) per stage.
        feature_sizes: widths of the four encoder stages.
        hidden_size: width of the bottleneck block.
        mode: "release" or "paper", see above.
        norm_name: normalisation of the convolutional skip and decoder blocks.
        res_block: use residual convolution blocks in the skip and decoder blocks.
        d_state: SSM state size of every Mamba layer.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        out_channels: int = 4,
        depths: Sequence[int] = (2, 2, 2, 2),
        feature_sizes: Sequence[int] = (48, 96, 192, 384),
        hidden_size: int = 768,
        mode: str = "release",
        norm_name: tuple | str = "instance",
        res_block: bool = True,
        d_state: int = 16,
    ) -> None:
        super().__init__()
        if len(feature_sizes) != 4 or len(depths) != 4:
            raise ValueError(
                "SegMamba has four encoder stages: feature_sizes and depths need 4 entries, "
                f"got {feature_sizes} and {depths}."
            )
        self.spatial_dims = spatial_dims
        self.vit = SegMambaEncoder(spatial_dims, in_channels, depths, feature_sizes, mode=mode, d_state=d_state)

        def basic_block(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(
                spatial_dims, cin, cout, kernel_size=3, stride=1, norm_name=norm_name, res_block=res_block
            )

        def up_block(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(
                spatial_dims, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=res_block
            )

        f0, f1, f2, f3 = feature_sizes
        self.encoder1 = basic_block(in_channels, f0)
        self.encoder2 = basic_block(f0, f1)
        self.encoder3 = basic_block(f1, f2)
        self.encoder4 = basic_block(f2, f3)
        self.encoder5 = basic_block(f3, hidden_size)
        self.decoder5 = up_block(hidden_size, f3)
        self.decoder4 = up_block(f3, f2)
        self.decoder3 = up_block(f2, f1)
        self.decoder2 = up_block(f1, f0)
        self.decoder1 = basic_block(f0, f0)
        self.out = UnetOutBlock(spatial_dims, f0, out_channels)
        use_channels_last_instance_norms(self, _IN_PLACE_NORMS)
        use_winograd_convolutions(self)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        spatial = list(x_in.shape[2:])
        # the bottleneck is at 1/16 of the input, and its InstanceNorm needs more than one voxel
        divisible = len(spatial) == self.spatial_dims
        largest = 0
        for size in spatial:
            divisible = divisible and size % 16 == 0
            largest = max(largest, size)
        if not divisible or largest < 32:
            raise ValueError(
                f"SegMamba needs a (batch, channels, *spatial) input with {self.spatial_dims} spatial sizes divisible "
                f"by 16 (four stride-2 stages), not all 16, e.g. 64, 96 or 128; got spatial size {list(spatial)}."
            )
        channels_last = False
        if not torch.jit.is_scripting():
            # inference on the CPU runs channels-last (see shared_networks.blocks.channels_last); same values
            channels_last = channels_last_applies(x_in, self)
            if channels_last:
                x_in = to_channels_last(x_in)
        outs = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(outs[0])
        enc3 = self.encoder3(outs[1])
        enc4 = self.encoder4(outs[2])
        bottleneck = self.encoder5(outs[3])
        dec = self.decoder5(bottleneck, enc4)
        dec = self.decoder4(dec, enc3)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        logits = self.out(self.decoder1(dec))
        return logits.contiguous() if channels_last else logits
