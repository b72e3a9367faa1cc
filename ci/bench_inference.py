#!/usr/bin/env python
# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Whole-case CPU inference of ``bundles/segmamba_brats`` (its own ``inference.yaml``: reading, preprocessing,
sliding windows, inversion onto the input grid, writing), with a breakdown and the peak memory, beside the same case
through MONAI's ``SegResNet`` as the Model Zoo's ``brats_mri_segmentation`` bundle configures it and MONAI's
``SwinUNETR``, in one run. Each variant runs in its own subprocess, so its peak resident memory (ru_maxrss) is its own.

Variants (``--variants``, comma-separated):

- ``shipped``: inference.yaml as shipped (128³ windows, overlap 0.5, Gaussian blending, the windows' CPU buffers
  reused within the case: ``PooledSlidingWindowInferer``);
- ``nopool``: the same through MONAI's plain ``SlidingWindowInferer`` (every window's tensors in fresh memory);
- ``overlap=<f>``: the same with another window overlap;
- ``sw_batch=<n>``: the same with another window batch (windows per network call);
- ``thp``: ``shipped`` with ``THP_MEM_ALLOC_ENABLE=1`` in its environment (PyTorch then backs large CPU tensors with
  2 MB pages on Linux, fewer page faults);
- ``whole``: one forward over the whole cropped volume, padded to a multiple of 16 (``DivisiblePadInferer``);
- ``segresnet``: SegResNet(blocks_down 1,2,2,4, blocks_up 1,1,1, init_filters 16, dropout 0.2), one 240x240x160
  window at overlap 0.5 as in the Zoo bundle (4 output channels here, for this bundle's argmax postprocessing);
- ``swinunetr``: SwinUNETR(feature_size 48), this bundle's 128³ windows at overlap 0.5 (needs einops: the ``bench``
  extra); both through MONAI's ``SlidingWindowInferer``, as their own bundles run them;
- ``baseline``: ``shipped`` with the package and bundle of another checkout (``--baseline PATH``, e.g. a git
  worktree of the commit before a change).

Every variant uses this bundle's preprocessing and postprocessing; weights are random unless ``--weights`` gives a
SegMamba checkpoint (with ``--network-def`` for a reduced network, e.g. the demo's). The SegMamba variants' labels
are compared with the first variant's: the share of the voxels that either labels as tumour on which they agree.

    .venv/bin/python ci/bench_inference.py                        # one 240x240x155 case (tens of minutes on 2 cores)
    .venv/bin/python ci/bench_inference.py --quick                # a 96x96x80 case, 64³ windows
    .venv/bin/python ci/bench_inference.py --variants shipped,whole,overlap=0.25 --weights demo/.../model.pt \\
        --network-def '{"feature_sizes": [8, 16, 32, 64], "hidden_size": 64}'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = Path("bundles") / "segmamba_brats"
SEGRESNET = {"_target_": "SegResNet", "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16,
             "in_channels": 4, "out_channels": 4, "dropout_prob": 0.2}
SWINUNETR = {"_target_": "SwinUNETR", "in_channels": 4, "out_channels": 4, "feature_size": 48}


class Timer:
    """Accumulated seconds of the calls of one callable, wrapped in place."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
        return timed


def run_variant(args: argparse.Namespace) -> dict:
    """One variant, in this process (called with --variant): returns its timings, memory and output file."""
    import torch

    torch.set_num_threads(args.threads)
    from monai.bundle import ConfigParser

    root = Path(args.checkout) / BUNDLE
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / "inference.yaml")])
    parser.read_meta(str(root / "configs" / "metadata.json"))
    overrides = {"bundle_root": str(root), "dataset_dir": args.dataset_dir, "output_dir": args.output_dir,
                 "num_workers": 0, "skip_existing": False, "device": "$torch.device('cpu')", "amp": False,
                 "load_pretrain": bool(args.weights)}
    if args.weights:
        overrides["ckpt_dir"] = str(Path(args.weights).resolve().parent)
    for key, value in json.loads(args.network_def or "{}").items():
        overrides[f"network_def#{key}"] = value
    if args.patch:
        overrides["patch_size"] = [args.patch] * 3
    name = args.variant
    if name.startswith("overlap="):
        overrides["inferer#overlap"] = float(name.split("=", 1)[1])
    elif name.startswith("sw_batch="):
        overrides["sw_batch_size"] = int(name.split("=", 1)[1])
    elif name == "nopool":
        overrides["inferer#_target_"] = "SlidingWindowInferer"
    elif name == "whole":
        overrides["inferer"] = {"_target_": "shared_networks.bundle.DivisiblePadInferer", "k": 16}
    elif name == "segresnet":
        overrides.update({"network_def": SEGRESNET, "load_pretrain": False, "inferer#_target_": "SlidingWindowInferer",
                          "inferer#roi_size": [240, 240, 160],
                          "inferer#sw_batch_size": 1, "inferer#mode": "constant"})
    elif name == "swinunetr":
        overrides.update({"network_def": SWINUNETR, "load_pretrain": False, "inferer#_target_": "SlidingWindowInferer",
                          "patch_size": [128, 128, 128]})
    for key, value in overrides.items():
        parser[key] = value
    if args.weights:
        # the checkpoint loader reads <ckpt_dir>/model.pt
        parser["checkpointloader#load_path"] = str(Path(args.weights).resolve())

    from monai.transforms import Compose

    import shared_networks
    from shared_networks.ssm import selective_scan_backend

    selective_scan_backend(torch.device("cpu"))  # builds or loads the C++ kernels now, outside the timed run

    torch.manual_seed(0)
    evaluator = parser.get_parsed_content("evaluator")
    network = parser.get_parsed_content("network")
    timers = {k: Timer() for k in ("preprocess", "network", "inferer", "postprocess")}
    # the evaluator holds these objects (postprocessing as an event handler): time them where they are called
    composes = {id(parser.get_parsed_content("preprocessing")): timers["preprocess"],
                id(parser.get_parsed_content("postprocessing")): timers["postprocess"]}
    compose_call = Compose.__call__

    def timed_compose_call(self, *a, **k):
        timer = composes.get(id(self))
        return compose_call(self, *a, **k) if timer is None else timer.wrap(compose_call)(self, *a, **k)

    Compose.__call__ = timed_compose_call
    evaluator.inferer = _Timed(evaluator.inferer, timers["inferer"])
    network.register_forward_pre_hook(lambda m, i: setattr(timers["network"], "_start", time.perf_counter()))
    network.register_forward_hook(lambda m, i, o: _add(timers["network"]))
    parser.get_parsed_content("initialize")
    for index, expression in enumerate(parser.get("run")):
        if "evaluator.run" not in expression:  # case checks, stale temporaries, weights
            parser.get_parsed_content(f"run#{index}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        start = time.perf_counter()
        evaluator.run()
        total = time.perf_counter() - start
    outputs = sorted(str(p) for p in Path(args.output_dir).rglob("*.nii.gz"))
    return {
        "variant": name,
        "total_s": total,
        "read_preprocess_s": timers["preprocess"].seconds,
        "network_s": timers["network"].seconds,
        "forward_calls": timers["network"].calls,
        "windows_stitching_s": timers["inferer"].seconds - timers["network"].seconds,
        "postprocess_write_s": timers["postprocess"].seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "rss_before_run_gib": rss_before / 1024**2,
        "outputs": outputs,
        "package": shared_networks.__file__,
    }


class _Timed:
    """A callable's stand-in that times it (MONAI calls the transform / inferer objects it was given)."""

    def __init__(self, target, timer: Timer) -> None:
        self._target, self._timer = target, timer

    def __call__(self, *args, **kwargs):
        return self._timer.wrap(self._target)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._target, name)


def _add(timer: Timer) -> None:
    timer.seconds += time.perf_counter() - timer._start
    timer.calls += 1


def tumour_agreement(reference: str, other: str) -> float:
    """Share of the voxels that either label map labels as tumour (> 0) on which both give the same label."""
    import nibabel as nib
    import numpy as np

    a, b = (np.asarray(nib.load(p).dataobj) for p in (reference, other))
    either = (a > 0) | (b > 0)
    return float((a[either] == b[either]).mean()) if either.any() else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="shipped,segresnet,swinunetr")
    parser.add_argument("--quick", action="store_true", help="a 96x96x80 case and 64^3 windows")
    parser.add_argument("--shape", default="240,240,155", help="phantom size (default: BraTS's 240,240,155)")
    parser.add_argument("--weights", help="SegMamba checkpoint for the SegMamba variants (default: random weights)")
    parser.add_argument("--network-def", help="JSON of network_def overrides matching --weights")
    parser.add_argument("--baseline", help="another checkout, for the 'baseline' variant")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--patch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--checkout", default=str(REPO_ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--dataset-dir", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "baseline" in variants and not args.baseline:
        parser.error("the 'baseline' variant needs --baseline PATH (another checkout)")
    if "swinunetr" in variants and importlib.util.find_spec("einops") is None:
        parser.error("the 'swinunetr' variant needs einops, which MONAI's SwinUNETR imports: "
                     "pip install -e '.[bench]' (or pip install einops)")
    if args.weights:  # the variants run in a scratch folder
        args.weights = str(Path(args.weights).resolve())
    shape = (96, 96, 80) if args.quick else tuple(int(s) for s in args.shape.split(","))
    patch = 64 if args.quick else 0
    sys.path.insert(0, str(REPO_ROOT))
    from shared_networks.data.brats import generate_brats_phantoms

    work = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    cases = work / "cases"
    case_dir = Path(generate_brats_phantoms(cases, num_cases=1, shape=shape, seed=7)[0])
    (case_dir / f"{case_dir.name}-seg.nii.gz").unlink()
    print(f"one case {shape[0]}x{shape[1]}x{shape[2]} x 4 modalities ({case_dir.name}), CPU, {args.threads} threads, "
          f"SegMamba weights: {args.weights or 'random'}", flush=True)
    results, failed = [], []
    for variant in variants:
        checkout = args.baseline if variant == "baseline" else str(REPO_ROOT)
        env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve()))
        if variant == "thp":  # read by PyTorch at its first large allocation, so it must be set before the process
            env["THP_MEM_ALLOC_ENABLE"] = "1"
        cmd = [sys.executable, __file__, "--variant", "shipped" if variant in ("baseline", "thp") else variant,
               "--checkout", checkout, "--dataset-dir", str(cases), "--output-dir", str(work / "out" / variant),
               "--threads", str(args.threads), "--patch", str(patch)]
        if args.weights and variant not in ("segresnet", "swinunetr"):
            cmd += ["--weights", args.weights]
        if args.network_def and variant not in ("segresnet", "swinunetr"):
            cmd += ["--network-def", args.network_def]
        print(f"  running {variant} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
        if proc.returncode != 0:
            print(f"  {variant} failed:\n" + proc.stderr[-3000:], file=sys.stderr)
            failed.append(variant)
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["variant"] = variant
        results.append(result)

    if not results:
        return 1
    first = results[0]
    header = (f"{'variant':<14}{'total s':>9}{'x first':>9}{'read+pre':>10}{'network':>9}{'windows':>9}"
              f"{'post+write':>11}{'forwards':>9}{'peak GiB':>10}{'tumour agreement':>18}")
    print(header)
    for r in results:
        segmamba = r["variant"] not in ("segresnet", "swinunetr") and first["variant"] not in ("segresnet", "swinunetr")
        agreement = f"{100 * tumour_agreement(first['outputs'][0], r['outputs'][0]):.2f} %" if segmamba else "-"
        print(f"{r['variant']:<14}{r['total_s']:>9.1f}{first['total_s'] / r['total_s']:>9.2f}"
              f"{r['read_preprocess_s']:>10.1f}{r['network_s']:>9.1f}{r['windows_stitching_s']:>9.1f}"
              f"{r['postprocess_write_s']:>11.1f}{r['forward_calls']:>9d}{r['peak_rss_gib']:>10.2f}{agreement:>18}")
    print("x first: the first variant's total time / this one's (above 1: faster). windows: sliding-window "
          "bookkeeping and blending (inferer time minus network time).")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
