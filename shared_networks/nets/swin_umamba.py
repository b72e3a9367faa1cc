# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Swin-UMamba and Swin-UMamba†, and the loading of their ImageNet-pretrained VMamba encoder.

- Liu, Yang, Zhou, Li, Liu: "Swin-UMamba: Mamba-based UNet with ImageNet-based pretraining", MICCAI 2024,
  https://arxiv.org/abs/2402.03302 (``SwinUMamba``, the CNN decoder).
- Liu et al.: "Swin-UMamba†: Adapting Mamba-based vision foundation models for medical image segmentation",
  IEEE TMI (``SwinUMambaD``, the Mamba decoder; ``SwinUMambaMIM``, the masked-image-modelling adaptation of
  Sec. III-F, which the authors did not release: built after SimMIM, https://github.com/microsoft/SimMIM, whose
  recipe the paper's numbers match).

Authors' code: https://github.com/JiarunLiu/Swin-UMamba (``nnunetv2/nets/SwinUMamba.py``, ``SwinUMambaD.py``).
The ImageNet encoder is VMamba-Tiny v0 (``vssmtiny_dp01_ckpt_epoch_292.pth``, https://github.com/MzeroMiko/VMamba,
release tag ``#v0cls``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock

from shared_networks.blocks.vmamba_blocks import SwinUMambaDecoder, VMambaEncoder
from shared_networks.bundle.checkpoints import CheckpointError, check_finite, read_checkpoint, unwrap_module
from shared_networks.io import save_atomically
from shared_networks.utils import check_network_input

__all__ = [
    "SwinUMamba",
    "SwinUMambaD",
    "SwinUMambaMIM",
    "VMambaLoadReport",
    "load_vmamba_pretrained",
    "save_vmamba_encoder",
]

logger = logging.getLogger(__name__)

# The input checks divide by 32 (five halvings: stem / patch embedding and four stages); a literal there, as
# TorchScript reads no module-level ints.


def _check_2d(network: str, spatial_dims: int) -> None:
    if spatial_dims != 2:
        raise ValueError(
            f"{network} is 2D only (its VMamba encoder and the ImageNet weights are 2D), "
            f"got spatial_dims={spatial_dims}."
        )


class _FreezableEncoderMixin:
    """``freeze_encoder`` / ``unfreeze_encoder`` as released: every VMamba encoder parameter except the patch
    embedding's stops (or restarts) receiving gradients."""

    @torch.no_grad()
    def freeze_encoder(self) -> None:
        for name, parameter in self.vssm_encoder.named_parameters():
            if "patch_embed" not in name:
                parameter.requires_grad_(False)

    @torch.no_grad()
    def unfreeze_encoder(self) -> None:
        for parameter in self.vssm_encoder.parameters():
            parameter.requires_grad_(True)


class SwinUMamba(_FreezableEncoderMixin, nn.Module):
    """Swin-UMamba (MICCAI 2024): a VMamba encoder behind a convolutional stem, with a UNETR-style residual CNN
    decoder, exactly as released.

    A 7x7 stride-2 convolution with affine InstanceNorm (no activation) takes the image to H/2; the VMamba encoder
    (2x2 patch embedding, then VSS stages) gives features at H/4 ... H/32. Residual blocks on the raw input, the stem
    output and the first three stage outputs make the skips; five up-blocks and a last residual block decode; 1x1
    heads read the features at H, H/2, H/4 and H/8. The state-dict keys and shapes equal the release's
    (``stem``, ``vssm_encoder``, ``encoder1..5``, ``decoder1..6``, ``out_layers``): 59,890,688 parameters for 3 input
    channels and 8 classes.

    Args:
        in_channels: input channels (3 for RGB frames).
        out_channels: output channels (classes, background included); the output is logits.
        spatial_dims: must be 2.
        deep_supervision: in training mode, return the four heads' logits, finest first (at H, H/2, H/4, H/8),
            instead of only the full-resolution one; in eval mode the output is always the full-resolution logits
            (as MONAI's ``DynUNet``; the release's trainer switches it off for validation and inference).
        feature_size: width of the stem; the skips are 1, 2, 4, 8 and 16 times it, the encoder stages 2 ... 16 times.
            48 is VMamba-Tiny's layout (needed for the ImageNet weights).
        depths: VSS blocks per encoder stage ((2, 2, 9, 2) = VMamba-Tiny).
        d_state: SSM state size.
        drop_path_rate: stochastic depth of the encoder's last block (rising linearly from 0).
        norm_name: normalisation of the CNN blocks.
        res_block: residual CNN blocks.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 8,
        spatial_dims: int = 2,
        deep_supervision: bool = False,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 9, 2),
        d_state: int = 16,
        drop_path_rate: float = 0.2,
        norm_name: tuple | str = "instance",
        res_block: bool = True,
    ) -> None:
        super().__init__()
        _check_2d("SwinUMamba", spatial_dims)
        if len(depths) != 4:
            raise ValueError(f"SwinUMamba has four encoder stages: depths needs 4 entries, got {tuple(depths)}.")
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        f = [feature_size * 2**i for i in range(5)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, f[0], kernel_size=7, stride=2, padding=3),
            nn.InstanceNorm2d(f[0], eps=1e-5, affine=True),
        )
        self.vssm_encoder = VMambaEncoder(
            patch_size=2, in_chans=f[0], depths=depths, dims=f[1:], d_state=d_state, drop_path_rate=drop_path_rate
        )

        def basic_block(cin: int, cout: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(2, cin, cout, kernel_size=3, stride=1, norm_name=norm_name, res_block=res_block)

        def up_block(cin: int, cout: int) -> UnetrUpBlock:
            return UnetrUpBlock(
                2, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name, res_block=res_block
            )

        self.encoder1 = basic_block(in_channels, f[0])
        self.encoder2 = basic_block(f[0], f[1])
        self.encoder3 = basic_block(f[1], f[2])
        self.encoder4 = basic_block(f[2], f[3])
        self.encoder5 = basic_block(f[3], f[4])
        self.decoder6 = up_block(f[4], f[4])
        self.decoder5 = up_block(f[4], f[3])
        self.decoder4 = up_block(f[3], f[2])
        self.decoder3 = up_block(f[2], f[1])
        self.decoder2 = up_block(f[1], f[0])
        self.decoder1 = basic_block(f[0], f[0])
        self.out_layers = nn.ModuleList(UnetOutBlock(2, f[i], out_channels) for i in range(4))

    def forward(self, x_in: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_network_input("SwinUMamba", x_in, self.in_channels, "HW", 32)
        stem = self.stem(x_in)
        stages = self.vssm_encoder(stem)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(stem)
        enc3 = self.encoder3(stages[0])
        enc4 = self.encoder4(stages[1])
        enc5 = self.encoder5(stages[2])
        dec4 = self.decoder6(stages[3], enc5)
        dec3 = self.decoder5(dec4, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec_out = self.decoder1(self.decoder2(dec1, enc1))
        if not (self.deep_supervision and self.training):
            return self.out_layers[0](dec_out)
        return [head(feature) for head, feature in zip(self.out_layers, (dec_out, dec1, dec2, dec3))]


def _init_he(module: nn.Module) -> None:
    """nnU-Net's He initialisation (negative slope 0.01) of every convolution, biases 0, as applied to
    Swin-UMamba†."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SwinUMambaD(_FreezableEncoderMixin, nn.Module):
    """Swin-UMamba† (IEEE TMI): the plain VMamba encoder (4x4 patch embedding) with a Mamba decoder of patch
    expanding and VSS blocks, exactly as released (``SwinUMambaD``).

    The decoder expands the H/32 feature 2x three times, each time fusing the encoder skip of that scale and running
    two VSS blocks, then 4x to full resolution; 1x1 heads read H/16, H/8, H/4 and H. The state-dict keys and shapes
    equal the release's (``vssm_encoder``, ``decoder.{expand_layers, concat_back_dim, stages, seg_layers}``):
    27,496,160 parameters for 3 input channels and 8 classes.

    Args:
        in_channels: input channels (3 for RGB frames; the ImageNet patch embedding loads only then).
        out_channels: output channels (classes, background included); the output is logits.
        spatial_dims: must be 2.
        deep_supervision: in training mode, return the four heads' logits, finest first (at H, H/4, H/8, H/16),
            instead of only the full-resolution one; in eval mode the output is always the full-resolution logits.
        feature_size: width of the first encoder stage; the stages are 1, 2, 4 and 8 times it (96 = VMamba-Tiny).
        depths: VSS blocks per encoder stage ((2, 2, 9, 2) = VMamba-Tiny).
        decoder_depth: VSS blocks per decoder stage.
        d_state: SSM state size.
        drop_path_rate: stochastic depth of the encoder's last and the decoder's first block.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 8,
        spatial_dims: int = 2,
        deep_supervision: bool = False,
        feature_size: int = 96,
        depths: Sequence[int] = (2, 2, 9, 2),
        decoder_depth: int = 2,
        d_state: int = 16,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        _check_2d("SwinUMambaD", spatial_dims)
        if len(depths) != 4:
            raise ValueError(f"SwinUMambaD has four encoder stages: depths needs 4 entries, got {tuple(depths)}.")
        self.in_channels = in_channels
        dims = [feature_size * 2**i for i in range(4)]
        self.vssm_encoder = VMambaEncoder(
            patch_size=4, in_chans=in_channels, depths=depths, dims=dims, d_state=d_state,
            drop_path_rate=drop_path_rate,
        )
        self.decoder = SwinUMambaDecoder(
            out_channels, dims, depth=decoder_depth, drop_path_rate=drop_path_rate, d_state=d_state,
            deep_supervision=deep_supervision,
        )
        self.apply(_init_he)

    @property
    def deep_supervision(self) -> bool:
        return self.decoder.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, value: bool) -> None:
        self.decoder.deep_supervision = bool(value)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_network_input("SwinUMambaD", x_in, self.in_channels, "HW", 32)
        return self.decoder(self.vssm_encoder(x_in))


class SwinUMambaMIM(_FreezableEncoderMixin, nn.Module):
    """The self-supervised adaptation network of Swin-UMamba† (TMI, Sec. III-F): masked image modelling on the
    unlabeled images of the target domain, in the SimMIM form. The tokens of the masked cells are replaced, after the
    patch embedding, by one learnable ``mask_token``; the VMamba encoder runs on all tokens; a final LayerNorm and a
    one-layer head (1x1 convolution to ``32 * 32 * in_channels`` channels and a 32x pixel shuffle) predict the pixels.
    Train it with :class:`shared_networks.losses.MaskedL1Loss` (L1 on the masked pixels only); its encoder then
    initialises :class:`SwinUMambaD` or :class:`SwinUMamba` through :func:`save_vmamba_encoder` and
    :func:`load_vmamba_pretrained`, like the ImageNet weights. Not a segmentation network: it is not exported by
    :mod:`shared_networks.nets`.

    Args:
        in_channels: image channels (3 for RGB; the ImageNet patch embedding loads only then).
        feature_size: width of the first encoder stage (96 = VMamba-Tiny).
        depths: VSS blocks per encoder stage.
        d_state: SSM state size.
        drop_path_rate: stochastic depth (SimMIM uses 0).
    """

    def __init__(
        self,
        in_channels: int = 3,
        feature_size: int = 96,
        depths: Sequence[int] = (2, 2, 9, 2),
        d_state: int = 16,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        dims = [feature_size * 2**i for i in range(len(depths))]
        self.vssm_encoder = VMambaEncoder(
            patch_size=4, in_chans=in_channels, depths=depths, dims=dims, d_state=d_state,
            drop_path_rate=drop_path_rate,
        )
        self.stride = 4 * 2 ** (len(depths) - 1)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, dims[0]))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.norm = nn.LayerNorm(dims[-1])
        self.head = nn.Sequential(
            nn.Conv2d(dims[-1], self.stride**2 * in_channels, kernel_size=1), nn.PixelShuffle(self.stride)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: images, (batch, in_channels, H, W), H and W divisible by 32.
            mask: 1 where pixels are masked, (batch, 1, H, W), constant over 4x4 tokens (e.g. from
                :class:`shared_networks.data.RandMaskCellsd`); None masks nothing.

        Returns:
            the reconstruction, (batch, in_channels, H, W).
        """
        check_network_input("SwinUMambaMIM", x, self.in_channels, "HW", 32)
        tokens = self.vssm_encoder.patch_embed(x)
        if mask is not None:
            if mask.shape[0] != x.shape[0] or mask.shape[-2:] != x.shape[-2:]:
                raise ValueError(
                    f"mask must be (batch, 1, H, W) of the image's size {list(x.shape[-2:])}, got {list(mask.shape)}."
                )
            # the value at each 4x4 token's first pixel, channels-last
            token_mask = mask[:, :1, ::4, ::4].permute(0, 2, 3, 1).to(tokens.dtype)
            tokens = tokens * (1 - token_mask) + self.mask_token * token_mask
        deepest = self.vssm_encoder.forward_tokens(tokens)[-1]
        deepest = self.norm(deepest.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(deepest)


def _vmamba_v0_name(encoder_key: str) -> str:
    return re.sub(r"^downsamples\.(\d+)\.", r"layers.\1.downsample.", encoder_key)


def save_vmamba_encoder(network: nn.Module, path: str | os.PathLike) -> str:
    """
    Write the VMamba encoder of a network (:class:`SwinUMambaMIM` after adaptation, or either segmentation network) as
    a VMamba v0 checkpoint: ``{'model': tensors}`` under the names of ``vssmtiny_dp01_ckpt_epoch_292.pth`` (plus the
    final ``norm`` of :class:`SwinUMambaMIM`), so :func:`load_vmamba_pretrained` reads it as it reads the ImageNet file.
    Written atomically; tensors only (it loads with ``weights_only=True``).

    Returns:
        the path written.
    """
    module = unwrap_module(network)
    encoder = getattr(module, "vssm_encoder", None)
    if not isinstance(encoder, VMambaEncoder):
        raise TypeError(f"save_vmamba_encoder needs a network with a VMamba encoder, got {type(module).__name__}.")
    weights = {_vmamba_v0_name(k): v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    if isinstance(module, SwinUMambaMIM):
        weights.update({f"norm.{k}": v.detach().cpu().clone() for k, v in module.norm.state_dict().items()})
    check_finite(weights, f"refusing to write the encoder of {type(module).__name__} to '{os.fspath(path)}'")
    save_atomically({"model": weights}, path)
    logger.info("Wrote the VMamba encoder (%d tensors) to '%s'.", len(weights), os.fspath(path))
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------------------------
# the ImageNet VMamba-Tiny (v0) checkpoint


@dataclass
class VMambaLoadReport:
    """What :func:`load_vmamba_pretrained` did: encoder tensors ``loaded`` from the file, checkpoint tensors
    ``skipped`` (with the reason) and network tensors ``left_random`` (their own initialisation)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    left_random: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        reasons: dict[str, int] = {}
        for reason in self.skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        skipped = "; ".join(f"{count} {reason}" for reason, count in reasons.items()) or "none"
        return (
            f"VMamba weights from '{self.path}': {len(self.loaded)} encoder tensors loaded; skipped from the file: "
            f"{skipped}; {len(self.left_random)} network tensors keep their own initialisation."
        )


_CLASSIFIER_KEYS = ("norm.weight", "norm.bias", "head.weight", "head.bias")
# names of later VMamba releases (v1/v2), which reorganised the blocks: op, norm, patch_embed.0, classifier, ...
_NEWER_VMAMBA_NAMES = re.compile(r"\.op\.|^patch_embed\.\d|^classifier\.|blocks\.\d+\.norm\.|downsample\.\d")
_V0_CHECKPOINT = "vssmtiny_dp01_ckpt_epoch_292.pth (VMamba release tag #v0cls)"


def _vmamba_state_dict(checkpoint: object, path: str) -> Mapping[str, torch.Tensor]:
    """The weights inside a VMamba checkpoint (``'model'``) or a plain state dict of VMamba v0 names."""
    if isinstance(checkpoint, Mapping):
        if isinstance(checkpoint.get("model"), Mapping):
            return checkpoint["model"]
        if "network_weights" in checkpoint:
            raise CheckpointError(
                f"'{path}' is an nnU-Net training checkpoint ('network_weights') of a whole trained network, not the "
                f"ImageNet VMamba encoder checkpoint ({_V0_CHECKPOINT}). To start from a trained Swin-UMamba, load "
                "its 'network_weights' as the network's weights instead."
            )
        if "network" in checkpoint and "optimizer" in checkpoint:
            raise CheckpointError(
                f"'{path}' is a training checkpoint of this project (entries 'network', 'optimizer', ...), not a "
                "VMamba encoder checkpoint; load it as the network's weights, or resume training from it."
            )
        if "patch_embed.proj.weight" in checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return checkpoint
    entries = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise CheckpointError(
        f"'{path}' is not a VMamba checkpoint: expected a dict with the encoder weights under 'model' (as in "
        f"{_V0_CHECKPOINT}), found {entries}."
    )


def load_vmamba_pretrained(network: nn.Module, path: str | os.PathLike) -> VMambaLoadReport:
    """
    Initialise the VMamba encoder of a :class:`SwinUMamba` or :class:`SwinUMambaD` from the ImageNet VMamba-Tiny v0
    checkpoint, as the authors' ``load_pretrained_ckpt`` does, with every shape checked.

    The file is read with ``torch.load(weights_only=True)``; its tensors under ``'model'`` (VMamba v0 names, 212
    tensors) map onto ``network.vssm_encoder`` with ``layers.{i}.downsample.`` renamed ``downsamples.{i}.``. The
    classifier (``norm``, ``head``) is skipped. The patch embedding loads only where its shape matches: for
    ``SwinUMambaD`` with 3 input channels (convolution and its LayerNorm); ``SwinUMamba`` embeds the 48-channel stem
    output with a 2x2 convolution, so of the patch embedding only ``norm.bias`` loads, as in the release (whose skip
    list names ``norm.weight`` twice). An encoder written by ``configs/adapt_mim.yaml`` has the same layout.

    Args:
        network: the network (a DistributedDataParallel wrapper is unwrapped).
        path: the checkpoint file.

    Returns:
        A :class:`VMambaLoadReport` (also logged).

    Raises:
        CheckpointError: the file cannot be read, holds pickled objects (e.g. VMamba's old ``config`` entry), is not a
            VMamba v0 checkpoint, or does not fit the encoder (a tensor without a place in it, a shape mismatch, an
            encoder tensor it does not provide, or nothing to load).
    """
    path = os.fspath(path)
    module = unwrap_module(network)
    encoder = getattr(module, "vssm_encoder", None)
    if not isinstance(encoder, VMambaEncoder):
        raise TypeError(
            f"load_vmamba_pretrained needs a SwinUMamba or SwinUMambaD network, got {type(module).__name__}."
        )
    try:
        checkpoint = read_checkpoint(path, map_location="cpu")
    except CheckpointError as error:
        if "yacs" not in str(error) and "CfgNode" not in str(error):
            raise
        raise CheckpointError(
            f"'{path}' holds a pickled yacs config object (the 'config' entry of VMamba's older uploads), which "
            "torch.load(weights_only=True) refuses. If you trust the file, re-save only its weights once (needs "
            "'pip install yacs'): python -c \"import torch; c = torch.load('IN', weights_only=False); "
            "torch.save({'model': c['model']}, 'OUT')\", then use OUT."
        ) from error
    weights = _vmamba_state_dict(checkpoint, path)
    newer = sorted(k for k in weights if _NEWER_VMAMBA_NAMES.search(k))
    if newer:
        raise CheckpointError(
            f"'{path}' uses the names of a newer VMamba release (e.g. '{newer[0]}'); Swin-UMamba's encoder is "
            f"VMamba v0: use {_V0_CHECKPOINT}."
        )
    check_finite(weights, f"refusing to load '{path}'")

    target = encoder.state_dict()
    report = VMambaLoadReport(path=path)
    release_patch_embed_norm_bias = isinstance(module, SwinUMamba)
    patch_embed_fits = all(
        k in weights and weights[k].shape == target[k].shape
        for k in ("patch_embed.proj.weight", "patch_embed.proj.bias")
    )
    no_place, mismatched, filled = [], [], {}
    for key, value in weights.items():
        if key in _CLASSIFIER_KEYS:
            report.skipped[key] = "classifier or final-norm tensors (not part of the encoder)"
            continue
        name = re.sub(r"^layers\.(\d+)\.downsample\.", r"downsamples.\1.", key)
        if name.startswith("patch_embed.") and not patch_embed_fits:
            if not (release_patch_embed_norm_bias and name == "patch_embed.norm.bias"):
                report.skipped[key] = "patch-embedding tensors that do not fit this network's input"
                continue
        if name not in target:
            no_place.append(key)
        elif tuple(value.shape) != tuple(target[name].shape):
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(target[name].shape)}")
        else:
            filled[name] = value
    problems = []
    if no_place:
        problems.append(f"{len(no_place)} tensor(s) have no place in the encoder (e.g. {', '.join(no_place[:3])})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (file vs network: {'; '.join(mismatched[:3])})")
    missing = sorted(k for k in target if k not in filled and not k.startswith("patch_embed."))
    if missing:
        problems.append(f"{len(missing)} encoder tensor(s) are not in the file (e.g. {', '.join(missing[:3])})")
    if problems or not filled:
        found = "; ".join(problems) if problems else "no tensor of the file fits the encoder"
        raise CheckpointError(
            f"'{path}' does not fit this {type(module).__name__} encoder (VMamba-Tiny v0 layout expected, "
            f"{len(target)} tensors): {found}. Is it a checkpoint of another architecture or VMamba size?"
        )
    encoder.load_state_dict({**target, **filled}, strict=True)
    prefix = "vssm_encoder."
    report.loaded = [prefix + k for k in target if k in filled]
    report.left_random = [k for k in module.state_dict() if not (k.startswith(prefix) and k[len(prefix):] in filled)]
    logger.info("%s", report)
    return report
