# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""BraTS 2023 data layer: discovery, validation errors, reproducible datalist, phantoms and region conversion."""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import shutil
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from shared_networks.data import (
    BRATS_LABELS,
    BRATS_MODALITIES,
    ConvertToBratsRegions,
    ConvertToBratsRegionsd,
    brats,
    find_brats_cases,
    generate_brats_phantoms,
    make_brats_datalist,
    split_case_names,
    validate_brats_cases,
)
from shared_networks.data.brats import phantom_affine
from shared_networks.data.validation import validation_sidecar_path

SHAPE = (32, 32, 32)
SPLITS = ("training", "validation", "testing")


@pytest.fixture(scope="module")
def phantom_source(tmp_path_factory) -> Path:
    """Four small phantom cases, generated once; tests copy them before damaging anything."""
    root = tmp_path_factory.mktemp("brats_source")
    generate_brats_phantoms(root, num_cases=4, shape=SHAPE, seed=3)
    return root


@pytest.fixture
def dataset(phantom_source, tmp_path) -> Path:
    root = tmp_path / "brats"
    shutil.copytree(phantom_source, root)
    return root


def case_file(root: Path, case: str, suffix: str) -> Path:
    return root / case / f"{case}-{suffix}.nii.gz"


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Replace a phantom file, on the phantoms' grid unless ``affine`` is given."""
    nib.save(nib.Nifti1Image(array, phantom_affine(SHAPE) if affine is None else affine), str(path))


def read(path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


# ---------------------------------------------------------------- discovery


def test_find_cases_order_and_layout(dataset):
    (dataset / "notes").mkdir()  # a folder without BraTS files is not a case
    (dataset / "notes" / "readme.txt").write_text("not a case")
    (dataset / "dataset.json").write_text("{}")  # a loose file is ignored
    case0 = "BraTS-PHANTOM-00000-000"
    (dataset / case0 / f"{case0}-t1c_extra.nii.gz").write_bytes(b"unknown extra file is fine")

    cases = find_brats_cases(dataset)
    names = [c["case"] for c in cases]
    assert names == [f"BraTS-PHANTOM-0000{i}-000" for i in range(4)]
    for case in cases:
        name = case["case"]
        assert case["image"] == [str(case_file(dataset, name, m)) for m in ("t2w", "t2f", "t1n", "t1c")]
        assert case["label"] == str(case_file(dataset, name, "seg"))
        assert all(os.path.isabs(p) for p in case["image"])
    validate_brats_cases(cases)


def test_find_cases_without_labels(dataset):
    case = "BraTS-PHANTOM-00002-000"
    os.remove(case_file(dataset, case, "seg"))
    with pytest.raises(FileNotFoundError, match=rf"'{case}'.*{case}-seg\.nii\.gz"):
        find_brats_cases(dataset)
    cases = {c["case"]: c for c in find_brats_cases(dataset, require_label=False)}
    assert "label" not in cases[case]
    assert "label" in cases["BraTS-PHANTOM-00001-000"]
    validate_brats_cases(list(cases.values()), check_labels=False)
    with pytest.raises(ValueError, match=rf"'{case}'.*label"):
        validate_brats_cases(list(cases.values()), check_labels=True)


# ---------------------------------------------------------------- bad input


def test_dataset_dir_errors(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        find_brats_cases(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        find_brats_cases(empty)
    wrong = tmp_path / "wrong_layout"
    (wrong / "case_a").mkdir(parents=True)
    (wrong / "case_a" / "t1n.nii.gz").write_bytes(b"renamed like the release's 1_rename_mri_data.py")
    with pytest.raises(ValueError, match="no case folder matching the layout"):
        find_brats_cases(wrong)
    with pytest.raises(ValueError, match="empty"):
        validate_brats_cases([])


def test_case_folder_passed_as_dataset_dir(dataset):
    with pytest.raises(ValueError, match="single case folder"):
        find_brats_cases(dataset / "BraTS-PHANTOM-00001-000")


def test_missing_modality(dataset):
    case = "BraTS-PHANTOM-00001-000"
    cases = find_brats_cases(dataset)
    os.remove(case_file(dataset, case, "t1c"))
    with pytest.raises(FileNotFoundError, match=rf"'{case}'.*{case}-t1c\.nii\.gz"):
        find_brats_cases(dataset)
    with pytest.raises(FileNotFoundError, match=rf"'{case}'.*{case}-t1c\.nii\.gz"):
        validate_brats_cases(cases)


def _damage(root: Path, case: str, suffix: str, how: str) -> None:
    path = case_file(root, case, suffix)
    if how == "shape":
        save_nifti(path, read(path)[:, :, 1:-1].copy())
    elif how == "label4":
        labels = read(path).copy()
        labels[labels == 3] = 4  # the BraTS 2018-2022 ET code
        save_nifti(path, labels)
    elif how == "fractional":
        labels = read(path).astype(np.float32)
        labels[labels == 2] = 2.5
        save_nifti(path, labels)
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncated_header":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "garbage":
        path.write_bytes(b"this is not a NIfTI file" * 20)
    elif how == "truncated_uncompressed":
        # a valid gzip stream of too few bytes: header fine, data short
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw[: len(raw) - 1000]))
    elif how in ("nan", "inf"):
        volume = read(path).astype(np.float32)
        volume[5, 6, 7] = np.nan if how == "nan" else np.inf
        volume[8, 9, 10] = -np.inf if how == "inf" else volume[8, 9, 10]
        save_nifti(path, volume)
    elif how in ("constant", "zeros"):
        save_nifti(path, np.full(SHAPE, 7 if how == "constant" else 0, dtype=np.int16))
    elif how == "rgb24":
        rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        rgb["R"] = read(path) % 256
        save_nifti(path, rgb)
    elif how == "vector5d":
        vector = np.stack([read(path)] * 3, axis=-1)[:, :, :, None, :]  # (x, y, z, 1, 3)
        image = nib.Nifti1Image(vector, phantom_affine(SHAPE))
        image.header.set_intent("vector")
        nib.save(image, str(path))
    elif how == "4d":
        save_nifti(path, np.stack([read(path)] * 2, axis=-1))
    elif how == "flipped_bytes":
        _flip_middle_bytes(path, compresslevel=6)


def _flip_middle_bytes(path: Path, compresslevel: int) -> bytes:
    """Re-compress ``path`` at ``compresslevel`` and flip 4 bytes in the middle of the deflate stream, keeping its
    length and its gzip trailer (CRC-32 and size) unchanged. Returns the original decompressed bytes."""
    raw = gzip.decompress(path.read_bytes())
    data = bytearray(gzip.compress(raw, compresslevel=compresslevel, mtime=0))
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))
    return raw


@pytest.mark.parametrize(
    "suffix, how, message",
    [
        ("t2f", "shape", r"shape \(32, 32, 30\)"),
        ("seg", "shape", r"shape \(32, 32, 30\)"),
        ("seg", "label4", r"values \[4\].*map it to 3"),
        ("seg", "fractional", r"values \[2\.5\]"),
        ("t1n", "truncated", "corrupt or truncated"),
        ("seg", "truncated", "corrupt or truncated"),
        ("t2w", "truncated_header", "not a readable NIfTI"),
        ("t1c", "garbage", "not a readable NIfTI"),
        ("t2f", "truncated_uncompressed", "truncated: it holds"),
        ("t1c", "nan", r"holds 1 NaN voxel\(s\) out of 32768 \(the first at voxel \(5, 6, 7\)\)"),
        ("t2w", "inf", r"holds 2 infinite voxel\(s\) \(1 \+Inf, 1 -Inf\)"),
        ("seg", "nan", r"holds 1 NaN voxel"),  # labels must be finite integers
        ("t2f", "constant", "is constant: all 32768 voxels equal 7"),
        ("t1n", "zeros", "is all zeros"),
        ("t1c", "rgb24", r"colour/vector image \(datatype RGB, 3 components per voxel\)"),
        ("t2w", "vector5d", r"shape \(32, 32, 32, 1, 3\): a colour/vector image \(3 components"),
        ("t2f", "4d", r"shape \(32, 32, 32, 2\) \(4D\).*one file per volume"),
        ("t1n", "flipped_bytes", "corrupt"),
    ],
)
def test_bad_case_is_named(dataset, suffix, how, message):
    case = "BraTS-PHANTOM-00003-000"
    _damage(dataset, case, suffix, how)
    cases = find_brats_cases(dataset)
    with pytest.raises(ValueError, match=message) as error:
        validate_brats_cases(cases)
    assert f"'{case}'" in str(error.value)
    assert f"{case}-{suffix}.nii.gz" in str(error.value)
    # the datalist is not written when validation fails
    datalist_path = dataset.parent / "datalist.json"
    with pytest.raises(ValueError, match=case):
        make_brats_datalist(dataset, datalist_path)
    assert not datalist_path.exists()


def test_every_file_is_read_once(dataset, monkeypatch):
    """Each file is opened once: decompression, header and voxels come from one read (no nibabel re-read)."""
    from shared_networks.data import validation

    opened = []

    def counting_open(path, *args, **kwargs):
        opened.append(os.fspath(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(validation, "open", counting_open, raising=False)
    monkeypatch.setattr(nib, "load", lambda *a, **k: pytest.fail("nibabel.load re-read a file"))
    cases = find_brats_cases(dataset)
    validate_brats_cases(cases, num_workers=1)
    expected = sorted(p for c in cases for p in [*c["image"], c["label"]])
    assert sorted(opened) == expected


def test_flipped_bytes_are_caught_by_the_gzip_crc(dataset):
    """Flipped bytes in a stored (level 0) deflate block keep the deflate stream valid and the file length and trailer
    unchanged: only the CRC-32 tells, and nibabel alone reads the wrong voxels without a word."""
    case = "BraTS-PHANTOM-00002-000"
    path = case_file(dataset, case, "t1c")
    original = read(path)
    raw = _flip_middle_bytes(path, compresslevel=0)
    damaged = path.read_bytes()
    inflated = zlib.decompressobj(wbits=-zlib.MAX_WBITS).decompress(damaged[10:])  # raw deflate: no CRC check
    assert len(inflated) == len(raw) and inflated != raw
    assert int.from_bytes(damaged[-4:], "little") == len(raw)  # the stored size still matches
    assert (read(path) != original).any()  # read silently with wrong voxels
    with pytest.raises(ValueError, match="gzip stream fails the integrity check") as error:
        validate_brats_cases(find_brats_cases(dataset))
    assert f"'{case}'" in str(error.value) and str(path) in str(error.value)


def test_mismatched_affines_are_an_error(dataset):
    case = "BraTS-PHANTOM-00001-000"
    t2w, t1c = case_file(dataset, case, "t2w"), case_file(dataset, case, "t1c")
    shifted = phantom_affine(SHAPE)
    shifted[0, 3] += 2.0  # 2 mm off
    save_nifti(t1c, read(t1c), affine=shifted)
    with pytest.raises(ValueError, match=r"different affines: the largest difference is 2 ") as error:
        validate_brats_cases(find_brats_cases(dataset), check_labels=False)
    message = str(error.value)
    assert f"'{case}'" in message and str(t1c) in message and str(t2w) in message
    assert "resample them onto one grid" in message

    # float32 round-off in the header (1e-6 mm) is the same grid, as for MONAI's LoadImage
    nudged = phantom_affine(SHAPE)
    nudged[2, 3] += 1e-6
    save_nifti(t1c, read(t1c), affine=nudged)
    validate_brats_cases(find_brats_cases(dataset))


def test_progress_is_logged(dataset, monkeypatch, caplog):
    monkeypatch.setattr(brats, "_LOG_EVERY_CASES", 1)
    with caplog.at_level(logging.INFO, logger="shared_networks.data"):
        validate_brats_cases(find_brats_cases(dataset), num_workers=2)
    messages = [record.getMessage() for record in caplog.records]
    assert "Validating 4 BraTS cases (20 files)." in messages
    assert [m.split(" (")[0] for m in messages if m.startswith("Checked")] == [
        "Checked 1/4 BraTS cases",
        "Checked 2/4 BraTS cases",
        "Checked 3/4 BraTS cases",
    ]
    assert messages[-1] == "Validated 4 BraTS cases."


def test_multi_member_gzip_is_valid(dataset):
    """A legal gzip of several members has a trailer that does not hold the total size: it must still pass."""
    path = case_file(dataset, "BraTS-PHANTOM-00000-000", "t2w")
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    validate_brats_cases(find_brats_cases(dataset))


# ---------------------------------------------------------------- split and datalist


def test_split_sizes_match_release():
    names = [f"BraTS-GLI-{i:05d}-000" for i in range(1251)]
    training, validation, testing = split_case_names(names)
    # release: int(0.7 * 1251) = 875, int(0.1 * 1251) = 125; the remaining 251 are ours for testing
    assert (len(training), len(validation), len(testing)) == (875, 125, 251)
    assert sorted(training + validation + testing) == names
    assert (len(split_case_names(names[:10])[0]), len(split_case_names(names[:10])[1])) == (7, 1)
    # small N: the validation split is not left empty (6 cases -> 4/0/2 becomes 3/1/2)
    assert [len(s) for s in split_case_names(names[:6])] == [3, 1, 2]
    assert [len(s) for s in split_case_names(names[:4])] == [2, 1, 1]
    assert [len(s) for s in split_case_names(names[:20], fractions=(0.5, 0.0, 0.5))] == [10, 0, 10]


def test_split_is_reproducible_and_order_independent():
    names = [f"case{i:03d}" for i in range(50)]
    shuffled = list(reversed(names))
    split = split_case_names(names, seed=42)
    assert split == split_case_names(shuffled, seed=42)
    expected = sorted(names)
    random.Random(42).shuffle(expected)
    assert split == (expected[:35], expected[35:40], expected[40:])
    assert split != split_case_names(names, seed=7)


@pytest.mark.parametrize("fractions", [(0.7, 0.1), (0.8, 0.1, 0.2), (1.2, -0.1, -0.1)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_case_names(["a", "b", "c"], fractions=fractions)


def test_split_rejects_repeated_names():
    with pytest.raises(ValueError, match="repeated"):
        split_case_names(["a", "b", "a"])


def test_make_datalist_write_reuse_overwrite(dataset, tmp_path):
    datalist_path = tmp_path / "configs" / "datalist.json"
    datalist = make_brats_datalist(dataset, datalist_path)
    assert set(datalist) == {"training", "validation", "testing"}
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] == [2, 1, 1]
    on_disk = json.loads(datalist_path.read_text())
    assert on_disk == datalist
    # the validation record beside it, and no temp file left behind
    assert sorted(p.name for p in datalist_path.parent.iterdir()) == [".datalist.json.validated.json", "datalist.json"]
    by_name = {c["case"]: c for c in find_brats_cases(dataset)}
    expected = split_case_names(list(by_name), seed=42)
    for key, names in zip(("training", "validation", "testing"), expected):
        assert datalist[key] == [by_name[n] for n in names]
        for entry in datalist[key]:
            assert all(os.path.isabs(p) and os.path.isfile(p) for p in [*entry["image"], entry["label"]])

    # a user edit survives a second call without overwrite
    on_disk["validation"].append(on_disk["training"].pop())
    datalist_path.write_text(json.dumps(on_disk))
    assert make_brats_datalist(dataset, datalist_path) == on_disk
    # overwrite=True rebuilds the same reproducible split
    assert make_brats_datalist(dataset, datalist_path, overwrite=True) == datalist
    other_seed = make_brats_datalist(dataset, tmp_path / "other.json", seed=1)
    assert sorted(c["case"] for v in other_seed.values() for c in v) == sorted(by_name)


def test_make_datalist_rejects_broken_existing_file(dataset, tmp_path):
    datalist_path = tmp_path / "datalist.json"
    datalist_path.write_text('{"training": []')
    with pytest.raises(ValueError, match="not valid JSON"):
        make_brats_datalist(dataset, datalist_path)
    datalist_path.write_text('{"training": []}')
    with pytest.raises(ValueError, match="validation"):
        make_brats_datalist(dataset, datalist_path)


def _age(root: Path, seconds: int = 3600) -> None:
    """Date every file back by ``seconds``, as for a dataset downloaded earlier: a file modified less than 2 s before
    its check is not trusted from its fingerprint, so freshly generated phantoms would be read on every reuse."""
    past = time.time_ns() - seconds * 10**9
    for path in root.rglob("*.nii.gz"):
        os.utime(path, ns=(past, past))


@pytest.fixture
def counted_checks(monkeypatch) -> list[str]:
    """The files ``make_brats_datalist`` / ``validate_brats_cases`` check in full (read and decode)."""
    calls: list[str] = []
    check = brats.check_image_file

    def counting_check(path, *args, **kwargs):
        calls.append(os.fspath(path))
        return check(path, *args, **kwargs)

    monkeypatch.setattr(brats, "check_image_file", counting_check)
    return calls


def test_reused_datalist_with_a_file_truncated_later(dataset, tmp_path):
    _age(dataset)
    datalist_path = tmp_path / "datalist.json"
    datalist = make_brats_datalist(dataset, datalist_path)
    entry = datalist["training"][0]
    path = Path(entry["image"][1])
    path.write_bytes(path.read_bytes()[:-100])  # e.g. an interrupted copy after the datalist was written
    with pytest.raises(ValueError, match="corrupt or truncated: its gzip stream ends early") as error:
        make_brats_datalist(dataset, datalist_path)
    message = str(error.value)
    assert f"BraTS case '{entry['case']}' (split 'training' of datalist '{datalist_path}')" in message
    assert f"file '{path}'" in message


def test_reused_datalist_checks_the_testing_split(dataset, tmp_path):
    _age(dataset)
    datalist_path = tmp_path / "datalist.json"
    datalist = make_brats_datalist(dataset, datalist_path)
    entry = datalist["testing"][0]
    path = Path(entry["image"][3])
    _damage(dataset, entry["case"], "t1c", "nan")
    assert path == case_file(dataset, entry["case"], "t1c")
    with pytest.raises(ValueError, match=r"holds 1 NaN voxel") as error:
        make_brats_datalist(dataset, datalist_path)
    message = str(error.value)
    assert f"BraTS case '{entry['case']}' (split 'testing'" in message and f"file '{path}'" in message

    # a missing file is reported at once, whatever the validation record says
    label = Path(datalist["validation"][0]["label"])
    label.unlink()
    with pytest.raises(FileNotFoundError, match="split 'validation'") as error:
        make_brats_datalist(dataset, datalist_path)
    assert f"BraTS case '{datalist['validation'][0]['case']}'" in str(error.value) and str(label) in str(error.value)


def test_reused_datalist_reads_only_changed_files(dataset, tmp_path, counted_checks):
    _age(dataset)
    datalist_path = tmp_path / "datalist.json"
    sidecar = Path(validation_sidecar_path(datalist_path))
    datalist = make_brats_datalist(dataset, datalist_path)
    all_files = sorted(p for split in SPLITS for e in datalist[split] for p in [*e["image"], e["label"]])
    assert sorted(counted_checks) == all_files and len(all_files) == 20
    assert sidecar == tmp_path / ".datalist.json.validated.json" and sidecar.is_file()

    counted_checks.clear()
    assert make_brats_datalist(dataset, datalist_path) == datalist
    assert counted_checks == []  # nothing changed: no volume read

    # a user edit moves a case between splits: the files are unchanged, so still nothing is read
    edited = json.loads(datalist_path.read_text())
    edited["validation"].append(edited["training"].pop())
    datalist_path.write_text(json.dumps(edited))
    assert make_brats_datalist(dataset, datalist_path) == edited
    assert counted_checks == []

    # one file rewritten with the same size but a new mtime: only that one is read again
    path = edited["testing"][0]["image"][2]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    make_brats_datalist(dataset, datalist_path)
    assert counted_checks == [path]

    # no validation record, or one written under other rules: every file is read
    for damage in ("remove", "stale"):
        counted_checks.clear()
        if damage == "remove":
            sidecar.unlink()
        else:
            sidecar.write_text(sidecar.read_text().replace(brats._VALIDATION_RULES, "brats-2023/0"))
        make_brats_datalist(dataset, datalist_path)
        assert sorted(counted_checks) == all_files


def test_fresh_files_are_read_again_on_reuse(dataset, tmp_path, counted_checks):
    """A file modified within 2 s of its check may change again within one tick of a coarse file-system clock
    without changing its mtime: it is not trusted from its fingerprint."""
    _age(dataset, seconds=0)  # just written
    datalist_path = tmp_path / "datalist.json"
    make_brats_datalist(dataset, datalist_path)
    counted_checks.clear()
    make_brats_datalist(dataset, datalist_path)
    assert len(counted_checks) == 20


# ---------------------------------------------------------------- phantoms


def test_phantoms_are_deterministic(tmp_path):
    first = generate_brats_phantoms(tmp_path / "a", num_cases=2, shape=SHAPE, seed=5)
    second = generate_brats_phantoms(tmp_path / "b", num_cases=2, shape=SHAPE, seed=5)
    other = generate_brats_phantoms(tmp_path / "c", num_cases=1, shape=SHAPE, seed=6)
    assert [Path(p).name for p in first] == ["BraTS-PHANTOM-00000-000", "BraTS-PHANTOM-00001-000"]
    for dir_a, dir_b in zip(first, second):
        files = sorted(os.listdir(dir_a))
        assert len(files) == 5 and files == sorted(os.listdir(dir_b))
        for name in files:
            assert (Path(dir_a) / name).read_bytes() == (Path(dir_b) / name).read_bytes(), name
    case0 = "BraTS-PHANTOM-00000-000-t1c.nii.gz"
    assert (Path(first[0]) / case0).read_bytes() != (Path(other[0]) / case0).read_bytes()
    assert not any(name.startswith(".") for d in first for name in os.listdir(d))  # no temp files


def test_phantom_content(phantom_source):
    cases = find_brats_cases(phantom_source)
    assert len(cases) == 4
    validate_brats_cases(cases)
    expected_affine = np.array([[-1, 0, 0, 15.5], [0, -1, 0, 32.5], [0, 0, 1, -24.5], [0, 0, 0, 1]], dtype=float)
    centres = []
    for case in cases:
        label_image = nib.load(case["label"])
        labels = np.asanyarray(label_image.dataobj)
        assert labels.dtype == np.uint8 and labels.shape == SHAPE
        assert set(np.unique(labels).tolist()) == set(BRATS_LABELS)
        np.testing.assert_allclose(label_image.affine, expected_affine)
        assert label_image.header.get_zooms() == (1.0, 1.0, 1.0)

        images = {m: read(p) for m, p in zip(BRATS_MODALITIES, case["image"])}
        brain = images["t2w"] != 0
        for modality, image in images.items():
            assert image.dtype == np.int16
            np.testing.assert_array_equal(image != 0, brain, err_msg=modality)  # one shared zero background
            np.testing.assert_allclose(nib.load(case["image"][0]).affine, expected_affine)
        assert not brain[0].any() and not brain[-1].any() and not brain[:, :, 0].any()  # crop-to-nonzero has work
        assert 0.1 < brain.mean() < 0.5
        assert np.all(brain[labels > 0])

        # nesting beyond the label definition: ET encloses NCR, SNFH encloses the core, core is away from background
        ncr, et, snfh = labels == 1, labels == 3, labels == 2
        core = ncr | et
        assert not (ndimage.binary_dilation(ncr) & (snfh | (labels == 0))).any()
        assert not (ndimage.binary_dilation(core) & (labels == 0)).any()

        # distinct contrasts per region (healthy = brain without tumour)
        healthy = brain & (labels == 0)
        mean = {
            m: {
                r: float(images[m][mask].mean())
                for r, mask in {"NCR": ncr, "SNFH": snfh, "ET": et, "healthy": healthy}.items()
            }
            for m in BRATS_MODALITIES
        }
        assert mean["t2f"]["SNFH"] > 1.4 * max(mean["t2f"]["healthy"], mean["t2f"]["NCR"])
        assert mean["t1c"]["ET"] > 1.4 * max(mean["t1c"]["healthy"], mean["t1c"]["SNFH"])
        assert mean["t1c"]["ET"] > mean["t1c"]["NCR"]  # the small NCR core is blurred by its ET rim
        assert mean["t1n"]["NCR"] < mean["t1n"]["healthy"]
        assert images["t2w"][brain].std() > 20  # noisy, not piecewise constant
        centres.append(np.argwhere(core).mean(0))
    assert np.ptp(np.array(centres), axis=0).max() > 2  # tumour position varies per case


def test_phantom_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        generate_brats_phantoms(tmp_path, shape=(16, 16, 16))
    with pytest.raises(ValueError, match="shape"):
        generate_brats_phantoms(tmp_path, shape=(32, 32))
    with pytest.raises(ValueError, match="num_cases"):
        generate_brats_phantoms(tmp_path, num_cases=0)
    with pytest.raises(ValueError, match="seed"):
        generate_brats_phantoms(tmp_path, seed=-1)


# ---------------------------------------------------------------- regions


LABEL_MAP = [[[0, 1, 2], [3, 2, 0]]]  # shape (1, 2, 3)
# hand-computed [TC, WT, ET]: TC = {1, 3}, WT = {1, 2, 3}, ET = {3}
EXPECTED_REGIONS = [
    [[0, 1, 0], [1, 0, 0]],
    [[0, 1, 1], [1, 1, 0]],
    [[0, 0, 0], [1, 0, 0]],
]


def test_regions_numpy():
    out = ConvertToBratsRegions()(np.array(LABEL_MAP, dtype=np.int16))
    assert isinstance(out, np.ndarray) and out.dtype == np.int16
    np.testing.assert_array_equal(out, EXPECTED_REGIONS)


def test_regions_torch_and_meta():
    affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    label = MetaTensor(torch.tensor(LABEL_MAP, dtype=torch.float32), affine=affine, meta={"filename_or_obj": "x.nii"})
    out = ConvertToBratsRegions()(label)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32
    torch.testing.assert_close(out.as_tensor(), torch.tensor(EXPECTED_REGIONS, dtype=torch.float32))
    assert out.affine.tolist() == affine.tolist()
    assert out.meta["filename_or_obj"] == "x.nii"

    plain = ConvertToBratsRegions()(torch.tensor(LABEL_MAP))
    assert type(plain) is torch.Tensor and plain.dtype == torch.int64
    assert plain.tolist() == EXPECTED_REGIONS


def test_regions_dict_version():
    data = {"label": np.array(LABEL_MAP, dtype=np.uint8), "image": np.zeros((4, 2, 3))}
    out = ConvertToBratsRegionsd(keys="label")(data)
    np.testing.assert_array_equal(out["label"], EXPECTED_REGIONS)
    assert out["image"] is data["image"]
    with pytest.raises(KeyError):
        ConvertToBratsRegionsd(keys="pred")(data)
    assert ConvertToBratsRegionsd(keys="pred", allow_missing_keys=True)(data)["label"] is data["label"]


def test_regions_on_phantom_are_nested(phantom_source):
    case = find_brats_cases(phantom_source)[0]
    labels = read(case["label"])[None]
    tc, wt, et = ConvertToBratsRegions()(labels).astype(bool)
    assert et.any() and (tc & ~et).any() and (wt & ~tc).any()
    assert not (et & ~tc).any() and not (tc & ~wt).any()
    np.testing.assert_array_equal(wt, labels[0] > 0)


@pytest.mark.parametrize(
    "label, message",
    [
        (np.zeros((2, 2, 3)), "1 channel"),
        (np.zeros(3), "1 channel"),
        (np.array([[[0, 4, 2]]]), r"\[4\]"),
        (torch.tensor([[[0.0, 1.5, 2.0]]]), r"\[1\.5\]"),
    ],
)
def test_regions_bad_input(label, message):
    with pytest.raises(ValueError, match=message):
        ConvertToBratsRegions()(label)
