# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The Mamba layer end to end against a float64 composition of the oracles (mamba-ssm's reference path)."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

import shared_networks.blocks.mamba as mamba_module
from shared_networks.blocks import Mamba, reversed_order
from shared_networks.blocks.scan_orders import tri_orientated_orders
from shared_networks.ssm.cpp_scan import load_extension
from shared_networks.ssm.reference import causal_conv1d_ref, selective_scan_ref

# the oracle runs in float64 whatever the inputs' dtype
selective_scan_reference = partial(selective_scan_ref, dtype=torch.float64)
causal_conv1d_reference = partial(causal_conv1d_ref, dtype=torch.float64)


def reference_direction(layer, tokens, suffix, order=None):
    """mamba-ssm's mamba_inner_ref for one direction, in float64, from the layer's parameters."""
    p = {k: v.detach().double() for k, v in layer.state_dict().items()}
    xz = (tokens.double() @ p["in_proj.weight"].t()).transpose(1, 2)
    x, z = xz.chunk(2, dim=1)
    if order is not None:
        x, z = x[..., order[0]], z[..., order[0]]
    x = causal_conv1d_reference(x, p[f"conv1d{suffix}.weight"].squeeze(1), p[f"conv1d{suffix}.bias"], "silu")
    x_dbl = x.transpose(1, 2) @ p[f"x_proj{suffix}.weight"].t()
    dt, b, c = torch.split(x_dbl, [layer.dt_rank, layer.d_state, layer.d_state], dim=-1)
    delta = (dt @ p[f"dt_proj{suffix}.weight"].t()).transpose(1, 2)
    y, _ = selective_scan_reference(
        x, delta, -torch.exp(p[f"A{suffix}_log"]), b.transpose(1, 2), c.transpose(1, 2), D=p[f"D{suffix}"], z=z,
        delta_bias=p[f"dt_proj{suffix}.bias"], delta_softplus=True,
    )
    return y if order is None else y[..., order[1]]


def test_two_direction_layer_matches_float64_reference():
    torch.manual_seed(0)
    layer = Mamba(d_model=24, direction_suffixes=("", "_b"))
    tokens = torch.randn(2, 37, 24)
    order = reversed_order(37)
    out = layer(tokens, [None, order])
    y = reference_direction(layer, tokens, "") + reference_direction(layer, tokens, "_b", order)
    expected = y.transpose(1, 2) @ layer.out_proj.weight.detach().double().t()
    assert (out.double() - expected).abs().max() / expected.abs().max() < 1e-5
    # Gradients flow to every parameter of both directions.
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_plain_layer_matches_float64_reference():
    torch.manual_seed(1)
    layer = Mamba(d_model=16, d_state=8, d_conv=3, expand=3)
    tokens = torch.randn(1, 50, 16)
    expected = reference_direction(layer, tokens, "").transpose(1, 2) @ layer.out_proj.weight.detach().double().t()
    out = layer(tokens)
    assert (out.double() - expected).abs().max() / expected.abs().max() < 1e-5
    assert F.mse_loss(out.double(), expected) < 1e-10


@pytest.mark.skipif(load_extension() is None, reason="the inference kernels are in the C++ extension")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("d_state, d_conv", [(16, 4), (8, 3)])
def test_inference_kernels_match_float64_reference_in_every_scan_order(dtype, tolerance, d_state, d_conv, monkeypatch):
    """Without gradients on the CPU the layer takes the token-major kernels: natural, reversed and inter-slice orders
    (SegMamba's tri-orientated layout) give the float64 composition of the oracles."""
    calls = []
    inner = mamba_module.mamba_directions_inference
    monkeypatch.setattr(mamba_module, "mamba_directions_inference", lambda *a, **k: calls.append(1) or inner(*a, **k))
    torch.manual_seed(3)
    layer = Mamba(d_model=20, d_state=d_state, d_conv=d_conv, direction_suffixes=("", "_b", "_s")).to(dtype)
    spatial = (5, 4, 6)
    tokens = torch.randn(2, 5 * 4 * 6, 20, dtype=dtype)
    orders = tri_orientated_orders(spatial)
    with torch.inference_mode():
        out = layer(tokens, orders)
    assert calls == [1]
    y = sum(reference_direction(layer, tokens, suffix, order) for suffix, order in zip(("", "_b", "_s"), orders))
    expected = y.transpose(1, 2) @ layer.out_proj.weight.detach().double().t()
    assert out.dtype == dtype
    assert (out.double() - expected).abs().max() / expected.abs().max() < tolerance

