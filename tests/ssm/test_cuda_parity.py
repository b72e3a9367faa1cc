# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Parity of the ``"cuda"`` backend of :mod:`shared_networks.ssm` (mamba-ssm's ``selective_scan_fn``, causal-conv1d's
``causal_conv1d_fn``) with the pure PyTorch backend and the float64 sequential oracle of
``shared_networks.ssm.reference``.

Skipped unless a CUDA device is visible and both mamba_ssm and causal_conv1d import (CI has neither); on a GPU
machine build them with ``ci/gpu/build_kernels.py`` and run ``pytest tests/test_cuda_parity.py``.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from shared_networks.ssm import causal_conv1d, causal_conv1d_backend, selective_scan, selective_scan_backend
from shared_networks.ssm.backends import causal_conv1d_cuda_fn, mamba_selective_scan_fn
from shared_networks.ssm.reference import causal_conv1d_ref, selective_scan_ref

# the oracle runs in float64 whatever the inputs' dtype
selective_scan_reference = partial(selective_scan_ref, dtype=torch.float64)
causal_conv1d_reference = partial(causal_conv1d_ref, dtype=torch.float64)


pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or mamba_selective_scan_fn() is None or causal_conv1d_cuda_fn() is None,
    reason="needs a CUDA device with mamba_ssm and causal_conv1d installed (see ci/gpu/build_kernels.py)",
)

CUDA = torch.device("cuda")
# float32 scans over a few thousand steps land near 1e-7..1e-6 relative error; 1e-4 leaves margin yet catches bugs
TOLERANCE = 1e-4


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.detach().double()
    return float((actual.detach().double() - expected).norm() / expected.norm())


def test_dispatcher_picks_cuda_kernels():
    assert selective_scan_backend(CUDA) == "cuda"
    assert causal_conv1d_backend(CUDA) == "cuda"
    assert selective_scan_backend(CUDA, backend="torch") == "torch"


@pytest.mark.parametrize("groups", [0, 2], ids=["B/C shared", "B/C grouped"])
@pytest.mark.parametrize("full", [False, True], ids=["plain", "D-z-bias-softplus"])
def test_selective_scan_cuda_matches_torch_and_float64(groups: int, full: bool):
    torch.manual_seed(groups + 10 * full)
    batch, dim, dstate, length = 2, 32, 8, 2500  # > 2048: crosses a chunk boundary of the CUDA kernel
    bc_shape = (batch, dstate, length) if groups == 0 else (batch, groups, dstate, length)
    inputs = {
        "u": torch.randn(batch, dim, length, device=CUDA),
        "delta": (torch.randn(batch, dim, length, device=CUDA) - 1 if full
                  else torch.rand(batch, dim, length, device=CUDA) * 0.2),
        "A": -torch.exp(0.5 * torch.randn(dim, dstate, device=CUDA)),
        "B": torch.randn(bc_shape, device=CUDA),
        "C": torch.randn(bc_shape, device=CUDA),
        "D": torch.randn(dim, device=CUDA) if full else None,
        "z": torch.randn(batch, dim, length, device=CUDA) if full else None,
        "delta_bias": 0.2 * torch.randn(dim, device=CUDA) if full else None,
    }
    grad_out = torch.randn(batch, dim, length, device=CUDA)
    results = {}
    for name in ("cuda", "torch", "reference"):
        leaves = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
        if name == "reference":
            out, state = selective_scan_reference(**leaves, delta_softplus=full)
        else:
            out, state = selective_scan(**leaves, delta_softplus=full, return_last_state=True, backend=name)
        out.backward(grad_out.to(out.dtype))
        results[name] = (out, state, {k: v.grad for k, v in leaves.items() if v is not None})

    out_ref, state_ref, grads_ref = results["reference"]
    for name in ("cuda", "torch"):
        out, state, grads = results[name]
        assert out.dtype == torch.float32 and state.dtype == torch.float32
        assert _relative_error(out, out_ref) < TOLERANCE, name
        assert _relative_error(state, state_ref) < TOLERANCE, name
        for key, grad in grads.items():
            assert _relative_error(grad, grads_ref[key]) < TOLERANCE, f"{name} d{key}"
    assert _relative_error(results["cuda"][0], results["torch"][0]) < TOLERANCE


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("channel_last", [False, True], ids=["channel-first", "channel-last"])
def test_causal_conv1d_cuda_matches_float64(width: int, activation, channel_last: bool):
    torch.manual_seed(width)
    x = torch.randn(2, 64, 1000, device=CUDA)
    if channel_last:  # the layout the Mamba layer passes (in_proj output transposed)
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    weight = torch.randn(64, width, device=CUDA)
    bias = torch.randn(64, device=CUDA)
    grad_out = torch.randn(2, 64, 1000, device=CUDA)
    results = {}
    for name in ("cuda", "reference"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
        if name == "reference":
            out = causal_conv1d_reference(*leaves, activation=activation)
        else:
            out = causal_conv1d(*leaves, activation=activation, backend=name)
        out.backward(grad_out.to(out.dtype))
        results[name] = [out] + [t.grad for t in leaves]
    for label, actual, expected in zip(("out", "dx", "dweight", "dbias"), results["cuda"], results["reference"]):
        assert _relative_error(actual, expected) < TOLERANCE, label
