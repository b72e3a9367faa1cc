# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Landmark label maps of ``shared_networks.bundle.landmarks`` (what MONAI Label serves and trains from): the balls
against a brute-force distance computation over every voxel on an oblique, anisotropic grid; the centroid of a ball
around a voxel centre is that centre in mm; overlaps go to the nearest landmark; the transforms read files and
MetaTensors and map back to the grid the image was read from; missing landmarks are errors naming the file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Resized

from shared_networks.bundle.landmarks import (
    LandmarkLabelMapd,
    LandmarksFromLabelMapd,
    landmark_label_map,
    landmarks_from_label_map,
)


def _oblique_affine() -> np.ndarray:
    """LAS-like storage, 1.5 x 1.0 x 2.0 mm voxels, rotated 20 degrees about the third axis, shifted."""
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.5, 1.0, 2.0])
    affine[:3, 3] = [40.0, -12.0, 7.0]
    return affine


def _world(affine: np.ndarray, voxels) -> np.ndarray:
    voxels = np.asarray(voxels, dtype=np.float64)
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def test_balls_equal_a_brute_force_distance_map():
    affine, shape = _oblique_affine(), (20, 24, 12)
    points = _world(affine, [[5.3, 6.8, 4.1], [14.0, 17.2, 8.6]])
    labels = landmark_label_map(points, affine, shape, radius_mm=3.2)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    distances = np.linalg.norm(_world(affine, grid)[:, None] - points[None], axis=-1).reshape(*shape, 2)
    expected = np.where(distances.min(-1) <= 3.2, distances.argmin(-1) + 1, 0)
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint8 and (labels == 1).sum() > 10 and (labels == 2).sum() > 10


def test_nearest_landmark_wins_where_balls_overlap_and_a_zero_radius_keeps_one_voxel():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    labels = landmark_label_map([[5.0, 5.0, 5.0], [8.0, 5.0, 5.0]], affine, (12, 12, 12), radius_mm=2.5)
    assert labels[6, 5, 5] == 1 and labels[7, 5, 5] == 2  # 1 mm vs 2 mm, and 2 mm vs 1 mm
    single = landmark_label_map([[3.4, 2.6, 7.0]], affine, (12, 12, 12), radius_mm=0.0)
    assert np.argwhere(single == 1).tolist() == [[3, 3, 7]]
    # a ball cannot swallow another landmark's own voxel, even when that landmark is farther from it
    labels = landmark_label_map([[5.0, 5.0, 5.0], [5.55, 5.0, 5.0]], affine, (12, 12, 12), radius_mm=0.0)
    assert labels[5, 5, 5] == 1 and labels[6, 5, 5] == 2


def test_two_points_in_one_voxel_keep_the_nearer_one_with_a_warning(caplog):
    labels = landmark_label_map([[5.3, 5.0, 5.0], [5.1, 5.0, 5.0]], np.eye(4), (12, 12, 12), radius_mm=0.0)
    assert np.argwhere(labels > 0).tolist() == [[5, 5, 5]] and labels[5, 5, 5] == 2
    assert "Landmarks 1 and 2 fall in the voxel [5, 5, 5]: the label map shows only 2" in caplog.text


def test_centroid_of_a_ball_is_its_centre_and_points_outside_the_grid_leave_no_mark(caplog):
    affine, shape = _oblique_affine(), (20, 24, 12)
    centres = _world(affine, [[6, 7, 4], [13, 16, 7]])
    outside = _world(affine, [[-3, 5, 5]])
    labels = landmark_label_map(np.concatenate([centres, outside]), affine, shape, radius_mm=2.5)
    assert 3 not in labels and "outside the grid" in caplog.text
    np.testing.assert_allclose(landmarks_from_label_map(labels, affine, 2), centres, atol=1e-9)


def test_missing_landmark_is_an_error_naming_the_map():
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2, 2, 2] = 1
    with pytest.raises(ValueError, match=r"case_7.*\[2, 3\]"):
        landmarks_from_label_map(labels, np.eye(4), 3, where="label map 'case_7'")


def test_label_map_file_round_trip_through_the_transforms(tmp_path):
    affine, shape = _oblique_affine(), (20, 24, 12)
    centres = _world(affine, [[4, 5, 3], [15, 18, 9], [10, 4, 6]])
    image_path, label_path = tmp_path / "case.nii.gz", tmp_path / "case_label.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape, dtype=np.float32), affine), str(image_path))
    # radius 2.2: no voxel lies exactly on a ball's surface, where rounding would make the ball lopsided
    nib.save(nib.Nifti1Image(landmark_label_map(centres, affine, shape, 2.2), affine), str(label_path))

    # a datastore item of MONAI Label's /train: the label file becomes world points; an item with points passes
    item = LandmarksFromLabelMapd("label", num_landmarks=3, allow_missing_keys=True)({"label": str(label_path)})
    np.testing.assert_allclose(item["landmarks"].numpy(), centres, atol=1e-4)
    assert item["landmarks"].dtype == torch.float32
    assert "landmarks" not in LandmarksFromLabelMapd("label", 3, allow_missing_keys=True)({"image": "x"})
    with pytest.raises(ValueError, match="case_label.nii.gz"):
        LandmarksFromLabelMapd("label", num_landmarks=4)({"label": str(label_path)})

    # inference: the image is reoriented and resized, the map goes back to the grid of the file
    loaded = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Orientationd("image", axcodes="RAS"),
                      Resized("image", spatial_size=(16, 16, 16))])({"image": str(image_path)})
    names = ["A", "B", "C"]
    out = LandmarkLabelMapd("points", output_keys=["landmark_map", "pred"], radius_mm=2.2, landmark_names=names,
                            result_key="result")({**loaded, "points": torch.as_tensor(centres)})
    for key in ("landmark_map", "pred"):
        assert tuple(out[key].shape) == (1, *shape)
        np.testing.assert_allclose(out[key].affine.numpy(), affine, atol=1e-6)
        np.testing.assert_array_equal(out[key][0].numpy(), nib.load(str(label_path)).get_fdata())
    assert [r["name"] for r in out["result"]["landmarks"]] == names
    assert [r["value"] for r in out["result"]["landmarks"]] == [1, 2, 3]
    np.testing.assert_allclose([[r[a] for a in "xyz"] for r in out["result"]["landmarks"]], centres, atol=1e-3)
    with pytest.raises(ValueError, match="2 points under 'points' for the 3 landmarks"):
        LandmarkLabelMapd("points", landmark_names=names)({**loaded, "points": torch.as_tensor(centres[:2])})
