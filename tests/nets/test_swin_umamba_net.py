# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Swin-UMamba and Swin-UMamba†: parameter counts and state-dict layouts of the authors' release
(github.com/JiarunLiu/Swin-UMamba, written out by hand), and the whole networks against a float64 composition of
independent references (a per-direction sequential scan, loop-built scan orders and pixel shuffles, MONAI's blocks)."""

import copy
import math
import sys
import types
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from shared_networks.blocks.vmamba_blocks import SS2D, PatchExpand2D, PatchMerging2D
from shared_networks.bundle.checkpoints import CheckpointError, NonFiniteError
from shared_networks.nets import SwinUMamba, SwinUMambaD, load_vmamba_pretrained
from shared_networks.ssm.reference import selective_scan_ref

selective_scan_reference = partial(selective_scan_ref, dtype=torch.float64)
VMAMBA_TINY = {"depths": (2, 2, 9, 2), "dims": (96, 192, 384, 768)}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------------------------
# the release's layout, by hand


def vmamba_v0_layout(depths=VMAMBA_TINY["depths"], dims=VMAMBA_TINY["dims"], in_ch=3, patch=4, n=16, prefix=""):
    """Key -> shape of VMamba v0's encoder (the ImageNet checkpoint's names, before the downsample renaming)."""
    keys = {
        f"{prefix}patch_embed.proj.weight": (dims[0], in_ch, patch, patch),
        f"{prefix}patch_embed.proj.bias": (dims[0],),
        f"{prefix}patch_embed.norm.weight": (dims[0],),
        f"{prefix}patch_embed.norm.bias": (dims[0],),
    }
    for i, (depth, c) in enumerate(zip(depths, dims)):
        e, r = 2 * c, math.ceil(c / 16)
        for j in range(depth):
            p = f"{prefix}layers.{i}.blocks.{j}."
            keys[p + "ln_1.weight"] = keys[p + "ln_1.bias"] = (c,)
            a = p + "self_attention."
            keys[a + "in_proj.weight"] = (4 * c, c)
            keys[a + "conv2d.weight"] = (e, 1, 3, 3)
            keys[a + "conv2d.bias"] = (e,)
            keys[a + "x_proj_weight"] = (4, r + 2 * n, e)
            keys[a + "dt_projs_weight"] = (4, e, r)
            keys[a + "dt_projs_bias"] = (4, e)
            keys[a + "A_logs"] = (4 * e, n)
            keys[a + "Ds"] = (4 * e,)
            keys[a + "out_norm.weight"] = keys[a + "out_norm.bias"] = (e,)
            keys[a + "out_proj.weight"] = (c, e)
        if i < len(dims) - 1:
            keys[f"{prefix}layers.{i}.downsample.norm.weight"] = (4 * c,)
            keys[f"{prefix}layers.{i}.downsample.norm.bias"] = (4 * c,)
            keys[f"{prefix}layers.{i}.downsample.reduction.weight"] = (2 * c, 4 * c)
    return keys


def imagenet_checkpoint_layout():
    """The 212 tensors of vssmtiny_dp01_ckpt_epoch_292.pth's 'model' entry."""
    keys = vmamba_v0_layout()
    keys["norm.weight"] = keys["norm.bias"] = (768,)
    keys["head.weight"], keys["head.bias"] = (1000, 768), (1000,)
    return keys


def as_network_encoder(layout):
    """The release's renaming into the networks: prefix vssm_encoder., layers.i.downsample. -> downsamples.i."""
    out = {}
    for key, shape in layout.items():
        for i in range(3):
            key = key.replace(f"layers.{i}.downsample.", f"downsamples.{i}.")
        out["vssm_encoder." + key] = shape
    return out


def monai_res_block(prefix, cin, cout, k=3):
    keys = {f"{prefix}conv1.conv.weight": (cout, cin, k, k), f"{prefix}conv2.conv.weight": (cout, cout, k, k)}
    if cin != cout:
        keys[f"{prefix}conv3.conv.weight"] = (cout, cin, 1, 1)
    return keys


def swin_umamba_layout(in_ch=3, out_ch=8):
    f = [48, 96, 192, 384, 768]
    keys = {"stem.0.weight": (48, in_ch, 7, 7), "stem.0.bias": (48,), "stem.1.weight": (48,), "stem.1.bias": (48,)}
    keys.update(as_network_encoder(vmamba_v0_layout(in_ch=48, patch=2)))
    for i, (cin, cout) in enumerate(zip([in_ch] + f[:4], f), start=1):
        keys.update(monai_res_block(f"encoder{i}.layer.", cin, cout))
    for name, cin, cout in (("decoder6", 768, 768), ("decoder5", 768, 384), ("decoder4", 384, 192),
                            ("decoder3", 192, 96), ("decoder2", 96, 48)):
        keys[f"{name}.transp_conv.conv.weight"] = (cin, cout, 2, 2)
        keys.update(monai_res_block(f"{name}.conv_block.", 2 * cout, cout))
    keys.update(monai_res_block("decoder1.layer.", 48, 48))
    for i, c in enumerate(f[:4]):
        keys[f"out_layers.{i}.conv.conv.weight"] = (out_ch, c, 1, 1)
        keys[f"out_layers.{i}.conv.conv.bias"] = (out_ch,)
    return keys


def swin_umamba_d_layout(in_ch=3, out_ch=8):
    keys = as_network_encoder(vmamba_v0_layout(in_ch=in_ch))
    for s, (below, skip) in enumerate(((768, 384), (384, 192), (192, 96))):
        keys[f"decoder.expand_layers.{s}.expand.weight"] = (2 * below, below)
        keys[f"decoder.expand_layers.{s}.norm.weight"] = keys[f"decoder.expand_layers.{s}.norm.bias"] = (skip,)
        keys[f"decoder.concat_back_dim.{s}.weight"] = (skip, 2 * skip)
        keys[f"decoder.concat_back_dim.{s}.bias"] = (skip,)
        stage = vmamba_v0_layout(depths=(2,), dims=(skip,), prefix="")
        for key, shape in stage.items():
            if key.startswith("layers.0.blocks."):
                keys["decoder.stages." + str(s) + key[len("layers.0"):]] = shape
        keys[f"decoder.seg_layers.{s}.weight"] = (out_ch, skip, 1, 1)
        keys[f"decoder.seg_layers.{s}.bias"] = (out_ch,)
    keys["decoder.expand_layers.3.expand.weight"] = (1536, 96)
    keys["decoder.expand_layers.3.norm.weight"] = keys["decoder.expand_layers.3.norm.bias"] = (96,)
    keys["decoder.seg_layers.3.weight"] = (out_ch, 96, 1, 1)
    keys["decoder.seg_layers.3.bias"] = (out_ch,)
    return keys


def layout_of(network):
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


@pytest.mark.parametrize(
    "cls, in_ch, out_ch, expected",
    [
        (SwinUMamba, 3, 8, 59_890_688),  # research: released class built on CPU (Endoscopy)
        (SwinUMamba, 1, 14, 59_889_368),  # AbdomenMR
        (SwinUMambaD, 3, 8, 27_496_160),
        (SwinUMambaD, 1, 14, 27_497_720),
    ],
)
def test_parameter_counts_equal_the_release(cls, in_ch, out_ch, expected):
    assert n_params(cls(in_channels=in_ch, out_channels=out_ch)) == expected


@pytest.mark.parametrize("cls, layout", [(SwinUMamba, swin_umamba_layout), (SwinUMambaD, swin_umamba_d_layout)])
@pytest.mark.parametrize("in_ch, out_ch", [(3, 8), (1, 14)])
def test_state_dict_layout_equals_the_release(cls, layout, in_ch, out_ch):
    expected = layout(in_ch, out_ch)
    assert layout_of(cls(in_channels=in_ch, out_channels=out_ch)) == expected
    assert sum(math.prod(s) for s in expected.values()) == n_params(cls(in_channels=in_ch, out_channels=out_ch))


def test_imagenet_layout_has_212_tensors_and_22_9m_values():
    layout = imagenet_checkpoint_layout()
    assert len(layout) == 212
    assert sum(math.prod(s) for s in layout.values()) == 22_893_448


# ------------------------------------------------------------------------------------------------------------------
# float64 references


def direction_orders(height, width):
    """(rows, cols) of the tokens in each SS2D direction's scan order, from explicit loops."""
    row_major = [(r, c) for r in range(height) for c in range(width)]
    column_major = [(r, c) for c in range(width) for r in range(height)]
    orders = []
    for order in (row_major, column_major, row_major[::-1], column_major[::-1]):
        orders.append((torch.tensor([r for r, _ in order]), torch.tensor([c for _, c in order])))
    return orders


def ss2d_reference(p, x):
    """VMamba v0's SS2D (research notes 1.3) in float64, each direction its own scan. p: float64 parameters."""
    batch, height, width, _ = x.shape
    d = p["out_norm.weight"].numel()
    rank = p["dt_projs_weight"].shape[2]
    n = p["A_logs"].shape[1]
    xz = x @ p["in_proj.weight"].t()
    xi, z = xz[..., :d], xz[..., d:]
    xi = F.silu(F.conv2d(xi.permute(0, 3, 1, 2), p["conv2d.weight"], p["conv2d.bias"], padding=1, groups=d))
    y = torch.zeros(batch, d, height, width, dtype=torch.float64)
    for k, (rows, cols) in enumerate(direction_orders(height, width)):
        seq = xi[:, :, rows, cols]
        dbl = torch.einsum("cd,bdl->bcl", p["x_proj_weight"][k], seq)
        dt, b, c = dbl[:, :rank], dbl[:, rank:rank + n], dbl[:, rank + n:]
        delta = torch.einsum("dr,brl->bdl", p["dt_projs_weight"][k], dt)
        out, _ = selective_scan_reference(
            seq, delta, -torch.exp(p["A_logs"][k * d:(k + 1) * d]), b, c, D=p["Ds"][k * d:(k + 1) * d],
            delta_bias=p["dt_projs_bias"][k], delta_softplus=True,
        )
        y[:, :, rows, cols] += out
    y = F.layer_norm(y.permute(0, 2, 3, 1), (d,), p["out_norm.weight"], p["out_norm.bias"], eps=1e-5)
    return (y * F.silu(z)) @ p["out_proj.weight"].t()


def sub(p, prefix):
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def vss_layer_reference(p, x, depth):
    for j in range(depth):
        q = sub(p, f"blocks.{j}.")
        h = F.layer_norm(x, x.shape[-1:], q["ln_1.weight"], q["ln_1.bias"], eps=1e-5)
        x = x + ss2d_reference(sub(q, "self_attention."), h)
    return x


def merging_reference(p, x):
    """2x2 merging with the phase order written out: (0,0), (1,0), (0,1), (1,1)."""
    batch, height, width, c = x.shape
    out = torch.empty(batch, height // 2, width // 2, 4 * c, dtype=x.dtype)
    for i in range(height // 2):
        for j in range(width // 2):
            out[:, i, j] = torch.cat(
                [x[:, 2 * i, 2 * j], x[:, 2 * i + 1, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j + 1]], -1
            )
    out = F.layer_norm(out, (4 * c,), p["norm.weight"], p["norm.bias"], eps=1e-5)
    return out @ p["reduction.weight"].t()


def expand_reference(p, x, scale):
    """Token (h, w)'s expanded vector read as (p1, p2, c): pixel (h*s + p1, w*s + p2) gets channels c."""
    e = x @ p["expand.weight"].t()
    batch, height, width, total = e.shape
    c = total // scale**2
    out = torch.empty(batch, height * scale, width * scale, c, dtype=x.dtype)
    for p1 in range(scale):
        for p2 in range(scale):
            start = (p1 * scale + p2) * c
            out[:, p1::scale, p2::scale] = e[..., start:start + c]
    return F.layer_norm(out, (c,), p["norm.weight"], p["norm.bias"], eps=1e-5)


def encoder_reference(p, x, depths, patch):
    """VMamba encoder: stage outputs (channels-last) before merging."""
    x = F.conv2d(x, p["patch_embed.proj.weight"], p["patch_embed.proj.bias"], stride=patch).permute(0, 2, 3, 1)
    x = F.layer_norm(x, x.shape[-1:], p["patch_embed.norm.weight"], p["patch_embed.norm.bias"], eps=1e-5)
    outs = []
    for i, depth in enumerate(depths):
        x = vss_layer_reference(sub(p, f"layers.{i}."), x, depth)
        outs.append(x)
        if i < len(depths) - 1:
            x = merging_reference(sub(p, f"downsamples.{i}."), x)
    return outs


def float64_params(network):
    return {k: v.detach().double().clone() for k, v in network.state_dict().items()}


def swin_umamba_reference(network, x, depths):
    """Swin-UMamba in float64: our VSS parts replaced by the references above, MONAI's own blocks in float64."""
    p = float64_params(network)
    cnn = copy.deepcopy(network).double()
    x = x.double()
    stem = cnn.stem(x)
    stages = [s.permute(0, 3, 1, 2) for s in encoder_reference(sub(p, "vssm_encoder."), stem, depths, patch=2)]
    enc1, enc2 = cnn.encoder1(x), cnn.encoder2(stem)
    enc3, enc4, enc5 = cnn.encoder3(stages[0]), cnn.encoder4(stages[1]), cnn.encoder5(stages[2])
    dec4 = cnn.decoder6(stages[3], enc5)
    dec3 = cnn.decoder5(dec4, enc4)
    dec2 = cnn.decoder4(dec3, enc3)
    dec1 = cnn.decoder3(dec2, enc2)
    dec_out = cnn.decoder1(cnn.decoder2(dec1, enc1))
    return [cnn.out_layers[i](f) for i, f in enumerate((dec_out, dec1, dec2, dec3))]


def swin_umamba_d_reference(network, x, depths, decoder_depth):
    p = float64_params(network)
    skips = encoder_reference(sub(p, "vssm_encoder."), x.double(), depths, patch=4)
    d = sub(p, "decoder.")
    x, heads = skips[-1], []
    for s in range(3):
        x = expand_reference(sub(d, f"expand_layers.{s}."), x, 2)
        x = torch.cat([x, skips[-(s + 2)]], -1) @ d[f"concat_back_dim.{s}.weight"].t() + d[f"concat_back_dim.{s}.bias"]
        x = vss_layer_reference(sub(d, f"stages.{s}."), x, decoder_depth)
        heads.append(x)
    heads.append(expand_reference(sub(d, "expand_layers.3."), x, 4))
    logits = [
        F.conv2d(h.permute(0, 3, 1, 2), d[f"seg_layers.{s}.weight"], d[f"seg_layers.{s}.bias"])
        for s, h in enumerate(heads)
    ]
    return logits[::-1]


def relative_error(actual, expected):
    return float((actual.double() - expected).norm() / expected.norm())


def randomise_(network, seed=0):
    """Non-trivial values everywhere (e.g. LayerNorm affines, biases), so every parameter affects the check."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            if name.endswith("A_logs"):
                p.copy_(torch.log(torch.rand(p.shape, generator=generator) * 4 + 0.5))
            elif name.endswith("dt_projs_bias"):
                p.copy_(torch.rand(p.shape, generator=generator) * 2 - 4)
            else:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return network


def test_swin_umamba_equals_float64_reference():
    depths = (1, 1, 2, 1)
    # training mode (deep supervision heads), with stochastic depth off so that the output is deterministic
    net = randomise_(SwinUMamba(3, 5, feature_size=8, depths=depths, deep_supervision=True, drop_path_rate=0.0))
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = net(x)
        expected = swin_umamba_reference(net, x, depths)
    assert [tuple(o.shape) for o in outputs] == [(2, 5, 64, 96), (2, 5, 32, 48), (2, 5, 16, 24), (2, 5, 8, 12)]
    for out, ref in zip(outputs, expected):
        assert relative_error(out, ref) <= 1e-4
    with torch.no_grad():
        assert torch.equal(net.eval()(x), outputs[0])  # eval mode: the full-resolution head only
        net.train().deep_supervision = False
        assert torch.equal(net(x), outputs[0])


def test_swin_umamba_d_equals_float64_reference():
    depths = (1, 1, 2, 1)
    net = randomise_(SwinUMambaD(3, 5, feature_size=16, depths=depths, decoder_depth=1, deep_supervision=True,
                                 drop_path_rate=0.0))
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        outputs = net(x)
        expected = swin_umamba_d_reference(net, x, depths, decoder_depth=1)
    # the release's heads: H, H/4, H/8, H/16 (no H/2 head)
    assert [tuple(o.shape) for o in outputs] == [(2, 5, 64, 96), (2, 5, 16, 24), (2, 5, 8, 12), (2, 5, 4, 6)]
    for out, ref in zip(outputs, expected):
        assert relative_error(out, ref) <= 1e-4
    with torch.no_grad():
        assert torch.equal(net.eval()(x), outputs[0])
        net.train().deep_supervision = False
        assert torch.equal(net(x), outputs[0])


def test_ss2d_gradients_match_the_reference():
    torch.manual_seed(0)
    layer = randomise_(SS2D(d_model=8, d_state=4)).double()
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    grads = {k: p.grad.clone() for k, p in layer.named_parameters()}
    grad_x = x.grad.clone()
    x.grad = None
    params = {k: p.detach().clone().requires_grad_(True) for k, p in layer.named_parameters()}
    ss2d_reference(params, x).square().sum().backward()
    torch.testing.assert_close(x.grad, grad_x, rtol=1e-6, atol=1e-9)
    for k, p in params.items():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-6, atol=1e-9, msg=k)


def test_patch_merging_phase_order_and_expand_pixel_order():
    torch.manual_seed(0)
    merge = randomise_(PatchMerging2D(3)).double()
    x = torch.randn(1, 4, 6, 3, dtype=torch.float64)
    torch.testing.assert_close(merge(x), merging_reference(float64_params(merge), x))
    for scale, cin, cout in ((2, 8, 4), (4, 6, 6)):
        expand = randomise_(PatchExpand2D(cin, cout, scale)).double()
        y = torch.randn(1, 3, 2, cin, dtype=torch.float64)
        torch.testing.assert_close(expand(y), expand_reference(float64_params(expand), y, scale))


@pytest.mark.parametrize("cls", [SwinUMamba, SwinUMambaD])
def test_sizes_not_divisible_by_32_are_refused_with_the_nearest_sizes(cls):
    net = cls(3, 2, feature_size=8 if cls is SwinUMamba else 16, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"H=100 \(nearest valid: 96 or 128\)"):
        net(torch.zeros(1, 3, 100, 64))
    with pytest.raises(ValueError, match=r"W=20 \(nearest valid: 32\)"):
        net(torch.zeros(1, 3, 64, 20))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        net(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="2D only"):
        cls(3, 2, spatial_dims=3)


@pytest.mark.parametrize("cls", [SwinUMamba, SwinUMambaD])
def test_freeze_encoder_leaves_only_patch_embedding_and_decoder_trainable(cls):
    net = cls(3, 2, feature_size=8 if cls is SwinUMamba else 16, depths=(1, 1, 1, 1))
    net.freeze_encoder()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    expected = {n for n in dict(net.named_parameters()) if n.startswith("vssm_encoder.") and "patch_embed" not in n}
    assert frozen == expected and any("layers.0.blocks.0" in n for n in frozen)
    net.unfreeze_encoder()
    assert all(p.requires_grad for p in net.parameters())


# ------------------------------------------------------------------------------------------------------------------
# the ImageNet checkpoint (synthetic, with the published names and shapes)


def synthetic_checkpoint(layout, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) for k, shape in layout.items()}


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
    weights = synthetic_checkpoint(imagenet_checkpoint_layout())
    path = tmp_path_factory.mktemp("vmamba") / "vssmtiny_dp01_ckpt_epoch_292.pth"
    torch.save({"model": weights}, path)  # the published file holds the weights under 'model'
    return path, weights


@pytest.mark.parametrize(
    "cls, in_ch, loaded_patch_embed",
    [
        (SwinUMambaD, 3, ("proj.weight", "proj.bias", "norm.weight", "norm.bias")),  # RGB: the whole 4x4 embedding
        (SwinUMambaD, 1, ()),  # another channel count: patch embedding left random
        (SwinUMamba, 3, ("norm.bias",)),  # 2x2 embedding of the stem; the release's skip-list typo loads norm.bias
    ],
)
def test_imagenet_checkpoint_maps_every_tensor_where_the_release_puts_it(imagenet_file, cls, in_ch, loaded_patch_embed):
    path, weights = imagenet_file
    net = cls(in_channels=in_ch, out_channels=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_vmamba_pretrained(net, path)
    after = net.state_dict()

    expected = {}
    for key in weights:
        if key in ("norm.weight", "norm.bias", "head.weight", "head.bias"):
            continue
        if key.startswith("patch_embed.") and key[len("patch_embed."):] not in loaded_patch_embed:
            continue
        name = "vssm_encoder." + key
        for i in range(3):
            name = name.replace(f"layers.{i}.downsample.", f"downsamples.{i}.")
        expected[name] = key
    assert len(expected) == 204 + len(loaded_patch_embed)
    for name, key in expected.items():
        assert torch.equal(after[name], weights[key]), name
    assert sorted(report.loaded) == sorted(expected)
    assert set(report.left_random) == set(after) - set(expected)
    for name in report.left_random:
        assert torch.equal(after[name], before[name]), name
    assert set(report.skipped) == set(weights) - set(expected.values())
    assert f"{len(expected)} encoder tensors loaded" in str(report)


def test_imagenet_checkpoint_also_loads_as_a_plain_state_dict(imagenet_file, tmp_path):
    _, weights = imagenet_file
    path = tmp_path / "encoder_state_dict.pt"
    torch.save(weights, path)
    assert len(load_vmamba_pretrained(SwinUMambaD(3, 2), path).loaded) == 208


class _FakeCfgNode(dict):
    """Pickled under yacs's name, as VMamba's older uploads hold a yacs config."""


def test_checkpoint_with_a_pickled_config_says_how_to_resave(tmp_path, monkeypatch):
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    _FakeCfgNode.__module__, _FakeCfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode = _FakeCfgNode
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config)
    path = tmp_path / "old_upload.pth"
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "config": _FakeCfgNode(a=1)}, path)
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    with pytest.raises(CheckpointError, match=r"old_upload\.pth.*yacs config.*torch\.save\(\{'model': c\['model'\]\}"):
        load_vmamba_pretrained(SwinUMambaD(3, 2, feature_size=16, depths=(1, 1, 1, 1)), path)


@pytest.fixture(scope="module")
def tiny_d():
    return SwinUMambaD(3, 2)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"network_weights": {"a": torch.zeros(1)}, "optimizer_state": {}}, r"nnU-Net training checkpoint"),
        ({"network": {"a": torch.zeros(1)}, "optimizer": {}, "trainer": {}}, r"training checkpoint of this project"),
        ({"state": [1, 2]}, r"not a VMamba checkpoint: expected a dict with the encoder weights under 'model'"),
        ({"model": {"patch_embed.0.weight": torch.zeros(96, 3, 4, 4),
                    "layers.0.blocks.0.op.x_proj_weight": torch.zeros(4, 38, 192)}}, r"newer VMamba release"),
    ],
)
def test_wrong_checkpoint_kinds_are_named(tmp_path, tiny_d, content, message):
    path = tmp_path / "weights.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=rf"weights\.pth.*{message}|{message}.*weights\.pth"):
        load_vmamba_pretrained(tiny_d, path)


def test_checkpoint_of_another_vmamba_size_or_shape_is_refused(tmp_path, tiny_d):
    # VMamba-Small: 18 more blocks of 13 tensors
    small = {k: torch.zeros(s) for k, s in vmamba_v0_layout(depths=(2, 2, 27, 2)).items()}
    path = tmp_path / "vssm_small.pth"
    torch.save({"model": small}, path)
    with pytest.raises(CheckpointError, match=r"vssm_small\.pth.*234 tensor\(s\) have no place in the encoder"):
        load_vmamba_pretrained(tiny_d, path)

    bad = {k: torch.zeros(s) for k, s in vmamba_v0_layout(n=8).items()}  # d_state 8
    path = tmp_path / "d_state_8.pth"
    torch.save({"model": bad}, path)
    with pytest.raises(CheckpointError, match=r"d_state_8\.pth.*shape mismatch.*\(768, 8\) vs \(768, 16\)"):
        load_vmamba_pretrained(tiny_d, path)

    partial_file = tmp_path / "first_stage_only.pth"
    torch.save({"model": {k: torch.zeros(s) for k, s in vmamba_v0_layout().items() if "layers.0." in k}}, partial_file)
    with pytest.raises(CheckpointError, match=r"first_stage_only\.pth.*encoder tensor\(s\) are not in the file"):
        load_vmamba_pretrained(tiny_d, partial_file)

    nan = synthetic_checkpoint(vmamba_v0_layout())
    nan["layers.1.blocks.0.ln_1.weight"][0] = float("nan")
    torch.save({"model": nan}, tmp_path / "nan.pth")
    with pytest.raises(NonFiniteError, match=r"nan\.pth.*layers\.1\.blocks\.0\.ln_1\.weight"):
        load_vmamba_pretrained(tiny_d, tmp_path / "nan.pth")

    with pytest.raises(TypeError, match="needs a SwinUMamba or SwinUMambaD network, got Linear"):
        load_vmamba_pretrained(torch.nn.Linear(2, 2), path)
