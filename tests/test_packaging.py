# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The package as a user outside this repository gets it: ``python -m build`` makes an sdist and a wheel that carry
every module and the C++ kernel source; the wheel, installed into a fresh virtual environment (no editable install,
no repository on the path), compiles the kernel from its own copy of the source and runs the inference of a bundle
downloaded over HTTP into another folder, with the same labels as this environment gives."""

from __future__ import annotations

import email
import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import nibabel as nib
import numpy as np
import pytest
from conftest import (
    BUNDLES_DIR,
    REPO_ROOT,
    build_package,
    bundle_checks,
    cli_overrides,
    make_synthetic_data,
    release_and_download,
    subprocess_env,
)

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
BUNDLE = BUNDLES_DIR / "segmamba_brats"


def package_sources() -> list[str]:
    """What the package is made of, from the source tree: every module and the kernels' C++ sources and header."""
    root = REPO_ROOT / "shared_networks"
    return sorted(str(p.relative_to(REPO_ROOT)) for p in root.rglob("*")
                  if p.suffix in {".py", ".cpp", ".h"} and "__pycache__" not in p.parts)


def _requirement(text: str) -> tuple:
    from packaging.requirements import Requirement

    requirement = Requirement(text)
    return requirement.name, requirement.specifier


def outside_env(**extra: str) -> dict:
    """A subprocess environment with nothing of the repository on the Python path."""
    env = subprocess_env(**extra)
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel) of ``python -m build`` on a copy of the project's package files."""
    sdist, wheel = build_package(tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("src"))
    name = f"shared_networks-{PROJECT['version']}"
    assert (sdist.name, wheel.name) == (f"{name}.tar.gz", f"{name}-py3-none-any.whl")
    return sdist, wheel


def test_sdist_and_wheel_carry_every_module_and_the_kernel_source(distributions):
    sdist, wheel = distributions
    expected = package_sources()
    assert {"shared_networks/ssm/csrc/selective_scan_cpu.cpp", "shared_networks/ssm/csrc/inference_cpu.cpp",
            "shared_networks/ssm/csrc/lane_math.h"} <= set(expected)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = f"shared_networks-{PROJECT['version']}.dist-info"
        assert sorted(n for n in names if not n.startswith(dist_info)) == expected
        metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
        assert f"{dist_info}/licenses/LICENSE" in names
    assert metadata["Name"] == "shared_networks" and metadata["Version"] == PROJECT["version"]
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == PROJECT["requires-python"]
    # the core requirements as pyproject.toml states them (extras' are marked `extra == ...`)
    core = {_requirement(r) for r in metadata.get_all("Requires-Dist") if "extra ==" not in r}
    assert core == {_requirement(r) for r in PROJECT["dependencies"]}
    with tarfile.open(sdist) as tf:
        prefix = f"shared_networks-{PROJECT['version']}/"
        members = {m.name[len(prefix):] for m in tf.getmembers() if m.isfile()}
    assert set(expected) | {"pyproject.toml", "README.md", "LICENSE", "PKG-INFO"} <= members


@pytest.fixture(scope="module")
def fresh_python(distributions, tmp_path_factory) -> Path:
    """The Python of a new virtual environment with the wheel installed. Its dependencies (torch, MONAI, ...) come
    from this environment's site-packages, added as a plain path: the .pth files there, among them this checkout's
    editable install of shared_networks, are not processed, so the package can only come from the wheel."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = [str(python), "-c", "import shared_networks"]
    before = subprocess.run(probe, capture_output=True, text=True, env=outside_env(), cwd=venv)
    assert before.returncode != 0 and "No module named 'shared_networks'" in before.stderr, before.stderr
    wheel = distributions[1]
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, env=outside_env(), timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def _scan_backend(python: Path | str, cwd: Path, env: dict) -> dict:
    code = ("import json, torch, shared_networks, shared_networks.ssm.cpp_scan as k; "
            "from shared_networks.ssm import selective_scan_backend; "
            "print(json.dumps({'package': shared_networks.__file__, 'source': k.SOURCE, "
            "'backend': selective_scan_backend(torch.device('cpu'))}))")
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, cwd=cwd, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_wheel_in_a_fresh_environment_runs_a_downloaded_bundle(fresh_python, tmp_path):
    venv = fresh_python.parents[1]
    # a kernel cache of its own: the kernel is compiled from the wheel's copy of the source
    fresh_env = outside_env(TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"))
    fresh = _scan_backend(fresh_python, tmp_path, fresh_env)
    assert Path(fresh["package"]).is_relative_to(venv) and Path(fresh["source"]).is_relative_to(venv)
    assert fresh["backend"] == _scan_backend(sys.executable, tmp_path, subprocess_env())["backend"]
    if shutil.which("c++") and shutil.which("ninja"):
        assert fresh["backend"] == "cpp"

    _, _, download = release_and_download(BUNDLE, tmp_path, python=fresh_python, env=fresh_env)
    assert download.returncode == 0, download.stdout[-3000:] + download.stderr[-3000:]
    downloads = tmp_path / "downloads"
    downloaded = downloads / BUNDLE.name

    checks = bundle_checks(BUNDLE)
    cases = make_synthetic_data(BUNDLE, tmp_path / "cases", num_cases=2)
    labels = {}
    for name, python, env in (("fresh", fresh_python, fresh_env), ("repository", sys.executable, subprocess_env())):
        output_dir = tmp_path / f"predictions_{name}"
        overrides = {**checks.inference, **{f"network_def#{k}": v for k, v in checks.network_def.items()},
                     "bundle_root": str(downloaded), "dataset_dir": str(cases), "output_dir": str(output_dir)}
        run = subprocess.run([str(python), "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
                              *cli_overrides(overrides)], capture_output=True, text=True, env=env, cwd=downloaded,
                             timeout=900)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        labels[name] = {p.relative_to(output_dir): np.asarray(nib.load(p).dataobj)
                        for p in sorted(output_dir.rglob("*.nii.gz"))}
    assert len(labels["fresh"]) == 2 and labels["fresh"].keys() == labels["repository"].keys()
    for path, fresh_labels in labels["fresh"].items():
        np.testing.assert_array_equal(fresh_labels, labels["repository"][path], err_msg=str(path))
