# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Repository-wide conventions: one licence header on every source file, and no reference to files outside the
repository (the project must stand alone: cite the paper or the authors' repository instead)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADER = (
    "Copyright (c) the shared_networks contributors.",
    'Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance '
    "with",
    "the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0",
)
COMMENT = {".py": "#", ".sh": "#", ".cpp": "//"}


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO_ROOT / name for name in listed if (REPO_ROOT / name).is_file()]


def source_files() -> list[Path]:
    return [p for p in tracked_files() if p.suffix in COMMENT or p.relative_to(REPO_ROOT).as_posix() == ".ci/run"]


def test_there_are_source_files():
    names = {p.relative_to(REPO_ROOT).as_posix() for p in source_files()}
    assert {"shared_networks/ssm/selective_scan.py", "ci/test.sh", "shared_networks/ssm/csrc/selective_scan_cpu.cpp",
            ".ci/run"} <= names


@pytest.mark.parametrize("path", source_files(), ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_licence_header(path: Path):
    comment = COMMENT.get(path.suffix, "#")
    lines = path.read_text().splitlines()
    start = 1 if lines and lines[0].startswith("#!") else 0
    expected = [f"{comment} {line}" for line in HEADER]
    assert lines[start:start + 3] == expected, f"{path} must start with the licence header:\n" + "\n".join(expected)


# the notes and papers that sit beside the checkout for the developers; written split so this file does not match
OUTSIDE_NOTES = tuple("shared/" + folder for folder in ("research", "papers", "design"))


def test_no_reference_to_files_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if path.suffix not in (".py", ".sh", ".cpp", ".md", ".yaml", ".yml", ".json", ".toml", ".conf"):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if any(note in line for note in OUTSIDE_NOTES):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders, "references to files outside the repository:\n" + "\n".join(offenders)
