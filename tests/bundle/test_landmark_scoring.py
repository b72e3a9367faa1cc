# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Landmark scoring of ``shared_networks.bundle.landmarks`` against hand-computed values: heatmap decoding (argmax,
soft-argmax), voxel-to-world mapping, and the radial error: 0 for a perfect prediction, the offset in mm for a known
offset, per landmark with ``mean_batch``; and the decoded points of MONAI's heatmaps after reorientation and resizing
land where the true points are, in mm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from shared_networks.bundle.landmarks import DecodeLandmarksd, RadialErrorMetric, decode_heatmaps, voxel_to_world


def test_argmax_and_soft_argmax_by_hand():
    heatmaps = torch.zeros(2, 8, 9, 10)
    heatmaps[0, 2, 3, 4] = 1.0
    heatmaps[1, 5, 5, 5] = 0.9
    heatmaps[1, 6, 5, 5] = 0.3  # the centroid moves a quarter voxel along the first axis: (5 * 0.9 + 6 * 0.3) / 1.2
    heatmaps[1, 0, 0, 0] = 0.2  # outside the window: ignored by soft-argmax
    assert decode_heatmaps(heatmaps).tolist() == [[2, 3, 4], [5, 5, 5]]
    soft = decode_heatmaps(heatmaps, "soft_argmax", window=2)
    torch.testing.assert_close(soft, torch.tensor([[2.0, 3.0, 4.0], [5.25, 5.0, 5.0]]))
    with pytest.raises(ValueError, match="method"):
        decode_heatmaps(heatmaps, "mean")


def test_voxel_to_world_applies_the_affine():
    affine = np.array([[-0.6, 0, 0, 30.0], [0, 0.6, 0, -10.0], [0, 0, 1.2, 5.0], [0, 0, 0, 1]])
    world = voxel_to_world(torch.tensor([[10.0, 20.0, 3.0]]), affine)
    torch.testing.assert_close(world, torch.tensor([[24.0, 2.0, 8.6]], dtype=torch.float64))


def test_radial_error_perfect_and_known_offset():
    truth = torch.tensor([[[10.0, 20.0, 30.0], [0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [5.0, 5.0, 5.0]]])
    metric = RadialErrorMetric()
    metric(y_pred=truth.clone(), y=truth)
    assert float(metric.aggregate()) == 0.0
    metric.reset()
    offset = truth.clone()
    offset[0, 0] += torch.tensor([3.0, 4.0, 0.0])  # 5 mm
    offset[1, 1] += torch.tensor([0.0, 0.0, -2.0])  # 2 mm
    metric(y_pred=offset, y=truth)
    assert float(metric.aggregate()) == pytest.approx((5.0 + 0 + 0 + 2.0) / 4)
    torch.testing.assert_close(metric.aggregate("mean_batch").double(), torch.tensor([2.5, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="differ in shape"):
        metric(y_pred=torch.zeros(1, 2, 3), y=torch.zeros(1, 3, 3))


def test_decode_gives_world_points_through_the_reference_affine():
    affine = torch.tensor([[2.0, 0, 0, -10.0], [0, 2.0, 0, 0.0], [0, 0, 2.0, 4.0], [0, 0, 0, 1]], dtype=torch.float64)
    image = MetaTensor(torch.zeros(1, 6, 6, 6), affine=affine)
    heatmaps = torch.zeros(1, 6, 6, 6)
    heatmaps[0, 1, 2, 3] = 1.0
    out = DecodeLandmarksd("pred", output_key="points", voxel_key="voxels")({"pred": heatmaps, "image": image})
    assert out["voxels"].tolist() == [[1.0, 2.0, 3.0]]
    torch.testing.assert_close(out["points"], torch.tensor([[-8.0, 4.0, 10.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="not on the grid"):
        DecodeLandmarksd("pred")({"pred": torch.zeros(1, 5, 6, 6), "image": image})


def test_monai_heatmaps_after_reorientation_and_resize_decode_to_the_true_points():
    from monai.transforms import Compose, GenerateHeatmapd, Orientationd, Resized

    # a LAS volume of 1.5 mm voxels; two landmarks given in world RAS mm
    affine = torch.tensor([[-1.5, 0, 0, 46.5], [0, 1.5, 0, -20.0], [0, 0, 1.5, 3.0], [0, 0, 0, 1]],
                          dtype=torch.float64)
    image = MetaTensor(torch.rand(1, 32, 32, 32), affine=affine)
    voxels = torch.tensor([[8.0, 12.0, 20.0], [24.0, 4.0, 10.0]], dtype=torch.float64)
    world = voxel_to_world(voxels, affine).float()
    size = (64, 64, 64)  # 0.75 mm voxels: every true point lies on a voxel centre of the resized grid, up to 0.375 mm
    pipeline = Compose([
        Orientationd("image", "RAS"),
        Resized("image", size),
        GenerateHeatmapd("landmarks", heatmap_keys="label", ref_image_keys="image", coordinate_space="world",
                         spatial_shape=size, sigma=2.0),
        DecodeLandmarksd("label", output_key="decoded"),
    ])
    out = pipeline({"image": image, "landmarks": world})
    errors = torch.linalg.vector_norm(out["decoded"] - world.double(), dim=-1)
    assert float(errors.max()) <= 0.75 * math.sqrt(3) / 2 + 1e-6, errors
