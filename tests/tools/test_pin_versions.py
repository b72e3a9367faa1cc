# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``ci/pin_versions.py`` and its one list ``ci/tested_versions.txt``: the bundles' metadata states the listed
versions, the test environment has them, and the Model Zoo's requirements made from the metadata resolve on
Python 3.10 (the oldest supported Python and the Zoo's CPU CI Python)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from importlib.metadata import version as installed_version

import pytest
from conftest import BUNDLES_DIR, build_package, import_ci_script

pin_versions = import_ci_script("pin_versions")
zoo_requirements = import_ci_script("verify_bundles").zoo_requirements


def test_every_bundle_states_the_listed_versions(capsys):
    assert pin_versions.main(["--check"]) == 0, capsys.readouterr().out


def test_the_test_environment_has_the_listed_versions():
    listed = pin_versions.read_versions()
    assert {"torch", "monai", "numpy"} <= listed.keys()
    # a local label (torch's "+cpu") names the build, not another version
    found = {name: installed_version(name).split("+")[0] for name in listed}
    assert found == listed, "run bash ci/setup.sh: it installs with ci/tested_versions.txt as constraints"


def test_check_names_the_field_that_differs_and_the_rewrite_keeps_the_key_order(tmp_path, capsys):
    source = BUNDLES_DIR / "segmamba_brats" / "configs" / "metadata.json"
    copy = tmp_path / "segmamba_brats" / "configs" / "metadata.json"
    copy.parent.mkdir(parents=True)
    metadata = json.loads(source.read_text())
    metadata["numpy_version"] = "1.26.4"
    metadata["required_packages_version"]["nibabel"] = "5.0.0"
    copy.write_text(json.dumps(metadata, indent=4) + "\n")

    assert pin_versions.main(["--check", "--bundles-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    listed = pin_versions.read_versions()
    assert f"numpy_version: 1.26.4 -> {listed['numpy']}" in out
    assert f"required_packages_version.nibabel: 5.0.0 -> {listed['nibabel']}" in out
    assert json.loads(copy.read_text())["numpy_version"] == "1.26.4"  # --check changes nothing

    assert pin_versions.main(["--bundles-dir", str(tmp_path)]) == 0
    assert copy.read_text() == source.read_text()


def test_bad_lists_are_refused_naming_the_line(tmp_path):
    versions = tmp_path / "versions.txt"
    versions.write_text("# pins\ntorch==2.13.0\nnumpy>=2\n")
    with pytest.raises(ValueError, match=r"versions.txt:3: expected 'name==version'.*numpy>=2"):
        pin_versions.read_versions(versions)
    versions.write_text("Pillow==12.3.0\npillow==12.2.0\n")
    with pytest.raises(ValueError, match=r"versions.txt:2: pillow is listed twice"):
        pin_versions.read_versions(versions)
    metadata = {"required_packages_version": {"scipy": "1.15.3"}}
    with pytest.raises(ValueError, match="meta.json needs scipy, which tested_versions.txt does not list"):
        pin_versions.pinned_metadata(metadata, {"torch": "2.13.0", "monai": "1.6.1", "numpy": "2.2.6"}, "0.1.0",
                                     "meta.json")


def python_3_10() -> str | None:
    """A working Python 3.10: pyenv's, or python3.10 on PATH (a pyenv shim there may not run)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")), reverse=True)
    candidates += [p for p in (shutil.which("python3.10"),) if p]
    for candidate in candidates:
        probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2] == (3, 10))"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


@pytest.mark.slow
def test_zoo_requirements_of_every_bundle_resolve_on_python_3_10(tmp_path):
    """``pip install --dry-run`` of the union of the bundles' Zoo requirements (each bundle's list is a subset, so
    it resolves too), with ``shared_networks`` from the wheel built here. Nothing is installed; pip downloads the
    wheels to read their metadata (torch from PyPI is its CUDA build) into a temporary folder, not its cache."""
    python = python_3_10()
    if python is None:
        pytest.skip("no Python 3.10 interpreter (python3.10 on PATH or pyenv)")
    requirements = sorted({line for path in sorted(BUNDLES_DIR.glob("*/configs/metadata.json"))
                           for line in zoo_requirements(json.loads(path.read_text()))})
    (tmp_path / "requirements.txt").write_text("\n".join(requirements) + "\n")
    wheels, src = tmp_path / "wheels", tmp_path / "src"
    src.mkdir()
    build_package(wheels, src)
    venv = tmp_path / "py310"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
    report = tmp_path / "report.json"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--no-cache-dir", "--only-binary=:all:",
         "--find-links", str(wheels), "--report", str(report), "-r", str(tmp_path / "requirements.txt")],
        capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resolved = {pin_versions.canonical(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    for line in requirements:
        name, version = line.split("==")
        assert resolved.get(pin_versions.canonical(name)) == version, (line, resolved.get(pin_versions.canonical(name)))
