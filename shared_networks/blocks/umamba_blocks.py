# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
The blocks U-Mamba is built from (Ma, Li, Wang: "U-Mamba: Enhancing Long-range Dependency for Biomedical Image
Segmentation", arXiv:2401.04722), as in the authors' January-2024 release (https://github.com/bowang-lab/U-Mamba,
``umamba/nnunetv2/nets/UMambaBot.py`` and ``UMambaEnc.py``): the convolution blocks and the residual encoder of
nnU-Net's ``dynamic_network_architectures`` package (DNA) that the release builds on, the U-Mamba layer (LayerNorm
and Mamba over the flattened spatial positions) and the residual decoder with transposed convolutions.

Submodule names equal DNA's and the release's, so the authors' checkpoints load unchanged. Two quirks of that layout
are kept on purpose because the checkpoints carry them:

- every conv-norm(-nonlinearity) block registers its modules twice, under their own names (``conv``, ``norm``,
  ``nonlin``) and inside the ``all_modules`` sequence it runs, so its state dict lists each tensor twice
  (``conv.weight`` and ``all_modules.0.weight`` are one tensor);
- the decoder holds a reference to the encoder (nnU-Net's convention), so every encoder tensor is listed again under
  ``decoder.encoder.*``.

Both are plain PyTorch behaviour for a module registered under two names: ``parameters()`` yields it once, and
``state_dict()`` / ``load_state_dict()`` list it under both. All blocks work in 2D and 3D, with InstanceNorm (affine,
eps 1e-5) and LeakyReLU (slope 0.01) as nnU-Net's plans configure them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv, Norm, Pool

from shared_networks.blocks.mamba import Mamba

__all__ = [
    "UMambaConvNormAct",
    "UMambaBasicBlockD",
    "UMambaResidualStage",
    "UMambaStem",
    "UMambaLayer",
    "UMambaResidualEncoder",
    "UMambaResidualDecoder",
    "in_full_precision",
    "mamba_over_spatial_tokens",
    "per_axis",
]

_NEGATIVE_SLOPE = 1e-2  # nn.LeakyReLU's default, as nnU-Net's plans use it


def per_axis(value: int | Sequence[int], spatial_dims: int, name: str = "value") -> tuple[int, ...]:
    """``value`` as one int per spatial axis: an int is repeated, a sequence must have ``spatial_dims`` entries."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name} needs one entry per spatial axis ({spatial_dims}), got {value}.")
    return value


class UMambaConvNormAct(nn.Module):
    """Convolution -> InstanceNorm -> optional LeakyReLU, with "same" padding ((k - 1) // 2 per axis): DNA's
    ``ConvDropoutNormReLU`` without dropout (nnU-Net's plans use none).

    The modules are attributes ``conv``, ``norm`` and (when ``act``) ``nonlin`` and also the ``all_modules``
    sequence that the forward runs, so the state dict lists ``conv.*`` / ``all_modules.0.*`` and ``norm.*`` /
    ``all_modules.1.*``, the same tensors twice, as in DNA's checkpoints.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: per axis, or one int for all axes.
        stride: per axis, or one int for all axes.
        conv_bias: whether the convolution has a bias.
        act: end with LeakyReLU (slope 0.01).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        conv_bias: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        kernel_size = per_axis(kernel_size, spatial_dims, "kernel_size")
        self.stride = per_axis(stride, spatial_dims, "stride")
        self.conv = Conv[Conv.CONV, spatial_dims](
            in_channels, out_channels, kernel_size, self.stride, padding=[(k - 1) // 2 for k in kernel_size],
            bias=conv_bias,
        )
        self.norm = Norm[Norm.INSTANCE, spatial_dims](out_channels, eps=1e-5, affine=True)
        modules = [self.conv, self.norm]
        if act:
            self.nonlin = nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True)
            modules.append(self.nonlin)
        self.all_modules = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)


class UMambaBasicBlockD(nn.Module):
    """ResNet-D basic block (He et al., "Bag of tricks for image classification with convolutional neural networks",
    CVPR 2019), DNA's ``BasicBlockD``: ``conv1`` = conv(k, stride) -> IN -> LeakyReLU, ``conv2`` = conv(k) -> IN,
    plus the skip, then LeakyReLU (``nonlin2``).

    The skip is the identity when stride and channels are unchanged; otherwise ``skip`` is a sequence of an average
    pooling over ``stride`` (when strided) and a 1x1 convolution without bias -> IN (when the channels change), so
    its parameters sit at ``skip.0.*`` (projection only) or ``skip.1.*`` (pooling and projection).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: of both convolutions, per axis or one int.
        stride: of ``conv1`` and the skip, per axis or one int.
        conv_bias: whether ``conv1`` and ``conv2`` have a bias (the skip's 1x1 convolution never has).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        stride = per_axis(stride, spatial_dims, "stride")
        self.conv1 = UMambaConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, stride, conv_bias)
        self.conv2 = UMambaConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, 1, conv_bias, act=False)
        self.nonlin2 = nn.LeakyReLU(_NEGATIVE_SLOPE, inplace=True)
        strided = any(s != 1 for s in stride)
        projected = in_channels != out_channels
        if strided or projected:
            skip: list[nn.Module] = []
            if strided:
                skip.append(Pool[Pool.AVG, spatial_dims](stride, stride))
            if projected:
                skip.append(
                    UMambaConvNormAct(spatial_dims, in_channels, out_channels, 1, 1, conv_bias=False, act=False)
                )
            self.skip: nn.Module = nn.Sequential(*skip)
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin2(self.conv2(self.conv1(x)) + self.skip(x))


class UMambaResidualStage(nn.Module):
    """``n_blocks`` :class:`UMambaBasicBlockD` in ``blocks``, the first with ``stride`` and the channel change, the
    others with stride 1 (DNA's ``StackedResidualBlocks``)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        n_blocks: int,
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"a residual stage needs at least one block, got n_blocks={n_blocks}.")
        self.blocks = nn.Sequential(
            UMambaBasicBlockD(spatial_dims, in_channels, out_channels, kernel_size, stride, conv_bias),
            *(
                UMambaBasicBlockD(spatial_dims, out_channels, out_channels, kernel_size, 1, conv_bias)
                for _ in range(n_blocks - 1)
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class UMambaStem(nn.Module):
    """The encoder's stem: one stride-1 conv -> IN -> LeakyReLU in ``convs`` (DNA's ``StackedConvBlocks`` with one
    convolution, as ``ResidualEncoder`` builds it)."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
        conv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            UMambaConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, 1, conv_bias)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


def mamba_over_spatial_tokens(norm: nn.Module, mamba: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """
    U-Mamba's token mixing: a (batch, C, *spatial) map flattened row-major (last axis fastest) into a
    (batch, L, C) sequence of its L spatial positions, ``norm`` (LayerNorm over C) and ``mamba`` applied, and the
    result reshaped back to (batch, C, *spatial). There is no residual: the output replaces the map.

    It runs in full precision even inside ``torch.autocast``: autocast is switched off and a float16 / bfloat16 input
    is cast to float32, so the output is float32, as the release's ``MambaLayer`` does against the overflow of
    half-precision Mamba activations (the January-2024 layer casts float16, the later 3D one bfloat16 too). Other
    dtypes pass unchanged.
    """
    x = in_full_precision(x)
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return _mix_tokens(norm, mamba, x)
    return _mix_tokens(norm, mamba, x)


def in_full_precision(x: torch.Tensor) -> torch.Tensor:
    """A float16 / bfloat16 tensor cast to float32; other dtypes unchanged."""
    if x.dtype == torch.float16 or x.dtype == torch.bfloat16:
        return x.float()
    return x


def _mix_tokens(norm: nn.Module, mamba: nn.Module, x: torch.Tensor) -> torch.Tensor:
    tokens = x.flatten(2).transpose(1, 2)
    return mamba(norm(tokens)).transpose(1, 2).reshape(x.shape)


class UMambaLayer(nn.Module):
    """The U-Mamba layer of U-Mamba_Enc (the release's ``MambaLayer``): ``norm`` = LayerNorm(dim) and ``mamba`` =
    Mamba(dim, d_state, d_conv, expand) over the flattened spatial positions, in float32 (see
    :func:`mamba_over_spatial_tokens`). Input and output are (batch, dim, *spatial).

    Args:
        dim: channels (the Mamba's d_model).
        d_state: SSM state size.
        d_conv: width of the Mamba's causal convolution.
        expand: the Mamba's inner width factor.
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[1] != self.dim:
            raise ValueError(f"UMambaLayer expects (batch, {self.dim}, *spatial), got {list(x.shape)}.")
        if torch.jit.is_scripting():
            # TorchScript cannot switch autocast off (nor pass modules to mamba_over_spatial_tokens); a scripted
            # network is not run under autocast, and the cast keeps the layer in full precision all the same
            x = in_full_precision(x)
            return self.mamba(self.norm(x.flatten(2).transpose(1, 2))).transpose(1, 2).reshape(x.shape)
        return mamba_over_spatial_tokens(self.norm, self.mamba, x)


class UMambaResidualEncoder(nn.Module):
    """DNA's ``ResidualEncoder`` as U-Mamba uses it (``return_skips=True``), optionally with a :class:`UMambaLayer`
    after every stage (the release's ``ResidualMambaEncoder`` of U-Mamba_Enc).

    ``stem`` (one conv -> IN -> LeakyReLU to ``features_per_stage[0]`` channels, stride 1), then one
    :class:`UMambaResidualStage` per entry of ``features_per_stage`` in ``stages``, the first block of stage s
    strided by ``strides[s]``. With ``mamba_layers``, ``mamba_layers[s]`` replaces the output of stage s (stage 0,
    at full resolution, included) before it becomes a skip and the next stage's input. The forward returns every
    stage's output, highest resolution first.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        features_per_stage: output channels of each stage.
        kernel_sizes: per stage, a kernel size per axis (or one int).
        strides: per stage, a stride per axis (or one int); nnU-Net's plans start with stride 1.
        n_blocks_per_stage: residual blocks of each stage.
        conv_bias: whether the 3x3 convolutions have a bias.
        mamba_layers: add a U-Mamba layer after every stage (U-Mamba_Enc).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        features_per_stage: Sequence[int],
        kernel_sizes: Sequence[int | Sequence[int]],
        strides: Sequence[int | Sequence[int]],
        n_blocks_per_stage: Sequence[int],
        conv_bias: bool = True,
        mamba_layers: bool = False,
    ) -> None:
        super().__init__()
        n_stages = len(features_per_stage)
        for name, value in (("kernel_sizes", kernel_sizes), ("strides", strides),
                            ("n_blocks_per_stage", n_blocks_per_stage)):
            if len(value) != n_stages:
                raise ValueError(
                    f"{name} needs one entry per stage ({n_stages}, as features_per_stage), got {len(value)}."
                )
        self.output_channels = tuple(features_per_stage)
        self.kernel_sizes = tuple(per_axis(k, spatial_dims, "kernel_sizes entry") for k in kernel_sizes)
        self.strides = tuple(per_axis(s, spatial_dims, "strides entry") for s in strides)
        self.conv_bias = conv_bias
        self.stem = UMambaStem(spatial_dims, in_channels, features_per_stage[0], self.kernel_sizes[0], conv_bias)
        channels = [features_per_stage[0], *features_per_stage[:-1]]
        self.stages = nn.ModuleList(
            UMambaResidualStage(spatial_dims, cin, cout, kernel, stride, blocks, conv_bias)
            for cin, cout, kernel, stride, blocks in zip(
                channels, features_per_stage, self.kernel_sizes, self.strides, n_blocks_per_stage
            )
        )
        if mamba_layers:
            self.mamba_layers = nn.ModuleList(UMambaLayer(f) for f in features_per_stage)
        else:
            self.mamba_layers = None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        if self.mamba_layers is None:
            for stage in self.stages:
                x = stage(x)
                skips.append(x)
        else:
            for stage, mamba_layer in zip(self.stages, self.mamba_layers):
                x = mamba_layer(stage(x))
                skips.append(x)
        return skips


class UMambaResidualDecoder(nn.Module):
    """The release's ``UNetResDecoder``: for each encoder level below the top, lowest resolution first, a transposed
    convolution (kernel = stride = that level's encoder stride, bias = the encoder's ``conv_bias``) to the skip's
    channels F (``transpconvs``), concatenation [upsampled, skip] (2F channels), a :class:`UMambaResidualStage`
    2F -> F with the skip level's kernel size (``stages``) and a 1x1 segmentation head F -> ``out_channels`` with bias
    (``seg_layers``). Every head is built (checkpoints carry all of them) whether or not deep supervision is used.

    The decoder keeps ``encoder`` as a submodule, as nnU-Net does, so its state dict repeats the encoder's tensors
    under ``encoder.*``; it never runs it.

    Args:
        spatial_dims: 2 or 3.
        encoder: the encoder whose skips the forward receives.
        out_channels: classes (background included); the outputs are logits.
        n_conv_per_stage: residual blocks of each decoder stage, lowest resolution first (one entry fewer than the
            encoder has stages).
        deep_supervision: in training mode, return every head's output, full resolution first (at the resolution of
            encoder stages 0, 1, ..., n - 2); otherwise only the full-resolution output.
    """

    def __init__(
        self,
        spatial_dims: int,
        encoder: UMambaResidualEncoder,
        out_channels: int,
        n_conv_per_stage: Sequence[int],
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        n_levels = len(encoder.output_channels)
        if len(n_conv_per_stage) != n_levels - 1:
            raise ValueError(
                f"n_conv_per_stage_decoder needs one entry per decoder stage ({n_levels - 1}: one fewer than the "
                f"{n_levels} encoder stages), got {len(n_conv_per_stage)}."
            )
        self.encoder = encoder
        self.deep_supervision = deep_supervision
        conv = Conv[Conv.CONV, spatial_dims]
        transposed_conv = Conv[Conv.CONVTRANS, spatial_dims]
        transpconvs, stages, seg_layers = [], [], []
        for s in range(1, n_levels):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            stride = encoder.strides[-s]
            transpconvs.append(transposed_conv(below, skip, stride, stride, bias=encoder.conv_bias))
            stages.append(
                UMambaResidualStage(
                    spatial_dims, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)], 1, n_conv_per_stage[s - 1],
                    encoder.conv_bias,
                )
            )
            seg_layers.append(conv(skip, out_channels, 1, 1, 0, bias=True))
        self.stages = nn.ModuleList(stages)
        self.transpconvs = nn.ModuleList(transpconvs)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        every_head = self.deep_supervision and self.training
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s, (transpconv, stage, seg_layer) in enumerate(zip(self.transpconvs, self.stages, self.seg_layers)):
            x = stage(torch.cat((transpconv(x), skips[-(s + 2)]), dim=1))
            if every_head or s == last:
                outputs.append(seg_layer(x))
        if not every_head:
            return outputs[-1]
        return outputs[::-1]
