# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Build the CUDA extensions of mamba-ssm (``selective_scan_cuda``) and causal-conv1d (``causal_conv1d_cuda``) from their
PyPI source distributions for one GPU architecture, and install them with their Python packages into a target folder
that is then put on ``PYTHONPATH``.

The upstream ``setup.py`` files compile for ~10 architectures (sm_75 ... sm_121), which takes far longer than one
lease of a GPU machine allows. This script compiles the same sources with the same nvcc flags through
``torch.utils.cpp_extension.load`` for the architecture in ``--arch`` only (``TORCH_CUDA_ARCH_LIST``), with ninja and
``MAX_JOBS`` parallel jobs, both extensions at once. Only flags that do not change the kernels' code are dropped
(``-lineinfo`` and ``--ptxas-options=-v``, which add debug line tables and register reports).

Already built ``.so`` (or xz-compressed ``.so.xz``) files found in ``--prebuilt-dir`` are reused instead of
compiling again.

Usage (on the GPU machine)::

    python3 ci/gpu/build_kernels.py --sdist-dir .gpu --site /tmp/site --arch 9.0 --jobs 16
    export PYTHONPATH=/tmp/site:$PWD
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import logging
import lzma
import multiprocessing
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Dict, List

logger = logging.getLogger("build_kernels")

# flags copied from the upstream setup.py files (mamba-ssm 2.3.x, causal-conv1d 1.5+), minus the architecture list,
# -lineinfo and --ptxas-options=-v; torch.utils.cpp_extension adds its own -std and -gencode flags.
_NVCC_FLAGS = [
    "-O3",
    "-U__CUDA_NO_HALF_OPERATORS__",
    "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT16_OPERATORS__",
    "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-U__CUDA_NO_BFLOAT162_OPERATORS__",
    "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
    "--expt-relaxed-constexpr",
    "--expt-extended-lambda",
    "--use_fast_math",
]

# per distribution: sdist name prefix, Python package folder, extension name, sources and include folder
_PACKAGES: Dict[str, Dict] = {
    "mamba_ssm": {
        "sdist": "mamba_ssm-",
        "extension": "selective_scan_cuda",
        "include": "csrc/selective_scan",
        "sources": [
            "csrc/selective_scan/selective_scan.cpp",
            "csrc/selective_scan/selective_scan_fwd_fp32.cu",
            "csrc/selective_scan/selective_scan_fwd_fp16.cu",
            "csrc/selective_scan/selective_scan_fwd_bf16.cu",
            "csrc/selective_scan/selective_scan_bwd_fp32_real.cu",
            "csrc/selective_scan/selective_scan_bwd_fp32_complex.cu",
            "csrc/selective_scan/selective_scan_bwd_fp16_real.cu",
            "csrc/selective_scan/selective_scan_bwd_fp16_complex.cu",
            "csrc/selective_scan/selective_scan_bwd_bf16_real.cu",
            "csrc/selective_scan/selective_scan_bwd_bf16_complex.cu",
        ],
    },
    "causal_conv1d": {
        "sdist": "causal_conv1d-",
        "extension": "causal_conv1d_cuda",
        "include": "csrc",
        "sources": [
            "csrc/causal_conv1d.cpp",
            "csrc/causal_conv1d_fwd.cu",
            "csrc/causal_conv1d_bwd.cu",
            "csrc/causal_conv1d_update.cu",
        ],
    },
}


def _extract_sdist(sdist_dir: Path, prefix: str, work_dir: Path) -> Path:
    """Extract the one ``<prefix>*.tar.gz`` of ``sdist_dir`` into ``work_dir``; return the source root."""
    matches = sorted(sdist_dir.glob(f"{prefix}*.tar.gz"))
    if len(matches) != 1:
        found = [m.name for m in matches]
        raise FileNotFoundError(f"expected exactly one {prefix}*.tar.gz in {sdist_dir}, found {found}.")
    with tarfile.open(matches[0]) as archive:
        roots = {name.split("/", 1)[0] for name in archive.getnames()}
        if len(roots) != 1:
            raise ValueError(f"{matches[0]} must hold one top-level folder, found {sorted(roots)}.")
        archive.extractall(work_dir, filter="data")
    return work_dir / roots.pop()


def _install_prebuilt(path: Path, site: Path) -> None:
    """Copy a built extension (``.so``, or ``.so.xz`` as returned from an earlier run) into ``site``."""
    if path.name.endswith(".so.xz"):
        target = site / path.name[: -len(".xz")]
        tmp = target.with_name(target.name + ".tmp")
        with lzma.open(path) as source, open(tmp, "wb") as destination:
            shutil.copyfileobj(source, destination)
        os.replace(tmp, target)
    elif path.name.endswith(".so"):
        shutil.copy2(path, site / path.name)
    else:
        raise ValueError(f"prebuilt extension {path} must end in .so or .so.xz.")
    logger.info("reusing prebuilt %s", path)


def _compile(name: str, source_root: str, build_dir: str, jobs: int, arch: str) -> str:
    """Compile one extension with ``torch.utils.cpp_extension.load``; return the path of the built ``.so``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # runs in a spawned worker
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    os.environ["MAX_JOBS"] = str(jobs)
    from torch.utils.cpp_extension import load

    spec = _PACKAGES[name]
    root = Path(source_root)
    Path(build_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    load(
        name=spec["extension"],
        sources=[str(root / source) for source in spec["sources"]],
        extra_cflags=["-O3"],
        extra_cuda_cflags=list(_NVCC_FLAGS),
        extra_include_paths=[str(root / spec["include"])],
        build_directory=build_dir,
        verbose=True,
    )
    built = glob.glob(os.path.join(build_dir, f"{spec['extension']}*.so"))
    if len(built) != 1:
        raise RuntimeError(f"building {spec['extension']} left {built} in {build_dir}, expected one .so file.")
    logger.info("built %s in %.1f s", built[0], time.perf_counter() - start)
    return built[0]


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdist-dir", type=Path, default=Path(".gpu"), help="folder with the two .tar.gz sdists")
    parser.add_argument("--site", type=Path, default=Path("/tmp/site"), help="install target (goes on PYTHONPATH)")
    parser.add_argument("--build-dir", type=Path, default=Path("/tmp/gpu_build"), help="scratch folder")
    parser.add_argument("--prebuilt-dir", type=Path, default=None, help="folder with .so files built earlier")
    parser.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST value, e.g. 9.0 for H100/H200")
    parser.add_argument("--jobs", type=int, default=16, help="parallel compile jobs per extension")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if not args.sdist_dir.is_dir():
        raise FileNotFoundError(f"--sdist-dir {args.sdist_dir} is not a folder.")
    args.site.mkdir(parents=True, exist_ok=True)
    args.build_dir.mkdir(parents=True, exist_ok=True)

    roots = {}
    for name, spec in _PACKAGES.items():
        roots[name] = _extract_sdist(args.sdist_dir, spec["sdist"], args.build_dir / "src")
        target = args.site / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(roots[name] / name, target)

    to_build = []
    for name, spec in _PACKAGES.items():
        prebuilt = sorted(args.prebuilt_dir.glob(f"{spec['extension']}*.so*")) if args.prebuilt_dir else []
        if prebuilt:
            _install_prebuilt(prebuilt[0], args.site)
        else:
            to_build.append(name)

    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, len(to_build)), mp_context=context) as pool:
        futures = {
            name: pool.submit(
                _compile, name, str(roots[name]), str(args.build_dir / f"build_{name}"), args.jobs, args.arch
            )
            for name in to_build
        }
        for name, future in futures.items():
            built = Path(future.result())
            shutil.copy2(built, args.site / built.name)
    if to_build:
        logger.info("compiled %s in %.1f s (wall)", to_build, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
