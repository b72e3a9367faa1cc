# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Binary classification scoring of ``shared_networks.bundle.classification`` against values worked out by hand:
Youden's threshold, ACC / F1 / sensitivity / specificity / precision at it, AUC as the fraction of correctly ordered
positive-negative pairs, the report files, and the class-balanced sampling weights."""

from __future__ import annotations

import csv
import json
import math

import pytest

from shared_networks.bundle.classification import (
    binary_classification_metrics,
    class_balanced_weights,
    write_classification_report,
    youden_threshold,
)

# 3 positives, 4 negatives
LABELS = [1, 1, 1, 0, 0, 0, 0]
PROBS = [0.9, 0.6, 0.35, 0.7, 0.4, 0.2, 0.1]


def test_youden_threshold_by_hand():
    # candidate t (positive if p >= t): sensitivity + specificity - 1
    #   0.9: 1/3 + 4/4 - 1 = 0.333;  0.7: 1/3 + 3/4 - 1 = 0.083;  0.6: 2/3 + 3/4 - 1 = 0.417
    #   0.4: 2/3 + 2/4 - 1 = 0.167;  0.35: 3/3 + 2/4 - 1 = 0.5;    0.2: 1 + 1/4 - 1 = 0.25;  0.1: 0
    assert youden_threshold(LABELS, PROBS) == 0.35
    # the release's grid 0.0, 0.1, ..., 1.0: t = 0.3 gives 3/3 + 2/4 - 1 = 0.5, the only maximum
    grid = [round(0.1 * i, 1) for i in range(11)]
    assert youden_threshold(LABELS, PROBS, grid) == 0.3


def test_youden_ties_go_to_the_candidate_nearest_one_half():
    # t = 0.8 and t = 0.45 both separate perfectly (J = 1); 0.45 is nearer to 0.5
    assert youden_threshold([1, 0], [0.8, 0.3], thresholds=[0.45, 0.8]) == 0.45


def test_metrics_at_a_threshold_by_hand():
    m = binary_classification_metrics(LABELS, PROBS, 0.35)
    # positive predictions: 0.9, 0.6, 0.35 (all true) + 0.7, 0.4 (false): TP 3, FP 2, TN 2, FN 0
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 2, 2, 0)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 0))
    assert m["sensitivity"] == 1.0 and m["specificity"] == 0.5 and m["precision"] == pytest.approx(3 / 5)
    assert m["youden_j"] == pytest.approx(0.5)
    # AUC: of the 12 positive-negative pairs, the positive scores higher in all but (0.6, 0.7), (0.35, 0.7), (0.35, 0.4)
    assert m["auc"] == pytest.approx(9 / 12)
    assert (m["num_items"], m["num_positive"]) == (7, 3)


def test_undefined_ratios_are_nan_and_bad_input_is_refused():
    m = binary_classification_metrics([0, 0, 1], [0.1, 0.2, 0.3], threshold=0.9)  # nothing predicted positive
    assert math.isnan(m["precision"]) and m["sensitivity"] == 0.0 and m["f1"] == 0.0
    assert math.isnan(binary_classification_metrics([1, 1], [0.2, 0.9], 0.5)["auc"])  # one class only
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([1, 1], [0.2, 0.9])
    with pytest.raises(ValueError, match="0 or 1"):
        binary_classification_metrics([2, 0], [0.2, 0.9], 0.5)
    with pytest.raises(ValueError, match="same length"):
        youden_threshold([1, 0], [0.2])


def test_report_chooses_the_threshold_on_validation_and_writes_both_files(tmp_path):
    def records(labels, probs, prefix):
        return [{"subject": f"{prefix}{i}", "scan": f"{prefix}{i}_T1", "image": f"/data/{prefix}{i}.nii.gz",
                 "label": lab, "diagnosis": ["NC", "AD"][lab], "probability": p}
                for i, (lab, p) in enumerate(zip(labels, probs))]

    validation = records(LABELS, PROBS, "v")
    testing = records([1, 0, 1, 0], [0.5, 0.3, 0.2, 0.36], "t")
    summary = write_classification_report(validation, testing, str(tmp_path), class_names=["NC", "AD"])
    assert summary["threshold"] == 0.35
    # the test split at 0.35: predicted AD for 0.5 (AD) and 0.36 (NC): TP 1, FP 1, TN 1, FN 1
    t = summary["testing"]
    assert (t["tp"], t["fp"], t["tn"], t["fn"]) == (1, 1, 1, 1) and t["accuracy"] == 0.5
    # AUC: pairs (0.5 > 0.3), (0.5 > 0.36), (0.2 < 0.3), (0.2 < 0.36): 2 of 4
    assert t["auc"] == pytest.approx(0.5)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["threshold"] == 0.35 and saved["class_names"] == ["NC", "AD"]
    assert saved["validation"]["auc"] == pytest.approx(0.75)
    with open(tmp_path / "subjects.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["validation"] * 7 + ["testing"] * 4
    assert [r["prediction"] for r in rows[7:]] == ["AD", "NC", "NC", "AD"]
    assert rows[0]["subject"] == "v0" and float(rows[0]["probability"]) == pytest.approx(0.9)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_class_balanced_weights_draw_each_class_equally():
    items = [{"label": 0}] * 6 + [{"label": 1}] * 2
    weights = class_balanced_weights(items)
    assert weights == [1 / 6] * 6 + [1 / 2] * 2
    assert sum(weights[:6]) == pytest.approx(sum(weights[6:]))
    with pytest.raises(ValueError, match="have no 'label'"):
        class_balanced_weights([{"label": 0}, {"image": "x"}])
