# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Dataset-agnostic image file checks (shared_networks.data.validation), against nibabel as the reference reader."""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared_networks.data.validation import (
    ValidationCache,
    check_image_file,
    check_same_grid,
    run_checks,
    validation_sidecar_path,
)

SHAPE = (6, 5, 4)
AFFINE = np.array([[-1.0, 0, 0, 2.5], [0, -1.2, 0, 17.0], [0, 0, 2.0, -9.0], [0, 0, 0, 1]])
CONTEXT = "case 'subject-7'"


def volume(dtype=np.int16) -> np.ndarray:
    return (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 23 - 5).astype(dtype)


def write(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE, image_class=nib.Nifti1Image) -> Path:
    nib.save(image_class(array, affine), str(path))
    return path


def reference(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine as nibabel (and MONAI's NibabelReader) read them."""
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image.affine


def aged(path: Path) -> Path:
    past = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(past, past))
    return path


# ---------------------------------------------------------------- valid files match nibabel


@pytest.mark.parametrize(
    "name, array, image_class",
    [
        ("int16.nii.gz", volume(), nib.Nifti1Image),
        ("float32.nii", volume(np.float32) / 3, nib.Nifti1Image),
        ("big_endian.nii.gz", volume(">i2"), nib.Nifti1Image),
        ("nifti2.nii.gz", volume(np.uint8), nib.Nifti2Image),
    ],
)
def test_summary_matches_nibabel(tmp_path, name, array, image_class):
    path = write(tmp_path / name, array, image_class=image_class)
    expected, expected_affine = reference(path)
    summary = check_image_file(path, CONTEXT, keep_data=True)
    assert summary.shape == SHAPE and summary.path == str(path)
    np.testing.assert_array_equal(summary.affine, expected_affine)
    np.testing.assert_array_equal(summary.data, expected)
    assert summary.data.dtype == expected.dtype
    assert (summary.minimum, summary.maximum) == (float(expected.min()), float(expected.max()))
    assert summary.size == path.stat().st_size and summary.mtime_ns == path.stat().st_mtime_ns
    assert check_image_file(path).data is None  # keep_data=False


def test_scaling_is_applied(tmp_path):
    raw = bytearray(nib.Nifti1Image(volume(), AFFINE).to_bytes())
    raw[112:120] = np.array([2.0, 10.0], dtype="<f4").tobytes()  # scl_slope, scl_inter
    path = tmp_path / "scaled.nii.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    expected, _ = reference(path)
    summary = check_image_file(path, keep_data=True)
    np.testing.assert_array_equal(summary.data, expected)
    assert (summary.minimum, summary.maximum) == (2.0 * -5 + 10, 2.0 * 17 + 10) == (expected.min(), expected.max())


def test_multi_member_and_zero_padded_gzip(tmp_path):
    path = write(tmp_path / "a.nii.gz", volume())
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]) + b"\0" * 512)
    np.testing.assert_array_equal(check_image_file(path, keep_data=True).data, volume())


# ---------------------------------------------------------------- corrupt and unsupported files


def _damaged(tmp_path: Path, how: str) -> Path:
    path = write(tmp_path / "image.nii.gz", volume())
    data = path.read_bytes()
    if how == "trailing_garbage":
        path.write_bytes(data + b"garbage")
    elif how == "truncated_stream":
        path.write_bytes(data[: len(data) - 30])
    elif how == "truncated_in_header":
        raw = gzip.decompress(data)
        path.write_bytes(gzip.compress(raw[:200])[:-8])
    elif how == "crc":
        path.write_bytes(data[:-8] + bytes(b ^ 0x55 for b in data[-8:-4]) + data[-4:])
    elif how == "gz_not_compressed":
        path.write_bytes(gzip.decompress(data))
    elif how == "garbage":
        path = tmp_path / "image.nii"
        path.write_bytes(b"\0\1\2\3" * 200)
    elif how == "pair_header":
        raw = bytearray(gzip.decompress(data))
        raw[344:348] = b"ni1\0"
        path.write_bytes(gzip.compress(bytes(raw)))
    elif how == "2d":
        write(path, volume()[:, :, 0])
    elif how == "trailing_singleton":
        write(path, volume()[..., None])
    elif how == "complex":
        write(path, volume(np.complex64))
    elif how == "singular":  # a zero third column in the sform (nibabel refuses to write one)
        raw = bytearray(nib.Nifti1Image(volume(), AFFINE).to_bytes())
        for row in range(3):  # srow_x, srow_y, srow_z at byte 280, 296, 312
            raw[280 + 16 * row + 8 : 280 + 16 * row + 12] = np.float32(0).tobytes()
        path.write_bytes(gzip.compress(bytes(raw)))
    elif how == "uncompressed_short":
        path = tmp_path / "image.nii"
        write(path, volume())
        path.write_bytes(path.read_bytes()[:-7])
    return path


@pytest.mark.parametrize(
    "how, error, message",
    [
        ("trailing_garbage", ValueError, "is corrupt: 7 bytes of trailing data follow its gzip stream"),
        ("truncated_stream", ValueError, r"gzip stream ends early, after \d+ decompressed bytes; its header needs 592"),
        ("truncated_in_header", ValueError, "not a readable NIfTI image: the file is truncated"),
        ("crc", ValueError, "gzip stream fails the integrity check .*incorrect data check"),
        ("gz_not_compressed", ValueError, "named '.gz' but is not gzip-compressed"),
        ("garbage", ValueError, "not a readable NIfTI image: its first 4 bytes"),
        ("pair_header", ValueError, r"magic is b'ni1', the header of a \.hdr/\.img pair"),
        ("2d", ValueError, r"has shape \(6, 5\) \(2D\); expected a 3D scalar volume"),
        ("trailing_singleton", ValueError, "drop the trailing dimensions of size 1"),
        ("complex", ValueError, "complex-valued"),
        ("singular", ValueError, "singular affine"),
        ("uncompressed_short", ValueError, "is truncated: it holds 585 bytes, its header needs 592"),
    ],
)
def test_bad_file_is_named(tmp_path, how, error, message):
    path = _damaged(tmp_path, how)
    with pytest.raises(error, match=message) as raised:
        check_image_file(path, CONTEXT)
    assert str(raised.value).startswith(f"{CONTEXT}: ") and str(path) in str(raised.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{CONTEXT}: file '.*missing.nii.gz' does not exist"):
        check_image_file(tmp_path / "missing.nii.gz", CONTEXT)
    with pytest.raises(ValueError, match="not a regular file"):
        check_image_file(tmp_path, CONTEXT)


def test_uniform_volumes(tmp_path):
    zeros = write(tmp_path / "zeros.nii.gz", np.zeros(SHAPE, np.uint8))
    constant = write(tmp_path / "constant.nii.gz", np.full(SHAPE, -3.5, np.float32))
    with pytest.raises(ValueError, match="is all zeros"):
        check_image_file(zeros)
    with pytest.raises(ValueError, match="is constant: all 120 voxels equal -3.5"):
        check_image_file(constant)
    # allowed for label maps, which may be all background
    assert check_image_file(zeros, allow_uniform=True).maximum == 0.0
    assert check_image_file(constant, allow_uniform=True).minimum == -3.5


def test_non_finite_values_are_counted(tmp_path):
    array = volume(np.float32)
    array[0, 0, 0] = array[1, 2, 3] = np.nan
    array[5, 4, 3] = -np.inf
    path = write(tmp_path / "nan.nii.gz", array)
    with pytest.raises(ValueError, match=r"holds 2 NaN voxel\(s\) and 1 infinite voxel\(s\) \(0 \+Inf, 1 -Inf\) out "
                                         r"of 120 \(the first at voxel \(0, 0, 0\)\)"):
        check_image_file(path, CONTEXT, allow_uniform=True)


# ---------------------------------------------------------------- one grid per case


def _summary(tmp_path: Path, name: str, affine: np.ndarray = AFFINE, shape=SHAPE):
    return check_image_file(write(tmp_path / name, volume()[: shape[0], : shape[1], : shape[2]], affine=affine))


def test_same_grid(tmp_path):
    first = _summary(tmp_path, "a.nii.gz")
    check_same_grid([first])
    check_same_grid([])
    # float32 round-off of the stored affine is the same grid
    close = AFFINE.copy()
    close[1, 3] += 1e-5
    check_same_grid([first, _summary(tmp_path, "b.nii.gz", affine=close)])

    smaller = _summary(tmp_path, "c.nii.gz", shape=(6, 5, 3))
    with pytest.raises(ValueError, match=rf"{CONTEXT}: file '.*c.nii.gz' has shape \(6, 5, 3\), but '.*a.nii.gz' has "
                                         r"\(6, 5, 4\); all files of a case must share one voxel grid"):
        check_same_grid([first, smaller], CONTEXT)

    rotated = AFFINE.copy()
    rotated[0, 1] = 1e-4  # a tilt MONAI's LoadImage refuses to stack: np.allclose(rtol=1e-5, atol=1e-8)
    assert not np.allclose(rotated, AFFINE)
    tilted = _summary(tmp_path, "d.nii.gz", affine=rotated)
    with pytest.raises(ValueError, match=r"file '.*d.nii.gz' and file '.*a.nii.gz' have different affines: the largest "
                                         r"difference is 0.0001 \(element \[0, 1\]") as raised:
        check_same_grid([first, tilted], CONTEXT)
    assert "resample them onto one grid" in str(raised.value)
    check_same_grid([first, tilted], atol=1e-3)  # a looser tolerance on request


# ---------------------------------------------------------------- validation record


def test_sidecar_path(tmp_path):
    assert validation_sidecar_path(tmp_path / "configs" / "datalist.json") == str(
        tmp_path / "configs" / ".datalist.json.validated.json"
    )


def test_cache_round_trip(tmp_path):
    image = aged(write(tmp_path / "image.nii.gz", volume()))
    other = aged(write(tmp_path / "other.nii.gz", volume()))
    sidecar = tmp_path / ".datalist.json.validated.json"
    cache = ValidationCache.load(sidecar, rules="r1")
    assert cache.lookup(image, "image") is None
    summary = check_image_file(image)
    cache.record(summary, "image")
    cache.record(check_image_file(other), "image")
    cache.save()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    loaded = ValidationCache.load(sidecar, rules="r1")
    hit = loaded.lookup(image, "image")
    assert hit is not None and hit.shape == summary.shape and hit.data is None
    np.testing.assert_array_equal(hit.affine, summary.affine)
    assert loaded.lookup(image, "label") is None  # checked for another kind
    assert ValidationCache.load(sidecar, rules="r2").lookup(image, "image") is None  # other rules: stale
    assert (loaded.hits, loaded.misses) == (1, 1)

    # any change of size or mtime: not trusted
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert loaded.lookup(image, "image") is None
    other.write_bytes(other.read_bytes() + b"\0")
    aged(other)
    assert loaded.lookup(other, "image") is None

    loaded.keep_only([image])
    loaded.save()
    assert list(json.loads(sidecar.read_text())["files"]) == [str(image)]


def test_cache_does_not_trust_files_modified_just_before_their_check(tmp_path):
    image = write(tmp_path / "image.nii.gz", volume())  # mtime: now
    cache = ValidationCache(tmp_path / "record.json", rules="r1")
    cache.record(check_image_file(image), "image")
    assert cache.lookup(image, "image") is None
    cache.record(check_image_file(aged(image)), "image")
    assert cache.lookup(image, "image") is not None


def test_cache_ignores_broken_sidecar(tmp_path, caplog):
    sidecar = tmp_path / "record.json"
    sidecar.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        cache = ValidationCache.load(sidecar, rules="r1")
    assert "unreadable validation record" in caplog.text
    image = aged(write(tmp_path / "image.nii.gz", volume()))
    assert cache.lookup(image, "image") is None
    cache.save()  # replaced by a valid, empty record
    assert json.loads(sidecar.read_text())["files"] == {}
    inode = sidecar.stat().st_ino
    loaded = ValidationCache.load(sidecar, rules="r1")
    assert loaded.lookup(image, "image") is None
    loaded.save()  # unchanged: not rewritten (an atomic rewrite would give a new inode)
    assert sidecar.stat().st_ino == inode


# ---------------------------------------------------------------- running checks


@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_run_checks_order_and_first_error(num_workers, caplog):
    assert run_checks(lambda x: x * x, list(range(10)), num_workers=num_workers) == [x * x for x in range(10)]

    released = threading.Event()

    def check(x: int) -> int:
        if x == 2:
            released.wait(timeout=5 if num_workers > 1 else 0)  # item 5 fails first in time, item 2 first in order
            raise ValueError("item 2")
        if x == 5:
            released.set()
            raise ValueError("item 5")
        return x

    with pytest.raises(ValueError, match="item 2"):
        run_checks(check, list(range(8)), num_workers=num_workers)

    with caplog.at_level(logging.INFO, logger="shared_networks.data.validation"):
        run_checks(lambda x: x, list(range(7)), num_workers=num_workers, what="things", log_every=3)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["Checked 3/7 things", "Checked 6/7 things"]
