#!/usr/bin/env bash
# README's test command (and what .ci/run calls): installs into .venv if needed, then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout 1200 "$@"
