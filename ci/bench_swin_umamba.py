# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""FLOPs and CPU forward time of Swin-UMamba and Swin-UMamba† in the papers' setting (AbdomenMRI: 320 x 320, 1 input
channel, 14 classes), measured in one run.

FLOPs are counted with fvcore, as the papers did (TMI Sec. IV-C; fvcore counts one multiply-add as one flop), with
the selective scan counted explicitly by the formula of state-spaces/mamba issue #110 that VMamba and the Swin-UMamba
authors used: 9 * B * L * D * N for the scan, plus B * D * L for the skip term D (SS2D's gate is outside the scan).
The scan is counted on the C++ backend, where it is one operator (``shared_networks::selective_scan_cpu_forward``) in
the traced graph. Printed beside the papers' 68.0 G (Swin-UMamba) and 18.9 G (Swin-UMamba†), with the operators
fvcore does not count (element-wise ones).

The forward time (no_grad, eval) compares the project's scan core with the sequential reference scan
(``shared_networks.ssm.reference.selective_scan_ref``), each in its own subprocess.

    .venv/bin/pip install -e ".[bench]"      # fvcore, for the FLOPs
    .venv/bin/python ci/bench_swin_umamba.py
    .venv/bin/python ci/bench_swin_umamba.py --skip-reference --size 224
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter

import torch

PAPER_GFLOPS = {"SwinUMamba": 68.0, "SwinUMambaD": 18.9}
PAPER_PARAMS_M = {"SwinUMamba": 60, "SwinUMambaD": 28}
SCAN_OP = "shared_networks::selective_scan_cpu_forward"


def build(name: str, in_channels: int, classes: int) -> torch.nn.Module:
    from shared_networks.nets import SwinUMamba, SwinUMambaD

    torch.manual_seed(0)
    return {"SwinUMamba": SwinUMamba, "SwinUMambaD": SwinUMambaD}[name](in_channels, classes).eval()


def scan_flops(inputs, outputs) -> int:
    """fvcore handle of the scan operator: 9 * B * L * D * N (+ B * D * L with D), from u (B, D, L) and A (D, N)."""
    from fvcore.nn.jit_handles import get_shape

    batch, dim, length = get_shape(inputs[0])
    n_state = get_shape(inputs[2])[1]
    flops = 9 * batch * length * dim * n_state
    if get_shape(inputs[5]) is not None:  # D
        flops += batch * dim * length
    return flops


def count_flops(name: str, size: int, in_channels: int, classes: int) -> dict:
    from fvcore.nn import FlopCountAnalysis

    net = build(name, in_channels, classes)
    x = torch.randn(1, in_channels, size, size)
    analysis = FlopCountAnalysis(net, x).set_op_handle(SCAN_OP, scan_flops)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = analysis.total()
    by_operator = analysis.by_operator()
    return {
        "network": name,
        "gflops": total / 1e9,
        "scan_gflops": by_operator.get(SCAN_OP.split("::")[1], 0) / 1e9,  # fvcore keys operators without namespace
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "uncounted": dict(Counter(analysis.unsupported_ops())),
    }



def time_forward(name: str, variant: str, size: int, in_channels: int, classes: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    import shared_networks.blocks.vmamba_blocks as vmamba_blocks
    from shared_networks.ssm import selective_scan_backend
    from shared_networks.ssm.reference import selective_scan_ref_output

    if variant == "reference":
        vmamba_blocks.selective_scan = selective_scan_ref_output
        backend = "sequential reference"
    else:
        backend = selective_scan_backend(torch.device("cpu"))
    net = build(name, in_channels, classes)
    x = torch.randn(1, in_channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        net(x)  # warm-up (first call builds the C++ kernel if needed)
        start = time.perf_counter()
        y = net(x)
        seconds = time.perf_counter() - start
    return {"network": name, "variant": variant, "backend": backend, "seconds": seconds,
            "checksum": float(y.double().abs().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=320, help="square input size, divisible by 32 (default 320)")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-reference", action="store_true", help="time only the project's scan core")
    parser.add_argument("--child", nargs=2, metavar=("NETWORK", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size % 32:
        parser.error(f"--size must be divisible by 32, got {args.size}")
    if args.child:
        print(json.dumps(time_forward(*args.child, args.size, args.in_channels, args.classes, args.threads)))
        return

    setting = f"{args.in_channels}x{args.size}x{args.size} input, {args.classes} classes"
    print(f"Swin-UMamba / Swin-UMamba†, {setting}")
    try:
        import fvcore  # noqa: F401
    except ImportError:
        print("  FLOPs: skipped, fvcore is not installed (pip install -e \".[bench]\" or pip install fvcore)")
    else:
        os.environ["SHARED_NETWORKS_SCAN_BACKEND"] = "cpp"  # the scan as one operator in the traced graph
        print(f"\nFLOPs (fvcore, multiply-adds; scan: 9*B*L*D*N + B*D*L per call), {setting}:")
        print(f"{'network':<13}{'params M':>9}{'GFLOPs':>9}{'of which scan':>15}{'paper':>8}{'ours/paper':>12}")
        uncounted: Counter = Counter()
        for name in PAPER_GFLOPS:
            r = count_flops(name, args.size, args.in_channels, args.classes)
            uncounted.update(r["uncounted"])
            print(f"{name:<13}{r['params_m']:>9.2f}{r['gflops']:>9.2f}{r['scan_gflops']:>15.2f}"
                  f"{PAPER_GFLOPS[name]:>8.1f}{r['gflops'] / PAPER_GFLOPS[name]:>12.3f}")
        print(f"papers' parameters: {PAPER_PARAMS_M['SwinUMamba']} M and {PAPER_PARAMS_M['SwinUMambaD']} M. "
              "Not counted by fvcore (element-wise): " + ", ".join(f"{k} x{v}" for k, v in sorted(uncounted.items())))
        del os.environ["SHARED_NETWORKS_SCAN_BACKEND"]

    variants = ["fast"] if args.skip_reference else ["fast", "reference"]
    print(f"\nCPU forward (no_grad, eval, batch 1, {args.threads} threads), {setting}:")
    print(f"{'network':<13}{'variant':<11}{'scan backend':<24}{'forward s':>10}")
    results = {}
    for name in PAPER_GFLOPS:
        for variant in variants:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", name, variant, "--size", str(args.size), "--in-channels",
                 str(args.in_channels), "--classes", str(args.classes), "--threads", str(args.threads)],
                capture_output=True, text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"{name} {variant} run failed:\n{proc.stderr[-3000:]}")
            r = results[name, variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name:<13}{variant:<11}{r['backend']:<24}{r['seconds']:>10.3f}", flush=True)
    if not args.skip_reference:
        for name in PAPER_GFLOPS:
            fast, ref = results[name, "fast"], results[name, "reference"]
            rel = abs(fast["checksum"] - ref["checksum"]) / ref["checksum"]
            print(f"{name}: scan core {ref['seconds'] / fast['seconds']:.1f}x faster than the reference scan; outputs "
                  f"agree to {rel:.1e} (relative difference of mean |logit|)")


if __name__ == "__main__":
    main()
