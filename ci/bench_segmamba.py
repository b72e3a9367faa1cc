# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Forward time and peak memory of SegMamba (release mode, 4 -> 4 channels) on CPU: the project's scan core against
the sequential reference scan (the algorithm of mamba-ssm's ``selective_scan_ref``), measured in one run.

Each variant runs in its own subprocess so that the peak resident memory (ru_maxrss) belongs to that variant alone.

    .venv/bin/python ci/bench_segmamba.py              # 128^3, the release's patch (reference takes minutes)
    .venv/bin/python ci/bench_segmamba.py --size 64    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def run_variant(variant: str, size: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    import shared_networks.blocks.mamba as mamba_module
    from shared_networks.nets import SegMamba
    from shared_networks.ssm import selective_scan_backend
    from shared_networks.ssm.reference import selective_scan_ref_output

    if variant == "reference":
        mamba_module.selective_scan = selective_scan_ref_output
        backend = "sequential reference"
    else:
        backend = selective_scan_backend(torch.device("cpu"))
    torch.manual_seed(0)
    net = SegMamba(in_channels=4, out_channels=4, mode="release").eval()
    x = torch.randn(1, 4, size, size, size)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        start = time.perf_counter()
        y = net(x)
        seconds = time.perf_counter() - start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": variant,
        "backend": backend,
        "seconds": seconds,
        "peak_rss_mib": rss_peak / 1024,
        "forward_extra_mib": (rss_peak - rss_before) / 1024,
        "checksum": float(y.double().abs().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="cubic input size, divisible by 16 (default 128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-reference", action="store_true", help="time only the project's scan core")
    parser.add_argument("--variant", choices=["fast", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size % 16:
        parser.error(f"--size must be divisible by 16, got {args.size}")
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.size, args.threads)))
        return

    variants = ["fast"] if args.skip_reference else ["fast", "reference"]
    print(f"SegMamba release (67.4 M parameters), input 1x4x{args.size}^3, CPU, {args.threads} threads, "
          "no_grad forward")
    results = {}
    for variant in variants:
        print(f"  running {variant} ...", flush=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--size", str(args.size), "--threads", str(args.threads)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n{'variant':<12}{'scan backend':<24}{'forward s':>11}{'peak RSS MiB':>14}{'forward extra MiB':>19}")
    for r in results.values():
        print(f"{r['variant']:<12}{r['backend']:<24}{r['seconds']:>11.2f}{r['peak_rss_mib']:>14.0f}{r['forward_extra_mib']:>19.0f}")
    if "reference" in results:
        fast, ref = results["fast"], results["reference"]
        rel = abs(fast["checksum"] - ref["checksum"]) / ref["checksum"]
        print(f"\nspeed-up of the scan core over the reference scan: {ref['seconds'] / fast['seconds']:.1f}x")
        print(f"peak memory ratio (reference / core): {ref['peak_rss_mib'] / fast['peak_rss_mib']:.2f}x")
        print(f"output agreement (relative difference of mean |logit|): {rel:.2e}")


if __name__ == "__main__":
    main()
