#!/usr/bin/env bash
# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Creates .venv-monailabel: a separate environment for MONAI Label 0.8.5 serving the bundles in bundles/
# (recipe and reasons: docs/monailabel.md).
#
# Why a separate venv: MONAI Label pins older packages than the main .venv (numpy<2 through pydicom-seg/numpymaxflow;
# pydicom<3 because pydicom-seg 0.4.1 imports pydicom._storage_sopclass_uids, MONAILabel issue #1841).
#
# torch + torchvision: MONAI Label's bundle tasks import torchvision, and no torchvision release imports beside the
# CPU torch==2.13.0 wheel of the main .venv ("operator torchvision::nms does not exist"). So this venv gets a pair that
# was built together, chosen by `uname -m`:
#   x86_64:  torch==2.14.1 torchvision==0.29.1  (PyPI's default CUDA 13 build, ~5.5 GB in the venv; it runs on the CPU
#            when no GPU is present; on this image pip takes both wheels and the nvidia-* ones from local disk)
#   aarch64: torch==2.9.1  torchvision==0.24.1  (PyPI's CPU build for aarch64, ~0.7 GB)
# TORCH_VERSION and TORCHVISION_VERSION override the pair (both or neither; e.g. for another architecture).
#
# monai: MONAILABEL_MONAI (default "monai>=1.5,<1.6"), not pyproject's range. From MONAI 1.6.0 on, Spacingd copies the
# image's metadata into every data key that starts with "image_"; MONAI Label 0.8.5 keeps the string "image_path" in
# its inference data, so /infer of any bundle whose preprocessing has Spacingd fails with "AttributeError: 'str'
# object has no attribute 'update'" (verified with monai 1.6.1). MONAI 1.5.2 serves, infers and trains the bundles.
#
# The pair and monai are installed/pinned through a constraints file (with the MONAI Label pins), so the resolver can
# never swap them. Our package goes in with --no-deps -e .; its other dependencies come from pyproject.toml under the
# same constraints; ninja is added so the C++ selective-scan kernel can be compiled at first use (otherwise the pure
# PyTorch fallback runs).
# Idempotent: a second run only checks the stamp and that the bundle tasks import, and prints one line.
# Usage: bash ci/setup_monailabel.sh            (env var MONAILABEL_VENV overrides the location, PYTHON the interpreter)
set -euo pipefail
# pip on this image warns about find-links folders that do not exist; that noise hides real errors.
quiet() {
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    printf '%s\n' "$out" | grep -v -E "Location .* is ignored|^\s*$" || true
    return "$rc"
}
cd "$(dirname "$0")/.."
VENV=${MONAILABEL_VENV:-.venv-monailabel}
PY=${PYTHON:-python3}
MONAILABEL_VERSION=0.8.5
MONAI_SPEC=${MONAILABEL_MONAI:-monai>=1.5,<1.6}
arch=$(uname -m)
if [ -n "${TORCH_VERSION:-}" ] || [ -n "${TORCHVISION_VERSION:-}" ]; then
    if [ -z "${TORCH_VERSION:-}" ] || [ -z "${TORCHVISION_VERSION:-}" ]; then
        echo "[setup_monailabel] ERROR: set both TORCH_VERSION and TORCHVISION_VERSION, or neither" >&2
        exit 1
    fi
else
    case "$arch" in
        x86_64) TORCH_VERSION=2.14.1; TORCHVISION_VERSION=0.29.1 ;;
        aarch64 | arm64) TORCH_VERSION=2.9.1; TORCHVISION_VERSION=0.24.1 ;;
        *)
            echo "[setup_monailabel] ERROR: no known torch/torchvision pair for '$arch';" \
                "set TORCH_VERSION and TORCHVISION_VERSION" >&2
            exit 1
            ;;
    esac
fi
stamp="$VENV/.monailabel_installed"
want="torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION monailabel==$MONAILABEL_VERSION $MONAI_SPEC \
$(sha256sum pyproject.toml ci/setup_monailabel.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$VENV/bin/python" -c "import monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle, shared_networks" \
    >/dev/null 2>&1; then
    echo "[setup_monailabel] $VENV is up to date"
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup_monailabel] creating $VENV"
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
constraints="$VENV/constraints.txt"
cat > "$constraints" <<EOF
torch==$TORCH_VERSION
torchvision==$TORCHVISION_VERSION
$MONAI_SPEC
numpy<2
pydicom<3
pynetdicom<3
dicomweb-client<0.60
EOF
quiet "$VPY" -m pip install -q --upgrade pip
# torch and torchvision in one call, before anything else asks for torch
if ! "$VPY" -c "import sys, torch, torchvision
base = lambda v: v.split('+')[0]
sys.exit(base(torch.__version__) != '$TORCH_VERSION' or base(torchvision.__version__) != '$TORCHVISION_VERSION')" \
    >/dev/null 2>&1; then
    echo "[setup_monailabel] installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION ($arch)"
    quiet "$VPY" -m pip install -q -c "$constraints" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi
echo "[setup_monailabel] installing monailabel==$MONAILABEL_VERSION (pinned: $MONAI_SPEC, numpy<2, pydicom<3)"
quiet "$VPY" -m pip install -q -c "$constraints" "monailabel==$MONAILABEL_VERSION" "$MONAI_SPEC" "pydicom<3" \
    "pynetdicom<3" "dicomweb-client<0.60" "numpy<2"
echo "[setup_monailabel] installing shared_networks (editable, --no-deps), its other dependencies and ninja"
# (PYTHONWARNINGS: setuptools warns about editable installs in the build environment, noise here)
PYTHONWARNINGS=ignore quiet "$VPY" -m pip install -q --no-deps -e .
# the [project] dependencies of pyproject.toml but monai (held at $MONAI_SPEC above); torch and numpy are constrained
mapfile -t deps < <("$VPY" - <<'EOF'
import re
text = open("pyproject.toml").read()
block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, re.S | re.M).group(1)
names = re.findall(r'"([^"]+)"', block)
print("\n".join(d for d in names if re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].strip().lower() != "monai"))
EOF
)
quiet "$VPY" -m pip install -q -c "$constraints" "${deps[@]}" ninja
# MONAI Label's bundle tasks import torchvision (monailabel.transform.post); fail loudly instead of leaving an env
# that looks usable but cannot start the monaibundle app.
if ! err=$("$VPY" -c "import monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle" 2>&1); then
    echo "[setup_monailabel] ERROR: MONAI Label cannot import its bundle tasks in $VENV:" >&2
    echo "$err" | tail -n 1 >&2
    echo "[setup_monailabel] (torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION must be a matching pair)" >&2
    exit 1
fi
PYTHONWARNINGS=ignore "$VPY" -c "import torch, torchvision, monai, monailabel, numpy, pydicom, shared_networks; \
print('[setup_monailabel] done: torch', torch.__version__, 'torchvision', torchvision.__version__, 'monai', \
monai.__version__, 'monailabel', monailabel.__version__, 'numpy', numpy.__version__, 'pydicom', pydicom.__version__)"
echo "$want" > "$stamp"
