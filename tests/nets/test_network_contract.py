# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
The contract every network exported by ``shared_networks.nets`` keeps, at small sizes on CPU: output shapes over a
matrix of input sizes and channel counts, a strict state-dict round trip (through ``torch.save`` / ``weights_only``
loading) that reproduces the output, ``torch.jit.trace`` and ``torch.export`` equal to eager on an input they were not
built with, ``torch.jit.script`` equal to eager (outputs and gradients, also after ``torch.jit.save`` / ``load``), and
the ``torch`` and ``cpp`` scan backends giving the same output (relative error <= 1e-4), and the forward-only CPU
inference kernels (channels-last layers, token-major Mamba; taken without gradients) giving the output of the
differentiable ops that traced, exported and scripted models keep (largest difference <= 1e-4 of the largest logit).

A new network joins by being exported and given an entry in ``CONTRACT_CASES`` (small constructor arguments and the
input sizes to try); an exported network without an entry fails ``test_every_exported_network_has_cases``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import shared_networks.nets as nets
from shared_networks.ssm import available_backends
from shared_networks.ssm.backends import BACKEND_ENV_VAR


@dataclass(frozen=True)
class ContractCase:
    """One small configuration of a network: constructor arguments and the spatial sizes it must accept."""

    network: str
    kwargs: dict[str, Any]
    spatial_sizes: tuple[tuple[int, ...], ...]
    batch: int = 2
    id: str = field(default="")
    classifier: bool = False  # output (batch, num_classes) instead of (batch, out_channels, *spatial)

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return getattr(nets, self.network)(**self.kwargs).eval()

    def input(self, spatial: tuple[int, ...], seed: int = 1) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(self.batch, self.kwargs["in_channels"], *spatial, generator=generator)

    def output_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if self.classifier:
            return (self.batch, self.kwargs["num_classes"])
        return (self.batch, self.kwargs["out_channels"], *spatial)


_SEGMAMBA_SMALL = {"spatial_dims": 3, "feature_sizes": (8, 16, 32, 64), "hidden_size": 32}
# divisible by (4, 4) in 2D and (2, 4, 4) in 3D (the products of the strides per axis)
_UMAMBA_SMALL_2D = {"spatial_dims": 2, "features_per_stage": (8, 16, 32), "strides": (1, 2, 2),
                    "n_blocks_per_stage": (1, 2, 2), "n_conv_per_stage_decoder": 1}
_UMAMBA_SMALL_3D = {"spatial_dims": 3, "features_per_stage": (8, 16, 32), "kernel_sizes": ((1, 3, 3), 3, 3),
                    "strides": (1, (1, 2, 2), 2), "n_blocks_per_stage": 1, "n_conv_per_stage_decoder": 1}
CONTRACT_CASES: tuple[ContractCase, ...] = (
    ContractCase("SegMamba", {**_SEGMAMBA_SMALL, "in_channels": 4, "out_channels": 4, "mode": "release"},
                 ((32, 16, 16), (32, 16, 48)), id="SegMamba-release-4to4"),
    ContractCase("SegMamba", {**_SEGMAMBA_SMALL, "in_channels": 1, "out_channels": 3, "mode": "release"},
                 ((16, 32, 16),), batch=1, id="SegMamba-release-1to3"),
    ContractCase("SegMamba", {**_SEGMAMBA_SMALL, "in_channels": 2, "out_channels": 2, "mode": "paper"},
                 ((16, 16, 32), (16, 32, 48)), id="SegMamba-paper-2to2"),
    ContractCase("SwinUMamba", {"in_channels": 3, "out_channels": 8, "feature_size": 8, "depths": (1, 1, 2, 1)},
                 ((64, 64), (32, 96)), id="SwinUMamba-3to8"),
    ContractCase("SwinUMamba", {"in_channels": 1, "out_channels": 2, "feature_size": 8, "depths": (1, 1, 1, 1)},
                 ((64, 32),), batch=1, id="SwinUMamba-1to2"),
    ContractCase("SwinUMambaD", {"in_channels": 3, "out_channels": 8, "feature_size": 16, "depths": (1, 1, 2, 1),
                                 "decoder_depth": 1}, ((64, 64), (96, 32)), id="SwinUMambaD-3to8"),
    ContractCase("nnMambaSeg", {"in_channels": 1, "out_channels": 3, "feature_size": 16, "blocks": 2},
                 ((16, 16, 32), (32, 16, 16)), id="nnMambaSeg-1to3"),
    ContractCase("nnMambaSeg", {"in_channels": 4, "out_channels": 4, "feature_size": 16, "blocks": 3},
                 ((16, 32, 16),), batch=1, id="nnMambaSeg-4to4"),
    ContractCase("nnMambaSeg", {"in_channels": 4, "out_channels": 4, "feature_size": 16, "blocks": 2,
                                "mamba_layer": "nnunet", "deep_supervision": True}, ((16, 16, 16),), batch=1,
                 id="nnMambaSeg-nnunet-4to4"),
    ContractCase("nnMambaClassifier", {"in_channels": 1, "num_classes": 1, "mode": "paper", "feature_size": 8,
                                       "blocks": 2}, ((23, 30, 17), (16, 16, 16)), classifier=True,
                 id="nnMambaClassifier-paper"),
    ContractCase("nnMambaClassifier", {"in_channels": 1, "num_classes": 3, "mode": "release", "feature_size": 8,
                                       "blocks": 2}, ((20, 24, 20),), classifier=True, id="nnMambaClassifier-release"),
    ContractCase("UMambaBot", {**_UMAMBA_SMALL_2D, "in_channels": 3, "out_channels": 4}, ((16, 32), (32, 12)),
                 id="UMambaBot-2d-3to4"),
    ContractCase("UMambaBot", {**_UMAMBA_SMALL_3D, "in_channels": 1, "out_channels": 3}, ((4, 16, 8), (6, 8, 12)),
                 batch=1, id="UMambaBot-3d-1to3"),
    ContractCase("UMambaEnc", {**_UMAMBA_SMALL_2D, "in_channels": 3, "out_channels": 4}, ((16, 32), (32, 12)),
                 id="UMambaEnc-2d-3to4"),
    ContractCase("UMambaEnc", {**_UMAMBA_SMALL_3D, "in_channels": 1, "out_channels": 3}, ((4, 16, 8), (6, 8, 12)),
                 batch=1, id="UMambaEnc-3d-1to3"),
)
SHAPE_PARAMS = [pytest.param(case, size, id=f"{case.id}-{'x'.join(map(str, size))}")
                for case in CONTRACT_CASES for size in case.spatial_sizes]
CASE_PARAMS = [pytest.param(case, id=case.id) for case in CONTRACT_CASES]


def portable_output(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of the differentiable ops: with gradients wanted, the networks do not take the forward-only CPU
    inference kernels (what torch.jit.trace, torch.export and torch.jit.script record)."""
    with torch.enable_grad():
        return net(x).detach()


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30))


def test_every_exported_network_has_cases():
    exported = {
        name for name in nets.__all__
        if isinstance(getattr(nets, name), type) and issubclass(getattr(nets, name), torch.nn.Module)
    }
    covered = {case.network for case in CONTRACT_CASES}
    assert exported == covered, f"networks without contract cases: {sorted(exported - covered)}"


@pytest.mark.parametrize("case, spatial", SHAPE_PARAMS)
def test_output_shape(case: ContractCase, spatial: tuple[int, ...]):
    net = case.build()
    with torch.no_grad():
        out = net(case.input(spatial))
    assert out.shape == case.output_shape(spatial)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_state_dict_round_trip_is_strict_and_exact(case: ContractCase):
    source, target = case.build(seed=0), case.build(seed=1)
    x = case.input(case.spatial_sizes[0])
    with torch.no_grad():
        before = target(x)
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        result = target.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        assert not torch.equal(before, target(x))  # the seeds differ, so the load changed something
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_trace_and_export_equal_eager(case: ContractCase):
    net = case.build()
    spatial = case.spatial_sizes[0]
    example, other = case.input(spatial, seed=1), case.input(spatial, seed=2)
    expected = portable_output(net, other)
    with torch.no_grad():
        traced = torch.jit.trace(net, example)  # with torch's own check, which traces twice
        torch.testing.assert_close(traced(other), expected, rtol=1e-5, atol=1e-6)
    exported = torch.export.export(net, (example,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(other), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif("cpp" not in available_backends("cpu"), reason="scripted networks scan with the C++ kernel")
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_script_equals_eager_after_save_and_load(case: ContractCase):
    net = case.build()
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        for spatial in case.spatial_sizes:
            x = case.input(spatial, seed=3)
            expected = portable_output(net, x)
            torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-6)
    # the scripted scan's backward (the C++ kernel's, through its operator) gives eager's gradients
    x = case.input(case.spatial_sizes[0], seed=4).requires_grad_(True)
    parameters = [p for p in net.parameters() if p.requires_grad]
    # (allow_unused: in eval mode the deep-supervision heads take no part)
    eager_grads = torch.autograd.grad(net(x).square().mean(), [x, *parameters], allow_unused=True)
    scripted_grads = torch.autograd.grad(scripted(x).square().mean(), [x, *parameters], allow_unused=True)
    assert eager_grads[0] is not None
    for eager_grad, scripted_grad in zip(eager_grads, scripted_grads):
        assert (eager_grad is None) == (scripted_grad is None)
        if eager_grad is not None:
            torch.testing.assert_close(scripted_grad, eager_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif("cpp" not in available_backends("cpu"), reason="the C++ scan kernel did not build here")
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_torch_and_cpp_scan_backends_agree(case: ContractCase, monkeypatch: pytest.MonkeyPatch):
    net = case.build()
    x = case.input(case.spatial_sizes[-1])
    outputs = {}
    for backend in ("torch", "cpp"):
        monkeypatch.setenv(BACKEND_ENV_VAR, backend)
        with torch.no_grad():
            outputs[backend] = net(x)
    assert relative_error(outputs["cpp"], outputs["torch"]) <= 1e-4


@pytest.mark.skipif("cpp" not in available_backends("cpu"), reason="the inference kernels are in the C++ extension")
@pytest.mark.parametrize("case, spatial", SHAPE_PARAMS)
def test_cpu_inference_kernels_equal_the_differentiable_ops(case, spatial, monkeypatch: pytest.MonkeyPatch):
    import shared_networks.blocks.mamba as mamba_module

    calls = []
    inner = mamba_module.mamba_directions_inference
    monkeypatch.setattr(mamba_module, "mamba_directions_inference", lambda *a, **k: calls.append(1) or inner(*a, **k))
    net = case.build()
    x = case.input(spatial, seed=5)
    expected = portable_output(net, x)
    assert not calls  # with gradients wanted, the differentiable ops run
    with torch.inference_mode():
        fast = net(x)
    if any(isinstance(m, mamba_module.Mamba) for m in net.modules()):
        assert calls, "the Mamba layers did not take the token-major inference kernels"
    assert fast.shape == expected.shape and fast.is_contiguous() == expected.is_contiguous()
    assert float((fast - expected).abs().max()) <= 1e-4 * float(expected.abs().max())
