# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""NaN-aware metric handlers: a class no case defines averages to NaN (MONAI's reduction gives 0.0 there), every
other value equals a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from shared_networks.bundle.metrics import NanAwareHausdorffDistance, NanAwareMeanDice


def _cubes() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two cases, three classes; class 0 and 1: a 4^3 cube and the same cube shifted by one voxel; class 2 empty."""
    pred, label = torch.zeros(2, 3, 12, 12, 12), torch.zeros(2, 3, 12, 12, 12)
    pred[:, :2, 2:6, 2:6, 2:6] = 1
    label[:, :2, 3:7, 2:6, 2:6] = 1
    return list(pred), list(label)


def _compute(handler) -> object:
    handler.reset()
    handler.update(_cubes())
    return handler.compute()


def test_hd95_of_an_empty_class_is_nan_not_zero():
    result = _compute(NanAwareHausdorffDistance(include_background=True, percentile=95, reduction="mean_batch",
                                                save_details=False))
    # a one-voxel shift: every boundary voxel is at most 1 voxel from the other surface
    assert result[:2].tolist() == [1.0, 1.0] and math.isnan(result[2])


def test_dice_per_class_and_scalar():
    per_class = _compute(NanAwareMeanDice(include_background=True, reduction="mean_batch", save_details=False))
    assert per_class[:2].tolist() == pytest.approx([0.75, 0.75])  # overlap 3 of 4 slices: 2 * 48 / (64 + 64)
    assert math.isnan(per_class[2])
    pred, label = _cubes()
    empty = NanAwareMeanDice(include_background=True, save_details=False)
    empty.reset()
    empty.update(([p[2:] for p in pred], [lab[2:] for lab in label]))
    assert math.isnan(empty.compute())
    overall = _compute(NanAwareMeanDice(include_background=True, save_details=False))
    assert overall == pytest.approx(0.75)  # the empty class is skipped, as in MONAI
