# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
The VMamba blocks that Swin-UMamba and Swin-UMamba† are built from (Liu et al., "VMamba: Visual State Space Model",
arXiv:2401.10166; the "v0" code of January 2024 that the ImageNet VMamba-Tiny checkpoint was trained with), plus the
patch expanding layers of the Swin-UMamba† decoder (from Swin-Unet, Cao et al., arXiv:2105.05537).

Parameter names and shapes are VMamba v0's, so that checkpoint loads without renaming inside a block. Every layer
here works on channels-last tensors (batch, H, W, C), as VMamba does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import DropPath

from shared_networks.blocks.ssm_init import (
    DT_INIT_MODES,
    init_dt_projection_,
    s4d_real_a_log,
    ssm_skip,
)
from shared_networks.ssm import selective_scan
from shared_networks.ssm.scripted import selective_scan_scripted
from shared_networks.utils import look_up_argument

__all__ = [
    "SS2D",
    "VSSBlock",
    "VSSLayer",
    "PatchEmbed2D",
    "PatchMerging2D",
    "PatchExpand2D",
    "VMambaEncoder",
    "SwinUMambaDecoder",
    "SS2D_DIRECTIONS",
]

# The four scan directions of SS2D, in the order their parameters are stacked.
SS2D_DIRECTIONS = ("row-major", "column-major", "row-major reversed", "column-major reversed")


class SS2D(nn.Module):
    """2D selective scan (SS2D) of VMamba v0: four directional scans of one feature map through one selective scan.

    ``in_proj`` gives ``x`` and the gate ``z``; ``x`` passes a depthwise 3x3 convolution and SiLU and is read in four
    orders (row-major, column-major, and both reversed); each order has its own ``x_proj`` (rows: dt rank, B, C),
    ``dt_proj``, ``A`` and ``D``, stacked into single parameters with the direction as leading axis (``A_logs`` and
    ``Ds`` flatten it direction-major: row ``k * d_inner + channel``). The four outputs are put back in row-major
    order and summed, then ``out_norm`` (LayerNorm), gating by ``silu(z)`` and ``out_proj``.

    Args:
        d_model: token width C.
        d_state: SSM state size N.
        d_conv: kernel size of the depthwise convolution.
        expand: inner width factor (d_inner = expand * d_model).
        dt_rank: rank of the delta projection; "auto" = ceil(d_model / 16).
        dt_min: smallest initial step size.
        dt_max: largest initial step size.
        dt_init: "random" or "constant" initialisation of the dt projection weights.
        dt_scale: scale of the dt projection weight initialisation.
        dt_init_floor: lower clamp of the initial step size.
        dropout: dropout after ``out_proj`` (VMamba's attention dropout).
        conv_bias: whether the depthwise convolution has a bias.
        bias: whether ``in_proj`` and ``out_proj`` have a bias.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 3,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        dropout: float = 0.0,
        conv_bias: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        look_up_argument("dt_init", dt_init, DT_INIT_MODES)
        directions = len(SS2D_DIRECTIONS)
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv2d = nn.Conv2d(
            self.d_inner, self.d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2, groups=self.d_inner,
            bias=conv_bias,
        )
        x_proj_weight = torch.empty(directions, self.dt_rank + 2 * d_state, self.d_inner)
        for weight in x_proj_weight:  # each direction as a bias-free nn.Linear(d_inner, rank + 2N) is initialised
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.x_proj_weight = nn.Parameter(x_proj_weight)
        self.dt_projs_weight = nn.Parameter(torch.empty(directions, self.d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(directions, self.d_inner))
        for k in range(directions):
            init_dt_projection_(
                self.dt_projs_weight.data[k], self.dt_projs_bias.data[k], dt_init, dt_scale, dt_min, dt_max,
                dt_init_floor,
            )
        self.dt_projs_bias._no_reinit = True
        self.A_logs = s4d_real_a_log(directions * self.d_inner, d_state)
        self.Ds = ssm_skip(directions * self.d_inner)
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _scan(self, x: torch.Tensor) -> torch.Tensor:
        """The four directional scans of ``x`` (batch, d_inner, H, W); returns their sum in row-major order as
        (batch, d_inner, H * W), float32 or wider."""
        batch, channels, height, width = x.shape
        length = height * width
        rows = x.reshape(batch, channels, length)
        columns = x.transpose(2, 3).reshape(batch, channels, length)
        two = torch.stack([rows, columns], dim=1)
        xs = torch.cat([two, two.flip(-1)], dim=1)  # (batch, 4, d_inner, L), in SS2D_DIRECTIONS order

        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        # One scan over 4 * d_inner channels; group k of B/C serves the channels of direction k. The dt bias goes
        # into the scan. As in VMamba, the scan and its output are float32 under fp16 / bf16 autocast.
        dtype = torch.promote_types(xs.dtype, torch.float32)
        u = xs.to(dtype).reshape(batch, -1, length)
        delta = dts.to(dtype).reshape(batch, -1, length)
        a = -torch.exp(self.A_logs.to(dtype))
        delta_bias = self.dt_projs_bias.to(dtype).reshape(-1)
        if torch.jit.is_scripting():
            b, c = b.to(dtype), c.to(dtype)
            y = selective_scan_scripted(u, delta, a, b, c, self.Ds.to(dtype), None, delta_bias, True)
        else:
            y = selective_scan(
                u, delta, a, b.to(dtype), c.to(dtype), D=self.Ds.to(dtype), delta_bias=delta_bias, delta_softplus=True
            )
        y = y.reshape(batch, 4, channels, length)
        y_rows = y[:, 0] + y[:, 2].flip(-1)
        y_columns = y[:, 1] + y[:, 3].flip(-1)
        y_columns = y_columns.reshape(batch, channels, width, height).transpose(2, 3).reshape(batch, channels, length)
        return y_rows + y_columns

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, d_model) -> (batch, H, W, d_model)."""
        if x.ndim != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"SS2D expects (batch, H, W, C={self.d_model}) channels-last input, got {list(x.shape)}.")
        batch, height, width, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))
        y = self._scan(x).transpose(1, 2).reshape(batch, height, width, self.d_inner)
        y = self.out_norm(y) * F.silu(z)
        return self.dropout(self.out_proj(y))


class VSSBlock(nn.Module):
    """VMamba v0's visual state-space block: ``x + DropPath(SS2D(LayerNorm(x)))`` (no MLP), channels-last."""

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, attn_drop_rate: float = 0.0, d_state: int = 16) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(d_model=hidden_dim, d_state=d_state, dropout=attn_drop_rate)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.self_attention(self.ln_1(x)))


class VSSLayer(nn.Module):
    """``depth`` VSS blocks of one width; ``drop_path`` gives one stochastic-depth rate per block (or one for all)."""

    def __init__(
        self, dim: int, depth: int, drop_path: float | Sequence[float] = 0.0, attn_drop: float = 0.0, d_state: int = 16
    ) -> None:
        super().__init__()
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else [float(r) for r in drop_path]
        if len(rates) != depth:
            raise ValueError(f"drop_path must give one rate per block ({depth}), got {len(rates)}.")
        self.blocks = nn.ModuleList(
            VSSBlock(dim, drop_path=rate, attn_drop_rate=attn_drop, d_state=d_state) for rate in rates
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PatchEmbed2D(nn.Module):
    """Non-overlapping patch embedding: Conv2d (kernel = stride = ``patch_size``) to channels-last, then LayerNorm."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C_in, H, W) channels-first -> (batch, H / patch, W / patch, embed_dim) channels-last."""
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PatchMerging2D(nn.Module):
    """2x2 patch merging (Swin / VMamba v0): the four phases concatenated in the order (even row, even column),
    (odd row, even column), (even row, odd column), (odd row, odd column), LayerNorm(4C), Linear 4C -> 2C.

    The phase order is the one the pretrained ``reduction`` weights were trained with."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, C) -> (batch, H / 2, W / 2, 2C); H and W must be even."""
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"PatchMerging2D needs an even height and width, got {list(x.shape[1:3])}.")
        phases = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(phases, dim=-1)))


class PatchExpand2D(nn.Module):
    """Patch expanding (Swin-Unet): Linear ``in_channels -> scale**2 * out_channels`` (no bias), each token's vector
    read as (row offset, column offset, channel) and spread over a ``scale`` x ``scale`` block of pixels, then
    LayerNorm(out_channels). Swin-UMamba† uses ``scale=2, out_channels=in_channels // 2`` between decoder stages and
    ``scale=4, out_channels=in_channels`` for the last step to full resolution."""

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = scale
        self.out_channels = out_channels
        self.expand = nn.Linear(in_channels, scale * scale * out_channels, bias=False)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, in_channels) -> (batch, scale * H, scale * W, out_channels), channels-last."""
        batch, height, width, _ = x.shape
        s = self.scale
        x = self.expand(x).reshape(batch, height, width, s, s, self.out_channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height * s, width * s, self.out_channels)
        return self.norm(x)


def _init_vmamba_linear_and_norm(module: nn.Module) -> None:
    """VMamba's encoder initialisation: truncated-normal (std 0.02) Linear weights with zero bias, LayerNorm 1 / 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class VMambaEncoder(nn.Module):
    """The VMamba v0 backbone without its classifier, as Swin-UMamba uses it (``VSSMEncoder`` in the authors'
    code): patch embedding, then stages of VSS blocks with a patch merging between consecutive stages (kept in
    their own list, ``downsamples``, not inside the stages) and no final norm.

    With the defaults (VMamba-Tiny: depths (2, 2, 9, 2), dims 96 / 192 / 384 / 768, stochastic depth rising linearly
    from 0 to ``drop_path_rate`` over the blocks) the parameter names equal those of the ImageNet checkpoint after
    ``layers.{i}.downsample.`` -> ``downsamples.{i}.``.

    Args:
        patch_size: kernel and stride of the patch embedding.
        in_chans: channels of the input.
        depths: VSS blocks per stage.
        dims: width of each stage.
        d_state: SSM state size.
        drop_path_rate: stochastic-depth rate of the last block.
        attn_drop_rate: dropout inside each SS2D.
    """

    def __init__(
        self,
        patch_size: int = 4,
        in_chans: int = 3,
        depths: Sequence[int] = (2, 2, 9, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        attn_drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(dims):
            raise ValueError(f"depths and dims must have the same length, got {tuple(depths)} and {tuple(dims)}.")
        for i in range(1, len(dims)):
            if dims[i] != 2 * dims[i - 1]:
                raise ValueError(f"each stage must double the width (patch merging maps C to 2C), got {tuple(dims)}.")
        self.dims = tuple(dims)
        self.patch_embed = PatchEmbed2D(patch_size=patch_size, in_chans=in_chans, embed_dim=dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        start = 0
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            self.layers.append(
                VSSLayer(dim, depth, drop_path=rates[start:start + depth], attn_drop=attn_drop_rate, d_state=d_state)
            )
            start += depth
            if i < len(dims) - 1:
                self.downsamples.append(PatchMerging2D(dim))
        self.apply(_init_vmamba_linear_and_norm)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(batch, C_in, H, W) -> the output of every stage before its merging, channels-first, at H / patch,
        H / (2 patch), ..."""
        return self.forward_tokens(self.patch_embed(x))

    def forward_tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stages from the patch embedding's output, (batch, H / patch, W / patch, dims[0]) channels-last (where
        masked image modelling replaces masked tokens)."""
        features = []
        for layer, downsample in zip(self.layers, self.downsamples):  # every stage but the last merges its output
            x = layer(x)
            features.append(x.permute(0, 3, 1, 2))
            x = downsample(x)
        features.append(self.layers[-1](x).permute(0, 3, 1, 2))
        return features


class SwinUMambaDecoder(nn.Module):
    """The Mamba decoder of Swin-UMamba† (``UNetResDecoder`` in the authors' code), channels-last inside.

    From the deepest encoder feature upwards, each stage expands 2x (:class:`PatchExpand2D`), concatenates the
    encoder skip of that scale ([expanded, skip]), fuses with a Linear 2C -> C (``concat_back_dim``) and runs a
    :class:`VSSLayer`; a last 4x expansion returns to the input resolution. A 1x1 convolution head follows every
    stage (``seg_layers``); all heads exist so that weights trained with deep supervision load without it.

    Args:
        num_classes: output channels of each head.
        features_per_stage: encoder widths, shallowest first (96, 192, 384, 768 for VMamba-Tiny).
        depth: VSS blocks per decoder stage.
        drop_path_rate: stochastic depth of the first decoder block, falling linearly to 0 at the last.
        d_state: SSM state size.
        deep_supervision: in training mode, return every head's output, finest first, instead of only the
            full-resolution one (in eval mode only the full-resolution one is computed).
    """

    def __init__(
        self,
        num_classes: int,
        features_per_stage: Sequence[int] = (96, 192, 384, 768),
        depth: int = 2,
        drop_path_rate: float = 0.2,
        d_state: int = 16,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        features = list(features_per_stage)
        n_up = len(features) - 1
        rates = torch.linspace(drop_path_rate, 0, n_up * depth).tolist()
        self.stages = nn.ModuleList()
        self.expand_layers = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for s in range(n_up):
            below, skip = features[-(s + 1)], features[-(s + 2)]
            self.expand_layers.append(PatchExpand2D(below, below // 2, scale=2))
            self.stages.append(VSSLayer(skip, depth, drop_path=rates[s * depth:(s + 1) * depth], d_state=d_state))
            self.seg_layers.append(nn.Conv2d(skip, num_classes, kernel_size=1))
            self.concat_back_dim.append(nn.Linear(2 * skip, skip))
        self.expand_layers.append(PatchExpand2D(features[0], features[0], scale=4))
        self.stages.append(nn.Identity())
        self.seg_layers.append(nn.Conv2d(features[0], num_classes, kernel_size=1))

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """``skips``: the encoder features channels-first, shallowest first. Returns the full-resolution logits, or
        with deep supervision the list of every head's logits, finest first."""
        x = skips[-1].permute(0, 2, 3, 1)
        outputs = []
        every_head = self.deep_supervision and self.training
        # every level but the last (the 4x expansion to full resolution) concatenates a skip; zip stops there
        levels = zip(self.expand_layers, self.concat_back_dim, self.stages, self.seg_layers)
        for s, (expand, concat_back_dim, stage, seg_layer) in enumerate(levels):
            x = concat_back_dim(torch.cat([expand(x), skips[-(s + 2)].permute(0, 2, 3, 1)], dim=-1))
            x = stage(x)
            if every_head:
                outputs.append(seg_layer(x.permute(0, 3, 1, 2)))
        x = self.stages[-1](self.expand_layers[-1](x))
        outputs.append(self.seg_layers[-1](x.permute(0, 3, 1, 2)))
        if every_head:
            return outputs[::-1]
        return outputs[-1]
