# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The masked-image-modelling adaptation of Swin-UMamba† (TMI Sec. III-F): the cell mask, the masked L1 loss, the
mask token, and the encoder written in the VMamba v0 layout that load_vmamba_pretrained reads back."""

from __future__ import annotations

import pytest
import torch

from shared_networks.data import RandMaskCellsd
from shared_networks.losses import MaskedL1Loss
from shared_networks.nets import SwinUMamba, SwinUMambaD, load_vmamba_pretrained, save_vmamba_encoder
from shared_networks.nets.swin_umamba import SwinUMambaMIM

SMALL = {"feature_size": 16, "depths": (1, 1, 1, 1)}


def _mask(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    transform = RandMaskCellsd("image", cell_size=32, mask_ratio=0.6)
    transform.set_random_state(seed)
    return torch.stack([transform({"image": torch.zeros(3, size, size)})["mask"] for _ in range(batch)])


def test_cell_mask_masks_22_of_36_cells_at_192():
    mask = _mask(4, 192)
    assert mask.shape == (4, 1, 192, 192)
    cells = mask[:, 0, ::32, ::32]
    assert cells.sum(dim=(1, 2)).tolist() == [22.0] * 4  # ceil(0.6 * 36)
    # constant over each 32 x 32 cell
    assert torch.equal(mask, cells.repeat_interleave(32, 1).repeat_interleave(32, 2)[:, None])
    assert not torch.equal(mask[0], mask[1])  # drawn per image
    with pytest.raises(ValueError, match="not divisible by cell_size 32"):
        RandMaskCellsd("image")({"image": torch.zeros(3, 200, 192)})


def test_masked_l1_ignores_unmasked_pixels_and_matches_a_hand_computation():
    torch.manual_seed(0)
    image, prediction = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    mask = _mask(2, 64)
    loss = MaskedL1Loss()
    value = loss(prediction, torch.cat([image, mask], 1))
    masked = mask.expand_as(image).bool()
    expected = (prediction - image).abs()[masked].double().mean()  # mean over masked pixels and channels
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    changed = prediction.clone()
    changed[~masked] = 1e3  # anything outside the mask
    assert loss(changed, torch.cat([image, mask], 1)).item() == value.item()
    changed[masked] += 1  # inside it counts
    assert loss(changed, torch.cat([image, mask], 1)).item() != value.item()
    assert loss(prediction, torch.cat([image, torch.zeros_like(mask)], 1)).item() == 0.0
    with pytest.raises(ValueError, match=r"\(batch, 4, 64, 64\)"):
        loss(prediction, image)


def test_masked_cells_do_not_reach_the_network():
    torch.manual_seed(0)
    net = SwinUMambaMIM(**SMALL).eval()
    x, mask = torch.randn(2, 3, 64, 64), _mask(2, 64, seed=3)
    with torch.no_grad():
        out = net(x, mask)
        other = x + 5 * mask * torch.randn_like(x)  # new content in the masked cells only
        assert torch.equal(net(other, mask), out)
        assert not torch.equal(net(other), net(x))
    assert out.shape == x.shape
    (net(x, mask) ** 2).mean().backward()
    assert net.mask_token.grad is not None and net.mask_token.grad.abs().sum() > 0
    assert net.head[0].out_channels == 32 * 32 * 3 and net.norm.normalized_shape == (128,)
    with pytest.raises(ValueError, match="mask must be"):
        net(x, mask[:, :, :32])


def test_adapted_encoder_round_trip_into_both_networks(tmp_path):
    torch.manual_seed(0)
    mim = SwinUMambaMIM(**SMALL)
    for p in mim.parameters():
        p.data.normal_()  # distinct values everywhere
    path = save_vmamba_encoder(mim, tmp_path / "mim_encoder.pt")
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model"}
    names = set(saved["model"])
    # the VMamba v0 names of vssmtiny_dp01_ckpt_epoch_292.pth: merging under layers.<i>.downsample, final norm
    assert {"patch_embed.proj.weight", "layers.0.downsample.reduction.weight",
            "layers.3.blocks.0.self_attention.A_logs", "norm.weight"} <= names
    assert not any(name.startswith("downsamples.") for name in names)
    dagger = SwinUMambaD(3, 8, **SMALL)
    report = load_vmamba_pretrained(dagger, path)
    for key, value in mim.vssm_encoder.state_dict().items():
        assert torch.equal(dagger.vssm_encoder.state_dict()[key], value), key
    assert len(report.loaded) == len(mim.vssm_encoder.state_dict())
    unet = SwinUMamba(3, 8, feature_size=8, depths=(1, 1, 1, 1))
    report = load_vmamba_pretrained(unet, path)
    for key, value in mim.vssm_encoder.state_dict().items():
        if not key.startswith("patch_embed.") or key == "patch_embed.norm.bias":
            assert torch.equal(unet.vssm_encoder.state_dict()[key], value), key
    assert len(report.loaded) == len(mim.vssm_encoder.state_dict()) - 3  # 4x4 patch embedding does not fit
    with pytest.raises(TypeError, match="VMamba encoder"):
        save_vmamba_encoder(torch.nn.Linear(2, 2), tmp_path / "x.pt")
