# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Binary classification outputs of a bundle (nnMamba on ADNI): the operating point chosen on validation by Youden's J,
ACC / F1 / AUC at that point, per-subject probabilities and the report files.

- :func:`youden_threshold` and :func:`binary_classification_metrics` are plain functions of labels and probabilities
  (AUC from :func:`monai.metrics.compute_roc_auc`).
- :class:`SubjectProbabilities` is an ignite handler that records, per evaluated item, the subject, the image, the
  label (when there is one) and the probability; with ``csv_path`` it writes them as a CSV when the engine completes.
- :func:`write_classification_report` chooses the threshold on the validation records, scores validation and test
  records at it and writes ``subjects.csv`` and ``summary.json``.
- :func:`class_balanced_weights` gives the per-item weights of a class-balanced sampler.

All files are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from shared_networks.io import write_text_atomically

__all__ = [
    "SubjectProbabilities",
    "binary_classification_metrics",
    "class_balanced_weights",
    "write_classification_report",
    "write_records_csv",
    "youden_threshold",
]

logger = logging.getLogger(__name__)

_CSV_COLUMNS = ("split", "subject", "scan", "image", "label", "diagnosis", "probability", "prediction")


def _as_arrays(labels: Sequence[Any], probabilities: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray([float(v) for v in labels], dtype=np.float64)
    p = np.asarray([float(v) for v in probabilities], dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels and probabilities must be two non-empty lists of the same length, got {y.size} "
                         f"and {p.size}.")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 or 1, got {sorted(set(y.tolist()) - {0.0, 1.0})[:5]}.")
    if not np.isfinite(p).all():
        raise ValueError("probabilities hold NaN or infinite values.")
    return y, p


def youden_threshold(
    labels: Sequence[Any], probabilities: Sequence[Any], thresholds: Sequence[float] | None = None
) -> float:
    """
    The threshold ``t`` (an item is positive when its probability is ``>= t``) that maximises Youden's J = sensitivity
    + specificity - 1 on ``labels`` / ``probabilities``.

    Args:
        labels: 0 / 1 per item; both classes must occur.
        probabilities: the positive-class probability per item.
        thresholds: the candidates; None takes every distinct probability (every point of the ROC curve). The nnMamba
            release scores the 11 thresholds ``0.0, 0.1, ..., 1.0``.

    Among equal J the candidate closest to 0.5 wins (then the lower one).
    """
    y, p = _as_arrays(labels, probabilities)
    positives, negatives = int(y.sum()), int((1 - y).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(f"Youden's J needs both classes; got {positives} positive and {negatives} negative items.")
    candidates = np.unique(p) if thresholds is None else np.asarray(sorted(float(t) for t in thresholds))
    if candidates.size == 0:
        raise ValueError("thresholds must hold at least one value.")
    best, best_key = float(candidates[0]), None
    for t in candidates:
        predicted = p >= t
        j = (predicted & (y == 1)).sum() / positives + (~predicted & (y == 0)).sum() / negatives - 1.0
        key = (round(float(j), 12), -abs(float(t) - 0.5), -float(t))
        if best_key is None or key > best_key:
            best, best_key = float(t), key
    return best


def binary_classification_metrics(labels: Sequence[Any], probabilities: Sequence[Any], threshold: float) -> dict:
    """
    ACC, F1, sensitivity (recall), specificity, precision and Youden's J at ``threshold`` (positive: probability
    ``>= threshold``), the threshold-free AUC (:func:`monai.metrics.compute_roc_auc`; NaN unless both classes occur)
    and the counts. A ratio whose denominator is 0 (e.g. precision with no positive prediction) is NaN.
    """
    from monai.metrics import compute_roc_auc

    y, p = _as_arrays(labels, probabilities)
    predicted = p >= float(threshold)
    tp = int((predicted & (y == 1)).sum())
    tn = int((~predicted & (y == 0)).sum())
    fp = int((predicted & (y == 0)).sum())
    fn = int((~predicted & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    both = 0 < y.sum() < y.size
    auc = float(compute_roc_auc(torch.as_tensor(p), torch.as_tensor(y))) if both else math.nan
    sensitivity, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {
        "threshold": float(threshold),
        "accuracy": ratio(tp + tn, y.size),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "auc": auc,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "precision": ratio(tp, tp + fp),
        "youden_j": sensitivity + specificity - 1.0,
        "num_items": int(y.size),
        "num_positive": int(y.sum()),
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def class_balanced_weights(items: Sequence[Mapping], label_key: str = "label") -> list[float]:
    """Per-item sampling weights ``1 / (number of items of its class)``: each class is drawn equally often by a
    :class:`torch.utils.data.WeightedRandomSampler` (or MONAI's ``DistributedWeightedRandomSampler``)."""
    if not items:
        raise ValueError("class_balanced_weights needs at least one item.")
    missing = [i for i, item in enumerate(items) if label_key not in item]
    if missing:
        raise ValueError(f"items {missing[:5]} have no '{label_key}'.")
    counts = Counter(int(item[label_key]) for item in items)
    return [1.0 / counts[int(item[label_key])] for item in items]


def _scalar_probability(pred: Any, where: str) -> float:
    values = torch.as_tensor(pred).detach().float().flatten()
    if values.numel() != 1:
        raise ValueError(f"{where}: expected one probability (a binary head with a sigmoid), got {values.numel()} "
                         "values.")
    return float(values[0])


def _filename(image: Any) -> str:
    meta = getattr(image, "meta", None)
    name = meta.get("filename_or_obj", "") if isinstance(meta, Mapping) else ""
    return str(name[0] if isinstance(name, (list, tuple)) else name)


class SubjectProbabilities:
    """
    Records, for every item an evaluator scores, its ``subject`` and ``scan`` (datalist keys; the image's file name
    when absent), the image file, the label (when the batch has one) and the probability of the output's ``pred``
    (one value per item: a binary head after its sigmoid). The records of the last run are in :attr:`records`.

    With ``csv_path`` they are written when the engine completes, with the predicted class at ``threshold``
    (``class_names[1]`` when the probability is ``>= threshold``).

    Args:
        csv_path: the CSV to write; None keeps the records in memory only.
        threshold: decision threshold of the ``prediction`` column.
        class_names: names of label 0 and label 1.
        split: value of the ``split`` column.
    """

    def __init__(self, csv_path: str | None = None, threshold: float = 0.5,
                 class_names: Sequence[str] = ("negative", "positive"), split: str = "") -> None:
        self.csv_path = None if csv_path is None else os.fspath(csv_path)
        self.threshold = float(threshold)
        self.class_names = [str(c) for c in class_names]
        self.split = split
        self.records: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.records = []

    def _record(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if not isinstance(batch, list) or not isinstance(output, list):
            raise TypeError("SubjectProbabilities needs an engine that decollates its batches (decollate=True).")
        for item, out in zip(batch, output):
            image = _filename(item.get("image"))
            scan = str(item.get("scan") or os.path.basename(image).split(".nii")[0])
            record = {"split": self.split, "subject": str(item.get("subject") or scan), "scan": scan, "image": image,
                      "probability": _scalar_probability(out["pred"], f"item '{scan}'")}
            if item.get("label") is not None:
                label = int(round(float(torch.as_tensor(item["label"]).flatten()[0])))
                record.update(label=label, diagnosis=self._name(label))
            self.records.append(record)

    def _name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)

    def _write(self, engine: Engine) -> None:
        if self.csv_path is not None:
            write_records_csv(self.records, self.csv_path, self.threshold, self.class_names)
            logger.info("Wrote the probabilities of %d items to '%s' (threshold %.4g).", len(self.records),
                        self.csv_path, self.threshold)


def write_records_csv(records: Sequence[Mapping], path: str, threshold: float, class_names: Sequence[str]) -> None:
    """The records of :class:`SubjectProbabilities` as a CSV, with the predicted class at ``threshold``."""
    # split / label / diagnosis only when the records have them (inference has no labels)
    columns = [c for c in _CSV_COLUMNS
               if c in ("probability", "prediction") or any(r.get(c, "") != "" for r in records)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        positive = record["probability"] >= threshold
        writer.writerow({**record, "probability": f"{record['probability']:.6f}",
                         "prediction": class_names[1] if positive else class_names[0]})
    write_text_atomically(text.getvalue(), path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def write_classification_report(
    validation: SubjectProbabilities | Sequence[Mapping],
    testing: SubjectProbabilities | Sequence[Mapping],
    output_dir: str,
    class_names: Sequence[str] = ("negative", "positive"),
    thresholds: Sequence[float] | None = None,
) -> dict:
    """
    Choose the decision threshold on the validation records by Youden's J (:func:`youden_threshold`), score the
    validation and the testing records at it (:func:`binary_classification_metrics`), and write to ``output_dir``:

    - ``subjects.csv``: one row per item of both splits (split, subject, scan, image, label, diagnosis, probability,
      prediction);
    - ``summary.json``: ``{"threshold", "threshold_rule", "class_names", "validation": {...}, "testing": {...}}``
      (NaN as null).

    Returns the summary. Every record needs its label.
    """
    splits = {}
    for name, source in (("validation", validation), ("testing", testing)):
        records = [dict(r, split=name) for r in (source.records if isinstance(source, SubjectProbabilities)
                                                 else source)]
        unlabelled = [r["scan"] for r in records if "label" not in r]
        if unlabelled:
            raise ValueError(f"the {name} records of {unlabelled[:3]} have no label.")
        splits[name] = records
    if not splits["validation"]:
        raise ValueError("no validation records: the threshold is chosen on the validation split.")
    val = splits["validation"]
    threshold = youden_threshold([r["label"] for r in val], [r["probability"] for r in val], thresholds)
    rule = "Youden's J on validation over " + ("every distinct probability" if thresholds is None
                                               else f"the thresholds {list(thresholds)}")
    summary: dict[str, Any] = {"threshold": threshold, "threshold_rule": rule, "class_names": list(class_names)}
    for name, records in splits.items():
        if records:
            summary[name] = binary_classification_metrics([r["label"] for r in records],
                                                          [r["probability"] for r in records], threshold)
    os.makedirs(output_dir, exist_ok=True)
    write_records_csv(splits["validation"] + splits["testing"], os.path.join(output_dir, "subjects.csv"), threshold,
                      class_names)
    write_text_atomically(json.dumps(_json_safe(summary), indent=2) + "\n", os.path.join(output_dir, "summary.json"))
    for name in ("validation", "testing"):
        if name in summary:
            m = summary[name]
            logger.info("%s (%d items, %d %s): ACC %.4f  F1 %.4f  AUC %.4f  sensitivity %.4f  specificity %.4f at "
                        "threshold %.4g", name, m["num_items"], m["num_positive"], class_names[1], m["accuracy"],
                        m["f1"], m["auc"], m["sensitivity"], m["specificity"], threshold)
    logger.info("Wrote '%s' and '%s'.", os.path.join(output_dir, "subjects.csv"),
                os.path.join(output_dir, "summary.json"))
    return summary
