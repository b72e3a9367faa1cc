#!/usr/bin/env bash
# Creates .venv-monailabel: a separate environment for MONAI Label 0.8.5 serving the bundles in bundles/.
#
# MONAI Label pins older packages than the main .venv (numpy<2 through pydicom-seg/numpymaxflow; pydicom<3 because
# pydicom-seg 0.4.1 imports pydicom._storage_sopclass_uids, MONAILabel issue #1841), so it gets its own venv.
# Order matters: the CPU torch==2.13.0 wheel is installed FIRST and then pinned through a constraints file, so the
# resolver can never replace it with a CUDA build. Our package goes in with --no-deps (its dependencies are a subset of
# what monailabel already brings). Idempotent: a second run only checks the stamp and prints one line.
# Usage: bash ci/setup_monailabel.sh            (env var MONAILABEL_VENV overrides the location)
set -euo pipefail
quiet() { "$@" 2>&1 | grep -v -E "Location .* is ignored|^\s*$" || true; return "${PIPESTATUS[0]}"; }
cd "$(dirname "$0")/.."
VENV=${MONAILABEL_VENV:-.venv-monailabel}
PY=${PYTHON:-python3}
TORCH_VERSION=2.13.0
MONAILABEL_VERSION=0.8.5
stamp="$VENV/.monailabel_installed"
want="torch==$TORCH_VERSION monailabel==$MONAILABEL_VERSION $(sha256sum pyproject.toml ci/setup_monailabel.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import monailabel, shared_networks" 2>/dev/null; then
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
numpy<2
pydicom<3
pynetdicom<3
dicomweb-client<0.60
EOF
quiet "$VPY" -m pip install -q --upgrade pip
if ! "$VPY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "[setup_monailabel] installing torch==$TORCH_VERSION (CPU build) first"
    quiet "$VPY" -m pip install -q "torch==$TORCH_VERSION"
fi
echo "[setup_monailabel] installing monailabel==$MONAILABEL_VERSION (pinned: numpy<2, pydicom<3)"
quiet "$VPY" -m pip install -q -c "$constraints" "monailabel==$MONAILABEL_VERSION" "pydicom<3" "pynetdicom<3" \
    "dicomweb-client<0.60" "numpy<2"
echo "[setup_monailabel] installing shared_networks (editable, --no-deps) and its remaining dependencies"
quiet "$VPY" -m pip install -q --no-deps -e .
quiet "$VPY" -m pip install -q -c "$constraints" "pytorch-ignite>=0.4.11,<0.6" nibabel pyyaml fire
# monailabel.transform.post imports torchvision; PyPI's torchvision is built against CUDA torch (its _C.so needs
# libtorch_cuda.so), so with the CPU torch `import torchvision` fails ("operator torchvision::nms does not exist")
# and the monaibundle app cannot start. Fail loudly instead of leaving an env that looks usable.
if ! err=$("$VPY" -c "import monailabel.tasks.infer.bundle" 2>&1); then
    echo "[setup_monailabel] ERROR: MONAI Label cannot import its bundle tasks in $VENV:" >&2
    echo "$err" | tail -n 1 >&2
    echo "[setup_monailabel] (a torchvision build matching the CPU torch==$TORCH_VERSION is needed)" >&2
    exit 1
fi
"$VPY" -c "import torch, monai, monailabel, numpy, pydicom, shared_networks; \
print('[setup_monailabel] done: torch', torch.__version__, 'monai', monai.__version__, 'monailabel', \
monailabel.__version__, 'numpy', numpy.__version__, 'pydicom', pydicom.__version__)"
echo "$want" > "$stamp"
