# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``shared_networks.data.adni``: the class-folder, adni1/adni2 and CSV layouts, subject-level stratified splits,
datalist reuse, clear errors for bad input, and synthetic brains whose "AD" class has what the generator promises
(larger ventricles, a thinner cortex) as measured on the written files."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared_networks.data import (
    find_adni_scans,
    generate_adni_phantoms,
    list_adni_volumes,
    make_adni_datalist,
    split_adni_subjects,
)

SHAPE = (24, 28, 24)


def _volume(path: Path, seed: int = 0, shape=SHAPE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).uniform(0.1, 1.0, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1.0])), str(path))
    return path


def test_class_folders_give_labels_and_adni_participant_ids(tmp_path):
    _volume(tmp_path / "NC" / "mwp1ADNI_002_S_0295_MR_MPRAGE_br_raw.nii")
    _volume(tmp_path / "NC" / "mwp1ADNI_002_S_0295_MR_MPRAGE_m12.nii", 1)  # a second visit of the same subject
    _volume(tmp_path / "AD" / "sub-17.nii.gz", 2)
    _volume(tmp_path / "sMCI" / "ignored.nii.gz", 3)  # not a class of NC_v_AD
    (tmp_path / "AD" / "notes.txt").write_text("not a volume")
    scans = find_adni_scans(tmp_path, "NC_v_AD")
    assert [(s["subject"], s["label"], s["diagnosis"]) for s in scans] == [
        ("002_S_0295", 0, "NC"), ("002_S_0295", 0, "NC"), ("sub-17", 1, "AD")]
    assert scans[2]["scan"] == "sub-17" and scans[2]["image"] == str(tmp_path / "AD" / "sub-17.nii.gz")
    assert [s["diagnosis"] for s in find_adni_scans(tmp_path, "sMCI_v_pMCI")] == ["sMCI"]


def test_split_is_over_subjects_and_stratified():
    scans = [{"subject": f"s{i}", "scan": f"s{i}_v{v}", "label": int(i < 10)} for i in range(30) for v in range(2)]
    training, validation, testing = split_adni_subjects(scans, seed=42, fractions=(0.7, 0.1, 0.2))
    subjects = [{s["subject"] for s in group} for group in (training, validation, testing)]
    assert not (subjects[0] & subjects[1]) and not (subjects[0] & subjects[2]) and not (subjects[1] & subjects[2])
    assert sum(len(s) for s in subjects) == 30 and len(training) + len(validation) + len(testing) == 60
    # both visits of a subject stay together, and each class is split 70/10/20 on its own (10 AD, 20 NC)
    assert all(len(group) % 2 == 0 for group in (training, validation, testing))
    ad = [sorted({s["subject"] for s in g if s["label"] == 1}) for g in (training, validation, testing)]
    nc = [sorted({s["subject"] for s in g if s["label"] == 0}) for g in (training, validation, testing)]
    assert [len(a) for a in ad] == [7, 1, 2] and [len(n) for n in nc] == [14, 2, 4]
    again = split_adni_subjects(list(reversed(scans)), seed=42, fractions=(0.7, 0.1, 0.2))
    assert [{s["scan"] for s in g} for g in again] == [{s["scan"] for s in g} for g in (training, validation, testing)]


def test_release_cohorts_train_on_adni1_test_on_adni2_and_validate_on_adni1_subjects(tmp_path):
    for i in range(10):
        _volume(tmp_path / "adni1" / ("AD" if i % 2 else "NC") / f"ADNI_011_S_{i:04d}.nii.gz", i)
    for i in range(4):
        _volume(tmp_path / "adni2" / ("AD" if i % 2 else "NC") / f"ADNI_022_S_{i:04d}.nii.gz", 20 + i)
    datalist = make_adni_datalist(tmp_path, tmp_path / "datalist.json", fractions=(0.6, 0.2, 0.2))
    assert all(e["subject"].startswith("022_") for e in datalist["testing"]) and len(datalist["testing"]) == 4
    assert all(e["subject"].startswith("011_") for k in ("training", "validation") for e in datalist[k])
    assert len(datalist["training"]) + len(datalist["validation"]) == 10
    assert {e["label"] for e in datalist["validation"]} == {0, 1}


def test_csv_layout_with_and_without_image_column(tmp_path):
    _volume(tmp_path / "002_S_0001.nii.gz")
    _volume(tmp_path / "002_S_0002" / "t1.nii", 1)
    _volume(tmp_path / "scans" / "a.nii.gz", 2)
    csv_path = tmp_path / "subjects.csv"
    csv_path.write_text("subject,label,image\n002_S_0001,NC,\n002_S_0002,AD,\n002_S_0003,MCI,\n"
                        "002_S_0004,AD,scans/a.nii.gz\n")
    scans = find_adni_scans(tmp_path, csv_path=csv_path, skip_labels=["MCI"])
    assert {s["subject"]: (s["label"], Path(s["image"]).name) for s in scans} == {
        "002_S_0001": (0, "002_S_0001.nii.gz"), "002_S_0002": (1, "t1.nii"), "002_S_0004": (1, "a.nii.gz")}


def test_csv_without_testing_rows_warns(tmp_path, caplog):
    rows = []
    for i, split in enumerate(["train", "train", "train", "train", "val", "val"]):
        _volume(tmp_path / f"s{i}.nii.gz", i)
        rows.append(f"s{i},{'AD' if i % 2 else 'NC'},{split}")
    (tmp_path / "subjects.csv").write_text("subject,label,split\n" + "\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        datalist = make_adni_datalist(tmp_path, tmp_path / "datalist.json", csv_path=tmp_path / "subjects.csv")
    assert datalist["testing"] == [] and "the testing split is empty" in caplog.text


def test_csv_split_column_is_used_as_given(tmp_path):
    rows = []
    for i, split in enumerate(["train", "train", "train", "train", "val", "val", "test", "test"]):
        _volume(tmp_path / f"s{i}.nii.gz", i)
        rows.append(f"s{i},{'AD' if i % 2 else 'NC'},{split}")
    (tmp_path / "subjects.csv").write_text("subject,label,split\n" + "\n".join(rows) + "\n")
    datalist = make_adni_datalist(tmp_path, tmp_path / "datalist.json", csv_path=tmp_path / "subjects.csv")
    assert [[e["subject"] for e in datalist[k]] for k in ("training", "validation", "testing")] == [
        ["s0", "s2", "s1", "s3"], ["s4", "s5"], ["s6", "s7"]]


@pytest.mark.parametrize("row, error, match", [
    ("002_S_0009,AD,", FileNotFoundError, r"line 3, subject '002_S_0009': no volume found; looked for"),
    ("002_S_0001,Dementia,", ValueError, r"line 3, subject '002_S_0001': label 'Dementia' is not a class of the "
                                          r"task \['NC', 'AD'\]"),
    ("002_S_0001,AD,missing.nii.gz", FileNotFoundError, r"subject '002_S_0001': its volume '.*missing.nii.gz' does "
                                                         r"not exist"),
])
def test_bad_csv_rows_name_the_subject_and_line(tmp_path, row, error, match):
    _volume(tmp_path / "002_S_0001.nii.gz")
    (tmp_path / "subjects.csv").write_text(f"subject,label,image\n002_S_0001,NC,\n{row}\n")
    with pytest.raises(error, match=match):
        find_adni_scans(tmp_path, csv_path=tmp_path / "subjects.csv")


def test_volume_of_the_wrong_dimensionality_names_subject_and_file(tmp_path):
    for i in range(8):
        _volume(tmp_path / ("AD" if i % 2 else "NC") / f"ADNI_003_S_{i:04d}.nii.gz", i)
    bad = tmp_path / "AD" / "ADNI_003_S_0003.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((*SHAPE, 2), np.float32), np.eye(4)), str(bad))  # 4D
    with pytest.raises(ValueError, match=r"ADNI subject '003_S_0003'.*ADNI_003_S_0003.nii.gz.*3D"):
        make_adni_datalist(tmp_path, tmp_path / "datalist.json", fractions=(0.5, 0.25, 0.25))
    assert not (tmp_path / "datalist.json").exists()


def test_a_split_without_both_classes_is_refused(tmp_path):
    for i in range(6):
        _volume(tmp_path / "NC" / f"n{i}.nii.gz", i)
    _volume(tmp_path / "AD" / "a0.nii.gz", 9)
    with pytest.raises(ValueError, match="the training split has no AD scan"):
        make_adni_datalist(tmp_path, tmp_path / "datalist.json")


def test_reused_datalist_is_checked_again(tmp_path):
    generate_adni_phantoms(tmp_path / "data", num_cases=8, shape=SHAPE, spacing=6.0)
    path = tmp_path / "datalist.json"
    first = make_adni_datalist(tmp_path / "data", path, fractions=(0.5, 0.25, 0.25))
    edited = json.loads(path.read_text())
    edited["testing"] = edited["testing"][:1]
    path.write_text(json.dumps(edited))
    assert make_adni_datalist(tmp_path / "data", path) == edited != first
    Path(edited["training"][0]["image"]).unlink()
    with pytest.raises(FileNotFoundError, match=f"ADNI subject '{edited['training'][0]['subject']}'"):
        make_adni_datalist(tmp_path / "data", path)


def test_list_adni_volumes_finds_and_checks_new_volumes(tmp_path):
    _volume(tmp_path / "site1" / "ADNI_005_S_0001.nii.gz")
    _volume(tmp_path / "b.nii", 1)
    (tmp_path / "readme.txt").write_text("x")
    entries = list_adni_volumes(tmp_path)
    assert [(e["subject"], e["scan"]) for e in entries] == [("b", "b"), ("005_S_0001", "ADNI_005_S_0001")]
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)), str(tmp_path / "b.nii"))
    with pytest.raises(ValueError, match=r"ADNI volume 'b'.*b.nii"):
        list_adni_volumes(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .nii"):
        list_adni_volumes(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="neither a NIfTI file nor a folder"):
        list_adni_volumes(tmp_path / "absent")


def _ventricle_and_cortex(path: str) -> tuple[float, float]:
    """Dark (CSF-like) voxels in the central block, and grey-matter-like voxels over the brain, as fractions."""
    data = np.asarray(nib.load(path).dataobj)
    brain = data > 0
    x, y, z = (n // 4 for n in data.shape)
    centre = data[x:-x, y:-y, z:-z]
    dark = ((centre > 0) & (centre < 0.45)).mean()
    grey = ((data > 0.45) & (data < 0.8)).sum() / brain.sum()
    return float(dark), float(grey)


def test_phantom_ad_brains_have_larger_ventricles_and_less_cortex(tmp_path):
    paths = generate_adni_phantoms(tmp_path, num_cases=24, seed=3)
    assert len(paths) == 24 and len(list((tmp_path / "NC").iterdir())) == len(list((tmp_path / "AD").iterdir()))
    image = nib.load(paths[0])
    assert image.shape == (40, 48, 40) and nib.aff2axcodes(image.affine) == ("L", "A", "S")
    np.testing.assert_allclose(image.header.get_zooms(), (4.0, 4.0, 4.0))
    stats = {c: np.array([_ventricle_and_cortex(p) for p in paths if f"/{c}/" in p]) for c in ("NC", "AD")}
    assert np.median(stats["AD"][:, 0]) > 1.8 * np.median(stats["NC"][:, 0])
    assert np.median(stats["AD"][:, 1]) < np.median(stats["NC"][:, 1])
    # byte-identical for the same seed
    again = generate_adni_phantoms(tmp_path / "again", num_cases=2, seed=3)
    first = {Path(p).name: Path(p).read_bytes() for p in paths}
    assert all(Path(p).read_bytes() == first[Path(p).name] for p in again)


def test_phantom_csv_layout_reads_back(tmp_path):
    generate_adni_phantoms(tmp_path, num_cases=6, shape=SHAPE, spacing=6.0, task="sMCI_v_pMCI", layout="csv")
    scans = find_adni_scans(tmp_path, "sMCI_v_pMCI", csv_path=tmp_path / "subjects.csv")
    assert sorted(s["diagnosis"] for s in scans) == ["pMCI"] * 3 + ["sMCI"] * 3
