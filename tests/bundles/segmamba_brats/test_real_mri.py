# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
A real T1 MRI through the bundle's inference: the MNI152 2009a template that ships inside nilearn's wheel (read from
the wheel; nilearn and its dependencies are not installed), stored three ways, as scanners and converters do: RAS as
shipped, LPS with 1 x 1 x 3 mm voxels, and sagittal-first (axes S, A, R). Each segmentation must come back on the
exact grid of its input (shape and affine), with labels in {0, 1, 2, 3}; and an interrupted batch (``kill -9``) must
leave no half-written segmentation and resume with the cases it had not finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import stored_as

from shared_networks.data import BRATS_MODALITIES

REPO_ROOT = Path(__file__).resolve().parents[3]
BUNDLE = REPO_ROOT / "bundles" / "segmamba_brats"
# a central block of the brain (ventricles, white and grey matter), 80 x 96 x 80 voxels
CROP = (slice(58, 138), slice(70, 166), slice(50, 130))
REDUCED = ["--network_def#feature_sizes", "[8,16,32,64]", "--network_def#hidden_size", "32",
           "--patch_size", "[64,64,64]", "--sw_batch_size", "1", "--num_workers", "0"]


def _stored(image: nib.Nifti1Image, kind: str) -> nib.Nifti1Image:
    """The same anatomy stored another way (a central crop keeps the CPU time short)."""
    return stored_as(image, kind, CROP)


def _write_case(root: Path, name: str, image: nib.Nifti1Image) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    for modality in BRATS_MODALITIES:  # the T1 stands in for every channel: this test is about geometry
        nib.save(image, str(folder / f"{name}-{modality}.nii.gz"))


def _bundle_copy_with_weights(tmp_path: Path) -> Path:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser["network_def#feature_sizes"] = [8, 16, 32, 64]
    parser["network_def#hidden_size"] = 32
    torch.manual_seed(0)
    models = tmp_path / "models"
    models.mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), models / "model.pt")
    return tmp_path


def _inference(bundle_root: Path, dataset: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLE / "configs" / "inference.yaml"),
            "--bundle_root", str(bundle_root), "--dataset_dir", str(dataset), "--output_dir", str(output),
            *REDUCED, *extra]


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), CUDA_VISIBLE_DEVICES="",
                PYTHONWARNINGS="ignore")


def test_the_network_sees_the_same_volume_whatever_the_storage_orientation(mni152_t1, tmp_path):
    """Inference preprocessing of one anatomy stored as BraTS does (LPS), as RAS and sagittal-first: the same tensor
    (reoriented to LPS first), so the labels cannot depend on how the file was stored."""
    from monai.bundle import ConfigParser

    ras = _stored(mni152_t1, "ras")
    lps = ras.as_reoriented(nib.orientations.ornt_transform(nib.orientations.io_orientation(ras.affine),
                                                            nib.orientations.axcodes2ornt(("L", "P", "S"))))
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    preprocessing = parser.get_parsed_content("preprocessing")
    tensors = {}
    for kind, image in (("lps", lps), ("ras", ras), ("sagittal_first", _stored(mni152_t1, "sagittal_first"))):
        _write_case(tmp_path, kind, image)
        files = [str(tmp_path / kind / f"{kind}-{modality}.nii.gz") for modality in BRATS_MODALITIES]
        tensors[kind] = torch.as_tensor(preprocessing({"image": files})["image"])
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S") and nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    for kind in ("ras", "sagittal_first"):
        assert torch.equal(tensors[kind], tensors["lps"]), kind


@pytest.mark.slow
def test_real_t1_in_three_storage_orientations_keeps_its_geometry(mni152_t1, tmp_path):
    dataset = tmp_path / "cases"
    kinds = ("ras", "lps_1x1x3mm", "sagittal_first")
    for kind in kinds:
        _write_case(dataset, f"MNI152-{kind}", _stored(mni152_t1, kind))
    root = _bundle_copy_with_weights(tmp_path / "bundle")
    output = tmp_path / "segmentations"
    result = subprocess.run(_inference(root, dataset, output), capture_output=True, text=True, timeout=1200,
                            env=_env(), cwd=BUNDLE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for kind in kinds:
        source = nib.load(dataset / f"MNI152-{kind}" / f"MNI152-{kind}-t1n.nii.gz")
        segmentation = nib.load(output / f"MNI152-{kind}" / f"MNI152-{kind}_seg.nii.gz")
        assert segmentation.shape == source.shape, kind
        np.testing.assert_allclose(segmentation.affine, source.affine, atol=1e-4, err_msg=kind)
        assert nib.aff2axcodes(segmentation.affine) == nib.aff2axcodes(source.affine)
        labels = np.asarray(segmentation.dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}, kind


@pytest.mark.slow
def test_killed_batch_leaves_no_partial_output_and_resumes(mni152_t1, tmp_path):
    dataset = tmp_path / "cases"
    names = [f"MNI152-{index}" for index in range(3)]
    for name in names:
        _write_case(dataset, name, _stored(mni152_t1, "ras"))
    root = _bundle_copy_with_weights(tmp_path / "bundle")
    output = tmp_path / "segmentations"
    outputs = [output / name / f"{name}_seg.nii.gz" for name in names]
    process = subprocess.Popen(_inference(root, dataset, output), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=_env(), cwd=BUNDLE, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not outputs[0].is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outputs[0].is_file(), "the first case was never written"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    finished = [path for path in outputs if path.is_file()]
    assert 1 <= len(finished) < len(outputs), "the kill came too late to interrupt the batch"
    for path in finished:  # a file at its final name is complete
        assert nib.load(path).get_fdata().shape == (80, 96, 80)
    mtimes = {path: path.stat().st_mtime_ns for path in finished}

    result = subprocess.run(_inference(root, dataset, output), capture_output=True, text=True, timeout=1200,
                            env=_env(), cwd=BUNDLE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert all(path.is_file() for path in outputs)
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in mtimes.items()), "finished cases were redone"
    assert f"Skipping {len(finished)} of {len(names)} items" in result.stdout + result.stderr
    leftovers = [p.name for p in output.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
