# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``shared_networks.data.landmarks``: JSON and CSV landmark tables in voxel, RAS and LPS coordinates (the same
points whatever the convention, converted with the volume's affine by hand), clear errors for a missing volume, a
missing landmark or one outside its volume and a volume of the wrong dimensionality, datalist reuse, and phantoms
whose landmarks sit on their blobs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared_networks.data import (
    find_landmark_cases,
    generate_landmark_phantoms,
    list_landmark_volumes,
    make_landmark_datalist,
    read_landmark_table,
)

NAMES = ["A", "B"]
# LAS storage, 0.8 x 0.8 x 1.2 mm, with an origin
AFFINE = np.array([[-0.8, 0, 0, 20.0], [0, 0.8, 0, -15.0], [0, 0, 1.2, 7.0], [0, 0, 0, 1]])
SHAPE = (20, 24, 16)


def _case(root: Path, name: str, affine=AFFINE, shape=SHAPE) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(len(name)).uniform(0.1, 1.0, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(root / "images" / f"{name}.nii.gz"))


def _json(root: Path, cases: dict, space: str | None = "voxel") -> Path:
    content = {"cases": cases} if space is None else {"space": space, "cases": cases}
    (root / "landmarks.json").write_text(json.dumps(content))
    return root / "landmarks.json"


def test_voxel_ras_and_lps_tables_give_the_same_world_points(tmp_path):
    voxel = {"A": [2.0, 3.0, 4.0], "B": [10.5, 20.0, 0.0]}
    # by hand: x = -0.8 i + 20, y = 0.8 j - 15, z = 1.2 k + 7
    ras = {"A": [18.4, -12.6, 11.8], "B": [11.6, 1.0, 7.0]}
    lps = {n: [-p[0], -p[1], p[2]] for n, p in ras.items()}
    results = []
    for space, points in (("voxel", voxel), ("ras", ras), ("lps", lps)):
        root = tmp_path / space
        _case(root, "c1")
        _json(root, {"c1": points}, space)
        results.append(find_landmark_cases(root, NAMES)[0]["landmarks"])
    for result in results:
        np.testing.assert_allclose(result, [ras["A"], ras["B"]], atol=1e-5)  # the NIfTI affine is float32


def test_csv_table_long_form(tmp_path):
    _case(tmp_path, "c1")
    (tmp_path / "landmarks.csv").write_text("case,landmark,x,y,z\nc1,B,10.5,20,0\nc1,A,2,3,4\nc1,extra,1,1,1\n")
    table, space = read_landmark_table(tmp_path / "landmarks.csv")
    assert space == "voxel" and table == {"c1": {"B": (10.5, 20.0, 0.0), "A": (2.0, 3.0, 4.0), "extra": (1, 1, 1)}}
    cases = find_landmark_cases(tmp_path, NAMES)  # in landmark_names order; other landmarks ignored
    np.testing.assert_allclose(cases[0]["landmarks"], [[18.4, -12.6, 11.8], [11.6, 1.0, 7.0]], atol=1e-5)
    (tmp_path / "landmarks.csv").write_text("case,landmark,x,y,z\nc1,A,2,3,4\nc1,A,2,3,5\n")
    with pytest.raises(ValueError, match="line 3, case 'c1', landmark 'A': the landmark is given twice"):
        read_landmark_table(tmp_path / "landmarks.csv")


@pytest.mark.parametrize("points, error, match", [
    ({"A": [2, 3, 4]}, ValueError, r"landmark case 'c1' .* lacks the landmarks \['B'\]"),
    ({"A": [2, 3, 4], "B": [19.4, 3, 4]}, None, None),  # inside: within half a voxel of the last centre
    ({"A": [2, 3, 4], "B": [19.6, 3, 4]}, ValueError, r"landmark case 'c1', landmark 'B': \[19.6, 3.0, 4.0\] "
                                                      r"\(voxel\) is voxel \[19.6, 3.0, 4.0\], outside the volume "
                                                      r".*c1.nii.gz' of shape \(20, 24, 16\)"),
    ({"A": [2, 3], "B": [1, 1, 1]}, ValueError, r"case 'c1', landmark 'A': expected three finite coordinates"),
])
def test_bad_landmarks_name_case_and_landmark(tmp_path, points, error, match):
    _case(tmp_path, "c1")
    _json(tmp_path, {"c1": points})
    if error is None:
        assert len(find_landmark_cases(tmp_path, NAMES)) == 1
    else:
        with pytest.raises(error, match=match):
            find_landmark_cases(tmp_path, NAMES)


def test_missing_volume_and_space_conflict(tmp_path):
    _json(tmp_path, {"ghost": {"A": [1, 1, 1], "B": [2, 2, 2]}})
    with pytest.raises(FileNotFoundError, match=r"landmark case 'ghost' .*: no volume '.*images/ghost.nii\[.gz\]'"):
        find_landmark_cases(tmp_path, NAMES)
    with pytest.raises(ValueError, match="declares space 'voxel' but 'ras' was asked for"):
        find_landmark_cases(tmp_path, NAMES, space="ras")
    with pytest.raises(FileNotFoundError, match="no landmarks.json or landmarks.csv"):
        find_landmark_cases(tmp_path / "images", NAMES)


def test_volume_of_the_wrong_dimensionality_is_refused_before_the_datalist_is_written(tmp_path):
    for name in ("c1", "c2", "c3"):
        _case(tmp_path, name)
    _case(tmp_path, "c4", shape=(*SHAPE, 2))  # 4D
    _json(tmp_path, {n: {"A": [1, 1, 1], "B": [2, 2, 2]} for n in ("c1", "c2", "c3", "c4")})
    with pytest.raises(ValueError, match=r"landmark case 'c4'.*c4.nii.gz.*3D"):
        make_landmark_datalist(tmp_path, tmp_path / "datalist.json", NAMES)
    assert not (tmp_path / "datalist.json").exists()


def test_datalist_split_and_reuse(tmp_path):
    generate_landmark_phantoms(tmp_path / "data", num_cases=10, shape=(20, 20, 20))
    path = tmp_path / "datalist.json"
    datalist = make_landmark_datalist(tmp_path / "data", path)
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] == [7, 1, 2]
    assert np.asarray(datalist["training"][0]["landmarks"]).shape == (6, 3)
    edited = json.loads(path.read_text())
    edited["testing"] = edited["testing"][:1]
    path.write_text(json.dumps(edited))
    assert make_landmark_datalist(tmp_path / "data", path) == edited
    edited["training"][0]["landmarks"] = edited["training"][0]["landmarks"][:5]
    path.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="expected 6 points of 3 coordinates"):
        make_landmark_datalist(tmp_path / "data", path)


def test_phantom_landmarks_sit_on_their_blobs(tmp_path):
    paths = generate_landmark_phantoms(tmp_path, num_cases=3, shape=(32, 32, 32), spacing=1.5, seed=4)
    table = json.loads((tmp_path / "landmarks.json").read_text())
    assert table["space"] == "voxel" and len(paths) == 3
    for path in paths:
        image = nib.load(path)
        assert nib.aff2axcodes(image.affine) == ("L", "A", "S")
        data = np.asarray(image.dataobj)
        for k, point in enumerate(table["cases"][Path(path).name.split(".nii")[0]].values()):
            i, j, kk = (int(round(v)) for v in point)
            # the voxel at the landmark is brighter than the head's mean by about its blob's amplitude
            assert data[i, j, kk] > 0.3 + 0.35 + 0.3 * k, (path, k)
    assert [e["case"] for e in list_landmark_volumes(tmp_path / "images")] == ["case_000", "case_001", "case_002"]
