# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The scan as scripted networks call it (shared_networks.ssm.scripted): the CPU kernel's operator and the dispatch
operator, values and gradients against the float64 sequential oracle, and the routing by device inside TorchScript."""

from __future__ import annotations

import pytest
import torch

from shared_networks.ssm import causal_conv1d
from shared_networks.ssm.backends import BACKEND_ENV_VAR
from shared_networks.ssm.cpp_scan import load_extension
from shared_networks.ssm.reference import selective_scan_ref
from shared_networks.ssm.scripted import causal_conv1d_silu_scripted, selective_scan_scripted


def inputs(seed: int = 0, batch: int = 2, dim: int = 6, length: int = 45, dstate: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, dim, length), (batch, dim, length), (dim, dstate), (batch, dstate, length),
              (batch, dstate, length), (dim,), (batch, dim, length), (dim,)]
    tensors = [torch.randn(shape, generator=g) for shape in shapes]
    tensors[2] = -tensors[2].abs() - 0.1  # A negative, as in Mamba
    return [t.requires_grad_(True) for t in tensors]


def reference_and_grads(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, tuple]:
    doubled = [t.detach().double().requires_grad_(True) for t in tensors]
    out, _ = selective_scan_ref(*doubled[:5], D=doubled[5], z=doubled[6], delta_bias=doubled[7], delta_softplus=True,
                                dtype=torch.float64)
    return out, torch.autograd.grad(out.square().sum(), doubled)


def assert_matches_reference(out: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    expected, expected_grads = reference_and_grads(tensors)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), tensors)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(load_extension() is None, reason="the C++ selective-scan kernel could not be built here")
def test_scripted_scan_on_cpu_is_the_kernel_operator_with_its_backward():
    scripted = torch.jit.script(selective_scan_scripted)
    assert "shared_networks::selective_scan_cpu_forward" in str(scripted.graph)
    tensors = inputs()
    assert_matches_reference(scripted(*tensors, True), tensors)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=pytest.mark.skipif(
    load_extension() is None, reason="the C++ selective-scan kernel could not be built here"))])
def test_dispatch_operator_values_and_recomputed_gradients(backend: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, backend)
    tensors = inputs(seed=1)
    assert_matches_reference(torch.ops.shared_networks.selective_scan(*tensors, True), tensors)


def test_scripted_scan_off_cpu_calls_the_dispatch_operator():
    """A meta tensor stands in for a GPU one: the scripted function sends it to the dispatch operator, whose shape
    function answers (no kernel runs)."""
    scripted = torch.jit.script(selective_scan_scripted)
    meta = [t.detach().to("meta") for t in inputs()]
    out = scripted(*meta, True)
    assert out.device.type == "meta" and out.shape == meta[0].shape


def test_scripted_causal_conv1d_equals_the_eager_one():
    g = torch.Generator().manual_seed(2)
    x, weight, bias = torch.randn(2, 5, 17, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    expected = causal_conv1d(x, weight, bias, activation="silu", backend="torch")
    torch.testing.assert_close(torch.jit.script(causal_conv1d_silu_scripted)(x, weight, bias), expected, rtol=0, atol=0)
