# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Release archive (``shared_networks.bundle.release``, CLI ``ci/package_bundle.py``), ``monai.bundle download`` from
a local HTTP server, fine-tuning the downloaded bundle from its ``models/model.pt``, and hash checks of
``large_files.yml`` entries."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import (
    CI_DIR,
    bundle_checks,
    bundle_params,
    cli_overrides,
    copy_bundle,
    list_weights,
    make_synthetic_data,
    reduced_train_overrides,
    release_and_download,
    serve_directory,
    subprocess_env,
    write_initial_weights,
)

from shared_networks.bundle.release import package_bundle, sha256_of

# ---------------------------------------------------------------------------------------------------------------
# package_bundle on copies of the fixture bundle (tests/fixtures/bundles/basic_unet_rgb_segmentation)
# ---------------------------------------------------------------------------------------------------------------


def _with_runtime_clutter(bundle: Path) -> None:
    for rel in ("eval/metrics.csv", "runs/events.out", "data/case/x.nii.gz", "datalist.json",
                "scripts/__pycache__/a.pyc", "mlruns/0/meta.yaml"):
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_text("x")


def test_package_layout_and_exclusions(fixture_bundle, tmp_path):
    _with_runtime_clutter(fixture_bundle)
    ckpt = fixture_bundle / "models" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    (fixture_bundle / "models" / "notes.txt").write_text("not a weight file")
    list_weights(fixture_bundle, hashlib.sha256(b"weights").hexdigest())

    name = fixture_bundle.name
    zip_path = package_bundle(fixture_bundle, tmp_path / "dist")
    assert zip_path.name == f"{name}_v0.1.0.zip"
    names = sorted(zipfile.ZipFile(zip_path).namelist())
    assert {n.split("/")[0] for n in names} == {name}
    assert names == sorted(
        f"{name}/{rel}"
        for rel in ("LICENSE", "docs/README.md", "docs/data_license.txt", "models/model.pt", "configs/metadata.json",
                    "configs/logging.conf",
                    "configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml",
                    "configs/multi_gpu_train.yaml", "configs/train.json", "configs/inference.json",
                    "scripts/__init__.py", "scripts/synthetic.py")
    )  # clutter excluded; large_files.yml dropped because every listed file is inside (Model Zoo release rule)
    assert zipfile.ZipFile(zip_path).read(f"{name}/models/model.pt") == b"weights"
    # the JSON twins that monai.bundle.load(workflow_type=...) reads hold exactly the YAML's content
    for stem in ("train", "inference"):
        twin = json.loads(zipfile.ZipFile(zip_path).read(f"{name}/configs/{stem}.json"))
        assert twin == yaml.safe_load((fixture_bundle / "configs" / f"{stem}.yaml").read_text())
    # deterministic: a second build is byte-identical
    again = package_bundle(fixture_bundle, tmp_path / "dist2")
    assert sha256_of(again) == sha256_of(zip_path)


def test_package_without_models_keeps_large_files(fixture_bundle, tmp_path):
    list_weights(fixture_bundle, "0" * 64)
    zip_path = package_bundle(fixture_bundle, tmp_path, models="no")
    names = zipfile.ZipFile(zip_path).namelist()
    assert f"{fixture_bundle.name}/large_files.yml" in names
    assert not any("/models/" in n for n in names)
    with pytest.raises(FileNotFoundError, match="model.pt"):
        package_bundle(fixture_bundle, tmp_path, models="yes")


def test_package_refuses_bad_input(fixture_bundle, tmp_path):
    list_weights(fixture_bundle, hashlib.sha256(b"the published weights").hexdigest())
    (fixture_bundle / "models").mkdir()
    (fixture_bundle / "models" / "model.pt").write_bytes(b"not the weights large_files.yml describes")
    with pytest.raises(ValueError, match="sha256"):
        package_bundle(fixture_bundle, tmp_path)
    with pytest.raises(ValueError, match="models must be one of"):
        package_bundle(fixture_bundle, tmp_path, models="maybe")
    meta = json.loads((fixture_bundle / "configs" / "metadata.json").read_text())
    (fixture_bundle / "configs" / "metadata.json").write_text(json.dumps({**meta, "version": "1.0"}))
    with pytest.raises(ValueError, match="X.Y.Z"):
        package_bundle(fixture_bundle, tmp_path, models="no")
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        package_bundle(tmp_path, tmp_path)
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".*.zip.*"))  # nothing half-written


def test_package_cli(fixture_bundle, tmp_path):
    cmd = [sys.executable, str(CI_DIR / "package_bundle.py"), str(fixture_bundle), "--output-dir", str(tmp_path)]
    ok = subprocess.run(cmd + ["--models", "no"], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()) == tmp_path / f"{fixture_bundle.name}_v0.1.0.zip"
    assert f"sha256 {sha256_of(tmp_path / f'{fixture_bundle.name}_v0.1.0.zip')}" in ok.stderr
    refused = subprocess.run(cmd + ["--models", "yes"], capture_output=True, text=True, env=subprocess_env(),
                             timeout=300)
    assert refused.returncode == 1 and "error: models='yes', but" in refused.stderr, refused.stderr


# ---------------------------------------------------------------------------------------------------------------
# every bundle in bundles/: release zip -> monai.bundle download over HTTP -> fine-tune one epoch
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_params())
def test_download_and_finetune(bundle: Path, tmp_path: Path):
    zip_path, weights, download = release_and_download(bundle, tmp_path)
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert zip_path.name == f"{bundle.name}_v{version}.zip"
    assert download.returncode == 0, download.stdout[-3000:] + download.stderr[-3000:]
    downloads = tmp_path / "downloads"
    downloaded = downloads / bundle.name
    assert (downloaded / "configs" / "metadata.json").is_file()
    assert sha256_of(downloaded / "models" / "model.pt") == sha256_of(weights)

    # monai.bundle.load builds the network from the downloaded bundle's configs, with the downloaded weights, and
    # needs no dataset for it
    import torch
    from monai.bundle import load

    net_override = bundle_checks(bundle).network_def
    expected = torch.load(weights, weights_only=True)
    for workflow_type in ("train", "inference"):
        with pytest.warns(UserWarning):  # MONAI 1.6 warns that bundle configs run code
            net = load(name=bundle.name, bundle_dir=str(downloads), workflow_type=workflow_type, source="github",
                       net_override=net_override, device="cpu")
        assert isinstance(net, torch.nn.Module), f"load(workflow_type={workflow_type!r}) returned {type(net)}"
        assert net.state_dict().keys() == expected.keys()
        assert all(torch.equal(net.state_dict()[k], expected[k]) for k in expected)

    dataset = make_synthetic_data(bundle, tmp_path / "dataset")
    overrides = {**reduced_train_overrides(bundle), "bundle_root": str(downloaded), "dataset_dir": str(dataset),
                 "finetune": True}
    train_config = next((downloaded / "configs").glob("train.*"))
    finetune = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(train_config), *cli_overrides(overrides)],
        capture_output=True, text=True, env=subprocess_env(), timeout=900, cwd=downloaded)
    log = finetune.stdout + finetune.stderr
    assert finetune.returncode == 0, log[-5000:]
    # the CheckpointLoader enabled by `finetune` restored the downloaded weights before training
    assert f"Restored all variables from {downloaded / 'models' / 'model.pt'}" in log, log[-5000:]
    # and the best model of the fine-tuning run replaced models/model.pt with trained weights (same keys, new values)
    before = torch.load(weights, weights_only=True)
    after = torch.load(downloaded / "models" / "model.pt", weights_only=True)
    assert after.keys() == before.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bundle", bundle_params())
def test_large_file_hash_mismatch_is_refused(bundle: Path, tmp_path: Path):
    from monai.apps.utils import HashCheckError
    from monai.bundle import download_large_files

    release = copy_bundle(bundle, tmp_path / "release")
    weights = write_initial_weights(release)
    served = tmp_path / "serve"
    served.mkdir()
    (served / "model.pt").write_bytes(weights.read_bytes())
    (served / "tampered.pt").write_bytes(weights.read_bytes() + b"\0")
    listed = yaml.safe_load((release / "large_files.yml").read_text())["large_files"] if (
        release / "large_files.yml").is_file() else []
    assert [e["hash_type"] for e in listed] == ["sha256"] * len(listed)
    entry = {"path": "models/model.pt", "hash_val": sha256_of(weights), "hash_type": "sha256"}
    weights.unlink()
    with serve_directory(served) as base_url:
        for name, expect_ok in (("tampered.pt", False), ("model.pt", True)):
            (release / "large_files.yml").write_text(
                yaml.safe_dump({"large_files": [{**entry, "url": f"{base_url}/{name}"}]}))
            if expect_ok:
                download_large_files(bundle_path=str(release))
                assert sha256_of(release / "models" / "model.pt") == entry["hash_val"]
            else:
                with pytest.raises(HashCheckError, match="sha256 hash check of downloaded file failed"):
                    download_large_files(bundle_path=str(release))
                assert not (release / "models" / "model.pt").exists()
