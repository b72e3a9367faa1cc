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

The abdominal-organ evaluation of U-Mamba (FLARE22 CT / AMOS MR, ``evaluation/abdomen_{DSC,NSD}_Eval.py``):
:class:`OrganDiceNSDMetric` and its handlers :class:`OrganDice` / :class:`OrganNSD` score DSC and NSD per case and
organ with organ-specific tolerances in mm (:data:`ABDOMEN_ORGAN_TOLERANCES_MM`), the tubular organs
(:data:`ABDOMEN_Z_RANGE_ORGANS`) only within the ground truth's axial extent, and an organ absent from the ground truth
scoring 1 if it is absent from the prediction too, else 0.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.handlers import HausdorffDistance, IgniteMetricHandler, MeanDice
from monai.metrics import CumulativeIterationMetric, compute_dice, compute_surface_dice
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, convert_to_tensor

__all__ = [
    "NanAwareMeanDice",
    "NanAwareHausdorffDistance",
    "PresentLabelDice",
    "PresentLabelDiceMetric",
    "ABDOMEN_ORGAN_TOLERANCES_MM",
    "ABDOMEN_Z_RANGE_ORGANS",
    "organ_tolerances_mm",
    "z_range_channels",
    "OrganDiceNSDMetric",
    "OrganDice",
    "OrganNSD",
]

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


ABDOMEN_ORGAN_TOLERANCES_MM: dict[str, float] = {
    "liver": 5.0,
    "right kidney": 3.0,
    "spleen": 3.0,
    "pancreas": 5.0,
    "aorta": 2.0,
    "inferior vena cava": 2.0,
    "right adrenal gland": 2.0,
    "left adrenal gland": 2.0,
    "gallbladder": 2.0,
    "esophagus": 3.0,
    "stomach": 5.0,
    "duodenum": 7.0,
    "left kidney": 3.0,
}
"""NSD tolerance in mm per organ of U-Mamba's abdominal evaluation, keyed (and ordered) by the label names of the
release's ``Dataset701_AbdomenCT`` / ``Dataset702_AbdomenMR`` ``dataset.json`` (labels 1 to 13)."""

ABDOMEN_Z_RANGE_ORGANS: tuple[str, ...] = ("aorta", "inferior vena cava", "esophagus")
"""The organs scored only on the axial slices from the ground truth's first to its last (exclusive) slice."""

# the column names of the authors' evaluation CSVs (RK, IVC, ...) as aliases of the dataset.json names
_ORGAN_ALIASES = {
    "rk": "right kidney",
    "lk": "left kidney",
    "ivc": "inferior vena cava",
    "rag": "right adrenal gland",
    "lag": "left adrenal gland",
}


def _organ_key(name: str) -> str:
    """The name compared: lower case, without spaces, underscores or hyphens ("Right_Kidney" -> "rightkidney")."""
    key = re.sub(r"[\s_\-]+", "", str(name)).lower()
    return _organ_key(_ORGAN_ALIASES[key]) if key in _ORGAN_ALIASES else key


def _organ_list(organ_names: Sequence[str] | Mapping[str, int]) -> list[str]:
    """Organ names in channel order without background; a ``dataset.json`` ``labels`` mapping (name -> label) is
    ordered by label with label 0 dropped."""
    if isinstance(organ_names, str):
        raise ValueError(f"organ_names must be a sequence of names, got the string {organ_names!r}.")
    if isinstance(organ_names, Mapping):
        return [str(name) for name, label in sorted(organ_names.items(), key=lambda item: int(item[1])) if label]
    return [str(name) for name in organ_names]


def organ_tolerances_mm(
    organ_names: Sequence[str] | Mapping[str, int], tolerances_mm: Mapping[str, float] | None = None
) -> list[float]:
    """
    The NSD tolerances in mm of ``organ_names`` (channel order, without background, or a ``dataset.json`` ``labels``
    mapping), for ``class_thresholds`` of :class:`OrganDiceNSDMetric` or :func:`monai.metrics.compute_surface_dice`.

    Names match case-insensitively and regardless of spaces, underscores and hyphens; the authors' abbreviations RK,
    LK, IVC, RAG and LAG are understood. ``tolerances_mm`` adds or overrides tolerances (names matched the same way).

    Raises:
        ValueError: an organ with no tolerance in ``tolerances_mm`` nor :data:`ABDOMEN_ORGAN_TOLERANCES_MM`.
    """
    known = {_organ_key(name): float(mm) for name, mm in ABDOMEN_ORGAN_TOLERANCES_MM.items()}
    known.update({_organ_key(name): float(mm) for name, mm in (tolerances_mm or {}).items()})
    result = []
    for name in _organ_list(organ_names):
        if _organ_key(name) not in known:
            names = list(dict.fromkeys([*ABDOMEN_ORGAN_TOLERANCES_MM, *(tolerances_mm or {})]))
            raise ValueError(
                f"No NSD tolerance for organ {name!r}: give it in tolerances_mm (mm), or use one of the known names "
                f"{names} (case, spaces and underscores do not matter)."
            )
        result.append(known[_organ_key(name)])
    return result


def z_range_channels(
    organ_names: Sequence[str] | Mapping[str, int], z_range_organs: Sequence[str] = ABDOMEN_Z_RANGE_ORGANS
) -> list[int]:
    """The one-hot channel indices (background = channel 0, so organ ``i`` of ``organ_names`` is channel ``i + 1``)
    of the organs in ``z_range_organs`` (names matched as in :func:`organ_tolerances_mm`)."""
    restricted = {_organ_key(name) for name in z_range_organs}
    return [i + 1 for i, name in enumerate(_organ_list(organ_names)) if _organ_key(name) in restricted]


class OrganDiceNSDMetric(CumulativeIterationMetric):
    """
    Dice (``metric="dice"``) or normalised surface Dice (``metric="nsd"``) per case and class as U-Mamba's abdominal
    evaluation scores them (``evaluation/abdomen_DSC_Eval.py`` and ``abdomen_NSD_Eval.py`` of the release):

    - a class absent from the label scores 1 if it is absent from the prediction too, else 0 (both metrics);
    - the classes in ``z_range_channels`` (aorta, inferior vena cava, esophagus there) are scored only on the slices
      along ``axial_axis`` from the label's first to its last slice of the class, the last one excluded; both label
      and prediction are cut there (the cut faces are surface for the NSD, as in the authors' code); a label on a
      single slice leaves nothing to score: NaN (the authors' Dice is NaN there; their NSD script fails);
    - the NSD is MONAI's :func:`monai.metrics.compute_surface_dice` with ``class_thresholds`` in mm and the voxel
      spacing of the case; ``use_subvoxels=True`` (default) weights the surface by the surface-element areas of
      DeepMind's surface-distance routine, which the authors used; ``False`` counts edge voxels;
    - the Dice is :func:`monai.metrics.compute_dice`.

    The spacing is, in this order: ``spacing`` passed to the call (as for :class:`monai.metrics.SurfaceDiceMetric`:
    a number, one per spatial axis, or one sequence per case), ``spacing`` of the constructor, the affine of ``y``
    (else of ``y_pred``) where it is a :class:`monai.data.MetaTensor` (the label's grid: the authors read the ground
    truth's header; ``spacing_axes`` reorders it for arrays transposed after the affine was set), else 1 with a
    warning.

    The buffer (:meth:`get_buffer`) is (cases, scored classes), every value defined but for the single-slice case
    above, so :class:`monai.handlers.MetricsSaver` writes it per case. :meth:`aggregate` reduces it as MONAI's
    metrics do (``reduction``; NaN skipped); a reduced value no case defines is NaN, not MONAI's 0.

    Args:
        metric: "dice" or "nsd".
        class_thresholds: NSD tolerances in mm, one per scored channel in channel order (see
            :func:`organ_tolerances_mm`); required for "nsd".
        include_background: score channel 0 too.
        z_range_channels: channel indices of the input (background = 0, so label values of a one-hot label) scored
            only within the label's axial extent.
        axial_axis: the spatial axis (0-based, negative from the end) of the slices; default the last, the axial
            axis of a NIfTI image in RAS(-like) orientation.
        spacing: voxel spacing in mm used when none is passed to the call.
        spacing_axes: for the spacing read from an affine: the affine's spatial axis of each array axis, where the
            arrays were transposed after it was set (MONAI's ``Transpose`` keeps the affine), e.g.
            ``plan.volume_plan_axes`` of a :class:`shared_networks.planning.NNUNetConfiguration`; default unchanged.
        use_subvoxels: NSD surface model, see above.
        num_classes: the number of scored channels expected (checked when given).
        reduction: MONAI's metric reduction of :meth:`aggregate`.
        get_not_nans: :meth:`aggregate` returns ``(value, not_nans)`` as MONAI's metrics do.

    Inputs are one-hot (or 0/1 multi-channel) predictions and labels, (batch, classes, *spatial) with 2 or 3 spatial
    axes, e.g. after ``AsDiscreted(argmax=True, to_onehot=classes)``.
    """

    def __init__(
        self,
        metric: str = "dice",
        class_thresholds: Sequence[float] | None = None,
        include_background: bool = False,
        z_range_channels: Sequence[int] = (),
        axial_axis: int = -1,
        spacing: float | Sequence[float] | None = None,
        spacing_axes: Sequence[int] | None = None,
        use_subvoxels: bool = True,
        num_classes: int | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        if metric not in ("dice", "nsd"):
            raise ValueError(f"metric must be 'dice' or 'nsd', got {metric!r}.")
        if metric == "nsd" and class_thresholds is None:
            raise ValueError("metric='nsd' needs class_thresholds (mm, one per scored channel).")
        self.metric = metric
        self.class_thresholds = None if class_thresholds is None else [float(t) for t in class_thresholds]
        self.include_background = include_background
        self.z_range_channels = [int(c) for c in z_range_channels]
        start = 0 if include_background else 1
        if any(c < start for c in self.z_range_channels):
            raise ValueError(f"z_range_channels must be scored channels (>= {start}), got {self.z_range_channels}.")
        self.axial_axis = int(axial_axis)
        self.spacing = spacing
        self.spacing_axes = None if spacing_axes is None else [int(a) for a in spacing_axes]
        if self.spacing_axes is not None and sorted(self.spacing_axes) != list(range(len(self.spacing_axes))):
            raise ValueError(f"spacing_axes must be a permutation of the spatial axes, got {list(spacing_axes)}.")
        self.use_subvoxels = use_subvoxels
        self.num_classes = num_classes
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _spacing(self, y_pred: torch.Tensor, y: torch.Tensor, spacing: Any) -> Any:
        """The spacing passed on to :func:`monai.metrics.compute_surface_dice` (see the class docstring)."""
        if spacing is not None:
            return spacing
        if self.spacing is not None:
            return self.spacing
        spatial_dims = y.ndim - 2
        if self.spacing_axes is not None and len(self.spacing_axes) != spatial_dims:
            raise ValueError(f"spacing_axes {self.spacing_axes} name {len(self.spacing_axes)} axes, the inputs have "
                             f"{spatial_dims} spatial axes.")

        def from_affine(affine: torch.Tensor) -> list[float]:
            spacing = affine_to_spacing(affine, r=spatial_dims).tolist()
            return spacing if self.spacing_axes is None else [spacing[a] for a in self.spacing_axes]

        for tensor in (y, y_pred):
            if isinstance(tensor, MetaTensor):
                affine = tensor.affine
                if affine.ndim == 3:
                    if affine.shape[0] != y.shape[0]:
                        break
                    return [from_affine(a) for a in affine]
                return from_affine(affine)
        warnings.warn("OrganDiceNSDMetric: no spacing given and no MetaTensor affine, using 1 mm.", stacklevel=3)
        return None

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y_pred.shape != y.shape or y.ndim not in (4, 5):
            raise ValueError(
                f"y_pred and y must be one-hot (batch, classes, *spatial) of one shape with 2 or 3 spatial axes, got "
                f"{tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        batch, channels, spatial_dims = y.shape[0], y.shape[1], y.ndim - 2
        start = 0 if self.include_background else 1
        if self.num_classes is not None and channels - start != self.num_classes:
            raise ValueError(
                f"Expected {self.num_classes} scored channels (+ background: {not self.include_background}), got "
                f"{channels} channels."
            )
        if any(c >= channels for c in self.z_range_channels):
            raise ValueError(f"z_range_channels {self.z_range_channels} out of range for {channels} channels.")
        if not -spatial_dims <= self.axial_axis < spatial_dims:
            raise ValueError(f"axial_axis {self.axial_axis} out of range for {spatial_dims} spatial axes.")
        spacing = self._spacing(y_pred, y, kwargs.get("spacing")) if self.metric == "nsd" else None
        pred = (convert_to_tensor(y_pred, track_meta=False) > 0.5).float()
        label = (convert_to_tensor(y, track_meta=False) > 0.5).float()
        spatial = tuple(range(2, y.ndim))
        in_label = label[:, start:].sum(spatial) > 0
        in_prediction = pred[:, start:].sum(spatial) > 0

        undefined = torch.zeros(batch, channels, dtype=torch.bool, device=label.device)
        axis = self.axial_axis % spatial_dims
        others = [d for d in range(spatial_dims) if d != axis]
        for c in self.z_range_channels:
            for b in range(batch):
                slices = torch.nonzero(label[b, c].amax(dim=others)).flatten()
                if slices.numel() == 0:
                    continue  # absent from the label: the rules below decide
                keep = torch.zeros(label.shape[2 + axis], dtype=label.dtype, device=label.device)
                keep[int(slices.min()) : int(slices.max())] = 1  # first to last slice, the last one excluded
                keep = keep.reshape([-1 if d == axis else 1 for d in range(spatial_dims)])
                label[b, c] *= keep
                pred[b, c] *= keep
                undefined[b, c] = not bool(keep.any())

        if self.metric == "dice":
            values = compute_dice(pred, label, include_background=self.include_background, ignore_empty=True)
        else:
            with warnings.catch_warnings():  # empty classes are decided by the rules below
                warnings.filterwarnings("ignore", message="the (ground truth|prediction) of class")
                values = compute_surface_dice(
                    pred,
                    label,
                    class_thresholds=list(self.class_thresholds or []),
                    include_background=self.include_background,
                    spacing=spacing,
                    use_subvoxels=self.use_subvoxels,
                )
        values = values.float().to(label.device)
        values = torch.where(~in_label, in_prediction.logical_not().float(), values)  # 1 if absent from both, else 0
        values = torch.where(in_label & ~in_prediction, torch.zeros_like(values), values)
        return torch.where(undefined[:, start:], torch.full_like(values, float("nan")), values)

    def aggregate(  # type: ignore[override]
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The buffer reduced by ``reduction`` (default the constructor's), NaN skipped; NaN where no value is."""
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor.")
        reduction = reduction or self.reduction
        value, not_nans = do_metric_reduction(buffer.clone(), reduction)  # it zeroes NaN in place: keep the buffer
        if MetricReduction(reduction) != MetricReduction.NONE:
            value = torch.where(not_nans > 0, value, torch.full_like(value, float("nan")))
        return (value, not_nans) if self.get_not_nans else value


class OrganDice(IgniteMetricHandler):
    """
    Ignite handler of the per-case, per-organ Dice of :class:`OrganDiceNSDMetric` for inputs with background in
    channel 0 and then the organs of ``organ_names`` (a list, or a ``dataset.json`` ``labels`` mapping).

    Args:
        organ_names: organ names in channel order, without background.
        z_range_organs: the organs scored only within the label's axial extent (matched by name).
        axial_axis: the spatial axis of the slices (default the last).
        reduction: reduction of the value recorded in ``engine.state.metrics`` (default the mean over cases and
            organs; "mean_batch" gives one mean per organ).
        output_transform: extracts ``(y_pred, y)`` from the engine output.
        save_details: keep the per-case values (cases x organs) for :class:`monai.handlers.MetricsSaver`.
    """

    def __init__(
        self,
        organ_names: Sequence[str] | Mapping[str, int],
        z_range_organs: Sequence[str] = ABDOMEN_Z_RANGE_ORGANS,
        axial_axis: int = -1,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Any = lambda x: x,
        save_details: bool = True,
    ) -> None:
        names = _organ_list(organ_names)
        self.organ_names = names
        super().__init__(
            metric_fn=OrganDiceNSDMetric(
                "dice",
                z_range_channels=z_range_channels(names, z_range_organs),
                axial_axis=axial_axis,
                num_classes=len(names),
                reduction=reduction,
            ),
            output_transform=output_transform,
            save_details=save_details,
        )


class OrganNSD(IgniteMetricHandler):
    """
    Ignite handler of the per-case, per-organ NSD of :class:`OrganDiceNSDMetric` for inputs with background in
    channel 0 and then the organs of ``organ_names``, at the tolerances of :data:`ABDOMEN_ORGAN_TOLERANCES_MM`.

    Args:
        organ_names: organ names in channel order, without background (or a ``dataset.json`` ``labels`` mapping).
        tolerances_mm: tolerances (mm) adding to or overriding :data:`ABDOMEN_ORGAN_TOLERANCES_MM` by name; an organ
            in neither raises a ValueError.
        z_range_organs: the organs scored only within the label's axial extent (matched by name).
        axial_axis: the spatial axis of the slices (default the last).
        spacing: voxel spacing (mm) where the inputs carry no affine; by default the label's affine gives it.
        spacing_axes: the affine's axis of each array axis for arrays transposed after it was set (see
            :class:`OrganDiceNSDMetric`).
        use_subvoxels: surface-element areas as DeepMind's routine (default) or edge-voxel counts.
        reduction: reduction of the value recorded in ``engine.state.metrics``.
        output_transform: extracts ``(y_pred, y)`` from the engine output.
        save_details: keep the per-case values (cases x organs) for :class:`monai.handlers.MetricsSaver`.
    """

    def __init__(
        self,
        organ_names: Sequence[str] | Mapping[str, int],
        tolerances_mm: Mapping[str, float] | None = None,
        z_range_organs: Sequence[str] = ABDOMEN_Z_RANGE_ORGANS,
        axial_axis: int = -1,
        spacing: float | Sequence[float] | None = None,
        spacing_axes: Sequence[int] | None = None,
        use_subvoxels: bool = True,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Any = lambda x: x,
        save_details: bool = True,
    ) -> None:
        names = _organ_list(organ_names)
        self.organ_names = names
        super().__init__(
            metric_fn=OrganDiceNSDMetric(
                "nsd",
                class_thresholds=organ_tolerances_mm(names, tolerances_mm),
                z_range_channels=z_range_channels(names, z_range_organs),
                axial_axis=axial_axis,
                spacing=spacing,
                spacing_axes=spacing_axes,
                use_subvoxels=use_subvoxels,
                num_classes=len(names),
                reduction=reduction,
            ),
            output_transform=output_transform,
            save_details=save_details,
        )
