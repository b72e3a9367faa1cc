# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""SegMamba network and Mamba layer: parameter counts, state-dict key layout and scan orders against the authors'
release (github.com/ge-xing/SegMamba, model_segmamba/segmamba.py) and mamba-ssm's ``Mamba``, written out by hand."""

import math

import pytest
import torch

from shared_networks.blocks import Mamba, TriOrientatedMambaLayer, inter_slice_order
from shared_networks.blocks.scan_orders import tri_orientated_orders_scripted
from shared_networks.blocks.segmamba_blocks import FeatureUncertaintyEstimation, GatedSpatialConvolution
from shared_networks.nets import SegMamba

TINY = {"feature_sizes": (8, 16, 32, 64), "hidden_size": 32, "depths": (1, 1, 1, 1)}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def release_state_dict_layout(in_ch=4, out_ch=4, dims=(48, 96, 192, 384), hidden=768, depths=(2, 2, 2, 2)):
    """Key -> shape of the released SegMamba, written out by hand from the release's classes (independent of
    our code)."""
    keys = {}
    keys["vit.downsample_layers.0.0.weight"] = (dims[0], in_ch, 7, 7, 7)
    keys["vit.downsample_layers.0.0.bias"] = (dims[0],)
    for i in range(1, 4):
        keys[f"vit.downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2, 2)
        keys[f"vit.downsample_layers.{i}.1.bias"] = (dims[i],)
    for i, c in enumerate(dims):
        e, r, n = 2 * c, math.ceil(c / 16), 16
        for j in range(depths[i]):
            p = f"vit.stages.{i}.{j}."
            keys[p + "norm.weight"] = (c,)
            keys[p + "norm.bias"] = (c,)
            keys[p + "mamba.in_proj.weight"] = (2 * e, c)
            keys[p + "mamba.out_proj.weight"] = (c, e)
            for s, a in (("", "A_log"), ("_b", "A_b_log"), ("_s", "A_s_log")):
                keys[p + f"mamba.{a}"] = (e, n)
                keys[p + f"mamba.D{s}"] = (e,)
                keys[p + f"mamba.conv1d{s}.weight"] = (e, 1, 4)
                keys[p + f"mamba.conv1d{s}.bias"] = (e,)
                keys[p + f"mamba.x_proj{s}.weight"] = (r + 2 * n, e)
                keys[p + f"mamba.dt_proj{s}.weight"] = (e, r)
                keys[p + f"mamba.dt_proj{s}.bias"] = (e,)
        for name, k in (("proj", 3), ("proj2", 3), ("proj3", 1), ("proj4", 1)):
            keys[f"vit.gscs.{i}.{name}.weight"] = (c, c, k, k, k)
            keys[f"vit.gscs.{i}.{name}.bias"] = (c,)
        keys[f"vit.mlps.{i}.fc1.weight"] = (2 * c, c, 1, 1, 1)
        keys[f"vit.mlps.{i}.fc1.bias"] = (2 * c,)
        keys[f"vit.mlps.{i}.fc2.weight"] = (c, 2 * c, 1, 1, 1)
        keys[f"vit.mlps.{i}.fc2.bias"] = (c,)
    chans = [in_ch, *dims, hidden]
    for i in range(5):
        cin, cout = chans[i], chans[i + 1]
        keys[f"encoder{i + 1}.layer.conv1.conv.weight"] = (cout, cin, 3, 3, 3)
        keys[f"encoder{i + 1}.layer.conv2.conv.weight"] = (cout, cout, 3, 3, 3)
        keys[f"encoder{i + 1}.layer.conv3.conv.weight"] = (cout, cin, 1, 1, 1)
    ups = [hidden, *dims[::-1]]
    for level, (cin, cout) in zip((5, 4, 3, 2), zip(ups[:-1], ups[1:])):
        keys[f"decoder{level}.transp_conv.conv.weight"] = (cin, cout, 2, 2, 2)
        keys[f"decoder{level}.conv_block.conv1.conv.weight"] = (cout, 2 * cout, 3, 3, 3)
        keys[f"decoder{level}.conv_block.conv2.conv.weight"] = (cout, cout, 3, 3, 3)
        keys[f"decoder{level}.conv_block.conv3.conv.weight"] = (cout, 2 * cout, 1, 1, 1)
    keys["decoder1.layer.conv1.conv.weight"] = (dims[0], dims[0], 3, 3, 3)
    keys["decoder1.layer.conv2.conv.weight"] = (dims[0], dims[0], 3, 3, 3)
    keys["out.conv.conv.weight"] = (out_ch, dims[0], 1, 1, 1)
    keys["out.conv.conv.bias"] = (out_ch,)
    return keys


@pytest.fixture(scope="module")
def release_model():
    torch.manual_seed(0)
    return SegMamba(in_channels=4, out_channels=4)


def test_release_parameter_count_and_key_layout(release_model):
    assert n_params(release_model) == 67_416_196  # counted on the authors' release
    state = release_model.state_dict()
    assert len(state) == 291
    expected = release_state_dict_layout()
    assert set(state) == set(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_release_default_constructor_count():
    assert n_params(SegMamba(in_channels=1, out_channels=13)) == 67_363_213  # counted on the authors' release


def test_release_checkpoint_loads_strictly_and_reproduces_output(release_model, tmp_path):
    # A checkpoint in the release's layout (plain state dict, as their trainer saves it) with a DDP "module." prefix
    # stripped the way their loader does it.
    path = tmp_path / "best_model_0.9.pt"
    torch.save({"module." + k: v for k, v in release_model.state_dict().items()}, path)
    loaded = torch.load(path, weights_only=True)
    fresh = SegMamba(in_channels=4, out_channels=4)
    fresh.load_state_dict({k.removeprefix("module."): v for k, v in loaded.items()}, strict=True)
    for k, v in release_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


@pytest.mark.parametrize("c", [48, 96, 192, 384])
def test_tri_orientated_layer_count_formula(c):
    r = math.ceil(c / 16)
    assert n_params(TriOrientatedMambaLayer(c)) == 6 * c * c + 332 * c + 12 * c * r  # mamba-ssm's layer, 3 directions


@pytest.mark.parametrize("c", [48, 96, 192, 384])
def test_plain_mamba_matches_mamba_ssm_layout(c):
    layer = Mamba(d_model=c)
    e, r, n = 2 * c, math.ceil(c / 16), 16
    expected = {
        "in_proj.weight": (2 * e, c), "conv1d.weight": (e, 1, 4), "conv1d.bias": (e,), "x_proj.weight": (r + 2 * n, e),
        "dt_proj.weight": (e, r), "dt_proj.bias": (e,), "A_log": (e, n), "D": (e,), "out_proj.weight": (c, e),
    }
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == expected
    assert n_params(layer) == sum(math.prod(s) for s in expected.values())
    # S4D-real init of A, ones for D, softplus(dt bias) within [dt_min, dt_max] (dt_init_floor below dt_min).
    assert torch.allclose(layer.A_log.exp(), torch.arange(1, n + 1, dtype=torch.float32).expand(e, n))
    assert torch.equal(layer.D, torch.ones(e))
    dt = torch.nn.functional.softplus(layer.dt_proj.bias)
    assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6


def test_release_init_of_extra_directions_is_pytorch_default():
    torch.manual_seed(0)
    layer = TriOrientatedMambaLayer(48).mamba
    bound = 1 / math.sqrt(layer.dt_rank)  # nn.Linear default bias init bound
    for suffix in ("_b", "_s"):
        bias = getattr(layer, f"dt_proj{suffix}").bias
        assert bias.abs().max() <= bound
    # The first direction gets inverse-softplus dt biases, all clearly negative for dt <= 0.1.
    assert layer.dt_proj.bias.max() < -2.0


def test_mamba_state_dict_round_trip_gives_identical_output():
    torch.manual_seed(1)
    layer = Mamba(d_model=16, direction_suffixes=("", "_b")).eval()
    x = torch.randn(2, 10, 16)
    fresh = Mamba(d_model=16, direction_suffixes=("", "_b")).eval()
    fresh.load_state_dict(layer.state_dict(), strict=True)
    length = x.shape[1]
    rev = (torch.arange(length - 1, -1, -1),) * 2
    assert torch.equal(layer(x, [None, rev]), fresh(x, [None, rev]))


def release_inter_slice(x, nslices):
    """The release's chunk-and-interleave on (B, E, L) (its ``MambaLayer`` inter-slice reordering)."""
    chunks = x.chunk(nslices, dim=-1)
    return torch.stack(chunks, dim=-1).flatten(-2)


@pytest.mark.parametrize("shape", [(4, 3, 5), (8, 8, 8), (2, 6, 4)])
def test_inter_slice_order_is_the_release_permutation(shape):
    volume = torch.randn(2, 3, *shape)
    tokens = volume.flatten(2)
    perm, inv = inter_slice_order(shape)
    assert torch.equal(tokens[..., perm], volume.permute(0, 1, 3, 4, 2).flatten(2))
    assert torch.equal(tokens[..., perm], release_inter_slice(tokens, shape[0]))
    assert torch.equal(tokens[..., perm][..., inv], tokens)


@pytest.mark.parametrize("shape", [(4, 3, 5), (8, 8, 8), (2, 6, 4)])
def test_scripted_orders_are_the_release_permutations(shape):
    """The orders a scripted SegMamba builds with torch ops: forward, flipped, and the release's inter-slice one."""
    orders = torch.jit.script(tri_orientated_orders_scripted)(list(shape), torch.device("cpu"))
    tokens = torch.randn(2, 3, *shape).flatten(2)
    assert orders[0] is None
    (reverse, reverse_inverse), (inter, inter_inverse) = orders[1], orders[2]
    assert torch.equal(tokens[..., reverse], tokens.flip(-1)) and torch.equal(reverse_inverse, reverse)
    assert torch.equal(tokens[..., inter], release_inter_slice(tokens, shape[0]))
    assert torch.equal(tokens[..., inter][..., inter_inverse], tokens)


def test_tri_orientated_equals_sum_of_three_explicit_scans():
    """ToM output equals out_proj(y_f + flip(y_r) + unpermute(y_s)) computed with explicit flips and reshapes."""
    torch.manual_seed(2)
    layer = TriOrientatedMambaLayer(8).eval()
    x = torch.randn(1, 8, 4, 2, 3)
    mamba = layer.mamba
    tokens = layer.norm(x.flatten(2).transpose(1, 2))
    xz = mamba.in_proj(tokens).transpose(1, 2)
    u, z = xz.chunk(2, dim=1)
    y_f = mamba._scan_direction(u, z, "")
    y_r = mamba._scan_direction(u.flip(-1), z.flip(-1), "_b").flip(-1)
    d = x.shape[2]
    y_s = mamba._scan_direction(release_inter_slice(u, d), release_inter_slice(z, d), "_s")
    y_s = y_s.reshape(1, -1, u.shape[-1] // d, d).transpose(-1, -2).flatten(-2)
    expected = mamba.out_proj((y_f + y_r + y_s).transpose(1, 2)).transpose(1, 2).reshape(x.shape) + x
    assert torch.allclose(layer(x), expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["release", "paper"])
@pytest.mark.parametrize("size", [(16, 32, 48), (32, 16, 16)])
def test_any_16_divisible_size_runs_forward_and_backward(mode, size):
    torch.manual_seed(3)
    net = SegMamba(in_channels=2, out_channels=3, mode=mode, **TINY)
    x = torch.randn(1, 2, *size, requires_grad=True)
    y = net(x)
    assert y.shape == (1, 3, *size)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("size", [(24, 16, 16), (16, 16, 8), (16, 16), (16, 16, 16)])
def test_bad_sizes_raise_value_error(size):
    net = SegMamba(in_channels=1, out_channels=2, **TINY)
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 1, *size))


def test_paper_mode_differs_from_release():
    paper = SegMamba(in_channels=4, out_channels=4, mode="paper")
    keys = paper.state_dict().keys()
    assert not any(k.startswith("vit.gscs") or k.startswith("vit.mlps") for k in keys)
    assert any(".gsc.gate_branch." in k for k in keys) and any(".mlp." in k for k in keys)
    with pytest.raises(ValueError, match="mode"):
        SegMamba(mode="other")


def test_fue_matches_hand_computed_value():
    x = torch.tensor([1.0, 3.0]).reshape(1, 2, 1, 1, 1)  # channel mean 2
    m = 1 / (1 + math.exp(-2.0))
    u = -m * math.log(m)
    expected = x * (2 - u)
    assert torch.allclose(FeatureUncertaintyEstimation()(x), expected)


def test_paper_gsc_gates_multiplicatively():
    torch.manual_seed(4)
    gsc = GatedSpatialConvolution(3, 4, gate="multiply")
    x = torch.randn(1, 4, 4, 4, 4)
    expected = x + gsc.fuse(gsc.spatial_branch(x) * gsc.gate_branch(x))
    assert torch.allclose(gsc(x), expected)
    with torch.no_grad():
        gsc.gate_branch[1].weight.zero_()
        gsc.gate_branch[1].bias.zero_()
    # A zero gate removes the spatial branch: output is x + fuse(0).
    assert torch.allclose(gsc(x), x + gsc.fuse(torch.zeros_like(x)))


@pytest.mark.parametrize("mode", ["release", "paper"])
def test_trace_passes_torch_check_from_a_cold_order_cache(mode):
    """torch.jit.trace (as ``ckpt_export --use_trace`` calls it: with its own check, which traces twice and compares
    the graphs) works on a fresh process's first call, and the traced network reproduces eager mode elsewhere (the
    differentiable ops, which a trace records; without gradients eager mode takes the CPU inference kernels)."""
    from shared_networks.blocks import scan_orders

    scan_orders._build_cached.cache_clear()
    torch.manual_seed(0)
    net = SegMamba(spatial_dims=3, in_channels=4, out_channels=4, feature_sizes=(4, 8, 16, 32), hidden_size=32,
                   mode=mode).eval()
    example, other = torch.rand(1, 4, 32, 32, 32), torch.rand(1, 4, 32, 32, 32)
    expected = net(other).detach()
    with torch.no_grad():
        traced = torch.jit.trace(net, example)  # check_trace=True by default
        torch.testing.assert_close(traced(other), expected, rtol=0, atol=0)
