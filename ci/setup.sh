#!/usr/bin/env bash
# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Creates .venv in the repository (if missing) and installs the project with its test extras, constrained to the
# versions of ci/tested_versions.txt (the ones the bundles' metadata states).
# torch: the CPU build of the listed version is installed first when no torch is present, so pip never resolves a
# CUDA build here.
# Idempotent: a second run only checks that everything is installed and prints one line.
set -euo pipefail
# pip on this image warns about find-links folders that do not exist; that noise hides real errors.
quiet() { "$@" 2>&1 | grep -v -E "Location .* is ignored|^\s*$" || true; return "${PIPESTATUS[0]}"; }
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.shared_networks_installed
want=$(cat pyproject.toml ci/tested_versions.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && $VPY -c "import torch, monai, shared_networks" 2>/dev/null; then
    echo "[setup] .venv is up to date"
    exit 0
fi
quiet $VPY -m pip install -q --upgrade pip
if ! $VPY -c "import torch" 2>/dev/null; then
    torch_pin=$(grep -E '^torch==' ci/tested_versions.txt)
    echo "[setup] installing $torch_pin (CPU build)"
    quiet $VPY -m pip install -q "$torch_pin"
fi
echo "[setup] installing shared_networks with test extras"
quiet $VPY -m pip install -q -e ".[test]" -c ci/tested_versions.txt
echo "$want" > "$stamp"
echo "[setup] done: $($VPY -c 'import torch, monai; print("torch", torch.__version__, "monai", monai.__version__)')"
