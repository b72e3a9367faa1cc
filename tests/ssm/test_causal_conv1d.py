# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""causal_conv1d vs an explicit float64 sum over taps (shared_networks.ssm.reference)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from shared_networks.ssm import causal_conv1d, causal_conv1d_backend
from shared_networks.ssm.backends import BACKEND_ENV_VAR
from shared_networks.ssm.reference import causal_conv1d_ref

# the oracle runs in float64 whatever the inputs' dtype
causal_conv1d_reference = partial(causal_conv1d_ref, dtype=torch.float64)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize("width", [1, 2, 4])
@pytest.mark.parametrize("length", [1, 3, 50])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("activation", [None, "silu", "swish"])
def test_matches_reference(width, length, with_bias, activation):
    gen = torch.Generator().manual_seed(width * 100 + length)
    x = torch.randn(2, 6, length, generator=gen)
    weight = torch.randn(6, width, generator=gen)
    bias = torch.randn(6, generator=gen) if with_bias else None
    out = causal_conv1d(x, weight, bias, activation=activation)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert rel_error(out, causal_conv1d_reference(x, weight, bias, activation)) <= 1e-6


def test_is_causal_and_hand_computed():
    """out[t] = w0 * x[t-2] + w1 * x[t-1] + w2 * x[t] + bias, with zeros before the start."""
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    weight = torch.tensor([[0.5, -1.0, 2.0]])
    out = causal_conv1d(x, weight, torch.tensor([0.25]))
    expected = torch.tensor([[[2.25, 3.25, 4.75, 6.25]]])
    assert torch.allclose(out, expected)
    # changing a future step never changes earlier outputs
    x_future = x.clone()
    x_future[..., 3] = 100.0
    assert torch.equal(causal_conv1d(x_future, weight)[..., :3], causal_conv1d(x, weight)[..., :3])


def test_gradients_float64():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: causal_conv1d(*t, activation="silu"), (x, weight, bias))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 64, generator=gen)
    weight, bias = torch.randn(8, 4, generator=gen), torch.randn(8, generator=gen)
    out = causal_conv1d(x.to(dtype), weight, bias, activation="silu")
    assert out.dtype == dtype
    expected = causal_conv1d_reference(x.to(dtype), weight.to(dtype), bias.to(dtype), "silu")
    assert rel_error(out, expected) <= 2e-2


@pytest.mark.parametrize(
    "x_shape,w_shape,b_shape,activation,message",
    [
        ((2, 6), (6, 4), None, None, r"x must be \(batch, dim, L\), got \(2, 6\)"),
        ((2, 6, 9), (5, 4), None, None, r"weight must be \(dim, width\) = \(6, width\).*got \(5, 4\)"),
        ((2, 6, 9), (6, 1, 4), None, None, r"weight must be \(dim, width\)"),
        ((2, 6, 9), (6, 4), (5,), None, r"bias must be \(dim,\) = \(6,\), got \(5,\)"),
        ((2, 6, 9), (6, 4), None, "relu", r"activation must be one of"),
    ],
)
def test_bad_input_raises_clear_error(x_shape, w_shape, b_shape, activation, message):
    bias = None if b_shape is None else torch.zeros(b_shape)
    with pytest.raises(ValueError, match=message):
        causal_conv1d(torch.zeros(x_shape), torch.zeros(w_shape), bias, activation=activation)


def test_backend_forcing(monkeypatch):
    x, weight = torch.randn(1, 2, 5), torch.randn(2, 3)
    monkeypatch.setenv(BACKEND_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="causal_conv1d backend 'cuda' was forced"):
        causal_conv1d(x, weight)
    for name in ("cpp", "torch", "auto"):  # no dedicated CPU kernel: all of them run F.conv1d here
        monkeypatch.setenv(BACKEND_ENV_VAR, name)
        assert causal_conv1d_backend("cpu") == "torch"
        assert torch.allclose(causal_conv1d(x, weight), causal_conv1d_reference(x, weight).float(), atol=1e-6)
