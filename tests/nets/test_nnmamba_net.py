# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""nnMamba: parameter counts of the authors' releases (research notes, section 8), their state-dict layouts written
out by hand, CSS against four explicit passes, and the whole networks against a float64 functional composition
(sequential scan, explicit index reversals, loops for the hierarchical sequence)."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from shared_networks.blocks import HierarchicalSequenceMamba, Mamba, MambaInConvolution, channel_spatial_siamese_mean
from shared_networks.nets import nnMambaClassifier, nnMambaSeg
from shared_networks.ssm.reference import causal_conv1d_ref, selective_scan_ref

selective_scan_reference = partial(selective_scan_ref, dtype=torch.float64)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: nnMambaSeg(1, 16), 15_959_598),  # AMOS: 15 organs + background
        (lambda: nnMambaSeg(4, 4), 15_945_270),  # BraTS
        (lambda: nnMambaSeg(1, 6), 15_944_958),  # 6 landmark heatmaps
        (lambda: nnMambaSeg(1, 16, blocks=2), 11_312_942),
        (lambda: nnMambaSeg(1, 16, mamba_layer="nnunet", deep_supervision=True), 15_876_318),  # nnU-Net v1 trainers
        (lambda: nnMambaSeg(4, 4, mamba_layer="nnunet", deep_supervision=True), 15_859_266),
        (lambda: nnMambaClassifier(1, 1, mode="paper"), 12_905_633),
        (lambda: nnMambaClassifier(1, 1, mode="release"), 12_876_321),
    ],
    ids=["seg-1to16", "seg-4to4", "landmarks-6", "seg-blocks2", "seg-nnunet-1to16", "seg-nnunet-4to4",
         "classifier-paper", "classifier-release"],
)
def test_parameter_counts_equal_the_release(build, expected):
    assert n_params(build()) == expected


# ------------------------------------------------------------------------------------------------------------------
# the releases' layouts, by hand (nnMamba.py and nnMamba4cls.py of github.com/lhaof/nnMamba)


def bn(prefix, c):
    return {f"{prefix}{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}num_batches_tracked": ()
    }


def double_conv(prefix, cin, cout):
    return {
        f"{prefix}conv.0.weight": (cout, cin, 3, 3, 3), f"{prefix}conv.0.bias": (cout,),
        **bn(f"{prefix}conv.1.", cout),
        f"{prefix}conv.3.weight": (cout, cout, 3, 3, 3), f"{prefix}conv.3.bias": (cout,),
        **bn(f"{prefix}conv.4.", cout),
    }


def mamba_v1(prefix, d, n=16, k=4):
    """mamba_ssm v1 ``Mamba(d_model=d, d_state=n, d_conv=k, expand=2)``."""
    e, r = 2 * d, math.ceil(d / 16)
    return {
        f"{prefix}in_proj.weight": (2 * e, d), f"{prefix}conv1d.weight": (e, 1, k), f"{prefix}conv1d.bias": (e,),
        f"{prefix}x_proj.weight": (r + 2 * n, e), f"{prefix}dt_proj.weight": (e, r), f"{prefix}dt_proj.bias": (e,),
        f"{prefix}A_log": (e, n), f"{prefix}D": (e,), f"{prefix}out_proj.weight": (d, e),
    }


def mamba_layer(prefix, d, n=16, nnunet=False):
    keys = {f"{prefix}nin.weight": (d, d, 1, 1, 1), **bn(f"{prefix}norm.", d), **mamba_v1(f"{prefix}mamba.", d, n)}
    if not nnunet:  # the nnU-Net v1 trainers' layer ends after the Mamba
        keys |= {f"{prefix}nin2.weight": (d, d, 1, 1, 1), **bn(f"{prefix}norm2.", d)}
    return keys


def res_stage(prefix, cin, cout, blocks, mamba_dim=None, nnunet=False):
    keys = {}
    for b in range(blocks):
        c = cin if b == 0 else cout
        p = f"{prefix}{b}."
        keys |= {f"{p}conv1.weight": (cout, c, 3, 3, 3), **bn(f"{p}bn1.", cout),
                 f"{p}conv2.weight": (cout, cout, 3, 3, 3), **bn(f"{p}bn2.", cout)}
        if b == 0:
            keys |= {f"{p}downsample.0.weight": (cout, cin, 1, 1, 1), **bn(f"{p}downsample.1.", cout)}
        elif mamba_dim:
            keys |= mamba_layer(f"{p}mamba_layer.", mamba_dim, nnunet=nnunet)
    return keys


def nnmamba_seg_layout(in_ch, classes, ch=32, blocks=3, nnunet=False):
    keys = double_conv("in_conv.", in_ch, ch)
    for i, c in enumerate((ch, 2 * ch, 4 * ch), start=1):
        keys |= {f"att{i}.layer1.weight": (c // 16, c), f"att{i}.layer1.bias": (c // 16,),
                 f"att{i}.layer2.weight": (c, c // 16), f"att{i}.layer2.bias": (c,)}
        keys |= res_stage(f"layer{i}.", c, 2 * c, blocks, mamba_dim=2 * c, nnunet=nnunet)
    keys |= double_conv("conv5.", 12 * ch, 4 * ch) | double_conv("conv6.", 6 * ch, 2 * ch)
    keys |= double_conv("conv7.", 3 * ch, ch) | double_conv("conv8.", ch, classes)
    if nnunet:  # the nnU-Net release always has its deep-supervision heads
        for i, c in enumerate((ch, 2 * ch, 4 * ch), start=1):
            keys |= {f"ds{i}_cls_conv.weight": (classes, c, 1, 1, 1), f"ds{i}_cls_conv.bias": (classes,)}
    return keys


def nnmamba_classifier_layout(in_ch, classes, paper, ch=32, blocks=3):
    keys = double_conv("in_conv.", in_ch, ch) | mamba_layer("mamba_layer_stem.", ch, n=8)
    for i, c in enumerate((ch, 2 * ch, 4 * ch), start=1):
        keys |= res_stage(f"layer{i}.", c, 2 * c, blocks)
    if paper:
        keys |= mamba_v1("mamba_seq.mamba.", 2 * ch, n=8, k=2)
    return keys | {"mlp.0.weight": (ch, 14 * ch), "mlp.0.bias": (ch,), "mlp.3.weight": (classes, ch),
                   "mlp.3.bias": (classes,)}


def layout_of(network):
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


@pytest.mark.parametrize(
    "network, layout",
    [
        (lambda: nnMambaSeg(1, 16), lambda: nnmamba_seg_layout(1, 16)),
        (lambda: nnMambaSeg(4, 4), lambda: nnmamba_seg_layout(4, 4)),
        (lambda: nnMambaSeg(4, 4, mamba_layer="nnunet", deep_supervision=True),
         lambda: nnmamba_seg_layout(4, 4, nnunet=True)),
        (lambda: nnMambaClassifier(1, 1, mode="paper"), lambda: nnmamba_classifier_layout(1, 1, paper=True)),
        (lambda: nnMambaClassifier(1, 1, mode="release"), lambda: nnmamba_classifier_layout(1, 1, paper=False)),
    ],
    ids=["seg-1to16", "seg-4to4", "seg-nnunet-4to4", "classifier-paper", "classifier-release"],
)
def test_state_dict_layout_equals_the_release(network, layout):
    assert layout_of(network()) == layout()


def test_blocks_of_a_stage_share_one_mamba_layer_as_released():
    net = nnMambaSeg(1, 2, feature_size=16)
    for stage in (net.layer1, net.layer2, net.layer3):
        assert stage[0].mamba_layer is None
        assert stage[1].mamba_layer is stage[2].mamba_layer
    # a checkpoint lists the shared tensors under both blocks; loading it strictly fills the one module
    state = net.state_dict()
    other = nnMambaSeg(1, 2, feature_size=16)
    other.load_state_dict(state, strict=True)
    shared = other.layer2[2].mamba_layer.mamba.in_proj.weight
    assert torch.equal(shared, state["layer2.1.mamba_layer.mamba.in_proj.weight"])


def test_deep_supervision_heads_in_training_mode_only():
    net = nnMambaSeg(2, 3, feature_size=16, blocks=2, deep_supervision=True)
    assert {k.split(".")[0] for k in layout_of(net)} >= {"ds1_cls_conv", "ds2_cls_conv", "ds3_cls_conv"}
    x = torch.randn(2, 2, 32, 16, 48)
    outputs = net.train()(x)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 32, 16, 48), (2, 3, 16, 8, 24), (2, 3, 8, 4, 12),
                                                  (2, 3, 4, 2, 6)]
    sum(o.mean() for o in outputs).backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 3, 32, 16, 48)


@pytest.mark.parametrize("size, message", [((40, 32, 32), "D=40 (nearest valid: 32 or 48)"),
                                           ((32, 8, 32), "H=8 (nearest valid: 16)")])
def test_sizes_not_divisible_by_16_are_refused_with_the_nearest_sizes(size, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        nnMambaSeg(1, 2, feature_size=16)(torch.zeros(1, 1, *size))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="3D only"):
        nnMambaSeg(1, 2, spatial_dims=2)
    with pytest.raises(ValueError, match="feature_size >= 16"):
        nnMambaSeg(1, 2, feature_size=8)
    with pytest.raises(ValueError, match="mode"):
        nnMambaClassifier(mode="papr")
    with pytest.raises(ValueError, match="pooling"):
        nnMambaClassifier(pooling="mean")


# ------------------------------------------------------------------------------------------------------------------
# float64 references


def reversed_index(n):
    return torch.tensor(list(range(n - 1, -1, -1)))


def mamba_reference(p, x):
    """mamba_ssm v1's Mamba (in_proj, causal depthwise conv + SiLU, x_proj, dt_proj, selective scan with D and the
    SiLU gate, out_proj) in float64 on (batch, L, d)."""
    e = p["D"].numel()
    rank, n = p["dt_proj.weight"].shape[1], p["A_log"].shape[1]
    xz = (x @ p["in_proj.weight"].t()).transpose(1, 2)
    xi, z = xz[:, :e], xz[:, e:]
    xi = causal_conv1d_ref(xi, p["conv1d.weight"][:, 0], p["conv1d.bias"], activation="silu", dtype=torch.float64)
    dbl = torch.einsum("kd,bdl->bkl", p["x_proj.weight"], xi)
    dt, b, c = dbl[:, :rank], dbl[:, rank:rank + n], dbl[:, rank + n:]
    delta = torch.einsum("dr,brl->bdl", p["dt_proj.weight"], dt)
    y, _ = selective_scan_reference(xi, delta, -torch.exp(p["A_log"]), b, c, D=p["D"], z=z,
                                    delta_bias=p["dt_proj.bias"], delta_softplus=True)
    return y.transpose(1, 2) @ p["out_proj.weight"].t()


def test_css_is_the_mean_of_four_explicitly_flipped_passes():
    torch.manual_seed(0)
    mamba = Mamba(d_model=6, d_state=4).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    tokens, channels = reversed_index(11), reversed_index(6)
    with torch.no_grad():
        passes = [
            mamba(x),
            mamba(x[:, :, channels])[:, :, channels],
            mamba(x[:, tokens])[:, tokens],
            mamba(x[:, tokens][:, :, channels])[:, tokens][:, :, channels],
        ]
        expected = (passes[0] + passes[1] + passes[2] + passes[3]) / 4
        actual = channel_spatial_siamese_mean(mamba, x)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    # every view contributes something of its own (the channel flip is not a reordering of positions)
    for i in range(1, 4):
        assert (passes[i] - passes[0]).abs().max() > 1e-3


def sub(p, prefix):
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def bn_reference(p, x):
    return F.batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"], training=False, eps=1e-5)


def double_conv_reference(p, x, stride=1):
    x = F.relu(bn_reference(sub(p, "conv.1."), F.conv3d(x, p["conv.0.weight"], p["conv.0.bias"], stride, padding=1)))
    return F.relu(bn_reference(sub(p, "conv.4."), F.conv3d(x, p["conv.3.weight"], p["conv.3.bias"], padding=1)))


def mic_reference(p, x, css, nnunet=False):
    """MIC(CSS) of research notes 1.4: flatten W fastest; CSS with explicit index reversals. ``nnunet``: the nnU-Net
    trainers' layer (research notes 3): one pass, returned without residual or output convolution."""
    act = F.relu(bn_reference(sub(p, "norm."), F.conv3d(x, p["nin.weight"])))
    batch, c = act.shape[:2]
    seq = act.reshape(batch, c, -1).transpose(1, 2)
    m = sub(p, "mamba.")
    if css:
        t, ch = reversed_index(seq.shape[1]), reversed_index(c)
        mixed = (mamba_reference(m, seq) + mamba_reference(m, seq[:, :, ch])[:, :, ch]
                 + mamba_reference(m, seq[:, t])[:, t] + mamba_reference(m, seq[:, t][:, :, ch])[:, t][:, :, ch]) / 4
    else:
        mixed = mamba_reference(m, seq)
    out = mixed.transpose(1, 2).reshape(act.shape)
    if nnunet:
        return out
    return F.relu(bn_reference(sub(p, "norm2."), F.conv3d(out + act, p["nin2.weight"])))


def res_stage_reference(p, x, blocks, css=True, nnunet=False):
    for b in range(blocks):
        q = sub(p, f"{b}.")
        out = F.relu(bn_reference(sub(q, "bn1."), F.conv3d(x, q["conv1.weight"], stride=2 if b == 0 else 1,
                                                           padding=1)))
        out = bn_reference(sub(q, "bn2."), F.conv3d(out, q["conv2.weight"], padding=1))
        if "mamba_layer.nin.weight" in q:
            out = out + mic_reference(sub(q, "mamba_layer."), x, css, nnunet)
        if b == 0:
            x = bn_reference(sub(q, "downsample.1."), F.conv3d(x, q["downsample.0.weight"], stride=2))
        x = F.relu(out + x)
    return x


def skip_scaling_reference(p, skip):
    gate = torch.sigmoid(F.linear(F.relu(F.linear(skip.mean((2, 3, 4)), p["layer1.weight"], p["layer1.bias"])),
                                  p["layer2.weight"], p["layer2.bias"]))
    return skip * gate[:, :, None, None, None]


def up(x):
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


def nnmamba_seg_reference(p, x, blocks, nnunet=False):
    c1 = double_conv_reference(sub(p, "in_conv."), x, stride=2)
    c2 = res_stage_reference(sub(p, "layer1."), c1, blocks, css=not nnunet, nnunet=nnunet)
    c3 = res_stage_reference(sub(p, "layer2."), c2, blocks, css=not nnunet, nnunet=nnunet)
    c4 = res_stage_reference(sub(p, "layer3."), c3, blocks, css=not nnunet, nnunet=nnunet)
    c5 = double_conv_reference(sub(p, "conv5."), torch.cat([up(c4), skip_scaling_reference(sub(p, "att3."), c3)], 1))
    c6 = double_conv_reference(sub(p, "conv6."), torch.cat([up(c5), skip_scaling_reference(sub(p, "att2."), c2)], 1))
    c7 = double_conv_reference(sub(p, "conv7."), torch.cat([up(c6), skip_scaling_reference(sub(p, "att1."), c1)], 1))
    return double_conv_reference(sub(p, "conv8."), up(c7))


def nnmamba_classifier_reference(p, x, blocks, paper, pool):
    c1 = double_conv_reference(sub(p, "in_conv."), x, stride=2)
    c2 = res_stage_reference(sub(p, "layer1."), mic_reference(sub(p, "mamba_layer_stem."), c1, css=False) + c1,
                             blocks)
    c3 = res_stage_reference(sub(p, "layer2."), c2, blocks)
    c4 = res_stage_reference(sub(p, "layer3."), c3, blocks)
    pooled = [c.amax((2, 3, 4)) if pool == "max" else c.mean((2, 3, 4)) for c in (c2, c3, c4)]
    if not paper:
        return F.linear(F.relu(F.linear(torch.cat(pooled, 1), p["mlp.0.weight"], p["mlp.0.bias"])),
                        p["mlp.3.weight"], p["mlp.3.bias"])
    rows = pooled[0].shape[1]
    # the hierarchical sequence by loops: row r, token t of a group of k tokens holds channel r * k + t
    columns = []
    for v in pooled:
        k = v.shape[1] // rows
        for t in range(k):
            columns.append(torch.stack([v[:, r * k + t] for r in range(rows)], dim=1))
    seq = F.relu(torch.stack(columns, dim=2))  # (batch, rows, 7)
    seq = mamba_reference(sub(p, "mamba_seq.mamba."), seq.transpose(1, 2)).transpose(1, 2) + seq
    features = torch.stack([seq[:, r, t] for r in range(rows) for t in range(seq.shape[2])], dim=1)
    return F.linear(F.relu(F.linear(features, p["mlp.0.weight"], p["mlp.0.bias"])), p["mlp.3.weight"],
                    p["mlp.3.bias"])


def randomise_(network, seed=0):
    """Non-trivial values everywhere, BatchNorm running statistics included, so every tensor affects the check."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in network.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
            elif name.endswith("A_log"):
                t.copy_(torch.log(torch.rand(t.shape, generator=generator) * 4 + 0.5))
            elif name.endswith("dt_proj.bias"):
                t.copy_(torch.rand(t.shape, generator=generator) * 2 - 4)
            elif t.ndim > 1:  # weights: relative noise keeps the activations in range through the depth
                t.mul_(1 + 0.2 * torch.randn(t.shape, generator=generator))
            else:
                t.add_(0.1 * torch.randn(t.shape, generator=generator))
    return network.eval()


def relative_error(actual, expected):
    return float((actual.double() - expected).norm() / expected.norm())


def float64_params(network):
    return {k: v.detach().double() for k, v in network.state_dict().items()}


@pytest.mark.parametrize("layer", ["miccss", "nnunet"])
def test_nnmamba_seg_equals_float64_reference(layer):
    net = randomise_(nnMambaSeg(2, 3, feature_size=16, blocks=3, mamba_layer=layer, deep_supervision=layer == "nnunet"))
    x = torch.randn(2, 2, 32, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = net(x)
        expected = nnmamba_seg_reference(float64_params(net), x.double(), blocks=3, nnunet=layer == "nnunet")
    assert out.shape == (2, 3, 32, 16, 16)
    assert relative_error(out, expected) <= 1e-4


@pytest.mark.parametrize("mode, pooling", [("paper", "max"), ("paper", "avg"), ("release", "avg")])
def test_nnmamba_classifier_equals_float64_reference(mode, pooling):
    net = randomise_(nnMambaClassifier(1, 2, mode=mode, pooling=pooling, feature_size=8, blocks=2))
    x = torch.randn(3, 1, 19, 26, 15, generator=torch.Generator().manual_seed(4))  # any size: global pooling
    with torch.no_grad():
        out = net(x)
        expected = nnmamba_classifier_reference(float64_params(net), x.double(), blocks=2, paper=mode == "paper",
                                                pool=pooling)
    assert out.shape == (3, 2)
    assert relative_error(out, expected) <= 1e-4


def test_classifier_trains_one_step_on_a_binary_task():
    torch.manual_seed(0)
    net = nnMambaClassifier(1, 1, feature_size=8, blocks=2)
    x, y = torch.randn(2, 1, 24, 28, 24), torch.tensor([[0.0], [1.0]])
    loss = F.binary_cross_entropy_with_logits(net.train()(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("css", [True, False], ids=["MICCSS", "MIC"])
def test_mic_layer_equals_float64_reference(css):
    layer = randomise_(MambaInConvolution(8, d_state=4, channel_spatial_siamese=css), seed=2)
    x = torch.randn(2, 8, 4, 6, 5, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = layer(x)
        p = float64_params(layer)
        expected, other = mic_reference(p, x.double(), css), mic_reference(p, x.double(), not css)
    assert relative_error(out, expected) <= 1e-4
    assert relative_error(out, other) > 1e-2  # the check tells MIC and MICCSS apart


def test_nnunet_trainers_mic_layer_equals_float64_reference():
    layer = randomise_(MambaInConvolution(8, d_state=4, channel_spatial_siamese=False, output_convolution=False))
    assert not hasattr(layer, "nin2") and not hasattr(layer, "norm2")
    x = torch.randn(2, 8, 4, 6, 5, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = layer(x)
    assert relative_error(out, mic_reference(float64_params(layer), x.double(), css=False, nnunet=True)) <= 1e-4


def test_hierarchical_sequence_equals_the_loops():
    block = randomise_(HierarchicalSequenceMamba(4), seed=3)
    generator = torch.Generator().manual_seed(6)
    pooled = [torch.rand(2, c, generator=generator) for c in (4, 8, 16)]
    with torch.no_grad():
        out = block(pooled)
    p = {f"mamba_seq.{k}": v for k, v in float64_params(block).items()}
    rows = 4
    columns = [torch.stack([v[:, r * (v.shape[1] // rows) + t] for r in range(rows)], 1).double()
               for v in pooled for t in range(v.shape[1] // rows)]
    seq = torch.stack(columns, dim=2)
    expected = mamba_reference(sub(p, "mamba_seq.mamba."), seq.transpose(1, 2)).transpose(1, 2) + seq
    assert out.shape == (2, 4, 7)
    assert relative_error(out, expected) <= 1e-4
