# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Metric handlers whose averages are NaN where no case defines them.

MONAI's metrics mark an undefined case with NaN (e.g. the HD95 or Dice of a region that is empty in both prediction
and label) and their mean skips NaN, but a mean over only NaN becomes 0.0 (``monai.metrics.utils.do_metric_reduction``):
for a region empty in every case, HD95 reads as 0 mm, the best possible score. These handlers report NaN there
(``null`` in ``metrics_summary.json``, ``nan`` in ``metrics.csv``); every other value is MONAI's.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.handlers import HausdorffDistance, MeanDice
from monai.utils import MetricReduction

__all__ = ["NanAwareMeanDice", "NanAwareHausdorffDistance"]

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
