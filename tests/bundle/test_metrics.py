# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""NaN-aware metric handlers: a class no case defines averages to NaN (MONAI's reduction gives 0.0 there), every
other value equals a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from shared_networks.bundle.metrics import NanAwareHausdorffDistance, NanAwareMeanDice, PresentLabelDiceMetric


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


def _squares(shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image, classes background + 1: a 10x10 square and the same square shifted right by ``shift`` pixels."""
    pred, label = torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32)
    label[0, 1, 5:15, 5:15] = 1
    pred[0, 1, 5:15, 5 + shift:15 + shift] = 1
    pred[:, 0], label[:, 0] = 1 - pred[:, 1], 1 - label[:, 1]
    return pred, label


def test_present_label_dice_counts_only_classes_in_label_or_prediction():
    metric = PresentLabelDiceMetric("dice")
    pred, label = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    label[0, 1, 0:2, 0:2] = 1  # image 0: class 1 = 4 pixels, predicted on 2 of them plus 2 others
    pred[0, 1, 0:2, 1:3] = 1  # classes 2 and 3 in neither: not counted
    pred[1, 1, 4:6, 4:6] = 1  # image 1: class 1 predicted but absent from the label: 0
    label[1, 2:, 6:8, 6:8] = pred[1, 2:, 6:8, 6:8] = 1  # classes 2 and 3 exact: 1
    for tensor in (pred, label):
        tensor[:, 0] = (tensor[:, 1:].sum(1) == 0).float()
    metric(pred, label)
    values = metric.get_buffer()
    assert values[0, 0].item() == pytest.approx(0.5) and values[0, 1:].isnan().all()
    assert values[1].tolist() == [0.0, 1.0, 1.0]
    # per image over its counted classes (0.5 and 2/3), then over images; not the mean of all values (0.625)
    assert metric.aggregate().item() == pytest.approx((0.5 + 2 / 3) / 2)


def test_present_label_nsd_at_two_pixels():
    metric = PresentLabelDiceMetric("nsd", tolerance=2)
    metric(*_squares(1))
    assert metric.aggregate().item() == pytest.approx(1.0)  # every boundary pixel is 1 pixel from the other
    metric.reset()
    strict = PresentLabelDiceMetric("nsd", tolerance=0)
    strict(*_squares(3))
    # 36 boundary pixels each; shifted by 3, the top and bottom rows share 7 pixels each: (14 + 14) / (36 + 36)
    assert strict.aggregate().item() == pytest.approx(28 / 72)
    with pytest.raises(ValueError, match="'dice' or 'nsd'"):
        PresentLabelDiceMetric("hd95")
