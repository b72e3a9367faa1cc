# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Forward time and peak memory of SegMamba (release mode, 4 -> 4 channels) on CPU: the project's scan core against
the sequential reference scan (the algorithm of mamba-ssm's ``selective_scan_ref``), measured in one run.

Each variant runs in its own subprocess so that the peak resident memory (ru_maxrss) belongs to that variant alone.
``--portable`` adds the same package without its forward-only CPU inference kernels (the contiguous layout and the
generic scan path that traced and scripted models keep). ``--baseline PATH`` adds the same forward with the package
of another checkout (e.g. a git worktree of an earlier commit). Both run on the same weights and input, and the speed
ratio and the largest relative difference of the outputs are printed. ``--flops`` counts the forward's FLOPs (torch's
FlopCounterMode) and prints the distance to the compute floor: counted FLOPs / this machine's measured fp32 GEMM rate.
FlopCounterMode counts a convolution's direct multiply-adds; the 3x3x3 convolutions that run by Winograd's F(3,3)
(``shared_networks.blocks.channels_last.WinogradConv3d``) do 125/729 of those, so that forward can go below 1x.

    .venv/bin/python ci/bench_segmamba.py              # 128^3, the release's patch (reference takes minutes)
    .venv/bin/python ci/bench_segmamba.py --size 64    # quicker
    .venv/bin/python ci/bench_segmamba.py --size 64 --skip-reference --portable --baseline ../main-before --flops
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gemm_rate(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of this machine's matrix multiply (best of ``repeats`` n x n products)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_variant(variant: str, size: int, threads: int, repeats: int, output: str | None, flops: bool) -> dict:
    torch.set_num_threads(threads)
    import shared_networks
    import shared_networks.blocks.mamba as mamba_module
    from shared_networks.nets import SegMamba
    from shared_networks.ssm import selective_scan_backend
    from shared_networks.ssm.reference import selective_scan_ref_output

    backend = selective_scan_backend(torch.device("cpu"))
    if variant in ("reference", "portable"):
        # the network without the forward-only CPU inference kernels: contiguous layout, the scan through
        # shared_networks.ssm.selective_scan (replaced by the sequential reference in the "reference" variant)
        import shared_networks.blocks.channels_last as channels_last_module

        mamba_module.inference_kernels_apply = channels_last_module.inference_kernels_apply = lambda *_: False
        backend += " (no inference kernels)"
    if variant == "reference":
        mamba_module.selective_scan = selective_scan_ref_output
        backend = "sequential reference"
    torch.manual_seed(0)
    net = SegMamba(in_channels=4, out_channels=4, mode="release").eval()
    x = torch.randn(1, 4, size, size, size)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            y = net(x)
            seconds.append(time.perf_counter() - start)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counted = None
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        # counted on the direct convolutions: FlopCounterMode does not know the Winograd operator (a baseline
        # checkout may have neither)
        try:
            import shared_networks.blocks.channels_last as channels_last_module
        except ImportError:
            channels_last_module = None
        if channels_last_module is not None:
            kernels_apply = channels_last_module.inference_kernels_apply
            channels_last_module.inference_kernels_apply = lambda *_: False
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
        if channels_last_module is not None:
            channels_last_module.inference_kernels_apply = kernels_apply
        counted = counter.get_total_flops()
    if output:
        torch.save(y, output)
    return {
        "variant": variant,
        "backend": backend,
        "seconds": min(seconds),
        "peak_rss_mib": rss_peak / 1024,
        "forward_extra_mib": (rss_peak - rss_before) / 1024,
        "checksum": float(y.double().abs().mean()),
        "flops": counted,
        "package": os.path.dirname(shared_networks.__file__),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="cubic input size, divisible by 16 (default 128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-reference", action="store_true", help="time only the project's scan core")
    parser.add_argument("--portable", action="store_true",
                        help="also time this package without its CPU inference kernels (channels-last layers, "
                             "token-major Mamba): the differentiable ops that traced and scripted models keep")
    parser.add_argument("--repeats", type=int, default=1, help="forwards per variant; the best is reported")
    parser.add_argument("--baseline", help="another checkout whose package runs the 'baseline' variant")
    parser.add_argument("--flops", action="store_true", help="count FLOPs and print the distance to the compute floor")
    parser.add_argument("--variant", choices=["fast", "portable", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size % 16:
        parser.error(f"--size must be divisible by 16, got {args.size}")
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.size, args.threads, args.repeats, args.output, args.flops)))
        return

    variants = (["fast"] + (["portable"] if args.portable else []) + (["baseline"] if args.baseline else [])
                + ([] if args.skip_reference else ["reference"]))
    print(f"SegMamba release (67.4 M parameters), input 1x4x{args.size}^3, CPU, {args.threads} threads, "
          f"no_grad forward, best of {args.repeats}")
    results = {}
    outputs = tempfile.mkdtemp(prefix="bench_segmamba_")
    for variant in variants:
        print(f"  running {variant} ...", flush=True)
        checkout = os.path.abspath(args.baseline) if variant == "baseline" else REPO_ROOT
        cmd = [sys.executable, __file__, "--variant", "fast" if variant == "baseline" else variant,
               "--size", str(args.size), "--threads", str(args.threads), "--repeats", str(args.repeats),
               "--output", os.path.join(outputs, f"{variant}.pt")] + (["--flops"] if args.flops else [])
        env = dict(os.environ, PYTHONPATH=checkout)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=outputs)
        if proc.returncode != 0:
            sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[variant]["variant"] = variant
    print(f"\n{'variant':<12}{'scan backend':<24}{'forward s':>11}{'peak RSS MiB':>14}{'forward extra MiB':>19}")
    for r in results.values():
        print(f"{r['variant']}: package {r['package']}")
    for r in results.values():
        print(f"{r['variant']:<12}{r['backend']:<24}{r['seconds']:>11.2f}{r['peak_rss_mib']:>14.0f}{r['forward_extra_mib']:>19.0f}")
    fast = results["fast"]
    if args.flops and fast["flops"]:
        rate = gemm_rate(args.threads)
        floor = fast["flops"] / rate
        print(f"\n{fast['flops'] / 1e9:.0f} GFLOP counted; fp32 GEMM here {rate / 1e9:.0f} GFLOP/s: compute floor "
              f"{floor:.2f} s, the forward takes {fast['seconds'] / floor:.2f}x the floor")
    for other, label in (("portable", "this package without its CPU inference kernels"),
                         ("baseline", f"the baseline ({args.baseline})")):
        if other not in results:
            continue
        ours, theirs = (torch.load(os.path.join(outputs, f"{v}.pt"), weights_only=True) for v in ("fast", other))
        rel = float((ours - theirs).abs().max() / theirs.abs().max())
        print(f"\nspeed-up over {label}: {results[other]['seconds'] / fast['seconds']:.2f}x; largest output "
              f"difference {rel:.2e} of max |logit|")
    if "reference" in results:
        ref = results["reference"]
        rel = abs(fast["checksum"] - ref["checksum"]) / ref["checksum"]
        print(f"\nspeed-up of the scan core over the reference scan: {ref['seconds'] / fast['seconds']:.1f}x")
        print(f"peak memory ratio (reference / core): {ref['peak_rss_mib'] / fast['peak_rss_mib']:.2f}x")
        print(f"output agreement (relative difference of mean |logit|): {rel:.2e}")


if __name__ == "__main__":
    main()
