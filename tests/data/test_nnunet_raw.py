# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Raw nnU-Net v2 datasets (``shared_networks.data.nnunet_raw``): dataset.json as U-Mamba's FLARE22 dataset has it,
case discovery, the split, the synthetic CT phantoms, and clear errors for a missing or inconsistent dataset.json, a
label value not in it, mismatched image / label geometry and misnamed or missing files."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared_networks.data.nnunet_raw import (
    ABDOMEN_ORGAN_LABELS,
    find_nnunet_cases,
    generate_abdomen_ct_phantoms,
    list_nnunet_images,
    make_nnunet_datalist,
    read_nnunet_dataset,
)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nnunet") / "Dataset901_AbdomenPhantom"
    generate_abdomen_ct_phantoms(root, num_cases=6, num_test_cases=2, shape=(32, 32, 16), seed=3)
    return root


@pytest.fixture
def dataset(phantoms: Path, tmp_path: Path) -> Path:
    """A copy of the phantoms that a test may break."""
    return Path(shutil.copytree(phantoms, tmp_path / phantoms.name))


def _edit_dataset_json(root: Path, **changes) -> None:
    content = json.loads((root / "dataset.json").read_text())
    content.update(changes)
    (root / "dataset.json").write_text(json.dumps(content))


def test_dataset_json_of_the_flare22_release_is_read(tmp_path):
    # the keys and label names of U-Mamba's data/nnUNet_raw/Dataset701_AbdomenCT/dataset.json
    names = {k: v for k, v in ABDOMEN_ORGAN_LABELS.items()}
    (tmp_path / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": names, "numTraining": 50, "file_ending": ".nii.gz",
        "name": "AbdomenCT", "overwrite_image_reader_writer": "NibabelIOWithReorient"}))
    dataset = read_nnunet_dataset(tmp_path)
    assert dataset.channel_names == ("CT",) and dataset.num_training == 50 and dataset.file_ending == ".nii.gz"
    assert dataset.label_names[0] == "background" and dataset.label_names[-1] == "left kidney"
    assert len(dataset.label_names) == 14


def test_phantoms_are_a_consistent_dataset_with_organ_intensities(phantoms):
    cases = find_nnunet_cases(phantoms)
    assert [c["case"] for c in cases] == [f"phantom_{i:03d}" for i in range(6)]
    assert all(len(c["image"]) == 1 and c["image"][0].endswith("_0000.nii.gz") for c in cases)
    test_cases = find_nnunet_cases(phantoms, "Ts")
    assert [c["case"] for c in test_cases] == ["phantom_006", "phantom_007"] and "label" in test_cases[0]
    image, label = nib.load(cases[0]["image"][0]), nib.load(cases[0]["label"])
    np.testing.assert_allclose(image.affine, np.diag([-1.5, -1.5, 3.0, 1.0]))
    voxels, labels = np.asarray(image.dataobj), np.asarray(label.dataobj)
    assert voxels.dtype == np.int16 and set(np.unique(labels)) == set(range(14))  # all 13 organs drawn
    assert json.loads((phantoms / "dataset.json").read_text())["labels"] == ABDOMEN_ORGAN_LABELS
    assert voxels[labels == 5].mean() > voxels[labels == 1].mean() + 100  # contrast-filled aorta vs liver
    assert voxels[labels == 0].min() < -900  # air


def test_datalist_split_reuse_and_testing_from_imagests(phantoms, tmp_path):
    path = tmp_path / "datalist.json"
    datalist = make_nnunet_datalist(phantoms, path, validation_fraction=0.34, seed=1)
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] == [4, 2, 2]
    names = {e["case"] for k in ("training", "validation") for e in datalist[k]}
    assert names == {f"phantom_{i:03d}" for i in range(6)}
    assert json.loads(path.read_text()) == datalist
    assert make_nnunet_datalist(phantoms, path, validation_fraction=0.5) == datalist  # reused unchanged
    # the documented rule: sorted names shuffled by random.Random(seed), validation = the first round(f * N)
    shuffled = sorted(names)
    random.Random(1).shuffle(shuffled)
    assert [e["case"] for e in datalist["validation"]] == sorted(shuffled[:2])


def test_missing_or_malformed_dataset_json(dataset):
    (dataset / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        read_nnunet_dataset(dataset)
    (dataset / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {}}))
    with pytest.raises(ValueError, match="nnUNetv2_convert_old_nnUNet_dataset"):
        read_nnunet_dataset(dataset)
    base = {"channel_names": {"0": "CT"}, "numTraining": 6, "file_ending": ".nii.gz"}
    for labels, message in (({"background": 0, "liver": 2}, "consecutive"),
                            ({"background": 0, "liver": [1, 2]}, "region-based"),
                            ({"liver": 0, "spleen": 1}, "background")):
        (dataset / "dataset.json").write_text(json.dumps({**base, "labels": labels}))
        with pytest.raises(ValueError, match=message):
            read_nnunet_dataset(dataset)
    (dataset / "dataset.json").write_text(json.dumps({**base, "labels": {"background": 0}, "file_ending": ".png"}))
    with pytest.raises(ValueError, match="file_ending"):
        read_nnunet_dataset(dataset)


def test_dataset_json_inconsistent_with_the_files(dataset):
    _edit_dataset_json(dataset, numTraining=7)
    with pytest.raises(ValueError, match="numTraining 7.*6 cases"):
        find_nnunet_cases(dataset)
    _edit_dataset_json(dataset, numTraining=6, channel_names={"0": "CT", "1": "PET"})
    with pytest.raises(ValueError, match=r"case 'phantom_000'.*phantom_000_0001.nii.gz"):
        find_nnunet_cases(dataset)


def test_missing_label_orphan_label_and_misnamed_image(dataset):
    (dataset / "labelsTr" / "phantom_002.nii.gz").rename(dataset / "phantom_002.nii.gz")
    with pytest.raises(FileNotFoundError, match="case 'phantom_002' has no label file"):
        find_nnunet_cases(dataset)
    (dataset / "phantom_002.nii.gz").rename(dataset / "labelsTr" / "phantom_099.nii.gz")
    with pytest.raises(ValueError, match="phantom_099.nii.gz' has no images"):
        find_nnunet_cases(dataset)
    (dataset / "labelsTr" / "phantom_099.nii.gz").rename(dataset / "labelsTr" / "phantom_002.nii.gz")
    (dataset / "imagesTr" / "phantom_003_0000.nii.gz").rename(dataset / "imagesTr" / "phantom_003.nii.gz")
    with pytest.raises(ValueError, match="phantom_003.nii.gz' is not named <case>_<XXXX>"):
        find_nnunet_cases(dataset)


def test_label_value_not_in_dataset_json_names_the_case(dataset, tmp_path):
    path = dataset / "labelsTr" / "phantom_004.nii.gz"
    label = nib.load(path)
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 17
    nib.save(nib.Nifti1Image(values, label.affine), str(path))
    with pytest.raises(ValueError, match=r"nnU-Net case 'phantom_004'.*phantom_004.nii.gz' holds values \[17\]"):
        make_nnunet_datalist(dataset, tmp_path / "datalist.json", num_workers=0)
    assert not (tmp_path / "datalist.json").exists()


def test_mismatched_image_and_label_geometry_names_the_case(dataset, tmp_path):
    path = dataset / "labelsTr" / "phantom_001.nii.gz"
    label = nib.load(path)
    shifted = label.affine.copy()
    shifted[0, 3] += 4.0
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), shifted), str(path))
    with pytest.raises(ValueError, match="nnU-Net case 'phantom_001'.*different affines"):
        make_nnunet_datalist(dataset, tmp_path / "datalist.json", num_workers=0)
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:, :, :-1], label.affine), str(path))
    with pytest.raises(ValueError, match="nnU-Net case 'phantom_001'.*shape"):
        make_nnunet_datalist(dataset, tmp_path / "datalist.json", num_workers=0)


def test_inference_inputs_numbered_or_plain(dataset, tmp_path):
    entries = list_nnunet_images(dataset / "imagesTs")
    assert [e["case"] for e in entries] == ["phantom_006", "phantom_007"]
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copyfile(dataset / "imagesTs" / "phantom_006_0000.nii.gz", plain / "patient.nii.gz")
    assert [e["case"] for e in list_nnunet_images(plain)] == ["patient"]
    shutil.copyfile(dataset / "imagesTs" / "phantom_006_0000.nii.gz", plain / "patient_0000.nii.gz")
    with pytest.raises(ValueError, match="both as one file and as channel files"):
        list_nnunet_images(plain)
    with pytest.raises(ValueError, match="one file per channel"):
        list_nnunet_images(plain, num_channels=2)
