# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
The blocks nnMamba is built from (Gong, Wang, Ye, Wang, Li et al., "nnMamba: 3D Biomedical Image Segmentation,
Classification and Landmark Detection with State Space Model", arXiv:2402.03526): the Mamba-in-convolution layer
with channel-spatial siamese learning (MIC / MICCSS, Eq. 2 and Algorithm 1), the residual blocks that carry it, the
squeeze-excitation scaling of the skips (Eq. 3) and the hierarchical sequence of the classifier (Sec. 2.3).

Submodule names equal the authors' (https://github.com/lhaof/nnMamba: ``nnMamba.py``, ``nnMamba4cls.py``), so their
state dicts load unchanged. Everything is 3D with BatchNorm and ReLU, as released.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from shared_networks.blocks.mamba import Mamba

__all__ = [
    "MambaInConvolution",
    "nnMambaResidualBlock",
    "nnMambaResidualStage",
    "nnMambaDoubleConv",
    "nnMambaSkipScaling",
    "HierarchicalSequenceMamba",
    "channel_spatial_siamese_mean",
]


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def channel_spatial_siamese_mean(mamba: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """
    Channel-spatial siamese learning (CSS, Algorithm 1): the mean of one shared ``mamba`` over four views of a
    (batch, L, C) sequence, each view undone on the output: the sequence itself, its channels reversed, its tokens
    reversed (a backward scan), and both reversed.

    The two flips are different operations. Reversing the tokens (dim 1) reorders positions: the scan runs backwards
    and the result is put back in forward order. Reversing the channels (dim 2) is not a reordering of positions:
    every token keeps its place, but ``in_proj`` reads its features in the opposite order, so the layer computes
    another function of the token; flipping the output's channels back aligns it with the unflipped views.

    The four views run as one batch of ``4 * batch`` sequences through ``mamba`` (its operations are per sequence, so
    this equals four separate calls).
    """
    return _merge_siamese_views(mamba(_siamese_views(tokens)))


# The two halves of channel_spatial_siamese_mean, apart because TorchScript cannot pass a module to a function.
def _siamese_views(tokens: torch.Tensor) -> torch.Tensor:
    """(batch, L, C) -> (4 * batch, L, C): the sequence, channels reversed, tokens reversed, both reversed."""
    return torch.cat([tokens, tokens.flip([2]), tokens.flip([1]), tokens.flip([1, 2])])


def _merge_siamese_views(outputs: torch.Tensor) -> torch.Tensor:
    """The mean of the four views' outputs, each view undone."""
    same, channel_flipped, token_flipped, both_flipped = outputs.chunk(4)
    return (same + channel_flipped.flip([2]) + token_flipped.flip([1]) + both_flipped.flip([1, 2])) / 4


class MambaInConvolution(nn.Module):
    """Mamba-in-convolution (MIC, Eq. 2), with channel-spatial siamese learning (MICCSS) when
    ``channel_spatial_siamese`` is True: 1x1x1 conv -> BN -> ReLU (``nin``, ``norm``), the feature map flattened
    row-major into a (batch, D*H*W, C) sequence through one Mamba (or the CSS mean of four views of it, see
    :func:`channel_spatial_siamese_mean`), reshaped back, plus the post-ReLU features (inner residual), then
    1x1x1 conv -> BN -> ReLU (``nin2``, ``norm2``). Input and output are (batch, dim, D, H, W).

    Args:
        dim: channels C (the Mamba's d_model).
        d_state: SSM state size (16 in the segmentation network, 8 in the classifier's stem).
        d_conv: width of the Mamba's causal convolution.
        expand: Mamba's inner width factor.
        channel_spatial_siamese: average the four flipped views (the segmentation network) instead of one pass
            (the classifier's stem).
        output_convolution: the inner residual and ``nin2`` -> ``norm2`` -> ReLU after the Mamba (Eq. 2). False is
            the layer of the authors' nnU-Net v1 trainers (``nnunet/network_architecture/nnMamba.py``): it returns
            the reshaped Mamba output, and has no ``nin2`` / ``norm2``.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        channel_spatial_siamese: bool = True,
        output_convolution: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.channel_spatial_siamese = channel_spatial_siamese
        self.output_convolution = output_convolution
        self.nin = _conv1x1(dim, dim)
        self.norm = nn.BatchNorm3d(dim)
        self.relu = nn.ReLU(inplace=True)
        self.mamba = Mamba(d_model=dim, d_state=d_state, d_conv=d_conv, expand=expand)
        if output_convolution:
            self.nin2 = _conv1x1(dim, dim)
            self.norm2 = nn.BatchNorm3d(dim)
            self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.dim:
            raise ValueError(f"MambaInConvolution expects (batch, {self.dim}, D, H, W), got {list(x.shape)}.")
        act = self.relu(self.norm(self.nin(x)))
        tokens = act.flatten(2).transpose(1, 2)  # (batch, L, C), W fastest
        if self.channel_spatial_siamese:
            mixed = _merge_siamese_views(self.mamba(_siamese_views(tokens)))
        else:
            mixed = self.mamba(tokens)
        out = mixed.transpose(1, 2).reshape(act.shape)
        if hasattr(self, "nin2"):  # output_convolution (hasattr: TorchScript compiles the layers only where built)
            return self.relu2(self.norm2(self.nin2(out + act)))
        return out


class nnMambaResidualBlock(nn.Module):
    """ResNet basic block (3x3x3 conv -> BN -> ReLU -> 3x3x3 conv -> BN, plus the identity or ``downsample``, then
    ReLU) with an optional ``mamba_layer`` branch that reads the block's input and is added to the convolution path
    before the residual sum (nnMamba's ``BasicBlock``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        mamba_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.mamba_layer = mamba_layer
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.mamba_layer is not None:
            out = out + self.mamba_layer(x)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class nnMambaResidualStage(nn.Sequential):
    """A residual stage (nnMamba's ``make_res_layer``): a strided block with a 1x1x1 conv + BN downsample, then
    ``blocks - 1`` blocks that all carry the **same** ``mamba_layer`` module (as released: one set of Mamba weights
    per stage, counted once by ``parameters()`` and listed under every block by ``state_dict()``)."""

    def __init__(
        self, in_channels: int, out_channels: int, blocks: int, stride: int = 2, mamba_layer: nn.Module | None = None
    ) -> None:
        if blocks < 1:
            raise ValueError(f"a residual stage needs at least one block, got blocks={blocks}.")
        downsample = nn.Sequential(_conv1x1(in_channels, out_channels, stride), nn.BatchNorm3d(out_channels))
        super().__init__(
            nnMambaResidualBlock(in_channels, out_channels, stride, downsample),
            *(nnMambaResidualBlock(out_channels, out_channels, mamba_layer=mamba_layer) for _ in range(blocks - 1)),
        )


class nnMambaDoubleConv(nn.Module):
    """(3x3x3 conv with bias -> BN -> ReLU) twice; the first convolution may be strided (nnMamba's ``DoubleConv``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class nnMambaSkipScaling(nn.Module):
    """Squeeze-excitation scaling of an encoder skip (Eq. 3): global average pooling, Linear(C -> C // r) -> ReLU ->
    Linear(C // r -> C) -> sigmoid, multiplied channel-wise onto the skip (nnMamba's ``Attentionlayer``, ``r`` 16)."""

    def __init__(self, dim: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = dim // reduction
        if hidden < 1:
            raise ValueError(f"skip scaling of {dim} channels with reduction {reduction} leaves no hidden unit.")
        self.layer1 = nn.Linear(dim, hidden)
        self.layer2 = nn.Linear(hidden, dim)

    def forward(self, skip: torch.Tensor) -> torch.Tensor:
        pooled = skip.mean(dim=[axis for axis in range(2, skip.dim())])
        gate = torch.sigmoid(self.layer2(torch.relu(self.layer1(pooled))))
        return skip * gate.reshape(list(gate.shape) + [1] * (skip.dim() - 2))


class HierarchicalSequenceMamba(nn.Module):
    """The hierarchical sequence of the classifier (Sec. 2.3): pooled stage features, each reshaped row-major to
    ``rows`` rows and concatenated along the token axis, (batch, rows, tokens), pass ReLU and a small Mamba over the
    tokens (d_model = ``rows``) with a residual (``MambaSeq`` of the first released classifier, d_state 8,
    d_conv 2)."""

    def __init__(self, rows: int, d_state: int = 8, d_conv: int = 2, expand: int = 2) -> None:
        super().__init__()
        self.rows = rows
        self.mamba = Mamba(d_model=rows, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """``pooled``: (batch, channels) tensors whose channels are multiples of ``rows``; returns (batch, rows,
        tokens) with tokens = total channels / rows."""
        sequence = torch.cat([p.reshape(p.shape[0], self.rows, -1) for p in pooled], dim=2)
        # ReLU before the Mamba as released (a no-op on pooled post-ReLU features, kept for other inputs)
        sequence = torch.relu(sequence)
        return self.mamba(sequence.transpose(1, 2)).transpose(1, 2) + sequence
