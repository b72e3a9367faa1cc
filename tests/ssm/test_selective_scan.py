# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Selective scan vs the float64 sequential oracle of shared_networks.ssm.reference, for every backend here."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Dict, Optional

import numpy as np
import pytest
import torch

from shared_networks.ssm import available_backends, selective_scan, selective_scan_backend
from shared_networks.ssm.backends import BACKEND_ENV_VAR
from shared_networks.ssm.cpp_scan import build_extension, load_extension
from shared_networks.ssm.reference import selective_scan_ref, selective_scan_ref_numpy
from shared_networks.ssm.torch_scan import selective_scan_torch

# the oracle runs in float64 whatever the inputs' dtype
selective_scan_reference = partial(selective_scan_ref, dtype=torch.float64)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _cpp_param():
    return pytest.param(
        "cpp",
        marks=pytest.mark.skipif(
            load_extension() is None, reason="the C++ selective-scan kernel could not be built here (see the log)"
        ),
    )


BACKENDS = ["torch", _cpp_param()]


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64 (absolute error when the reference is exactly zero)."""
    diff = (actual.double() - expected.double()).norm().item()
    scale = expected.double().norm().item()
    return diff / scale if scale > 0 else diff


def make_inputs(
    batch: int = 2,
    dim: int = 4,
    dstate: int = 16,
    length: int = 300,
    groups: Optional[int] = None,
    with_d: bool = True,
    with_z: bool = True,
    with_bias: bool = True,
    seed: int = 0,
) -> Dict[str, Optional[torch.Tensor]]:
    """Inputs in the ranges of a trained Mamba layer: A = -(1..N)-like, small positive steps, unit-scale signals."""
    gen = torch.Generator().manual_seed(seed)
    bc_shape = (batch, dstate, length) if groups is None else (batch, groups, dstate, length)
    return {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": torch.rand(batch, dim, length, generator=gen) * 0.5 - 0.5,
        "A": -torch.rand(dim, dstate, generator=gen) * dstate,
        "B": torch.randn(*bc_shape, generator=gen),
        "C": torch.randn(*bc_shape, generator=gen),
        "D": torch.randn(dim, generator=gen) if with_d else None,
        "z": torch.randn(batch, dim, length, generator=gen) if with_z else None,
        "delta_bias": torch.rand(dim, generator=gen) * 0.5 if with_bias else None,
    }


# (groups, with_d, with_z, with_bias, softplus): every option on and off at least once, plain and grouped B/C
LAYOUTS = [
    (None, False, False, False, False),
    (None, True, True, True, True),
    (1, True, False, True, True),
    (2, False, True, False, True),
    (4, True, True, True, False),
    (2, True, True, True, True),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups,with_d,with_z,with_bias,softplus", LAYOUTS)
@pytest.mark.parametrize("dstate,length", [(16, 1), (16, 300), (5, 7), (5, 600)])
def test_forward_matches_reference(backend, groups, with_d, with_z, with_bias, softplus, dstate, length):
    inputs = make_inputs(dstate=dstate, length=length, groups=groups, with_d=with_d, with_z=with_z, with_bias=with_bias)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()  # raw steps must be positive without softplus
    out, last_state = selective_scan(
        **inputs, delta_softplus=softplus, return_last_state=True, backend=backend
    )
    expected, expected_state = selective_scan_reference(**inputs, delta_softplus=softplus)
    assert out.shape == inputs["u"].shape and out.dtype == torch.float32
    assert last_state.shape == (2, 4, dstate) and last_state.dtype == torch.float32
    assert rel_error(out, expected) <= 1e-5
    assert rel_error(last_state, expected_state) <= 1e-5
    plain = selective_scan(**inputs, delta_softplus=softplus, backend=backend)
    assert torch.equal(plain, out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("groups,with_d,with_z,with_bias,softplus", [LAYOUTS[0], LAYOUTS[1], LAYOUTS[3], LAYOUTS[5]])
@pytest.mark.parametrize("dstate,length", [(16, 1), (16, 300), (3, 40)])
def test_gradients_match_reference(backend, groups, with_d, with_z, with_bias, softplus, dstate, length):
    inputs = make_inputs(dstate=dstate, length=length, groups=groups, with_d=with_d, with_z=with_z, with_bias=with_bias)
    if not softplus:
        inputs["delta"] = inputs["delta"].abs()
    names = [n for n in GRAD_NAMES if inputs[n] is not None]
    leaves = {n: inputs[n].clone().requires_grad_() for n in names}
    leaves64 = {n: inputs[n].double().requires_grad_() for n in names}
    out = selective_scan(**{**inputs, **leaves}, delta_softplus=softplus, backend=backend)
    expected, _ = selective_scan_reference(**{**inputs, **leaves64}, delta_softplus=softplus)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, [leaves[n] for n in names], grad_out)
    expected_grads = torch.autograd.grad(expected, [leaves64[n] for n in names], grad_out.double())
    for name, grad, expected_grad in zip(names, grads, expected_grads):
        assert grad.shape == inputs[name].shape and grad.dtype == torch.float32, name
        assert rel_error(grad, expected_grad) <= 1e-4, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch,dim,groups", [(1, 20, None), (2, 20, 2), (1, 12, 4)])
def test_many_channels_forward_and_gradients(backend, batch, dim, groups):
    """Channel counts that are not multiples of the kernels' SIMD width; one batch item: B/C gradient reductions
    are split over threads."""
    inputs = make_inputs(batch=batch, dim=dim, dstate=16, length=270, groups=groups, seed=4)
    leaves = {n: inputs[n].clone().requires_grad_() for n in GRAD_NAMES}
    leaves64 = {n: inputs[n].double().requires_grad_() for n in GRAD_NAMES}
    out, state = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
    expected, expected_state = selective_scan_reference(**leaves64, delta_softplus=True)
    assert rel_error(out, expected) <= 1e-5 and rel_error(state, expected_state) <= 1e-5
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    expected_grads = torch.autograd.grad(expected, list(leaves64.values()), grad_out.double())
    for name, grad, expected_grad in zip(leaves, grads, expected_grads):
        assert rel_error(grad, expected_grad) <= 1e-4, name


@pytest.mark.skipif(load_extension() is None, reason="the C++ selective-scan kernel could not be built here")
@pytest.mark.parametrize("threads", [3, 5])
def test_cpp_gradients_over_more_splits_than_two(threads):
    """The cpp backward splits a group's channel blocks over threads; each split writes its own dB/dC slice, summed
    afterwards. 12 blocks over 3 threads: three slices; over 5: blocks 3-3-3-3 and one empty split (zeros)."""
    inputs = make_inputs(batch=1, dim=96, dstate=16, length=40, seed=8)
    leaves = {n: inputs[n].clone().requires_grad_() for n in GRAD_NAMES}
    leaves64 = {n: inputs[n].double().requires_grad_() for n in GRAD_NAMES}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = selective_scan(**leaves, delta_softplus=True, backend="cpp")
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    finally:
        torch.set_num_threads(previous)
    expected = selective_scan_reference(**leaves64, delta_softplus=True)[0]
    expected_grads = torch.autograd.grad(expected, list(leaves64.values()), grad_out.double())
    for name, grad, expected_grad in zip(leaves, grads, expected_grads):
        assert rel_error(grad, expected_grad) <= 1e-4, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grouped", [False, True])
def test_gradcheck_float64(backend, grouped):
    inputs = make_inputs(batch=1, dim=2, dstate=3, length=5, groups=2 if grouped else None, seed=3)
    names = list(GRAD_NAMES)
    leaves = [inputs[n].double().requires_grad_() for n in names]

    def scan(*tensors):
        return selective_scan(*tensors[:5], D=tensors[5], z=tensors[6], delta_bias=tensors[7], delta_softplus=True,
                              backend=backend)

    assert scan(*leaves).dtype == torch.float64
    assert torch.autograd.gradcheck(scan, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_forward(backend):
    """100k steps with time-varying steps against the float64 numpy oracle (forward only, tiny width)."""
    inputs = make_inputs(batch=1, dim=2, dstate=4, length=100_003, groups=None, seed=5)
    with torch.no_grad():
        out, state = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend)
    numpy_inputs = {k: (None if v is None else v.numpy()) for k, v in inputs.items()}
    expected, expected_state = selective_scan_ref_numpy(**numpy_inputs, delta_softplus=True)
    assert rel_error(out, torch.from_numpy(expected)) <= 1e-5
    assert rel_error(state, torch.from_numpy(expected_state)) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_sequence_constant_step_is_a_linear_filter(backend):
    """With a constant step per channel each state is a first-order IIR filter: scipy.signal.lfilter is the oracle."""
    from scipy.signal import lfilter

    batch, dim, dstate, length = 1, 3, 4, 131_072
    gen = torch.Generator().manual_seed(7)
    u = torch.randn(batch, dim, length, generator=gen)
    step = torch.tensor([0.01, 0.1, 0.5])
    delta = step[None, :, None].expand(batch, dim, length)
    A = -torch.rand(dim, dstate, generator=gen) * 4
    B = torch.randn(batch, dstate, length, generator=gen)
    C = torch.randn(batch, dstate, length, generator=gen)
    with torch.no_grad():
        out = selective_scan(u, delta, A, B, C, backend=backend)
    expected = np.zeros((batch, dim, length))
    u64, B64, C64, A64 = u.double().numpy(), B.double().numpy(), C.double().numpy(), A.double().numpy()
    for d in range(dim):
        for n in range(dstate):
            decay = math.exp(float(step[d]) * A64[d, n])
            state = lfilter([1.0], [1.0, -decay], float(step[d]) * u64[0, d] * B64[0, n])
            expected[0, d] += C64[0, n] * state
    assert rel_error(out, torch.from_numpy(expected)) <= 1e-5


def test_torch_backend_blocks_match_reference():
    """With gradients the torch backend cuts the sequence into blocks; its backward recomputes them one at a time and
    carries the state gradient from block to block."""
    inputs = make_inputs(dim=3, dstate=4, length=333, groups=None, seed=9)
    leaves = {n: inputs[n].clone().requires_grad_() for n in GRAD_NAMES}
    leaves64 = {n: inputs[n].double().requires_grad_() for n in GRAD_NAMES}
    B4, C4 = leaves["B"].unsqueeze(1), leaves["C"].unsqueeze(1)
    args = {k: v for k, v in leaves.items() if k not in ("B", "C")}
    out, state = selective_scan_torch(B=B4, C=C4, **args, delta_softplus=True, block_length=64)
    expected, expected_state = selective_scan_reference(**leaves64, delta_softplus=True)
    assert rel_error(out, expected) <= 1e-5 and rel_error(state, expected_state) <= 1e-5
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
    expected_grads = torch.autograd.grad(expected, list(leaves64.values()), grad_out.double())
    for name, grad, expected_grad in zip(leaves, grads, expected_grads):
        assert rel_error(grad, expected_grad) <= 1e-4, name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(backend, dtype):
    inputs = make_inputs(dstate=16, length=400, groups=2)
    half = {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in half.items()}
    out, state = selective_scan(**leaves, delta_softplus=True, return_last_state=True, backend=backend)
    assert out.dtype == dtype and state.dtype == torch.float32
    # the oracle sees the same rounded inputs, so only the accumulation differs
    expected, expected_state = selective_scan_reference(**half, delta_softplus=True)
    tolerance = 1e-2 if dtype == torch.float16 else 2e-2  # output rounding: 2^-11 resp. 2^-8 relative
    assert rel_error(out, expected) <= tolerance
    assert rel_error(state, expected_state) <= 1e-5  # the state itself is fp32
    out.float().square().sum().backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None and leaf.grad.dtype == leaf.dtype and torch.isfinite(leaf.grad).all(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    inputs = make_inputs(length=50, groups=None)
    strided = {k: v for k, v in inputs.items()}
    strided["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    strided["B"] = torch.empty(2, 16, 100)[..., ::2].copy_(inputs["B"])
    out = selective_scan(**strided, delta_softplus=True, backend=backend)
    expected, _ = selective_scan_reference(**inputs, delta_softplus=True)
    assert not strided["u"].is_contiguous() and not strided["B"].is_contiguous()
    assert rel_error(out, expected) <= 1e-5


def test_backends_agree_on_default_choice(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    names = available_backends("cpu")
    assert names[-1] == "torch" and "cuda" not in names
    assert ("cpp" in names) == (load_extension() is not None)
    assert selective_scan_backend("cpu") == names[0]
    assert available_backends() == names  # no GPU here


@pytest.mark.parametrize("forced", ["torch", _cpp_param()])
def test_env_var_forces_backend(monkeypatch, caplog, forced):
    monkeypatch.setenv(BACKEND_ENV_VAR, forced)
    assert selective_scan_backend("cpu") == forced
    inputs = make_inputs(length=20)
    with caplog.at_level(logging.DEBUG, logger="shared_networks.ssm.selective_scan"):
        selective_scan(**inputs)
    assert f"backend={forced}" in caplog.text
    # an explicit argument wins over the environment
    assert selective_scan_backend("cpu", "torch") == "torch"
    assert selective_scan_backend("cpu", "auto") == available_backends("cpu")[0]


def test_forcing_cuda_without_it_raises(monkeypatch):
    inputs = make_inputs(length=10)
    with pytest.raises(RuntimeError, match="'cuda' was forced"):
        selective_scan(**inputs, backend="cuda")
    monkeypatch.setenv(BACKEND_ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="'cuda' was forced"):
        selective_scan(**inputs)
    monkeypatch.setenv(BACKEND_ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=f"{BACKEND_ENV_VAR} must be one of"):
        selective_scan(**inputs)


def test_failed_build_warns_once_and_returns_none(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    source = tmp_path / "broken.cpp"
    source.write_text("this is not C++\n")
    with caplog.at_level(logging.WARNING, logger="shared_networks.ssm.cpp_scan"):
        assert build_extension(sources=[str(source)], name="shared_networks_broken_scan_test") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # first the notice that a (slow) compile starts, with the cache folder, then the one failure warning
    assert len(warnings) == 2 and "Compiling the C++ selective-scan kernel" in warnings[0]
    assert str(tmp_path / "extensions") in warnings[0] and "pure PyTorch backend" in warnings[1]


def test_a_left_lock_file_is_named_before_loading_waits_on_it(tmp_path, monkeypatch, caplog):
    """A process stopped while compiling leaves ``lock`` in the build folder, and torch's load() then waits for it
    without a word: the warning names the file."""
    from torch.utils import cpp_extension

    from shared_networks.ssm import cpp_scan

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.delattr(cpp_extension, "FileLock", raising=False)  # torch up to 2.13: the file's existence locks
    (tmp_path / "shared_networks_lock_test.so").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="shared_networks.ssm.cpp_scan"):
        cpp_scan._announce_build("shared_networks_lock_test")
    assert not caplog.records  # built, no lock: nothing to say
    (tmp_path / "lock").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="shared_networks.ssm.cpp_scan"):
        cpp_scan._announce_build("shared_networks_lock_test")
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert str(tmp_path / "lock") in message and "delete it if no other process is compiling" in message
    # torch from 2.14 on: an OS lock on a file that stays (FileLock), which a stopped process releases
    caplog.clear()
    monkeypatch.setattr(cpp_extension, "FileLock", object, raising=False)
    with caplog.at_level(logging.WARNING, logger="shared_networks.ssm.cpp_scan"):
        cpp_scan._announce_build("shared_networks_lock_test")
    assert not caplog.records


def test_extension_cache_name_follows_the_torch_build(monkeypatch):
    """Two environments with different torch builds (the project's and MONAI Label's) get different cached builds."""
    from shared_networks.ssm import cpp_scan

    here = cpp_scan._build_digest()
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    assert cpp_scan._build_digest() != here
    assert cpp_scan.EXTENSION_NAME.endswith(here)


def test_build_finds_the_ninja_package_off_path(tmp_path, monkeypatch):
    """``.venv/bin/python -m monai.bundle ...`` without activating the environment: its ninja is not on PATH."""
    import os
    import shutil

    import ninja

    from shared_networks.ssm import cpp_scan

    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("ninja") is None
    with cpp_scan._ninja_on_path():
        assert shutil.which("ninja") == os.path.join(ninja.BIN_DIR, "ninja")
    assert os.environ["PATH"] == str(tmp_path)


def test_build_prefers_the_ninja_package_to_another_ninja_on_path(tmp_path, monkeypatch):
    """A system ninja first on PATH (the environment not activated) and the package's ninja (activated) log builds
    differently, and each rebuilt the cached kernel that the other had logged: the build always takes the package's."""
    import os
    import shutil

    import ninja

    from shared_networks.ssm import cpp_scan

    other = tmp_path / "ninja"
    other.write_text("#!/bin/sh\necho 1.11.1\n")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("ninja") == str(other)
    with cpp_scan._ninja_on_path():
        assert shutil.which("ninja") == os.path.join(ninja.BIN_DIR, "ninja")
    assert os.environ["PATH"] == str(tmp_path)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"u": torch.zeros(2, 4)}, r"u must be \(batch, dim, L\), got \(2, 4\)"),
        ({"delta": torch.zeros(2, 4, 9)}, r"delta must be \(batch, dim, L\) = \(2, 4, 10\), got \(2, 4, 9\)"),
        ({"A": torch.zeros(3, 16)}, r"A must be \(dim, N\) = \(4, N\)"),
        ({"B": torch.zeros(2, 16, 9)},
         r"B must be \(batch, N, L\) = \(2, 16, 10\) or \(batch, G, N, L\).*got \(2, 16, 9\)"),
        ({"C": torch.zeros(2, 3, 16, 10)},
         r"C must be \(batch, N, L\) = \(2, 16, 10\) or \(batch, G, N, L\) with dim % G"),
        ({"B": torch.zeros(2, 2, 16, 10)}, r"B and C must have the same number of groups"),
        ({"D": torch.zeros(5)}, r"D must be \(dim,\) = \(4,\), got \(5,\)"),
        ({"z": torch.zeros(2, 4, 11)}, r"z must be \(batch, dim, L\) = \(2, 4, 10\), got \(2, 4, 11\)"),
        ({"delta_bias": torch.zeros(4, 1)}, r"delta_bias must be \(dim,\) = \(4,\), got \(4, 1\)"),
        ({"A": torch.zeros(4, 16, dtype=torch.complex64)}, r"A must be real"),
        ({"u": torch.zeros(2, 4, 10, dtype=torch.int64)}, r"u must be a floating-point tensor"),
        ({"backend": "gpu"}, r"backend must be one of"),
    ],
)
def test_bad_input_raises_clear_error(change, message):
    inputs = make_inputs(length=10)
    with pytest.raises(ValueError, match=message):
        selective_scan(**{**inputs, **change})


def test_cuda_dispatch_passes_mamba_dtypes_and_layouts(monkeypatch):
    """The 'cuda' path only forwards to mamba-ssm; a stand-in records what mamba's kernel would receive."""
    import importlib

    backends_module = importlib.import_module("shared_networks.ssm.backends")
    scan_module = importlib.import_module("shared_networks.ssm.selective_scan")  # the module, not the function

    received = {}

    def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                               return_last_state=False):
        received.update(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                        delta_softplus=delta_softplus, return_last_state=return_last_state)
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    monkeypatch.setattr(backends_module, "_cuda_usable", lambda device: True)
    monkeypatch.setattr(scan_module, "mamba_selective_scan_fn", lambda: fake_selective_scan_fn)
    inputs = make_inputs(length=12, groups=2)
    half = {k: (v.half() if k in ("u", "z") else v) for k, v in inputs.items()}
    half["delta"] = inputs["delta"].double().transpose(0, 1).contiguous().transpose(0, 1)  # other dtype, strided
    out, _ = selective_scan(**half, delta_softplus=True, return_last_state=True)
    assert selective_scan_backend("cpu") == "cuda"
    for name in ("u", "delta", "B", "C", "z"):
        assert received[name].dtype == torch.float16 and received[name].is_contiguous(), name
    for name in ("A", "D", "delta_bias"):
        assert received[name].dtype == torch.float32, name
    assert received["delta_softplus"] is True and received["return_last_state"] is True
    assert received["B"].shape == inputs["B"].shape  # grouped layout passed through unchanged
    expected, _ = selective_scan_reference(**half, delta_softplus=True)
    assert rel_error(out, expected) <= 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_softplus_over_a_wide_range_of_steps(backend):
    """Raw steps from -30 to 30 cross softplus' tiny-value and linear (> 20) regimes."""
    inputs = make_inputs(dim=8, dstate=4, length=200, groups=None, with_bias=False, seed=8)
    inputs["delta"] = torch.linspace(-30.0, 30.0, 2 * 8 * 200).reshape(2, 8, 200)
    inputs["A"] = -torch.rand(8, 4, generator=torch.Generator().manual_seed(3)) * 0.05
    out, state = selective_scan(**inputs, delta_softplus=True, return_last_state=True, backend=backend)
    expected, expected_state = selective_scan_reference(**inputs, delta_softplus=True)
    assert rel_error(out, expected) <= 1e-5 and rel_error(state, expected_state) <= 1e-5


@pytest.mark.skipif(load_extension() is None, reason="the C++ selective-scan kernel could not be built here")
@pytest.mark.parametrize("optional", [True, False])
def test_cpp_operator_registration_passes_opcheck(optional):
    """torch.library.opcheck: schema, fake (shape-only) implementation and autograd registration of the C++ operators
    agree with what the kernel does; this is what tracing, torch.export and torch.compile rely on."""
    inputs = make_inputs(batch=2, dim=4, dstate=5, length=300, groups=2, with_d=optional, with_z=optional,
                         with_bias=optional)
    args = [inputs[name] for name in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    for save_checkpoints in (False, True):
        leaves = [None if t is None else t.clone().requires_grad_(save_checkpoints) for t in args]
        # delta_softplus: make_inputs draws negative step sizes, which only softplus turns into a stable scan
        torch.library.opcheck(torch.ops.shared_networks.selective_scan_cpu_forward,
                              (*leaves, True, save_checkpoints))
    out, _, checkpoints = torch.ops.shared_networks.selective_scan_cpu_forward(*args, True, True)
    torch.library.opcheck(torch.ops.shared_networks.selective_scan_cpu_backward,
                          (torch.randn_like(out), *args, True, checkpoints))


@pytest.mark.skipif(load_extension() is None, reason="the C++ selective-scan kernel could not be built here")
def test_cpp_backend_traces_and_exports():
    """A module calling the cpp backend is recorded as the operator by torch.jit.trace and torch.export, and the
    recorded programs compute what eager mode does on an input they were not traced with."""

    class Scan(torch.nn.Module):
        def __init__(self):
            super().__init__()
            inputs = make_inputs(batch=1, dim=4, dstate=5, length=40)
            self.A = torch.nn.Parameter(inputs["A"])
            self.D = torch.nn.Parameter(inputs["D"])

        def forward(self, u, delta, B, C):
            return selective_scan(u, delta, self.A, B, C, self.D, delta_softplus=True, backend="cpp")

    module = Scan().eval()
    example = make_inputs(batch=1, dim=4, dstate=5, length=40, seed=1)
    other = make_inputs(batch=1, dim=4, dstate=5, length=40, seed=2)
    args, other_args = ([x[k] for k in ("u", "delta", "B", "C")] for x in (example, other))
    with torch.no_grad():
        expected = module(*other_args)
        traced = torch.jit.trace(module, tuple(args))
        assert "shared_networks::selective_scan_cpu_forward" in str(traced.inlined_graph)
        exported = torch.export.export(module, tuple(args))
        assert any("selective_scan_cpu_forward" in str(node.target) for node in exported.graph.nodes)
        torch.testing.assert_close(traced(*other_args), expected, rtol=0, atol=0)
        torch.testing.assert_close(exported.module()(*other_args), expected, rtol=0, atol=0)
