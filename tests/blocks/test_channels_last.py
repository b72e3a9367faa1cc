# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Channels-last execution: the instance-norm and Winograd-convolution swaps keep parameters and state dicts, the
swapped layers give float64 values in every mode, and SegMamba runs channels-last without gradients on the CPU."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_networks.blocks.channels_last import (
    ChannelsLastInstanceNorm2d,
    ChannelsLastInstanceNorm3d,
    WinogradConv3d,
    use_channels_last_instance_norms,
    use_winograd_convolutions,
)
from shared_networks.nets import SegMamba
from shared_networks.ssm.cpp_scan import load_extension

needs_kernels = pytest.mark.skipif(load_extension() is None, reason="the inference kernels are in the C++ extension")


def test_swap_replaces_only_instance_norms_without_running_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.InstanceNorm3d(4), nn.InstanceNorm3d(4, affine=True, eps=1e-3), nn.InstanceNorm2d(3),
        nn.InstanceNorm3d(4, track_running_stats=True), nn.BatchNorm3d(4), nn.Sequential(nn.InstanceNorm3d(2)),
    )
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 2.0)
    affine = (net[1].weight, net[1].bias)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert use_channels_last_instance_norms(net) is net
    assert [type(m) for m in net[:5]] == [ChannelsLastInstanceNorm3d, ChannelsLastInstanceNorm3d,
                                          ChannelsLastInstanceNorm2d, nn.InstanceNorm3d, nn.BatchNorm3d]
    assert type(net[5][0]) is ChannelsLastInstanceNorm3d
    assert (net[1].weight, net[1].bias) == affine and net[1].eps == 1e-3 and net[1].affine
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


@needs_kernels
@pytest.mark.parametrize("affine", [False, True])
def test_swapped_norm_gives_instance_norm_values_with_and_without_gradients(affine):
    torch.manual_seed(1)
    norm = use_channels_last_instance_norms(nn.Sequential(nn.InstanceNorm3d(6, affine=affine)))[0]
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2.0)
            norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 6, 5, 7, 4) * 3 + 1
    weight, bias = (None, None) if not affine else (norm.weight.detach().double(), norm.bias.detach().double())
    expected = F.instance_norm(x.double(), weight=weight, bias=bias)
    for layout in (torch.channels_last_3d, torch.contiguous_format):
        with torch.inference_mode():
            out = norm(x.contiguous(memory_format=layout))
        # the kernel's result is channels-last whatever the input's layout, so the next layers stay channels-last
        assert out.is_contiguous(memory_format=torch.channels_last_3d)
        assert float((out.double() - expected).abs().max()) < 1e-5
    # with gradients it is F.instance_norm, differentiable like nn.InstanceNorm3d
    reference = nn.InstanceNorm3d(6, affine=affine)
    reference.load_state_dict(norm.state_dict())
    x.requires_grad_(True)
    grad = torch.autograd.grad(norm(x).sin().sum(), x)[0]
    expected_grad = torch.autograd.grad(reference(x).sin().sum(), x)[0]
    torch.testing.assert_close(grad, expected_grad)


def test_in_place_norms_are_only_those_listed_for_the_exact_block_type():
    from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetResBlock

    class OwnResBlock(UnetResBlock):  # a subclass may feed its norms differently: not matched
        pass

    blocks = nn.ModuleDict({
        "res": UnetResBlock(3, 4, 8, 3, 1, "instance"),
        "basic": UnetBasicBlock(3, 4, 8, 3, 1, "instance"),
        "own": OwnResBlock(3, 4, 8, 3, 1, "instance"),
        "plain": nn.Sequential(nn.InstanceNorm3d(4)),
    })
    use_channels_last_instance_norms(blocks)
    in_place = {name for name, m in blocks.named_modules() if getattr(m, "normalise_in_place", False)}
    assert in_place == {"res.norm1", "res.norm2", "res.norm3", "basic.norm1", "basic.norm2"}
    assert type(blocks["own"].norm1) is ChannelsLastInstanceNorm3d
    seg = SegMamba(in_channels=1, out_channels=2, feature_sizes=(8, 16, 32, 64), hidden_size=64)
    gsc_norms = {n.rsplit(".", 1)[1] for n, m in seg.named_modules() if ".gscs." in n and hasattr(m, "eps")}
    assert gsc_norms == {"norm", "norm2", "norm3", "norm4"}
    assert all(m.normalise_in_place for n, m in seg.named_modules() if ".gscs." in n and hasattr(m, "eps"))
    # the encoder's other norms read tensors used again afterwards: not in place
    assert not any(m.normalise_in_place for n, m in seg.named_modules()
                   if (".output_norms." in n or ".downsample_layers." in n) and hasattr(m, "normalise_in_place"))


@needs_kernels
def test_in_place_norm_writes_over_its_input_only_without_gradients():
    torch.manual_seed(2)
    block = use_channels_last_instance_norms(nn.ModuleDict({"n": nn.InstanceNorm3d(5, affine=True)}),
                                             {nn.ModuleDict: ("n",)})
    norm = block["n"]
    assert norm.normalise_in_place
    x = (torch.randn(2, 5, 4, 6, 3) * 2 + 1).contiguous(memory_format=torch.channels_last_3d)
    expected = F.instance_norm(x.double(), weight=norm.weight.double(), bias=norm.bias.double())
    kept = x.clone()
    with torch.no_grad():
        y = norm(kept)
    assert y.data_ptr() == kept.data_ptr() and float((y.double() - expected).abs().max()) < 1e-5
    # a contiguous input is converted first: the caller's tensor is left as it was
    contiguous = x.contiguous()
    with torch.no_grad():
        y = norm(contiguous)
    assert torch.equal(contiguous, x) and float((y.double() - expected).abs().max()) < 1e-5
    # with gradients (the affine parameters require them), F.instance_norm: the input stays
    original = x.clone()
    y = norm(x)
    assert torch.equal(x, original) and y.grad_fn is not None and y.data_ptr() != x.data_ptr()


def test_swapped_norm_scripts():
    net = use_channels_last_instance_norms(nn.Sequential(nn.InstanceNorm3d(3, affine=True), nn.InstanceNorm2d(2)))
    scripted = torch.jit.script(net[0])
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    x = torch.randn(1, 3, 4, 4, 4)
    torch.testing.assert_close(torch.jit.load(buffer)(x), F.instance_norm(x, weight=net[0].weight, bias=net[0].bias))
    torch.testing.assert_close(torch.jit.script(net[1])(x[:, :2, 0]), F.instance_norm(x[:, :2, 0]))


def test_winograd_swap_replaces_only_3x3x3_same_convolutions():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv3d(4, 16, 3, padding=1), nn.Conv3d(16, 16, 3, padding=1, bias=False),
        nn.Conv3d(16, 16, 3, stride=2, padding=1), nn.Conv3d(16, 16, 1), nn.Conv3d(16, 16, 3, padding=2, dilation=2),
        nn.Conv3d(16, 16, 3, padding=1, groups=2), nn.Conv3d(16, 12, 3, padding=1), nn.Conv3d(384, 384, 3, padding=1),
        nn.Conv3d(776, 384, 3, padding=1),
        nn.Conv2d(16, 16, 3, padding=1), nn.Sequential(nn.Conv3d(16, 8, 3, padding=1, padding_mode="replicate")),
    )
    parameters = [id(p) for p in net.parameters()]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert use_winograd_convolutions(net) is net
    # 384 x 384 is wider than F(3)'s limit (192 x 384) but within Winograd's (768 x 384): F(2); 776 x 384 is direct
    assert [type(m) is WinogradConv3d for m in net[:10]] == [True, True] + [False] * 5 + [True, False, False]
    assert type(net[10][0]) is nn.Conv3d
    assert [id(p) for p in net.parameters()] == parameters and net[1].bias is None
    assert (net[0].winograd_output_tile, net[7].winograd_output_tile) == (3, 2)
    after = net.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


@needs_kernels
@pytest.mark.parametrize("output_tile, tolerance", [(3, 2e-5), (2, 2e-6)])
def test_winograd_conv_values_gradients_and_new_weights(output_tile, tolerance):
    torch.manual_seed(4)
    conv = use_winograd_convolutions(nn.Sequential(nn.Conv3d(5, 16, 3, padding=1)), output_tile)[0]
    assert conv.winograd_output_tile == output_tile
    x = torch.randn(2, 5, 6, 9, 7)
    expected = F.conv3d(x.double(), conv.weight.detach().double(), conv.bias.detach().double(), padding=1)
    with torch.inference_mode():
        out = conv(x.contiguous(memory_format=torch.channels_last_3d))
        direct = conv(x)  # a contiguous input takes the direct convolution
    with torch.no_grad():  # the transform cached under inference_mode serves torch.no_grad too
        torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last_3d)), out, rtol=0, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert float((out.double() - expected).abs().max()) <= tolerance * float(expected.abs().max())
    torch.testing.assert_close(direct, F.conv3d(x, conv.weight, conv.bias, padding=1), rtol=0, atol=0)
    # with gradients it is nn.Conv3d
    xg = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_(True)
    grad = torch.autograd.grad(conv(xg).sin().sum(), conv.weight)[0]
    expected_grad = torch.autograd.grad(F.conv3d(xg, conv.weight, conv.bias, padding=1).sin().sum(), conv.weight)[0]
    torch.testing.assert_close(grad, expected_grad)
    # new weights (a loaded state dict) are transformed again, not served from the cache
    state = {"weight": torch.randn_like(conv.weight), "bias": torch.randn_like(conv.bias)}
    conv.load_state_dict(state)
    with torch.inference_mode():
        out = conv(x.contiguous(memory_format=torch.channels_last_3d))
    expected = F.conv3d(x.double(), state["weight"].double(), state["bias"].double(), padding=1)
    assert float((out.double() - expected).abs().max()) <= tolerance * float(expected.abs().max())
    with pytest.raises(ValueError, match="output_tile must be 2 or 3, got 4"):
        use_winograd_convolutions(nn.Conv3d(5, 16, 3, padding=1), 4)


@needs_kernels
def test_segmamba_runs_channels_last_only_without_gradients():
    torch.manual_seed(2)
    net = SegMamba(in_channels=2, out_channels=3, feature_sizes=(8, 16, 32, 64), hidden_size=32).eval()
    layouts = []
    net.decoder1.register_forward_hook(
        lambda module, inputs, output: layouts.append(output.is_contiguous(memory_format=torch.channels_last_3d))
    )
    x = torch.randn(1, 2, 32, 32, 48)
    expected = net(x).detach()
    with torch.inference_mode():
        out = net(x)
    assert layouts == [False, True]
    assert out.is_contiguous() and out.shape == expected.shape
    assert float((out - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
