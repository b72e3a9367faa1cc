#!/usr/bin/env python
# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Write the version fields of every bundle's ``configs/metadata.json`` from one list, ``ci/tested_versions.txt``:
``monai_version``, ``pytorch_version``, ``numpy_version`` and the entries of ``required_packages_version`` (each
bundle keeps its own set of packages; ``shared_networks`` is the version in ``pyproject.toml``).

The same list is the constraints file ``ci/setup.sh`` installs the test environment with, so the fields state what
the bundles are tested with. The Model Zoo's CI turns these fields into ``name==version`` requirements and installs
them on Python 3.10 (``tests/tools/test_pin_versions.py`` resolves them there).

Usage::

    python ci/pin_versions.py            # rewrite the fields that differ (atomically), print what changed
    python ci/pin_versions.py --check    # change nothing; exit 1 and name every field that differs
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
VERSIONS_FILE = REPO_ROOT / "ci" / "tested_versions.txt"
BUNDLES_DIR = REPO_ROOT / "bundles"
PACKAGE = "shared_networks"
# metadata field -> the package it states
TOP_LEVEL_FIELDS = {"monai_version": "monai", "pytorch_version": "torch", "numpy_version": "numpy"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.]*)$")


def canonical(name: str) -> str:
    """PEP 503 name normalisation (``Pillow`` = ``pillow``, ``pytorch_ignite`` = ``pytorch-ignite``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_versions(path: Path = VERSIONS_FILE) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of ``path`` (comments and blank lines skipped)."""
    versions: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIN.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: expected 'name==version' (a bare PyPI version), got {raw.strip()!r}")
        name = canonical(match.group(1))
        if name in versions:
            raise ValueError(f"{path}:{number}: {match.group(1)} is listed twice")
        versions[name] = match.group(2)
    return versions


def package_version(pyproject: Path = REPO_ROOT / "pyproject.toml") -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), flags=re.MULTILINE)
    if not match:
        raise ValueError(f"{pyproject}: no `version = \"...\"` in [project]")
    return match.group(1)


def pinned_metadata(metadata: dict, versions: dict[str, str], own_version: str, where: str) -> dict:
    """A copy of ``metadata`` with its version fields taken from ``versions`` (key order kept)."""
    def version_of(name: str) -> str:
        if canonical(name) == canonical(PACKAGE):
            return own_version
        try:
            return versions[canonical(name)]
        except KeyError:
            raise ValueError(f"{where} needs {name}, which {VERSIONS_FILE.name} does not list") from None

    pinned = dict(metadata)
    for field, name in TOP_LEVEL_FIELDS.items():
        pinned[field] = version_of(name)
    required = metadata.get("required_packages_version") or {}
    pinned["required_packages_version"] = {name: version_of(name) for name in required}
    return pinned


def differences(old: dict, new: dict) -> list[str]:
    changed = [f"{f}: {old.get(f)} -> {new[f]}" for f in TOP_LEVEL_FIELDS if old.get(f) != new[f]]
    old_required = old.get("required_packages_version") or {}
    changed += [f"required_packages_version.{n}: {old_required.get(n)} -> {v}"
                for n, v in new["required_packages_version"].items() if old_required.get(n) != v]
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any field differs")
    parser.add_argument("--bundles-dir", type=Path, default=BUNDLES_DIR, help="default: %(default)s")
    parser.add_argument("--versions", type=Path, default=VERSIONS_FILE, help="default: %(default)s")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    from shared_networks.io import write_text_atomically

    versions, own = read_versions(args.versions), package_version()
    stale = 0
    for path in sorted(args.bundles_dir.glob("*/configs/metadata.json")):
        metadata = json.loads(path.read_text())
        pinned = pinned_metadata(metadata, versions, own, str(path))
        changed = differences(metadata, pinned)
        if not changed:
            continue
        stale += 1
        print(f"{path.relative_to(args.bundles_dir)}: " + "; ".join(changed))
        if not args.check:
            # the Model Zoo's JSON format (its pretty-format-json hook: 4 spaces, key order kept, ASCII escapes)
            write_text_atomically(json.dumps(pinned, indent=4) + "\n", path)
    if args.check and stale:
        print(f"{stale} bundle(s) differ from {args.versions}: run python ci/pin_versions.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
