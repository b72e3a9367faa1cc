#!/usr/bin/env python
# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Build the release archive ``<output-dir>/<name>_v<version>.zip`` of a bundle, for
``python -m monai.bundle download --name <name> --url <zip>``; prints the archive's path.

What goes in (source files, JSON twins of the YAML train/inference configs, weights per ``--models``), the sha256
check of listed weights and the deterministic, atomic write are described in ``shared_networks/bundle/release.py``.

Usage::

    python ci/package_bundle.py segmamba_brats [--output-dir dist] [--models auto|yes|no]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from shared_networks.bundle.release import MODELS_CHOICES, package_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"

logger = logging.getLogger("package_bundle")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle name in bundles/ or a path to a bundle folder")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "dist", help="default: %(default)s")
    parser.add_argument("--models", choices=MODELS_CHOICES, default="auto",
                        help="include models/ weights: auto = those present (default), yes = require model.pt, no")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bundle = Path(args.bundle) if os.sep in args.bundle else BUNDLES_DIR / args.bundle
    try:
        target = package_bundle(bundle, args.output_dir, args.models)
    except (ValueError, FileNotFoundError) as e:
        logger.error("error: %s", e)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
