# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Metric handlers whose averages are NaN where no case defines them, and the per-image Dice / surface Dice over the
labels present in an image (the EndoVis evaluation of the Swin-UMamba and U-Mamba authors).

MONAI's metrics mark an undefined case with NaN (e.g. the HD95 or Dice of a region that is empty in both prediction
and label) and their mean skips NaN, but a mean over only NaN becomes 0.0 (``monai.metrics.utils.do_metric_reduction``):
for a region empty in every case, HD95 reads as 0 mm, the best possible score. These handlers report NaN there
(``null`` in ``metrics_summary.json``, ``nan`` in ``metrics.csv``); every other value is MONAI's.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.handlers import HausdorffDistance, IgniteMetricHandler, MeanDice
from monai.metrics import CumulativeIterationMetric, compute_dice, compute_surface_dice
from monai.utils import MetricReduction

__all__ = ["NanAwareMeanDice", "NanAwareHausdorffDistance", "PresentLabelDice", "PresentLabelDiceMetric"]

_MEAN_REDUCTIONS = (MetricReduction.MEAN, MetricReduction.MEAN_BATCH, MetricReduction.MEAN_CHANNEL)


class _UndefinedAsNaN:
    """Mixin for :class:`monai.handlers.IgniteMetricHandler` subclasses with a mean reduction."""

    def compute(self) -> Any:
        result = super().compute()
        reduction = MetricReduction(self.metric_fn.reduction)
        buffer = self.metric_fn.get_buffer()  # (cases, classes), NaN where a case leaves the metric undefined
        if reduction not in _MEAN_REDUCTIONS or not isinstance(buffer, torch.Tensor) or buffer.ndim != 2:
            return result
        isnan = torch.isnan(buffer)
        if reduction == MetricReduction.MEAN:
            undefined = isnan.all()
        else:
            undefined = isnan.all(dim=0 if reduction == MetricReduction.MEAN_BATCH else 1)
        if isinstance(result, torch.Tensor):
            return torch.where(undefined.to(result.device), torch.full_like(result, float("nan")), result)
        return float("nan") if bool(undefined) else result


class NanAwareMeanDice(_UndefinedAsNaN, MeanDice):
    """:class:`monai.handlers.MeanDice` with NaN for a class no case defines (same arguments)."""


class NanAwareHausdorffDistance(_UndefinedAsNaN, HausdorffDistance):
    """:class:`monai.handlers.HausdorffDistance` with NaN for a class no case defines (same arguments)."""


class PresentLabelDiceMetric(CumulativeIterationMetric):
    """
    Dice (``metric="dice"``) or normalised surface Dice at ``tolerance`` pixels (``metric="nsd"``, MONAI's
    :func:`monai.metrics.compute_surface_dice`) per image and class, scored as the EndoVis evaluation scripts of the
    Swin-UMamba and U-Mamba releases do: a class in neither the label nor the prediction is not counted (NaN); a class
    predicted but absent from the label scores 0. :meth:`aggregate` averages each image over its counted classes, then
    the images (NaN-skipping means). The buffer (:meth:`get_buffer`, images x classes) holds the per-class values, so
    :class:`monai.handlers.MetricsSaver` writes them per image, with their per-image mean.

    Args:
        metric: "dice" or "nsd".
        tolerance: the NSD distance tolerance in pixels (2 in the releases).
        include_background: count class 0 too.

    Inputs are one-hot predictions and labels, (batch, classes, *spatial).
    """

    def __init__(self, metric: str = "dice", tolerance: float = 2.0, include_background: bool = False) -> None:
        super().__init__()
        if metric not in ("dice", "nsd"):
            raise ValueError(f"metric must be 'dice' or 'nsd', got {metric!r}.")
        self.metric = metric
        self.tolerance = float(tolerance)
        self.include_background = include_background

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.shape != y.shape or y.ndim < 3:
            raise ValueError(
                f"y_pred and y must be one-hot (batch, classes, *spatial) of one shape, got {tuple(y_pred.shape)} and "
                f"{tuple(y.shape)}."
            )
        start = 0 if self.include_background else 1
        if self.metric == "dice":
            values = compute_dice(y_pred, y, include_background=self.include_background, ignore_empty=False)
        else:
            classes = y.shape[1] - start
            values = compute_surface_dice(
                y_pred, y, class_thresholds=[self.tolerance] * classes, include_background=self.include_background
            )
        spatial = tuple(range(2, y.ndim))
        in_label = y[:, start:].sum(spatial) > 0
        in_prediction = y_pred[:, start:].sum(spatial) > 0
        values = values.float().to(y.device)
        values = torch.where(~in_label & in_prediction, torch.zeros_like(values), values)
        return torch.where(~in_label & ~in_prediction, torch.full_like(values, float("nan")), values)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            return torch.tensor(float("nan"))
        return buffer.nanmean(dim=1).nanmean()


class PresentLabelDice(IgniteMetricHandler):
    """The ignite handler of :class:`PresentLabelDiceMetric` (arguments as there, plus ``output_transform`` and
    ``save_details`` of :class:`monai.handlers.IgniteMetricHandler`)."""

    def __init__(
        self,
        metric: str = "dice",
        tolerance: float = 2.0,
        include_background: bool = False,
        output_transform: Any = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=PresentLabelDiceMetric(metric, tolerance, include_background),
            output_transform=output_transform,
            save_details=save_details,
        )
