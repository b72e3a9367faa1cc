# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The forward-only CPU inference kernels (token-major causal conv1d and selective scan in a scan order,
channels-last instance norm) against the float64 oracles of shared_networks.ssm.reference and float64 PyTorch, and
the rule that decides when layers may use them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from shared_networks.ssm import cpu_inference
from shared_networks.ssm.backends import BACKEND_ENV_VAR
from shared_networks.ssm.cpp_scan import load_extension
from shared_networks.ssm.reference import causal_conv1d_ref, selective_scan_ref

pytestmark = pytest.mark.skipif(load_extension() is None, reason="the C++ extension could not be built here")

ORDERS = ("natural", "reversed", "random")
# float32 results against the float64 oracle: relative to the largest magnitude of the expected values
TOLERANCE = {torch.float32: 2e-6, torch.float64: 1e-12}


def scan_order(kind: str, length: int, seed: int = 0) -> torch.Tensor | None:
    if kind == "natural":
        return None
    if kind == "reversed":
        return torch.arange(length - 1, -1, -1)
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))


def rows_in_order(x: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """(batch, L, dim) rows in scan order: step t is row order[t]."""
    return x if order is None else x[:, order]


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    scale = float(expected.abs().max())
    assert float((actual.double() - expected.double()).abs().max()) <= TOLERANCE[dtype] * max(scale, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order_kind", ORDERS)
@pytest.mark.parametrize("dim, width, with_bias", [(24, 4, True), (21, 4, False), (5, 2, True)])
def test_causal_conv1d_tokens_equals_the_oracle_in_scan_order(dtype, order_kind, dim, width, with_bias):
    gen = torch.Generator().manual_seed(1)
    batch, length = 2, 203
    # x is a strided view (the x half of in_proj's output), as the Mamba layer passes it
    x = torch.randn(batch, length, 2 * dim, generator=gen, dtype=dtype)[..., :dim]
    weight = torch.randn(dim, width, generator=gen, dtype=dtype)
    bias = torch.randn(dim, generator=gen, dtype=dtype) if with_bias else None
    order = scan_order(order_kind, length)
    out = cpu_inference.causal_conv1d_silu_tokens(x, order, weight.t().contiguous(), bias)
    expected = causal_conv1d_ref(rows_in_order(x, order).transpose(1, 2), weight, bias, activation="silu",
                                 dtype=torch.float64).transpose(1, 2)
    assert out.shape == (batch, length, dim) and out.is_contiguous() and out.dtype == dtype
    assert_close_to(out, expected, dtype)


def scan_inputs(dtype, batch=2, length=157, dim=20, n_state=16, seed=2):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    # B and C are column slices of one (batch, L, rank + 2N) projection, as in the layer
    x_dbl = rand(batch, length, 3 + 2 * n_state)
    return {
        "u": rand(batch, length, dim),
        "delta": rand(batch, length, dim, scale=0.5),
        "A": -torch.rand(dim, n_state, generator=gen, dtype=dtype) * n_state - 0.5,
        "B": x_dbl[..., 3:3 + n_state],
        "C": x_dbl[..., 3 + n_state:],
        "D": rand(dim),
        "z": rand(batch, length, dim),
        "delta_bias": rand(dim, scale=0.3),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order_kind", ORDERS)
@pytest.mark.parametrize("n_state, dim", [(16, 20), (16, 8), (5, 13)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_selective_scan_tokens_equals_the_oracle_written_at_the_order(dtype, order_kind, n_state, dim, accumulate):
    inputs = scan_inputs(dtype, dim=dim, n_state=n_state)
    batch, length, _ = inputs["u"].shape
    order = scan_order(order_kind, length, seed=3)
    initial = torch.randn(batch, length, dim, dtype=dtype)
    out = initial.clone()
    cpu_inference.selective_scan_tokens_(out, inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                         inputs["D"], inputs["z"], inputs["delta_bias"], True, order, accumulate)
    # the oracle scans (batch, dim, L) sequences in the scan's order, with the gate in that order too
    y, _ = selective_scan_ref(
        inputs["u"].transpose(1, 2), inputs["delta"].transpose(1, 2), inputs["A"], inputs["B"].transpose(1, 2),
        inputs["C"].transpose(1, 2), inputs["D"], rows_in_order(inputs["z"], order).transpose(1, 2),
        inputs["delta_bias"], True, dtype=torch.float64,
    )
    expected = initial.double().clone() if accumulate else torch.zeros(batch, length, dim, dtype=torch.float64)
    rows = torch.arange(length) if order is None else order
    expected[:, rows] += y.transpose(1, 2)
    assert_close_to(out, expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("order_kind", ["natural", "random"])
@pytest.mark.parametrize("rank, dim", [(3, 20), (6, 13)])
def test_selective_scan_tokens_with_delta_proj_equals_the_scan_of_the_projected_delta(dtype, order_kind, rank, dim):
    inputs = scan_inputs(dtype, dim=dim)
    batch, length, _ = inputs["u"].shape
    gen = torch.Generator().manual_seed(5)
    # the low-rank rows are the first columns of the projection B and C come from, as in the layer
    x_dbl = torch.randn(batch, length, rank + 32, generator=gen, dtype=dtype)
    dt = x_dbl[..., :rank]
    delta_proj = torch.randn(dim, rank, generator=gen, dtype=dtype) * 0.3
    order = scan_order(order_kind, length, seed=6)
    out = torch.empty(batch, length, dim, dtype=dtype)
    cpu_inference.selective_scan_tokens_(out, inputs["u"], dt, inputs["A"], inputs["B"], inputs["C"], inputs["D"],
                                         inputs["z"], inputs["delta_bias"], True, order, False, delta_proj)
    delta = dt.double() @ delta_proj.double().t()
    y, _ = selective_scan_ref(
        inputs["u"].transpose(1, 2), delta.transpose(1, 2), inputs["A"], inputs["B"].transpose(1, 2),
        inputs["C"].transpose(1, 2), inputs["D"], rows_in_order(inputs["z"], order).transpose(1, 2),
        inputs["delta_bias"], True, dtype=torch.float64,
    )
    expected = torch.zeros(batch, length, dim, dtype=torch.float64)
    expected[:, torch.arange(length) if order is None else order] = y.transpose(1, 2)
    assert_close_to(out, expected, dtype)
    with pytest.raises(RuntimeError, match=r"delta_proj must be a contiguous CPU \(dim, rank\) tensor"):
        cpu_inference.selective_scan_tokens_(out, inputs["u"], dt, inputs["A"], inputs["B"], inputs["C"], None, None,
                                             None, True, None, False, delta_proj[:-1])
    with pytest.raises(RuntimeError, match=r"delta must be \(batch, L, %d\)" % rank):
        cpu_inference.selective_scan_tokens_(out, inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                             None, None, None, True, None, False, delta_proj)


def test_selective_scan_tokens_without_optional_inputs():
    inputs = scan_inputs(torch.float64, dim=9, n_state=4)
    out = torch.empty_like(inputs["u"])
    cpu_inference.selective_scan_tokens_(out, inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                         None, None, None, False, None, False)
    y, _ = selective_scan_ref(inputs["u"].transpose(1, 2), inputs["delta"].transpose(1, 2), inputs["A"],
                              inputs["B"].transpose(1, 2), inputs["C"].transpose(1, 2), dtype=torch.float64)
    assert_close_to(out, y.transpose(1, 2), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 24, 9, 10, 11), (1, 13, 17, 6), (3, 5, 1, 1, 2)])
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_channels_last_equals_float64_instance_norm(dtype, shape, affine):
    gen = torch.Generator().manual_seed(4)
    # a large mean against a small spread: a naive sum of squares in float32 would lose the variance
    x = (torch.randn(*shape, generator=gen, dtype=dtype) * 0.05 + 30.0)
    x[0, 0] = 2.5  # a constant channel: variance 0, normalised to 0 (then the bias)
    weight = torch.randn(shape[1], generator=gen, dtype=dtype) if affine else None
    bias = torch.randn(shape[1], generator=gen, dtype=dtype) if affine else None
    memory_format = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    x = x.contiguous(memory_format=memory_format)
    out = cpu_inference.instance_norm_channels_last(x, weight, bias, 1e-5)
    expected = F.instance_norm(x.double(), weight=None if weight is None else weight.double(),
                               bias=None if bias is None else bias.double(), eps=1e-5)
    assert out.is_contiguous(memory_format=memory_format) and out.dtype == dtype
    assert_close_to(out, expected, dtype if dtype == torch.float64 else torch.float32)
    # in place: the same values over the input
    storage = x.data_ptr()
    cpu_inference.instance_norm_channels_last_(x, weight, bias, 1e-5)
    assert x.data_ptr() == storage and x.is_contiguous(memory_format=memory_format)
    assert torch.equal(x, out)


@pytest.mark.parametrize(
    "shape, out_channels",
    [
        ((2, 16, 6, 8, 10), 32),  # even sizes; 32 output channels: two 16-float vectors (AVX-512) or 8-float pairs
        ((1, 12, 5, 7, 9), 24),  # odd sizes (partial tiles), input channels padded to 16, 16 + 8 output channels
        ((1, 20, 5, 6, 7), 88),  # 48 + 32 + 8 output channels: each width of product block an AVX-512 build has
        ((1, 4, 13, 11, 12), 8),  # 4 input channels (the first convolution of a BraTS network), several blocks of tiles
        ((1, 8, 1, 1, 1), 16),  # one voxel: only the kernel's centre sees data
        ((1, 104, 7, 6, 5), 96),  # in x out channels above 96 x 96: the kernel's larger blocks of tiles
    ],
)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("output_tile", [2, 3])
def test_winograd_conv3d_equals_float64_conv3d(shape, out_channels, with_bias, output_tile):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(*shape, generator=gen) * 2 + 0.5
    weight = torch.randn(out_channels, shape[1], 3, 3, 3, generator=gen) / (3 * shape[1] ** 0.5)
    bias = torch.randn(out_channels, generator=gen) if with_bias else None
    transformed = cpu_inference.winograd_weight_transform(weight, output_tile)
    positions = (output_tile + 2) ** 3
    assert transformed.shape == (positions, -(-shape[1] // 8) * 8, out_channels)
    assert transformed.dtype == torch.float32
    out = cpu_inference.conv3d_winograd_channels_last(x.contiguous(memory_format=torch.channels_last_3d), transformed,
                                                      bias)
    expected = F.conv3d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    assert out.shape == expected.shape and out.is_contiguous(memory_format=torch.channels_last_3d)
    # F(2)'s transforms only add, subtract and halve: a few float32 roundings of the largest output; F(3)'s weights
    # reach 8/3 and its point 1/2 adds a few more (a float32 simulation of both gave 4.5e-7 and 7.3e-6 at 96 channels)
    tolerance = {2: 2e-6, 3: 2e-5}[output_tile]
    assert float((out.double() - expected).abs().max()) <= tolerance * float(expected.abs().max())


def test_winograd_weight_transform_of_a_centre_tap_is_the_transform_of_a_delta():
    # g = delta at the kernel's centre: G g along an axis is (0, 1/2, -1/2, 0), so U[a, b, c] is the product of three
    weight = torch.zeros(8, 1, 3, 3, 3)
    weight[:, 0, 1, 1, 1] = 1.0
    g = torch.tensor([0.0, 0.5, -0.5, 0.0])
    expected = torch.einsum("a,b,c->abc", g, g, g).reshape(64)
    transformed = cpu_inference.winograd_weight_transform(weight)
    assert transformed.shape == (64, 8, 8)
    torch.testing.assert_close(transformed[:, 0, :], expected[:, None].expand(64, 8), rtol=0, atol=0)
    assert not transformed[:, 1:].any()  # the padding rows of the input channels
    # F(3): G's middle column on the points 0, 1, -1, 1/2 and infinity (1 / the product of the point's distances to
    # the other finite points, times the point): (0, 1, 1/3, -4/3, 0)
    g = torch.tensor([0.0, 1.0, 1 / 3, -4 / 3, 0.0])
    expected = torch.einsum("a,b,c->abc", g, g, g).reshape(125)
    transformed = cpu_inference.winograd_weight_transform(weight, 3)
    assert transformed.shape == (125, 8, 8)
    torch.testing.assert_close(transformed[:, 0, :], expected[:, None].expand(125, 8))


def test_kernels_refuse_bad_inputs_with_their_names():
    x = torch.randn(1, 10, 8)
    with pytest.raises(RuntimeError, match="weight must be a contiguous"):
        cpu_inference.causal_conv1d_silu_tokens(x, None, torch.randn(8, 4), None)
    with pytest.raises(RuntimeError, match="order must be a contiguous int64"):
        cpu_inference.causal_conv1d_silu_tokens(x, torch.arange(9), torch.randn(4, 8), None)
    with pytest.raises(RuntimeError, match="channels-last"):
        cpu_inference.instance_norm_channels_last(torch.randn(1, 3, 4, 4, 4), None, None, 1e-5)
    with pytest.raises(RuntimeError, match="channels-last"):
        cpu_inference.instance_norm_channels_last_(torch.randn(1, 3, 4, 4, 4), None, None, 1e-5)
    transformed = cpu_inference.winograd_weight_transform(torch.randn(8, 3, 3, 3, 3))
    with pytest.raises(RuntimeError, match="x must be a channels-last contiguous float32"):
        cpu_inference.conv3d_winograd_channels_last(torch.randn(1, 3, 4, 4, 4), transformed, None)
    with pytest.raises(RuntimeError, match=r"weight_transform must be .*\(64 or 125, 8, out_channels\)"):
        cpu_inference.conv3d_winograd_channels_last(
            torch.randn(1, 3, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d), transformed[:, :4], None)
    with pytest.raises(RuntimeError, match=r"weight_transform must be .*\(64 or 125, 8, out_channels\)"):
        cpu_inference.conv3d_winograd_channels_last(
            torch.randn(1, 8, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d), transformed[:27], None)
    with pytest.raises(ValueError, match="3x3x3 convolution weight"):
        cpu_inference.winograd_weight_transform(torch.randn(8, 3, 1, 1, 1))
    with pytest.raises(ValueError, match="output_tile must be 2 or 3, got 4"):
        cpu_inference.winograd_weight_transform(torch.randn(8, 3, 3, 3, 3), 4)
    inputs = scan_inputs(torch.float32, dim=8, n_state=4)
    with pytest.raises(RuntimeError, match="C must be"):
        cpu_inference.selective_scan_tokens_(torch.empty_like(inputs["u"]), inputs["u"], inputs["delta"],
                                             inputs["A"], inputs["B"], inputs["C"][:, :-1], None, None, None, True,
                                             None, False)


def test_inference_kernels_apply_only_without_gradients_on_cpu_float(monkeypatch: pytest.MonkeyPatch):
    x = torch.randn(2, 3)
    weight = torch.nn.Parameter(torch.randn(3))
    assert not cpu_inference.inference_kernels_apply(x, weight)  # autograd wants the weight's gradient
    with torch.no_grad():
        assert cpu_inference.inference_kernels_apply(x, weight)
        assert cpu_inference.inference_kernels_apply(x.double(), weight.double())
        assert not cpu_inference.inference_kernels_apply(x.half(), weight)
        assert not cpu_inference.inference_kernels_apply(x.to(torch.bfloat16), weight)
        assert not cpu_inference.inference_kernels_apply()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not cpu_inference.inference_kernels_apply(x, weight)
        monkeypatch.setenv(BACKEND_ENV_VAR, "torch")
        assert not cpu_inference.inference_kernels_apply(x, weight)
    monkeypatch.delenv(BACKEND_ENV_VAR)
    with torch.inference_mode():
        assert cpu_inference.inference_kernels_apply(x, weight)
    assert cpu_inference.inference_kernels_apply(x, weight.detach())  # nothing requires grad
