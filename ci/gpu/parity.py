# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Parity, speed and memory of the CUDA dispatch of :mod:`shared_networks.ssm` on a GPU machine.

1. Checks that the dispatcher picks ``"cuda"`` (mamba-ssm's ``selective_scan_fn``, causal-conv1d's
   ``causal_conv1d_fn``) for CUDA tensors.
2. ``selective_scan``: forward and backward of ``backend="cuda"`` vs ``backend="torch"`` in float32 (plain and grouped
   B/C; with D, z, delta_bias, softplus and return_last_state), each also against the torch path in float64
   (relative errors ``||a - b|| / ||b||``).
3. ``causal_conv1d``: the same for widths 2-4, with and without SiLU, channel-first and channel-last inputs.
4. Timings (median of CUDA-event timed runs) of both backends: scan forward at b1, d96, N16, L 262144 (SegMamba's
   first stage at 128^3) and forward + backward at L 32768.
5. SegMamba (Xing et al., MICCAI 2024, release variant, 4 in / 4 out): the same weights and input with the CUDA
   kernels vs ``SHARED_NETWORKS_SCAN_BACKEND=torch`` in float32 (TF32 off), outputs and parameter gradients.
6. SegMamba at 128^3: inference (batch 1, fp16 autocast and fp32) and one training step (batch 2, fp16 autocast +
   GradScaler, SGD nesterov momentum 0.99, weight decay 3e-5, cross-entropy, gradient clipping at 12, as in the
   authors' training script) with ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` and times, next to
   Table 5 of the paper (17,976 MB training memory, 6,279 MB inference memory, 1.51 case/s on an A100).

Prints a table at the end and writes every number to ``--json``. On a machine without CUDA it can be dry-run with
``--device cpu --fast-backend cpp`` and tiny sizes, which exercises the same code paths.

Usage (on the GPU machine, after ``ci/gpu/build_kernels.py``)::

    PYTHONPATH=/tmp/site:$PWD python3 ci/gpu/parity.py --json results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from shared_networks.ssm import (
    available_backends,
    causal_conv1d,
    causal_conv1d_backend,
    selective_scan,
    selective_scan_backend,
)
from shared_networks.ssm.backends import BACKEND_ENV_VAR

logger = logging.getLogger("parity")

# Table 5 of Xing et al., "SegMamba", MICCAI 2024 (128^3 input, one NVIDIA A100, PyTorch 2.0.1 / CUDA 11.7)
PAPER_TABLE5 = {"training_memory_mb": 17976, "inference_memory_mb": 6279, "inference_cases_per_s": 1.51}
_MB = 1024.0 * 1024.0


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` computed in float64 (NaN anywhere gives NaN)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-300))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 2, repeat: int = 10) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events on a GPU, ``perf_counter`` on the CPU)."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(times)


def scan_inputs(
    batch: int, dim: int, dstate: int, length: int, groups: int, device: torch.device, full: bool
) -> Dict[str, Optional[torch.Tensor]]:
    """Random float32 inputs shaped like a Mamba layer's (A negative, delta around softplus' knee)."""
    bc_shape = (batch, dstate, length) if groups == 0 else (batch, groups, dstate, length)
    inputs = {
        "u": torch.randn(batch, dim, length, device=device),
        "delta": 0.5 * torch.randn(batch, dim, length, device=device) - 1.0,
        "A": -torch.exp(torch.randn(dim, dstate, device=device) * 0.5),
        "B": torch.randn(bc_shape, device=device),
        "C": torch.randn(bc_shape, device=device),
        "D": torch.randn(dim, device=device) if full else None,
        "z": torch.randn(batch, dim, length, device=device) if full else None,
        "delta_bias": 0.2 * torch.randn(dim, device=device) if full else None,
    }
    if not full:
        inputs["delta"] = torch.rand(batch, dim, length, device=device) * 0.2  # used without softplus: keep >= 0
    return inputs


def _run_scan(inputs: Dict, dtype: torch.dtype, backend: str, softplus: bool, last_state: bool, grad_out):
    """Forward (+ backward against ``grad_out``) of ``selective_scan``; returns (out, last_state, grads)."""
    leaves = {k: (None if v is None else v.detach().to(dtype).requires_grad_(True)) for k, v in inputs.items()}
    result = selective_scan(
        **leaves, delta_softplus=softplus, return_last_state=last_state, backend=backend
    )
    out, state = result if last_state else (result, None)
    out.backward(grad_out.to(out.dtype))
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return out.detach(), (None if state is None else state.detach()), grads


def selective_scan_parity(device: torch.device, fast: str, length: int) -> List[Dict]:
    """Float32 ``fast`` vs ``torch`` backends, both against the torch path in float64."""
    cases = [
        ("plain", 0, False, False),
        ("D,z,delta_bias,softplus,last_state", 0, True, True),
        ("grouped B/C (G=2) + all options", 2, True, True),
    ]
    rows = []
    for name, groups, full, last_state in cases:
        torch.manual_seed(len(rows) + 1)
        inputs = scan_inputs(2, 64, 16, length, groups, device, full)
        grad_out = torch.randn(2, 64, length, device=device)
        out_f, state_f, grads_f = _run_scan(inputs, torch.float32, fast, full, last_state, grad_out)
        out_t, state_t, grads_t = _run_scan(inputs, torch.float32, "torch", full, last_state, grad_out)
        out_r, state_r, grads_r = _run_scan(inputs, torch.float64, "torch", full, last_state, grad_out)
        row = {
            "case": name,
            "length": length,
            "out_fast_vs_torch": relative_error(out_f, out_t),
            "out_fast_vs_f64": relative_error(out_f, out_r),
            "out_torch_vs_f64": relative_error(out_t, out_r),
            "grad_fast_vs_torch": {k: relative_error(grads_f[k], grads_t[k]) for k in grads_f},
            "grad_fast_vs_f64": {k: relative_error(grads_f[k], grads_r[k]) for k in grads_f},
            "grad_torch_vs_f64": {k: relative_error(grads_t[k], grads_r[k]) for k in grads_t},
        }
        if last_state:
            row["last_state_fast_vs_torch"] = relative_error(state_f, state_t)
            row["last_state_fast_vs_f64"] = relative_error(state_f, state_r)
        rows.append(row)
        logger.info("selective_scan %s: %s", name, json.dumps(row))
    return rows


def causal_conv1d_parity(device: torch.device, fast: str, length: int) -> List[Dict]:
    """Float32 ``fast`` vs ``torch`` causal conv1d (forward and backward), both against float64."""
    rows = []
    for width in (2, 3, 4):
        for activation in (None, "silu"):
            for layout in ("channel-first", "channel-last"):
                torch.manual_seed(100 + len(rows))
                x = torch.randn(2, 64, length, device=device)
                if layout == "channel-last":  # as produced by in_proj(...).transpose(1, 2) in the Mamba layer
                    x = x.transpose(1, 2).contiguous().transpose(1, 2)
                weight = torch.randn(64, width, device=device)
                bias = torch.randn(64, device=device)
                grad_out = torch.randn(2, 64, length, device=device)
                results = {}
                for label, backend, dtype in (("fast", fast, torch.float32), ("torch", "torch", torch.float32),
                                              ("f64", "torch", torch.float64)):
                    leaves = [t.detach().to(dtype).requires_grad_(True) for t in (x, weight, bias)]
                    out = causal_conv1d(*leaves, activation=activation, backend=backend)
                    out.backward(grad_out.to(dtype))
                    results[label] = [out.detach()] + [t.grad for t in leaves]
                names = ("out", "grad_x", "grad_weight", "grad_bias")
                row = {
                    "width": width,
                    "activation": activation,
                    "layout": layout,
                    "fast_vs_torch": {
                        n: relative_error(a, b) for n, a, b in zip(names, results["fast"], results["torch"])
                    },
                    "fast_vs_f64": {n: relative_error(a, b) for n, a, b in zip(names, results["fast"], results["f64"])},
                }
                rows.append(row)
    logger.info("causal_conv1d: %s", json.dumps(rows))
    return rows


def scan_timings(device: torch.device, fast: str, fwd_length: int, bwd_length: int) -> Dict:
    """Median ms of both backends: forward at ``fwd_length``, forward + backward at ``bwd_length`` (b1, d96, N16)."""
    results = {}
    for phase, length in (("fwd", fwd_length), ("fwd+bwd", bwd_length)):
        torch.manual_seed(7)
        inputs = scan_inputs(1, 96, 16, length, 0, device, True)
        if phase == "fwd+bwd":
            inputs = {k: (None if v is None else v.requires_grad_(True)) for k, v in inputs.items()}
        grad_out = torch.randn(1, 96, length, device=device)
        for backend in (fast, "torch"):

            def step(backend=backend, inputs=inputs, phase=phase, grad_out=grad_out):
                if phase == "fwd":
                    with torch.no_grad():
                        return selective_scan(**inputs, delta_softplus=True, backend=backend)
                out = selective_scan(**inputs, delta_softplus=True, backend=backend)
                grads = torch.autograd.grad(out, [v for v in inputs.values() if v is not None], grad_out)
                return grads

            results[f"{phase} L={length} {backend}"] = time_ms(step, device, warmup=2, repeat=10)
        key = f"{phase} L={length}"
        results[f"{key} speed-up"] = results[f"{key} torch"] / results[f"{key} {fast}"]
    logger.info("scan timings (ms): %s", json.dumps(results))
    return results


def _build_segmamba(device: torch.device, seed: int = 0) -> torch.nn.Module:
    from shared_networks.nets import SegMamba

    torch.manual_seed(seed)
    return SegMamba(in_channels=4, out_channels=4, mode="release").to(device)


def _with_backend(name: Optional[str], fn: Callable[[], object]) -> object:
    """Run ``fn`` with ``SHARED_NETWORKS_SCAN_BACKEND`` set to ``name`` (unset for ``None``), then restore it."""
    previous = os.environ.get(BACKEND_ENV_VAR)
    try:
        if name is None:
            os.environ.pop(BACKEND_ENV_VAR, None)
        else:
            os.environ[BACKEND_ENV_VAR] = name
        return fn()
    finally:
        if previous is None:
            os.environ.pop(BACKEND_ENV_VAR, None)
        else:
            os.environ[BACKEND_ENV_VAR] = previous


def segmamba_parity(device: torch.device, fast: str, forward_size: int, grad_size: int) -> Dict:
    """SegMamba float32: the ``fast`` backend vs the forced torch backend on the same weights and inputs."""
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    try:
        model = _build_segmamba(device).eval()
        results = {}
        torch.manual_seed(11)
        image = torch.randn(1, 4, forward_size, forward_size, forward_size, device=device)
        with torch.no_grad():
            out_fast = _with_backend(fast, lambda: model(image))
            out_torch = _with_backend("torch", lambda: model(image))
        results[f"forward {forward_size}^3 output rel. error"] = relative_error(out_fast, out_torch)
        results[f"forward {forward_size}^3 argmax agreement"] = float(
            (out_fast.argmax(1) == out_torch.argmax(1)).double().mean()
        )
        del out_fast, out_torch, image

        model.train()
        torch.manual_seed(12)
        image = torch.randn(1, 4, grad_size, grad_size, grad_size, device=device)
        grad_out = torch.randn(1, 4, grad_size, grad_size, grad_size, device=device)

        def grads() -> tuple:
            model.zero_grad(set_to_none=True)
            out = model(image)
            out.backward(grad_out)
            return out.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        out_fast, grads_fast = _with_backend(fast, grads)
        out_torch, grads_torch = _with_backend("torch", grads)
        # a parameter whose true gradient is ~0 (e.g. a conv bias right before an affine-free InstanceNorm) has a
        # meaningless relative error: the worst one is taken over gradients of norm >= 1e-4 x the largest norm
        norms = {n: float(g.double().norm()) for n, g in grads_torch.items()}
        floor = 1e-4 * max(norms.values())
        per_tensor = {n: relative_error(grads_fast[n], grads_torch[n]) for n in grads_torch if norms[n] >= floor}
        worst = max(per_tensor, key=per_tensor.get)
        flat_fast = torch.cat([g.flatten().double() for g in grads_fast.values()])
        flat_torch = torch.cat([grads_torch[n].flatten().double() for n in grads_fast])
        results[f"train-mode {grad_size}^3 output rel. error"] = relative_error(out_fast, out_torch)
        results[f"train-mode {grad_size}^3 all-parameter gradient rel. error"] = relative_error(flat_fast, flat_torch)
        results[f"train-mode {grad_size}^3 worst parameter gradient rel. error"] = per_tensor[worst]
        results[f"train-mode {grad_size}^3 worst parameter"] = worst
        results[f"train-mode {grad_size}^3 parameters compared / with gradient"] = f"{len(per_tensor)} / {len(norms)}"
        logger.info("SegMamba parity: %s", json.dumps(results))
        return results
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic) = tf32


def _memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _memory_peak(device: torch.device) -> Dict[str, Optional[float]]:
    if device.type != "cuda":
        return {"max_allocated_mb": None, "max_reserved_mb": None}
    torch.cuda.synchronize(device)
    return {
        "max_allocated_mb": torch.cuda.max_memory_allocated(device) / _MB,
        "max_reserved_mb": torch.cuda.max_memory_reserved(device) / _MB,
    }


def _benchmark_backend(device: torch.device, backend: str, size: int, train_batch: int, repeat: int) -> Dict:
    """One backend's inference and training-step figures; its model and tensors are freed when this returns, so the
    next backend's peak memory does not include them."""
    results = {}
    amp_dtype = torch.float16
    model = _build_segmamba(device)
    results["parameters"] = sum(p.numel() for p in model.parameters())
    torch.manual_seed(21)
    image = torch.randn(1, 4, size, size, size, device=device)

    model.eval()
    for precision in ("fp16-autocast", "fp32"):

        def infer(precision=precision):
            with torch.inference_mode(), torch.autocast(device.type, dtype=amp_dtype, enabled=precision != "fp32"):
                return model(image)

        _memory_reset(device)
        _with_backend(backend, infer)
        memory = _memory_peak(device)
        milliseconds = _with_backend(backend, lambda: time_ms(infer, device, warmup=1, repeat=repeat))
        key = f"inference b1 {precision} {backend}"
        results[key] = {**memory, "ms": milliseconds, "cases_per_s": 1e3 / milliseconds}
        logger.info("SegMamba inference %s %s: %s", precision, backend, results[key])

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    torch.manual_seed(22)
    batch = torch.randn(train_batch, 4, size, size, size, device=device)
    labels = torch.randint(0, 4, (train_batch, size, size, size), device=device)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(batch), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    _with_backend(backend, train_step)  # first step creates the momentum buffers
    _memory_reset(device)
    loss = _with_backend(backend, train_step)
    memory = _memory_peak(device)
    milliseconds = _with_backend(backend, lambda: time_ms(train_step, device, warmup=0, repeat=max(1, repeat // 2)))
    key = f"train step b{train_batch} amp {backend}"
    results[key] = {**memory, "ms": milliseconds, "loss_finite": bool(torch.isfinite(loss))}
    logger.info("SegMamba training %s: %s", backend, results[key])
    return results


def segmamba_benchmark(device: torch.device, backends: Sequence[str], size: int, train_batch: int, repeat: int) -> Dict:
    """Inference (batch 1; fp16 autocast and fp32) and training-step (``train_batch``, AMP, SGD) memory and time."""
    results = {}
    for backend in backends:
        results.update(_benchmark_backend(device, backend, size, train_batch, repeat))
        _memory_reset(device)
    return results


def _section(name: str, fn: Callable[[], object], report: Dict) -> None:
    """Run one section; a failure is recorded in the report (with its traceback in the log) and the next runs."""
    start = time.perf_counter()
    try:
        report[name] = fn()
    except Exception as exc:  # one failing section must not hide the numbers of the others
        logger.error("section %s failed:\n%s", name, traceback.format_exc())
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    logger.info("section %s took %.1f s", name, time.perf_counter() - start)


def _worst(values) -> float:
    flat = []
    for value in values:
        flat.extend(value.values() if isinstance(value, dict) else [value])
    return max(flat)


def print_table(report: Dict, fast: str) -> None:
    """Short human-readable summary of ``report`` on stdout."""
    lines = ["", "=" * 100, f"environment: {json.dumps(report.get('environment'))}"]
    scan = report.get("selective_scan_parity")
    if isinstance(scan, list):
        lines.append(f"selective_scan fp32, max rel. error ({fast} vs torch | {fast} vs f64 | torch vs f64):")
        for row in scan:
            lines.append(
                f"  {row['case']:<38} out {row['out_fast_vs_torch']:.1e} | {row['out_fast_vs_f64']:.1e} | "
                f"{row['out_torch_vs_f64']:.1e}   grads {_worst([row['grad_fast_vs_torch']]):.1e} | "
                f"{_worst([row['grad_fast_vs_f64']]):.1e} | {_worst([row['grad_torch_vs_f64']]):.1e}"
                + (f"   last_state {row['last_state_fast_vs_torch']:.1e}" if "last_state_fast_vs_torch" in row else "")
            )
    conv = report.get("causal_conv1d_parity")
    if isinstance(conv, list):
        lines.append(
            f"causal_conv1d fp32 ({len(conv)} cases), max rel. error {fast} vs torch "
            f"{_worst([r['fast_vs_torch'] for r in conv]):.1e}, "
            f"{fast} vs f64 {_worst([r['fast_vs_f64'] for r in conv]):.1e}"
        )
    for section in ("scan_timings_ms", "segmamba_parity", "segmamba_benchmark"):
        value = report.get(section)
        if isinstance(value, dict):
            lines.append(f"{section}:")
            lines.extend(f"  {key}: {json.dumps(entry)}" for key, entry in value.items())
    for section, value in report.items():
        if isinstance(value, dict) and "error" in value:
            lines.append(f"FAILED {section}: {value['error']}")
    lines.append(f"paper Table 5 (A100): {json.dumps(PAPER_TABLE5)}")
    print("\n".join(lines))  # noqa: T201 - this script's output is its table


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--fast-backend", default="cuda", help="backend compared with 'torch' (cuda; cpp on cpu)")
    parser.add_argument("--parity-length", type=int, default=3000, help="L of the op parity checks")
    parser.add_argument("--time-fwd-length", type=int, default=262144, help="L of the forward timing")
    parser.add_argument("--time-bwd-length", type=int, default=32768, help="L of the forward + backward timing")
    parser.add_argument("--net-size", type=int, default=128, help="SegMamba input edge (forward parity, benchmark)")
    parser.add_argument("--net-grad-size", type=int, default=64, help="SegMamba input edge for gradient parity")
    parser.add_argument("--train-batch", type=int, default=2, help="batch of the training-step benchmark")
    parser.add_argument("--repeat", type=int, default=10, help="timed repetitions of the SegMamba inference")
    parser.add_argument("--bench-torch-backend", action="store_true", help="also benchmark SegMamba on 'torch'")
    parser.add_argument("--skip", nargs="*", default=[], help="section names to skip")
    parser.add_argument("--json", default=None, help="write the full report to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    device = torch.device(args.device)
    fast = args.fast_backend
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False.")
    environment = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "available_backends": available_backends(device),
        "selective_scan_backend(auto)": selective_scan_backend(device),
        "causal_conv1d_backend(auto)": causal_conv1d_backend(device),
    }
    for module in ("mamba_ssm", "causal_conv1d", "monai"):
        try:
            environment[module] = __import__(module).__version__
        except Exception as exc:  # absent on CPU-only machines
            environment[module] = f"not importable ({type(exc).__name__})"
    report: Dict = {"environment": environment}
    logger.info("environment: %s", json.dumps(environment))
    if device.type == "cuda" and environment["selective_scan_backend(auto)"] != "cuda":
        logger.error("the dispatcher does not pick 'cuda' for CUDA tensors: %s", environment)

    sections = {
        "selective_scan_parity": lambda: selective_scan_parity(device, fast, args.parity_length),
        "causal_conv1d_parity": lambda: causal_conv1d_parity(device, fast, args.parity_length),
        "scan_timings_ms": lambda: scan_timings(device, fast, args.time_fwd_length, args.time_bwd_length),
        "segmamba_parity": lambda: segmamba_parity(device, fast, args.net_size, args.net_grad_size),
        "segmamba_benchmark": lambda: segmamba_benchmark(
            device,
            [fast, "torch"] if args.bench_torch_backend else [fast],
            args.net_size,
            args.train_batch,
            args.repeat,
        ),
    }
    unknown = set(args.skip) - set(sections)
    if unknown:
        raise ValueError(f"--skip got unknown sections {sorted(unknown)}; known: {sorted(sections)}.")
    for name, fn in sections.items():
        if name not in args.skip:
            _section(name, fn, report)
    report["paper_table5"] = PAPER_TABLE5
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as handle:
            json.dump(report, handle, indent=1, default=str)
        os.replace(tmp, args.json)
    print_table(report, fast)
    failed = [name for name, value in report.items() if isinstance(value, dict) and "error" in value]
    return 1 if failed or (device.type == "cuda" and environment["selective_scan_backend(auto)"] != "cuda") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
