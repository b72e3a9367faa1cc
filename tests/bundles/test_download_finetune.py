# Copyright (c) the shared_networks authors. Licensed under the Apache License, Version 2.0.
"""Release archive (ci/package_bundle.py), ``monai.bundle download`` from a local HTTP server, fine-tuning the
downloaded bundle from its ``models/model.pt``, and hash checks of ``large_files.yml`` entries."""

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
    bundle_params,
    cli_overrides,
    copy_bundle,
    import_ci_script,
    make_phantoms,
    reduced_settings,
    reduced_train_overrides,
    serve_directory,
    subprocess_env,
    write_initial_weights,
)


@pytest.fixture(scope="module")
def package_bundle():
    return import_ci_script("package_bundle")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# package_bundle on the tiny bundle
# ---------------------------------------------------------------------------------------------------------------


def _with_runtime_clutter(bundle: Path) -> None:
    for rel in ("eval/metrics.csv", "runs/events.out", "data/case/x.nii.gz", "datalist.json", "scripts/__pycache__/a.pyc",
                "mlruns/0/meta.yaml"):
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_text("x")


def test_package_layout_and_exclusions(package_bundle, tiny_bundle, tmp_path):
    _with_runtime_clutter(tiny_bundle)
    ckpt = tiny_bundle / "models" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    (tiny_bundle / "models" / "notes.txt").write_text("not a weight file")
    content = yaml.safe_load((tiny_bundle / "large_files.yml").read_text())
    content["large_files"][0]["hash_val"] = hashlib.sha256(b"weights").hexdigest()
    (tiny_bundle / "large_files.yml").write_text(yaml.safe_dump(content))

    zip_path = package_bundle.package_bundle(tiny_bundle, tmp_path / "dist")
    assert zip_path.name == "tiny_unet_segmentation_v0.1.0.zip"
    names = sorted(zipfile.ZipFile(zip_path).namelist())
    assert {n.split("/")[0] for n in names} == {"tiny_unet_segmentation"}
    assert names == sorted(
        f"tiny_unet_segmentation/{rel}"
        for rel in ("LICENSE", "docs/README.md", "models/model.pt", "configs/metadata.json", "configs/logging.conf",
                    "configs/train.yaml", "configs/evaluate.yaml", "configs/inference.yaml",
                    "configs/multi_gpu_train.yaml", "configs/train.json", "configs/inference.json")
    )  # clutter excluded; large_files.yml dropped because every listed file is inside (Model Zoo release rule)
    assert zipfile.ZipFile(zip_path).read("tiny_unet_segmentation/models/model.pt") == b"weights"
    # the JSON twins that monai.bundle.load(workflow_type=...) reads hold exactly the YAML's content
    for stem in ("train", "inference"):
        twin = json.loads(zipfile.ZipFile(zip_path).read(f"tiny_unet_segmentation/configs/{stem}.json"))
        assert twin == yaml.safe_load((tiny_bundle / "configs" / f"{stem}.yaml").read_text())
    # deterministic: a second build is byte-identical
    again = package_bundle.package_bundle(tiny_bundle, tmp_path / "dist2")
    assert _sha256(again) == _sha256(zip_path)


def test_package_without_models_keeps_large_files(package_bundle, tiny_bundle, tmp_path):
    zip_path = package_bundle.package_bundle(tiny_bundle, tmp_path, models="no")
    names = zipfile.ZipFile(zip_path).namelist()
    assert "tiny_unet_segmentation/large_files.yml" in names
    assert not any("/models/" in n for n in names)
    with pytest.raises(FileNotFoundError, match="model.pt"):
        package_bundle.package_bundle(tiny_bundle, tmp_path, models="yes")


def test_package_refuses_bad_input(package_bundle, tiny_bundle, tmp_path):
    (tiny_bundle / "models").mkdir()
    (tiny_bundle / "models" / "model.pt").write_bytes(b"not the weights large_files.yml describes")
    with pytest.raises(ValueError, match="sha256"):
        package_bundle.package_bundle(tiny_bundle, tmp_path)
    with pytest.raises(ValueError, match="models must be one of"):
        package_bundle.package_bundle(tiny_bundle, tmp_path, models="maybe")
    meta = json.loads((tiny_bundle / "configs" / "metadata.json").read_text())
    (tiny_bundle / "configs" / "metadata.json").write_text(json.dumps({**meta, "version": "1.0"}))
    with pytest.raises(ValueError, match="X.Y.Z"):
        package_bundle.package_bundle(tiny_bundle, tmp_path, models="no")
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        package_bundle.package_bundle(tmp_path, tmp_path)
    assert not list(tmp_path.glob("*.zip")) and not list(tmp_path.glob(".*.zip.*"))  # nothing half-written


# ---------------------------------------------------------------------------------------------------------------
# every bundle in bundles/: release zip -> monai.bundle download over HTTP -> fine-tune one epoch
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_params())
def test_download_and_finetune(bundle: Path, tmp_path: Path):
    release = copy_bundle(bundle, tmp_path / "release")
    weights = write_initial_weights(release)
    serve = tmp_path / "serve"
    packaged = subprocess.run([sys.executable, str(CI_DIR / "package_bundle.py"), str(release), "--output-dir",
                               str(serve), "--models", "yes"], capture_output=True, text=True, env=subprocess_env(),
                              timeout=300)
    assert packaged.returncode == 0, packaged.stderr
    zip_path = Path(packaged.stdout.strip())
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert zip_path.name == f"{bundle.name}_v{version}.zip"

    downloads = tmp_path / "downloads"
    with serve_directory(serve) as base_url:
        download = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "download", "--name", bundle.name, "--url",
             f"{base_url}/{zip_path.name}", "--bundle_dir", str(downloads)],
            capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert download.returncode == 0, download.stdout[-3000:] + download.stderr[-3000:]
    downloaded = downloads / bundle.name
    assert (downloaded / "configs" / "metadata.json").is_file()
    assert _sha256(downloaded / "models" / "model.pt") == _sha256(weights)

    # monai.bundle.load builds the network from the downloaded bundle's configs, with the downloaded weights, and
    # needs no dataset for it
    import torch
    from monai.bundle import load

    net_override = reduced_settings(bundle).get("network_def", {})
    expected = torch.load(weights, weights_only=True)
    for workflow_type in ("train", "inference"):
        with pytest.warns(UserWarning):  # MONAI 1.6 warns that bundle configs run code
            net = load(name=bundle.name, bundle_dir=str(downloads), workflow_type=workflow_type, source="github",
                       net_override=net_override, device="cpu")
        assert isinstance(net, torch.nn.Module), f"load(workflow_type={workflow_type!r}) returned {type(net)}"
        assert net.state_dict().keys() == expected.keys()
        assert all(torch.equal(net.state_dict()[k], expected[k]) for k in expected)

    dataset = make_phantoms(bundle, tmp_path / "dataset")
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
    entry = {"path": "models/model.pt", "hash_val": _sha256(weights), "hash_type": "sha256"}
    weights.unlink()
    with serve_directory(served) as base_url:
        for name, expect_ok in (("tampered.pt", False), ("model.pt", True)):
            (release / "large_files.yml").write_text(
                yaml.safe_dump({"large_files": [{**entry, "url": f"{base_url}/{name}"}]}))
            if expect_ok:
                download_large_files(bundle_path=str(release))
                assert _sha256(release / "models" / "model.pt") == entry["hash_val"]
            else:
                with pytest.raises(HashCheckError, match="sha256 hash check of downloaded file failed"):
                    download_large_files(bundle_path=str(release))
                assert not (release / "models" / "model.pt").exists()
