#!/usr/bin/env bash
# README's test command (and what .ci/run calls): installs into .venv if needed, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
# The MONAI Label server test needs its own environment (older numpy/pydicom); opt in with RUN_MONAILABEL=1.
if [ "${RUN_MONAILABEL:-0}" = 1 ]; then bash ci/setup_monailabel.sh; fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 1200 "$@"
