#!/usr/bin/env bash
# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# CUDA validation on a GPU machine, from the repository root:
#   1. build mamba-ssm's and causal-conv1d's CUDA extensions for one architecture (or reuse .so/.so.xz files from
#      GPU_PREBUILT_DIR), install them with their Python packages into GPU_SITE;
#   2. check the kernels against the packages' own references (ci/gpu/check_kernels.py);
#   3. run tests/test_cuda_parity.py and ci/gpu/parity.py (op parity, timings, SegMamba parity, memory and speed).
# Inputs: the sdists mamba_ssm-*.tar.gz and causal_conv1d-*.tar.gz in GPU_SDIST_DIR (default .gpu), fetched on a
# machine with network access by
#   pip download --no-deps --no-binary :all: --no-build-isolation mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0 -d .gpu
# (with MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE so that pip's metadata step needs no nvcc),
# and, where monai is not installed, its wheel in $GPU_SDIST_DIR/wheels (pip download --no-deps monai==1.6.1).
# Logs and results go to RESULTS_DIR (default gpu_results).
set -euo pipefail

GPU_SDIST_DIR=${GPU_SDIST_DIR:-.gpu}
GPU_PREBUILT_DIR=${GPU_PREBUILT_DIR:-$GPU_SDIST_DIR/prebuilt}
GPU_SITE=${GPU_SITE:-/tmp/site}
GPU_ARCH=${GPU_ARCH:-9.0}
RESULTS_DIR=${RESULTS_DIR:-gpu_results}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

mkdir -p "$RESULTS_DIR"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$RESULTS_DIR/gpu.txt"

prebuilt_args=()
if [ -d "$GPU_PREBUILT_DIR" ]; then
    prebuilt_args=(--prebuilt-dir "$GPU_PREBUILT_DIR")
fi
start=$(date +%s)
"$PYTHON" ci/gpu/build_kernels.py --sdist-dir "$GPU_SDIST_DIR" --site "$GPU_SITE" --arch "$GPU_ARCH" \
    --jobs "${MAX_JOBS:-16}" "${prebuilt_args[@]}" >"$RESULTS_DIR/build.log" 2>&1
echo "kernels ready in $(($(date +%s) - start)) s (log: $RESULTS_DIR/build.log)"

if ! "$PYTHON" -c "import monai" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$GPU_SITE" "$GPU_SDIST_DIR"/wheels/*.whl
fi
export PYTHONPATH="$GPU_SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PYTHON" ci/gpu/check_kernels.py 2>&1 | tee "$RESULTS_DIR/check_kernels.log"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda_parity.py 2>&1 | tee "$RESULTS_DIR/pytest.log"
"$PYTHON" ci/gpu/parity.py --json "$RESULTS_DIR/parity.json" 2>&1 | tee "$RESULTS_DIR/parity.log"
