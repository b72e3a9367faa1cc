# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Training-iteration time and peak memory of U-Mamba on CPU at an nnU-Net plan's patch and batch size: the project's
scan core against the sequential reference scan (the algorithm of mamba-ssm's ``selective_scan_ref``), in one run.

One iteration is what the bundle's trainer does: forward with deep supervision, nnU-Net's Dice + CE on every head
with its weights, backward, SGD step (lr 1e-2, momentum 0.99, Nesterov). Inputs and labels are random, the same for
both variants; the first iteration's loss and gradient norm show that both compute the same thing. Each variant runs
in its own subprocess so that the peak resident memory (ru_maxrss) is that variant's alone.

    .venv/bin/python ci/bench_umamba.py                       # U-Mamba_Enc, the shipped plan's 3d_fullres
    .venv/bin/python ci/bench_umamba.py --network bot --skip-reference
    .venv/bin/python ci/bench_umamba.py --plans /path/to/nnUNetPlans.json --configuration 2d --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

DEFAULT_PLANS = Path(__file__).resolve().parents[1] / "bundles" / "umamba_abdomen_ct" / "plans" / "nnUNetPlans.json"


def run_variant(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    from monai.losses import DeepSupervisionLoss, DiceCELoss

    import shared_networks.blocks.mamba as mamba_module
    from shared_networks.losses import nnunet_deep_supervision_weights
    from shared_networks.nets import umamba_from_plans
    from shared_networks.planning import configuration_summary
    from shared_networks.ssm import selective_scan_backend
    from shared_networks.ssm.reference import selective_scan_ref_output

    if args.variant == "reference":
        mamba_module.selective_scan = selective_scan_ref_output
        backend = "sequential reference"
    else:
        backend = selective_scan_backend(torch.device("cpu"))
    plans = json.loads(Path(args.plans).read_text())
    plan = configuration_summary(plans, args.configuration)
    torch.manual_seed(0)
    net = umamba_from_plans(plans, args.configuration, plan.in_channels, args.classes, variant=args.network,
                            deep_supervision=True).train()
    stages = len(plan.network_kwargs["features_per_stage"])
    loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True),
                                  weights=nnunet_deep_supervision_weights(stages - 1))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    batch = args.batch_size or plan.batch_size
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, plan.in_channels, *plan.plan_patch_size, generator=generator)
    y = torch.randint(0, args.classes, (batch, 1, *plan.plan_patch_size), generator=generator).float()
    iterations = args.reference_iterations if args.variant == "reference" else args.iterations
    seconds, first = [], {}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(iterations):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        if i == 0:
            grads = [p.grad.double().norm() for p in net.parameters() if p.grad is not None]
            first = {"loss": float(loss), "grad_norm": float(torch.stack(grads).norm())}
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "variant": args.variant,
        "backend": backend,
        "network": type(net).__name__,
        "parameters": sum(p.numel() for p in net.parameters()),
        "batch": batch,
        "patch": list(plan.plan_patch_size),
        "seconds": seconds,
        "peak_rss_mib": rss_peak / 1024,
        "training_extra_mib": (rss_peak - rss_before) / 1024,
        **first,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", default=str(DEFAULT_PLANS), help="nnUNetPlans.json (default: the bundle's)")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--network", choices=["enc", "bot"], default="enc", help="U-Mamba_Enc (default) or _Bot")
    parser.add_argument("--classes", type=int, default=14, help="output channels (default 14: FLARE22)")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the plan's")
    parser.add_argument("--iterations", type=int, default=4, help="timed iterations of the scan core (default 4)")
    parser.add_argument("--reference-iterations", type=int, default=1, help="of the reference scan (default 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-reference", action="store_true", help="time only the project's scan core")
    parser.add_argument("--reference-timeout", type=float, default=0.0,
                        help="stop the reference after this many seconds and report a lower bound (default: no limit)")
    parser.add_argument("--variant", choices=["fast", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations < 1 or args.reference_iterations < 1:
        parser.error("--iterations and --reference-iterations must be at least 1")
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    variants = ["fast"] if args.skip_reference else ["fast", "reference"]
    results = {}
    for variant in variants:
        print(f"  running {variant} ...", flush=True)
        command = [sys.executable, __file__, "--variant", variant, "--plans", args.plans, "--configuration",
                   args.configuration, "--network", args.network, "--classes", str(args.classes), "--batch-size",
                   str(args.batch_size), "--iterations", str(args.iterations), "--reference-iterations",
                   str(args.reference_iterations), "--threads", str(args.threads)]
        timeout = args.reference_timeout if variant == "reference" and args.reference_timeout > 0 else None
        start = time.perf_counter()
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            fast = results["fast"]
            print(f"  reference stopped after {time.perf_counter() - start:.0f} s without finishing its first "
                  f"iteration: the scan core's first iteration ({fast['seconds'][0]:.2f} s) is more than "
                  f"{timeout / fast['seconds'][0]:.0f}x faster", flush=True)
            break
        if proc.returncode != 0:
            sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"  {variant}: {r['backend']}, iterations {', '.join(f'{t:.2f}' for t in r['seconds'])} s, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB", flush=True)
    fast = results["fast"]
    print(f"\n{fast['network']} ({fast['parameters']:,} parameters), plan {Path(args.plans).name} / "
          f"{args.configuration}: batch {fast['batch']} x {'x'.join(map(str, fast['patch']))} (plan order), "
          f"{args.classes} classes, CPU, {args.threads} threads; one training iteration = forward with deep "
          "supervision, Dice + CE, backward, SGD step")
    print(f"{'variant':<12}{'scan backend':<24}{'first s':>9}{'later s (mean)':>16}{'peak RSS MiB':>14}"
          f"{'training extra MiB':>20}")
    for r in results.values():
        later = r["seconds"][1:]
        later_text = f"{sum(later) / len(later):.2f}" if later else "-"
        print(f"{r['variant']:<12}{r['backend']:<24}{r['seconds'][0]:>9.2f}{later_text:>16}"
              f"{r['peak_rss_mib']:>14.0f}{r['training_extra_mib']:>20.0f}")
    if "reference" in results:
        ref = results["reference"]
        print(f"\nspeed-up of the scan core over the reference scan (first iterations): "
              f"{ref['seconds'][0] / fast['seconds'][0]:.1f}x")
        print(f"peak memory ratio (reference / core): {ref['peak_rss_mib'] / fast['peak_rss_mib']:.2f}x")
        for key in ("loss", "grad_norm"):
            rel = abs(fast[key] - ref[key]) / abs(ref[key])
            print(f"first-iteration {key}: core {fast[key]:.6g}, reference {ref[key]:.6g} (relative difference "
                  f"{rel:.1e})")


if __name__ == "__main__":
    main()
