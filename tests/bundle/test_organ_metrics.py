# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""U-Mamba's abdominal-organ DSC / NSD (OrganDiceNSDMetric, OrganDice, OrganNSD) against hand computations: the NSD
expectations are hand counts and brute-force sums over edge voxels / surface elements with explicit Euclidean
distances in mm, never MONAI's own routine."""

from __future__ import annotations

import csv
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import MetricsSaver, from_engine
from monai.transforms import AsDiscreted, Compose

from shared_networks.bundle import (
    ABDOMEN_ORGAN_TOLERANCES_MM,
    ABDOMEN_Z_RANGE_ORGANS,
    OrganDice,
    OrganDiceNSDMetric,
    OrganNSD,
    organ_tolerances_mm,
    z_range_channels,
)

SPACING = (1.5, 0.8, 2.5)  # mm, anisotropic
SHAPE = (12, 10, 10)
Box = tuple[tuple[int, int, int], tuple[int, int, int]]
GT_BOX: Box = ((2, 2, 2), (6, 6, 6))  # a 4 x 4 x 4 box; voxels lo <= v < hi per axis
SHIFTED_BOX: Box = ((4, 2, 2), (8, 6, 6))  # the same box two voxels (3 mm) further along axis 0


def _one_hot(*boxes_per_class: Box | None, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    """(1, 1 + classes, *shape): background, then one box (or nothing) per class."""
    out = torch.zeros(1, 1 + len(boxes_per_class), *shape)
    for c, box in enumerate(boxes_per_class, 1):
        if box is not None:
            (x0, y0, z0), (x1, y1, z1) = box
            out[0, c, x0:x1, y0:y1, z0:z1] = 1
    out[:, 0] = (out[:, 1:].sum(1) == 0).float()
    return out


def _box_mask(box: Box, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, bool)
    (x0, y0, z0), (x1, y1, z1) = box
    mask[x0:x1, y0:y1, z0:z1] = True
    return mask


def _edge_voxels_mm(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Positions (mm) of the mask voxels with a face neighbour outside the mask."""
    padded = np.pad(mask, 1)
    edges = []
    for v in zip(*np.nonzero(mask)):
        p = tuple(i + 1 for i in v)
        for axis, step in itertools.product(range(3), (-1, 1)):
            q = list(p)
            q[axis] += step
            if not padded[tuple(q)]:
                edges.append(v)
                break
    return np.array(edges, float) * np.array(spacing)


def _surface_elements_mm(box: Box, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """DeepMind's surface model of a box: one element per 2x2x2 voxel cube on the boundary (cube ``c`` spans voxels
    ``c`` and ``c + 1`` per axis), at the cube's position in mm, with the area of the surface piece through the cube
    edges' midpoints: a face quad (4 voxels in), an edge quad (2 in) or a corner triangle (1 in)."""
    lo, hi = box
    s = spacing
    positions, areas = [], []
    for cube in itertools.product(*[range(-1, n) for n in SHAPE]):
        inside = [sum(lo[a] <= v < hi[a] for v in (cube[a], cube[a] + 1)) for a in range(3)]
        straddled = [a for a in range(3) if inside[a] == 1]
        if 0 in inside or not straddled:
            continue
        if len(straddled) == 1:
            b, c = (a for a in range(3) if a != straddled[0])
            area = s[b] * s[c]
        elif len(straddled) == 2:
            (c,) = (a for a in range(3) if a not in straddled)
            area = s[c] * math.hypot(s[straddled[0]], s[straddled[1]]) / 2
        else:
            area = math.sqrt((s[0] * s[1]) ** 2 + (s[0] * s[2]) ** 2 + (s[1] * s[2]) ** 2) / 8
        positions.append(cube)
        areas.append(area)
    return np.array(positions, float) * np.array(s), np.array(areas)


def _nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's Euclidean distance to the nearest point of the other set: (a -> b, b -> a)."""
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.min(0)


def _brute_force_voxel_nsd(gt: Box, pred: Box, tolerance: float, spacing: tuple[float, ...] = SPACING) -> float:
    g, p = _edge_voxels_mm(_box_mask(gt), spacing), _edge_voxels_mm(_box_mask(pred), spacing)
    dg, dp = _nearest(g, p)
    return float(((dg <= tolerance).sum() + (dp <= tolerance).sum()) / (len(g) + len(p)))


def _brute_force_surface_nsd(gt: Box, pred: Box, tolerance: float, spacing: tuple[float, ...] = SPACING) -> float:
    (g, ga), (p, pa) = _surface_elements_mm(gt, spacing), _surface_elements_mm(pred, spacing)
    dg, dp = _nearest(g, p)
    return float((ga[dg <= tolerance].sum() + pa[dp <= tolerance].sum()) / (ga.sum() + pa.sum()))


def _nsd(pred: torch.Tensor, label: torch.Tensor, tolerance: float, **kwargs) -> float:
    metric = OrganDiceNSDMetric("nsd", [tolerance], **{"spacing": SPACING, **kwargs})
    return metric(pred, label).item()


def test_dice_of_two_overlapping_boxes():
    # label 4x4x4 = 64 voxels; prediction x 3..6, y 2..5, z 2..4 = 48 voxels; overlap 3 * 4 * 3 = 36
    label, pred = _one_hot(GT_BOX), _one_hot(((3, 2, 2), (7, 6, 5)))
    assert OrganDiceNSDMetric("dice")(pred, label).item() == pytest.approx(2 * 36 / (64 + 48))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_nsd_of_a_shifted_box_counting_edge_voxels():
    label, pred = _one_hot(GT_BOX), _one_hot(SHIFTED_BOX)
    # 56 edge voxels per box (64 minus the 2x2x2 core). Shift 3 mm along axis 0: the lateral rings of the two shared
    # slices coincide (2 x 12 voxels per box, 48 of 112); each box's inner face voxels (4) are 0.8 mm from the other
    # surface, its slice next to the shared ones (12) 1.5 mm and its far face (16) 3 mm.
    hand = {0.5: 48 / 112, 1.0: 56 / 112, 2.0: 80 / 112, 3.5: 1.0}
    for tolerance, expected in hand.items():
        assert _brute_force_voxel_nsd(GT_BOX, SHIFTED_BOX, tolerance) == pytest.approx(expected)
        assert _nsd(pred, label, tolerance, use_subvoxels=False) == pytest.approx(expected, abs=1e-6)
    # two empty slices between: edge voxels at least 3 x 1.5 = 4.5 mm apart, surface elements (between voxels) 3 mm
    far = _one_hot(((8, 2, 2), (11, 6, 6)))
    assert _nsd(far, label, 4.4, use_subvoxels=False) == 0.0
    assert _nsd(far, label, 4.5, use_subvoxels=False) > 0.0
    assert _nsd(far, label, 2.9) == 0.0


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_nsd_of_a_shifted_box_weighting_deepmind_surface_elements():
    label, pred = _one_hot(GT_BOX), _one_hot(SHIFTED_BOX)
    for tolerance in (0.5, 1.0, 2.0):
        expected = _brute_force_surface_nsd(GT_BOX, SHIFTED_BOX, tolerance)
        assert 0.0 < expected < 1.0
        assert _nsd(pred, label, tolerance) == pytest.approx(expected, abs=1e-6)
    # every surface element has its copy 3 mm away in the other box: within 3 mm everything counts
    assert _nsd(pred, label, 3.0) == pytest.approx(1.0)
    assert _nsd(label, label, 0.0) == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_spacing_from_the_label_affine_or_per_case():
    label, pred = _one_hot(GT_BOX), _one_hot(SHIFTED_BOX)
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    expected = _brute_force_surface_nsd(GT_BOX, SHIFTED_BOX, 1.0)
    metric = OrganDiceNSDMetric("nsd", [1.0])
    assert metric(pred, MetaTensor(label, affine=affine)).item() == pytest.approx(expected, abs=1e-6)
    # per-case spacing passed to the call, as for MONAI's SurfaceDiceMetric: the second case at 1 mm
    iso = _brute_force_surface_nsd(GT_BOX, SHIFTED_BOX, 1.0, spacing=(1.0, 1.0, 1.0))
    values = metric(torch.cat([pred, pred]), torch.cat([label, label]), spacing=[list(SPACING), [1.0, 1.0, 1.0]])
    assert values[:, 0].tolist() == pytest.approx([expected, iso], abs=1e-6)
    with pytest.warns(UserWarning, match="no spacing"):
        metric(pred, label)
    # arrays transposed (axes 2, 0, 1 of the affine's grid) after the affine was set, as MONAI's Transpose leaves it
    moved = (0, 1, 4, 2, 3)
    transposed = OrganDiceNSDMetric("nsd", [1.0], spacing_axes=(2, 0, 1))
    value = transposed(pred.permute(moved), MetaTensor(label.permute(moved), affine=affine)).item()
    assert value == pytest.approx(expected, abs=1e-6)
    # the same arrays without the reordering are scored at the wrong spacing
    assert metric(pred.permute(moved), MetaTensor(label.permute(moved), affine=affine)).item() != pytest.approx(
        expected, abs=1e-3)
    with pytest.raises(ValueError, match="permutation"):
        OrganDiceNSDMetric("nsd", [1.0], spacing_axes=(0, 0, 1))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_z_range_scores_tubular_organs_only_within_the_label_slices():
    # channels: background, liver, aorta; the same column in both: label z 2..5, prediction z 2..8
    column, longer = ((3, 3, 2), (5, 5, 6)), ((3, 3, 2), (5, 5, 9))
    label, pred = _one_hot(column, column), _one_hot(longer, longer)
    dice = OrganDiceNSDMetric("dice", z_range_channels=[2])(pred, label)
    # aorta: slices 2, 3, 4 only (first to last label slice, the last excluded): identical there
    # liver: 16 label voxels, 28 predicted, 16 shared
    assert dice[0].tolist() == pytest.approx([2 * 16 / (16 + 28), 1.0])
    spacing = (1.0, 1.0, 3.0)  # the extra slices are up to 9 mm from the label's surface
    nsd = OrganDiceNSDMetric("nsd", [5.0, 2.0], z_range_channels=[2], spacing=spacing)(pred, label)
    assert nsd[0, 0].item() < 1.0 and nsd[0, 1].item() == pytest.approx(1.0)
    # the label's last slice is not scored: a prediction without it is exact
    shorter = ((3, 3, 2), (5, 5, 5))
    assert OrganDiceNSDMetric("dice", z_range_channels=[1])(_one_hot(shorter), _one_hot(column)).item() == 1.0
    # the restriction uses the label's extent, along the chosen axis: along axis 0 the columns are alike
    along_x = OrganDiceNSDMetric("dice", z_range_channels=[2], axial_axis=0)(pred, label)
    assert along_x[0, 1].item() == pytest.approx(2 * 8 / (8 + 14))  # x slice 3 of 3..4: 8 vs 14 voxels
    # a label on a single slice leaves nothing to score (NaN, the authors' Dice too); the mean skips it
    single = _one_hot(column, ((3, 3, 4), (5, 5, 5)))
    metric = OrganDiceNSDMetric("dice", z_range_channels=[2])
    metric(single, single)
    assert metric.get_buffer()[0, 0].item() == 1.0 and math.isnan(metric.get_buffer()[0, 1].item())
    assert metric.aggregate().item() == 1.0


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", ["dice", "nsd"])
def test_empty_label_rules(name):
    box = GT_BOX
    # classes: absent from both; predicted but absent from the label; labelled but not predicted
    label, pred = _one_hot(None, None, box), _one_hot(None, box, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = OrganDiceNSDMetric(name, [2.0] * 3, spacing=SPACING, z_range_channels=[3])(pred, label)
    assert values.tolist() == [[1.0, 0.0, 0.0]]
    assert not [w for w in caught if "of class" in str(w.message)]  # MONAI's empty-class warnings: decided here


def test_tolerances_by_name():
    assert list(ABDOMEN_ORGAN_TOLERANCES_MM.values()) == [5, 3, 3, 5, 2, 2, 2, 2, 2, 3, 5, 7, 3]
    names = ["Liver", "right_kidney", "INFERIOR VENA CAVA", "Left-Adrenal_Gland", "gall bladder", "IVC", "rk"]
    assert organ_tolerances_mm(names) == [5.0, 3.0, 2.0, 2.0, 2.0, 2.0, 3.0]
    assert organ_tolerances_mm(["bladder", "liver"], {"Bladder": 4, "LIVER": 6}) == [4.0, 6.0]
    with pytest.raises(ValueError, match=r"'kidney'.*'right kidney'.*'left kidney'"):
        organ_tolerances_mm(["liver", "kidney"])
    # a dataset.json "labels" mapping: ordered by label, background dropped
    labels = {"background": 0, "aorta": 2, "liver": 1, "Esophagus": 3}
    assert organ_tolerances_mm(labels) == [5.0, 2.0, 3.0]
    assert z_range_channels(labels) == [2, 3]
    assert z_range_channels(list(ABDOMEN_ORGAN_TOLERANCES_MM)) == [5, 6, 10]
    assert z_range_channels(["aorta"], z_range_organs=()) == []
    assert set(ABDOMEN_Z_RANGE_ORGANS) == {"aorta", "inferior vena cava", "esophagus"}
    with pytest.raises(ValueError, match="'pelvis'"):
        OrganNSD(["liver", "pelvis"])


def _case(name: str, pred_boxes: list, label_boxes: list, spacing: tuple[float, ...]) -> dict:
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    logits = _one_hot(*pred_boxes)[0]  # the "network" is the identity: the image is the prediction
    label = _one_hot(*label_boxes)[0].argmax(0, keepdim=True).float()
    return {
        key: MetaTensor(value, affine=affine, meta={"filename_or_obj": name})
        for key, value in (("image", logits), ("label", label))
    }


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_handlers_in_an_evaluator_write_per_case_values(tmp_path):
    spacing = (0.8, 0.8, 3.0)
    lifted = ((2, 2, 4), (6, 6, 8))  # the liver box two slices (6 mm) higher: 5 mm tolerance
    aorta = ((7, 7, 1), (9, 9, 7))
    cases = [
        _case("case1.nii.gz", [lifted, aorta], [GT_BOX, aorta], spacing),
        _case("case2.nii.gz", [None, None], [None, aorta], spacing),  # liver in neither: 1; aorta missed: 0
    ]
    organs = {"background": 0, "liver": 1, "aorta": 2}
    select = from_engine(["pred", "label"])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(cases, batch_size=1),
        network=torch.nn.Identity(),
        postprocessing=Compose(
            [AsDiscreted(keys="pred", argmax=True, to_onehot=3), AsDiscreted(keys="label", to_onehot=3)]
        ),
        key_val_metric={"organ_dice": OrganDice(organs, output_transform=select)},
        additional_metrics={"organ_nsd": OrganNSD(organs, output_transform=select)},
        val_handlers=[
            MetricsSaver(
                save_dir=str(tmp_path),
                metrics="*",
                metric_details=["organ_dice", "organ_nsd"],
                batch_transform=lambda x: [xx["image"].meta for xx in x],
            )
        ],
    )
    evaluator.run()
    liver_nsd = _brute_force_surface_nsd(GT_BOX, lifted, 5.0, spacing)
    assert 0.0 < liver_nsd < 1.0
    expected = {"organ_dice": [[0.5, 1.0], [1.0, 0.0]], "organ_nsd": [[liver_nsd, 1.0], [1.0, 0.0]]}
    for name, rows in expected.items():
        assert evaluator.state.metrics[name] == pytest.approx(np.mean(rows), abs=1e-6)
        with open(tmp_path / f"{name}_raw.csv") as f:
            written = list(csv.reader(f))
        assert [row[0] for row in written[1:]] == ["case1.nii.gz", "case2.nii.gz"]
        assert written[0][:3] == ["filename", "class0", "class1"]  # organ order
        assert [float(v) for row in written[1:] for v in row[1:3]] == pytest.approx(np.ravel(rows), abs=1e-4)
