# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Shared fixtures: the bundles in ``bundles/``, their checks files (reduced settings, synthetic data), a throwaway copy
of the fixture bundle ``tests/fixtures/bundles/basic_unet_rgb_segmentation``, ``ci/verify_bundles.py`` as a module,
ports, an HTTP server, and a real T1 MRI (the MNI152 template of nilearn's wheel) with the ways scans store it."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from shared_networks.bundle import layout

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
CI_DIR = REPO_ROOT / "ci"
SCHEMA_FILE = Path(os.environ.get("MONAI_BUNDLE_SCHEMA_DIR") or REPO_ROOT.parent / "shared" / "schemas") \
    / "meta_schema_20240725.json"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
CHECKS_DIR = REPO_ROOT / layout.BUNDLE_CHECKS_DIR
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
# a 2D RGB PNG bundle (MONAI BasicUNet), with its checks file outside ci/: proves the tooling is not BraTS-bound
FIXTURE_BUNDLE = FIXTURES_DIR / "bundles" / "basic_unet_rgb_segmentation"
FIXTURE_CHECKS_DIR = FIXTURES_DIR / "bundle_checks"
# where the tests look for checks files: the repository's first, then the fixtures'
CHECKS_DIRS = (CHECKS_DIR, FIXTURE_CHECKS_DIR)
# a real T1 MRI that ships inside a PyPI wheel: the MNI152 2009a template of nilearn (read from the wheel; nilearn and
# its dependencies are not installed)
WHEEL_CACHE = REPO_ROOT / ".cache" / "wheels"
NILEARN = "nilearn==0.14.1"
MNI152_T1_MEMBER = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI152_T1_SHA256 = "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"


def pytest_configure(config):
    """Under pytest-xdist (``ci/test.sh`` runs two workers) each worker takes its share of the cores: torch threads
    here, and through the environment the OpenMP threads of the bundle subprocesses and the jobs of C++ extension
    builds, so that side-by-side workers do not oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        os.environ.update(OMP_NUM_THREADS=str(share), MKL_NUM_THREADS=str(share), MAX_JOBS=str(share))
        import torch

        torch.set_num_threads(share)


@functools.lru_cache(maxsize=None)
def metadata_schema_available() -> bool:
    """The metadata schema is at hand: the offline copy CI has beside the repository, or a reachable download."""
    if SCHEMA_FILE.is_file():
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(SCHEMA_URL, method="HEAD"), timeout=10):
            return True
    except OSError:
        return False


def bundle_dirs() -> list[Path]:
    """Every bundle folder (holding ``configs/``) in ``bundles/``: tests parametrised over it cover new bundles too."""
    return layout.list_bundles(BUNDLES_DIR)


def bundle_params() -> list:
    """``pytest.param`` per bundle folder, with the folder name as test id."""
    return [pytest.param(p, id=p.name) for p in bundle_dirs()]


def import_ci_script(name: str) -> ModuleType:
    """Import ``ci/<name>.py`` as a module (the CI scripts are not part of the installed package)."""
    path = CI_DIR / f"{name}.py"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) in a thread; yields the base URL."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def release_and_download(bundle: Path, work_dir: Path, python: str | os.PathLike = sys.executable,
                         env: dict | None = None) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A copy of ``bundle`` with initial weights, packed by ``ci/package_bundle.py --models yes``, served over HTTP on
    127.0.0.1 and fetched with ``<python> -m monai.bundle download`` into ``work_dir/downloads`` (run in
    ``work_dir``). Returns (release zip, the weights packed, the download's completed process)."""
    release = copy_bundle(bundle, work_dir / "release")
    weights = write_initial_weights(release)
    serve = work_dir / "serve"
    packaged = subprocess.run([sys.executable, str(CI_DIR / "package_bundle.py"), str(release), "--output-dir",
                               str(serve), "--models", "yes"], capture_output=True, text=True, env=subprocess_env(),
                              timeout=300)
    assert packaged.returncode == 0, packaged.stderr
    zip_path = Path(packaged.stdout.strip())
    with serve_directory(serve) as base_url:
        download = subprocess.run(
            [str(python), "-m", "monai.bundle", "download", "--name", bundle.name, "--url",
             f"{base_url}/{zip_path.name}", "--bundle_dir", str(work_dir / "downloads")],
            capture_output=True, text=True, env=env or subprocess_env(), cwd=work_dir, timeout=300)
    return zip_path, weights, download


def build_package(out_dir: Path, work_dir: Path) -> tuple[Path, Path]:
    """``python -m build`` of a copy (in ``work_dir``) of the package's files: (sdist, wheel) in ``out_dir``. Without
    build isolation: setuptools comes from this environment, so no registry is needed."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, work_dir / name)
    shutil.copytree(REPO_ROOT / "shared_networks", work_dir / "shared_networks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out_dir), str(work_dir)],
                           capture_output=True, text=True, env=subprocess_env(), timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    sdists, wheels = sorted(out_dir.glob("shared_networks-*.tar.gz")), sorted(out_dir.glob("shared_networks-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out_dir.iterdir())
    return sdists[0], wheels[0]


def bundle_checks(bundle: Path) -> layout.BundleChecks:
    """The checks file of ``bundle`` (``ci/bundle_checks/<name>.yaml``, else ``tests/fixtures/bundle_checks/``):
    reduced network / train / inference overrides, synthetic data generator, config consistency declarations."""
    return layout.load_bundle_checks(bundle, CHECKS_DIRS)


def make_synthetic_data(bundle: Path, output_dir: Path, num_cases: int | None = None) -> Path:
    """The synthetic dataset the bundle's checks file declares, written to ``output_dir`` (``num_cases`` replaces the
    declared number of cases); returns ``output_dir``."""
    return bundle_checks(bundle).make_synthetic_data(output_dir, num_cases=num_cases)


def cli_overrides(overrides: dict) -> list[str]:
    """``--id value`` arguments for ``python -m monai.bundle run`` (values as JSON, which Fire parses; booleans as
    Python's True / False, the only spelling Fire turns into booleans)."""
    args = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else str(value) if isinstance(value, bool) else json.dumps(value)
        args += [f"--{key}", text]
    return args


def reduced_train_overrides(bundle: Path) -> dict:
    """The bundle's reduced training overrides plus its reduced ``network_def`` (``network_def#<key>`` ids)."""
    checks = bundle_checks(bundle)
    return {**checks.train, **{f"network_def#{k}": v for k, v in checks.network_def.items()}}


def copy_bundle(bundle: Path, dest_dir: Path) -> Path:
    """Copy of a bundle folder as ``dest_dir/<name>``, without weights, run outputs or local data."""
    return layout.copy_bundle(bundle, dest_dir / bundle.name)


def write_initial_weights(bundle_copy: Path, config: str = "train") -> Path:
    """Save the (reduced) ``network_def`` initial weights as ``models/model.pt`` of a bundle copy, and point its
    ``large_files.yml`` entry (if any) at the new file's sha256, as a release maintainer would."""
    import torch
    from monai.bundle import ConfigParser

    from shared_networks.bundle.release import sha256_of
    from shared_networks.io import save_atomically, write_text_atomically

    parser = ConfigParser()
    parser.read_config(str(next((bundle_copy / "configs").glob(f"{config}.*"))))
    parser["bundle_root"] = str(bundle_copy)
    for key, value in bundle_checks(bundle_copy).network_def.items():
        parser[f"network_def#{key}"] = value
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    ckpt = bundle_copy / layout.WEIGHTS_DIR / "model.pt"
    save_atomically(net.state_dict(), ckpt)
    large_files, entries = layout.large_file_entries(bundle_copy)
    if large_files is not None:
        for entry in entries:
            if os.path.normpath(entry["path"]) == "models/model.pt":
                entry.update(hash_val=sha256_of(ckpt), hash_type="sha256")
        content = {"large_files": entries}
        if large_files.suffix == ".json":
            text = json.dumps(content, indent=4) + "\n"
        else:
            text = yaml.safe_dump(content, sort_keys=False)
        write_text_atomically(text, large_files)
    return ckpt


def list_weights(bundle: Path, hash_val: str) -> None:
    """Make ``models/model.pt`` the one entry of the bundle's ``large_files.yml``, with sha256 ``hash_val`` (a
    placeholder url), as for published weights."""
    entry = {"path": "models/model.pt", "url": "https://example.invalid/model.pt", "hash_val": hash_val,
             "hash_type": "sha256"}
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}, sort_keys=False))


def subprocess_env(**extra: str) -> dict:
    """Environment for bundle subprocesses: quiet thread counts on a 2-core machine, no GPU, repo importable."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONWARNINGS": "ignore"})
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def mni152_t1():
    """The MNI152 2009a T1 template (197 x 233 x 189, 1 mm, RAS, skull-stripped uint8) as a nibabel image, taken from
    nilearn's wheel (``pip download --no-deps``), extracted once into ``.cache/wheels``."""
    import nibabel as nib

    target = WHEEL_CACHE / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if not target.is_file():
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        # a folder of this process's own, then one rename: test workers running side by side (pytest-xdist) never
        # see each other's half-written files
        with tempfile.TemporaryDirectory(dir=WHEEL_CACHE) as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", download, NILEARN],
                           check=True, timeout=600)
            wheel = next(Path(download).glob("nilearn-0.14.1-*.whl"))
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(MNI152_T1_MEMBER)
            if hashlib.sha256(data).hexdigest() != MNI152_T1_SHA256:
                raise AssertionError(f"{MNI152_T1_MEMBER} in {wheel} is not the expected file (sha256 differs)")
            (Path(download) / target.name).write_bytes(data)
            os.replace(Path(download) / target.name, target)
    image = nib.load(target)
    assert image.shape == (197, 233, 189) and nib.aff2axcodes(image.affine) == ("R", "A", "S")
    return image


def stored_as(image, kind: str, crop: tuple[slice, slice, slice] | None = None):
    """``image`` (optionally cropped to ``crop``) stored another way, as scanners and converters do: ``"ras"`` as is,
    ``"lps_1x1x3mm"`` (x and y reversed, every third axial slice) or ``"sagittal_first"`` (storage axes S, A, R)."""
    import nibabel as nib
    import numpy as np

    crop = crop or tuple(slice(0, n) for n in image.shape)
    data = np.asarray(image.dataobj)[crop]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ np.array([c.start for c in crop]) + image.affine[:3, 3]
    if kind == "lps_1x1x3mm":
        data = data[::-1, ::-1, ::3]
        index_map = np.diag([-1.0, -1.0, 3.0, 1.0])  # new voxel index -> index in the crop
        index_map[:3, 3] = [data.shape[0] - 1, data.shape[1] - 1, 0]
        affine = affine @ index_map
    elif kind == "sagittal_first":  # the k axis varies slowest in the file
        data = np.transpose(data, (2, 1, 0))
        affine = affine[:, [2, 1, 0, 3]]
    elif kind != "ras":
        raise ValueError(f"unknown storage kind '{kind}'")
    stored = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    stored.set_qform(affine, code=1)
    stored.set_sform(affine, code=1)
    return stored


@pytest.fixture
def fixture_bundle(tmp_path: Path) -> Path:
    """A fresh copy of the fixture bundle ``basic_unet_rgb_segmentation`` (same folder name, so that its checks file
    in ``tests/fixtures/bundle_checks`` applies) under ``tmp_path/bundles``, for tests that break it on purpose."""
    return copy_bundle(FIXTURE_BUNDLE, tmp_path / "bundles")


@pytest.fixture(scope="session")
def verify_bundles() -> ModuleType:
    """``ci/verify_bundles.py`` as a module."""
    return import_ci_script("verify_bundles")
