# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Benchmark of the selective scan on this machine (not a test).

Measures, in one run, the default backend and the pure PyTorch backend against the sequential reference loop of
``shared_networks.ssm.reference`` (mamba-ssm's ``selective_scan_ref`` algorithm: a Python loop over L with torch ops
on precomputed ``exp(delta * A)`` and ``delta * B * u``):

- forward at batch 1, dim 96, N 16, L 262144 (targets: >= 50x faster than the loop, peak extra memory <= 2x the
  input size and never the batch x dim x L x N tensor);
- forward + backward at L 32768 against autograd through the loop (target >= 20x);
- the memory copy bandwidth of this machine and the bytes the scan must move (the bandwidth floor);
- beside them, when installed, ``mambapy`` 1.2 (a pure-PyTorch parallel scan on PyPI), the peer of the ``torch``
  backend (targets: cpp forward+backward at most 3.5x its own forward and >= 30x faster than mambapy; torch backend
  >= 3x faster than mambapy);
- the time to build the C++ extension from scratch (in a subprocess with an empty extensions directory) and to load
  it from the cache.

The reference loop is timed on a prefix of the sequence and extrapolated linearly (its cost per step does not depend
on L); the output says so. ``--quick`` shrinks every size for a fast smoke run.

Usage: ``python ci/bench_scan.py [--quick] [--length L] [--fb-length L] [--ref-steps S] [--no-cold-build]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from shared_networks.ssm import selective_scan, selective_scan_backend  # noqa: E402
from shared_networks.ssm.cpp_scan import EXTENSION_NAME, load_extension  # noqa: E402
from shared_networks.ssm.reference import selective_scan_ref  # noqa: E402


def make_inputs(batch: int, dim: int, dstate: int, length: int, seed: int = 0) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": torch.randn(batch, dim, length, generator=gen) * 0.5 - 2.0,
        "A": -torch.arange(1, dstate + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, dstate, length, generator=gen),
        "C": torch.randn(batch, dstate, length, generator=gen),
        "D": torch.ones(dim),
        "delta_bias": torch.rand(dim, generator=gen),
    }


def reference_loop(**inputs: torch.Tensor) -> torch.Tensor:
    """The sequential reference scan of :mod:`shared_networks.ssm.reference` (mamba-ssm's ``selective_scan_ref``
    algorithm) in float32, with the benchmark's softplus."""
    return selective_scan_ref(**inputs, delta_softplus=True)[0]


PEER_MEMORY_LIMIT = 8 * 2**30


def mambapy_peer() -> Optional[Callable[..., torch.Tensor]]:
    """The same scan through ``mambapy`` 1.2 (its parallel scan ``mambapy.pscan.pscan`` over the materialised
    (batch, L, dim, N) tensors, as its ``MambaBlock.selective_scan`` does), in this benchmark's layouts; None when
    mambapy is not installed (``pip install mambapy==1.2.0``)."""
    try:
        from mambapy.pscan import pscan
    except ImportError:
        return None

    def scan(u, delta, A, B, C, D, delta_bias, **_):
        # mambapy's pscan pads L to a power of two inside; its inputs are (batch, L, dim, N)
        dt = torch.nn.functional.softplus(delta + delta_bias[:, None]).transpose(1, 2)  # (batch, L, dim)
        x = u.transpose(1, 2)
        decay = torch.exp(dt.unsqueeze(-1) * A)
        drive = dt.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
        states = pscan(decay, drive)
        y = (states @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1) + D * x
        return y.transpose(1, 2)

    return scan


def timed(fn: Callable[[], object], repeats: int = 1) -> Tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def copy_bandwidth(nbytes: int = 512 * 2**20) -> float:
    """Bytes per second of a large tensor clone (read + write counted)."""
    source = torch.ones(nbytes // 4)
    seconds, _ = timed(lambda: source.clone(), repeats=3)
    return 2 * nbytes / seconds


def cold_build_seconds() -> Optional[float]:
    """Compile the extension from scratch in a subprocess with an empty extensions directory."""
    with tempfile.TemporaryDirectory() as ext_dir:
        env = dict(os.environ, TORCH_EXTENSIONS_DIR=ext_dir)
        code = (
            "import time; t = time.perf_counter();"
            "from shared_networks.ssm.cpp_scan import load_extension;"
            "ok = load_extension() is not None; print(ok, time.perf_counter() - t)"
        )
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        fields = done.stdout.split()
        if done.returncode != 0 or len(fields) < 2 or fields[-2] != "True":
            return None
        return float(fields[-1])


def _rss_bytes(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (Linux); -1 when unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return -1.0


def memory_probe(backend: str, batch: int, dim: int, dstate: int, length: int) -> Dict[str, float]:
    """
    Run in a fresh process: growth of the resident-set high-water mark during one no-grad forward, after the inputs
    exist and a warm-up call. The mark is reset first (``echo 5 > /proc/self/clear_refs``) so that temporaries of
    building the inputs do not hide the scan's own peak.
    """
    inputs = make_inputs(batch, dim, dstate, length)
    small = {k: (v[..., :300].contiguous() if v.dim() == 3 else v) for k, v in inputs.items()}
    with torch.no_grad():
        selective_scan(**small, delta_softplus=True, backend=backend)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _rss_bytes("VmRSS")
        out = selective_scan(**inputs, delta_softplus=True, backend=backend)
        peak = _rss_bytes("VmHWM")
    input_bytes = sum(v.numel() * v.element_size() for v in inputs.values())
    return {"peak_extra_bytes": peak - before, "input_bytes": float(input_bytes), "output_bytes": float(out.nbytes)}


def probe_in_subprocess(backend: str, batch: int, dim: int, dstate: int, length: int) -> Dict[str, float]:
    args = [sys.executable, __file__, "--memory-probe", backend, "--batch", str(batch), "--dim", str(dim)]
    args += ["--dstate", str(dstate), "--length", str(length)]
    done = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(title: str, header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print(f"\n{title}")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: L 32768 / 4096, short reference prefixes")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--dstate", type=int, default=16)
    parser.add_argument("--length", type=int, default=None, help="forward length (default 262144, quick 32768)")
    parser.add_argument("--fb-length", type=int, default=None, help="forward+backward length (default 32768)")
    parser.add_argument("--ref-steps", type=int, default=None, help="reference loop prefix (default 4096)")
    parser.add_argument("--no-torch", action="store_true", help="skip the pure PyTorch backend")
    parser.add_argument("--no-cold-build", action="store_true", help="skip compiling the extension from scratch")
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    length = args.length or (32768 if args.quick else 262144)
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.batch, args.dim, args.dstate, length)))
        return
    fb_length = args.fb_length or (4096 if args.quick else 32768)
    ref_steps = min(args.ref_steps or (1024 if args.quick else 4096), length)
    ref_fb_steps = min(ref_steps // 2, fb_length)
    batch, dim, dstate = args.batch, args.dim, args.dstate

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    load_seconds, extension = timed(load_extension)
    where = getattr(extension, "__file__", "-")
    print(f"C++ extension: {'loaded' if extension else 'NOT available'} in {load_seconds:.2f} s at first use in this "
          f"process (compiles only when {EXTENSION_NAME} is not cached yet; {where})")
    if not args.no_cold_build and not args.quick:
        seconds = cold_build_seconds()
        print(f"C++ extension cold build (empty cache, -O3 -fopenmp): "
              f"{'FAILED' if seconds is None else f'{seconds:.1f} s'}")
    default = selective_scan_backend("cpu")
    backends = [default] + ([] if args.no_torch or default == "torch" else ["torch"])

    bandwidth = copy_bandwidth()
    print(f"memory copy bandwidth (512 MiB clone, read+write): {bandwidth / 1e9:.2f} GB/s")

    peer = mambapy_peer()
    print("peer: mambapy 1.2 (parallel scan)" if peer else "peer: mambapy not installed (pip install mambapy==1.2.0)")

    # ---- forward ----
    inputs = make_inputs(batch, dim, dstate, length)
    moved = sum(inputs[k].numel() * 4 for k in ("u", "delta", "B", "C")) + batch * dim * length * 4  # + output
    floor = moved / bandwidth
    prefix = {k: (v[..., :ref_steps].contiguous() if v.dim() == 3 else v) for k, v in inputs.items()}
    with torch.no_grad():
        ref_seconds, ref_out = timed(lambda: reference_loop(**prefix))
        ref_full = ref_seconds * length / ref_steps
        rows = [[f"reference loop (timed on {ref_steps} steps, x{length / ref_steps:.0f} extrapolated)",
                 f"{ref_full:.2f}", "1.0", "-", "-"]]
        for backend in backends:
            selective_scan(**prefix, delta_softplus=True, backend=backend)  # warm-up
            repeats = 2 if backend == default else 1  # best of two for the fast path
            seconds, out = timed(lambda: selective_scan(**inputs, delta_softplus=True, backend=backend), repeats)
            error = rel_error(out[..., :ref_steps], ref_out)
            rows.append([f"{backend} backend", f"{seconds:.3f}", f"{ref_full / seconds:.1f}",
                         f"{seconds / floor:.1f}", f"{error:.1e}"])
        # the peer holds about six (batch, L, dim, N) float32 tensors at once
        peer_bytes = 6 * batch * length * dim * dstate * 4
        if peer is not None and peer_bytes > PEER_MEMORY_LIMIT:
            rows.append(["mambapy 1.2 pscan (peer)", f"skipped: needs ~{peer_bytes / 2**30:.0f} GiB", "-", "-", "-"])
        elif peer is not None:
            seconds, out = timed(lambda: peer(**inputs), 1)
            rows.append(["mambapy 1.2 pscan (peer)", f"{seconds:.3f}", f"{ref_full / seconds:.1f}",
                         f"{seconds / floor:.1f}", f"{rel_error(out[..., :ref_steps], ref_out):.1e}"])
    print_table(
        f"forward, batch {batch}, dim {dim}, N {dstate}, L {length}, fp32, softplus+bias+D "
        f"(scan moves {moved / 1e6:.0f} MB: bandwidth floor {floor * 1e3:.1f} ms)",
        ["implementation", "seconds", "speed-up vs loop", "x bandwidth floor", "rel. err vs loop (prefix)"], rows)
    del inputs, ref_out

    # ---- memory of the fast path (fresh processes) ----
    full_state = batch * dim * length * dstate * 4
    rows = []
    for backend in backends:
        probe = probe_in_subprocess(backend, batch, dim, dstate, length)
        extra, size = probe["peak_extra_bytes"], probe["input_bytes"]
        rows.append([f"{backend} backend", f"{size / 2**20:.0f}", f"{extra / 2**20:.0f}", f"{extra / size:.2f}",
                     f"{full_state / 2**20:.0f}", "yes" if extra < full_state else "NO"])
    print_table("peak extra memory of one no-grad forward (RSS high-water growth in a fresh process)",
                ["implementation", "inputs MiB", "peak extra MiB (incl. output)", "extra / inputs", "BxDxLxN MiB",
                 "below it"], rows)

    # ---- forward + backward ----
    inputs = make_inputs(batch, dim, dstate, fb_length, seed=1)
    grad_names = ("u", "delta", "A", "B", "C", "D", "delta_bias")

    def forward_backward(tensors: Dict[str, torch.Tensor], fn: Callable[..., torch.Tensor]) -> float:
        leaves = {k: v.clone().requires_grad_(k in grad_names) for k, v in tensors.items()}
        start = time.perf_counter()
        out = fn(**leaves)
        out.backward(torch.ones_like(out))
        return time.perf_counter() - start

    prefix = {k: (v[..., :ref_fb_steps].contiguous() if v.dim() == 3 else v) for k, v in inputs.items()}
    ref_seconds = forward_backward(prefix, reference_loop)
    ref_full = ref_seconds * fb_length / ref_fb_steps
    rows = [[f"autograd through the loop (timed on {ref_fb_steps} steps, x{fb_length / ref_fb_steps:.0f} "
             "extrapolated)", f"{ref_full:.2f}", "1.0", "-", "-"]]
    def with_backend(backend: str) -> Callable[..., torch.Tensor]:
        return lambda **kw: selective_scan(**kw, delta_softplus=True, backend=backend)

    implementations = [(f"{backend} backend", with_backend(backend)) for backend in backends]
    if peer is not None:
        implementations.append(("mambapy 1.2 pscan (peer)", peer))
    fb_seconds = {}
    for name, fn in implementations:
        forward_backward(prefix, fn)  # warm-up
        repeats = 10 if name == f"{default} backend" else 1  # milliseconds each: the best of several
        seconds = min(forward_backward(inputs, fn) for _ in range(repeats))
        with torch.no_grad():
            forward, _ = timed(lambda: fn(**inputs), repeats)
        fb_seconds[name] = seconds
        rows.append([name, f"{seconds:.3f}", f"{ref_full / seconds:.1f}", f"{seconds / forward:.2f}",
                     f"{fb_seconds.get('mambapy 1.2 pscan (peer)', float('nan')) / seconds:.1f}"])
    if peer is not None:  # the peer ran last: fill in the ratios to it
        for row in rows[1:]:
            row[4] = f"{fb_seconds['mambapy 1.2 pscan (peer)'] / float(row[1]):.1f}"
    print_table(f"forward + backward, batch {batch}, dim {dim}, N {dstate}, L {fb_length}, fp32",
                ["implementation", "seconds", "speed-up vs loop", "x its own no-grad forward", "speed-up vs mambapy"],
                rows)


if __name__ == "__main__":
    main()
