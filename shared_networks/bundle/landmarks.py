# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Heatmap landmark detection outputs (nnMamba, Sec. 3.4): decoding one heatmap per landmark to a point, in voxels and
in world millimetres, and the radial error of the points.

- :func:`decode_heatmaps`: the argmax voxel of each channel (the release's decoding), or the soft-argmax: the centroid
  of the non-negative heatmap values in a window around that voxel (sub-voxel, robust to activations elsewhere).
- :class:`DecodeLandmarksd`: the transform that writes the decoded points in world coordinates (RAS mm, through the
  affine of the reference image the heatmaps were computed on) for the metric and the reports.
- :class:`RadialErrorMetric` / :class:`MeanRadialError`: the Euclidean distance in mm between predicted and true
  world points per case and landmark; the mean over both is the MRE, ``reduction="mean_batch"`` gives it per landmark.
- :class:`LandmarkWriter`: the predicted points of every case as a CSV (world RAS mm and voxel indices of the input
  file; with the radial error where the true points are known), readable by
  :func:`shared_networks.data.read_landmark_table` with ``space="ras"``.
- :func:`landmark_label_map` / :class:`LandmarkLabelMapd`: points as a label map on an image's grid, a small ball per
  landmark with the landmark's number (1 ... N) as its value: what a viewer shows and MONAI Label serves.
- :func:`landmarks_from_label_map` / :class:`LandmarksFromLabelMapd`: the way back, each landmark being the centroid
  of the voxels of its number: how label maps annotated in MONAI Label become training points.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.transforms import LoadImage, MapTransform
from monai.utils import MetricReduction

from shared_networks.io import write_text_atomically

__all__ = ["DecodeLandmarksd", "LandmarkLabelMapd", "LandmarkWriter", "LandmarksFromLabelMapd", "MeanRadialError",
           "RadialErrorMetric", "decode_heatmaps", "landmark_label_map", "landmarks_from_label_map", "voxel_to_world"]

logger = logging.getLogger(__name__)

_METHODS = ("argmax", "soft_argmax")


def decode_heatmaps(heatmaps: torch.Tensor, method: str = "argmax", window: int = 3) -> torch.Tensor:
    """
    One point per channel of ``heatmaps`` (``(N, *spatial)``), as voxel indices ``(N, len(spatial))`` in float.

    Args:
        heatmaps: one heatmap per landmark.
        method: ``"argmax"``, the voxel of the largest value (ties: the first in C order); or ``"soft_argmax"``, the
            centroid of the values clipped at 0 within ``window`` voxels of that voxel along every axis (the argmax
            itself when they are all 0).
        window: half-width of the soft-argmax window in voxels.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got '{method}'.")
    heatmaps = torch.as_tensor(heatmaps).detach().float()
    if heatmaps.ndim < 2:
        raise ValueError(f"heatmaps must be (landmarks, *spatial), got shape {tuple(heatmaps.shape)}.")
    spatial = heatmaps.shape[1:]
    flat = heatmaps.reshape(heatmaps.shape[0], -1).argmax(dim=1)
    points = torch.stack(torch.unravel_index(flat, spatial), dim=1).float()
    if method == "argmax":
        return points
    for index, centre in enumerate(points.long()):
        box = tuple(slice(max(0, int(c) - window), min(n, int(c) + window + 1)) for c, n in zip(centre, spatial))
        values = heatmaps[index][box].clamp_min(0)
        total = values.sum()
        if total > 0:
            grids = torch.meshgrid(*[torch.arange(s.start, s.stop, dtype=torch.float32) for s in box], indexing="ij")
            points[index] = torch.stack([(g * values).sum() / total for g in grids])
    return points


def voxel_to_world(points: torch.Tensor, affine: Any) -> torch.Tensor:
    """Voxel indices ``(N, 3)`` to world coordinates through a 4 x 4 ``affine``."""
    affine = torch.as_tensor(affine, dtype=torch.float64)
    points = torch.as_tensor(points, dtype=torch.float64)
    return points @ affine[:3, :3].T + affine[:3, 3]


class DecodeLandmarksd(MapTransform):
    """
    Decodes the heatmaps under ``keys`` (:func:`decode_heatmaps`) into world points ``(N, 3)`` (float64, the space of
    the reference image's affine: RAS mm as MONAI's NIfTI reader gives it) stored under ``output_key``; the voxel
    points go to ``voxel_key`` when given. The heatmaps must lie on the grid of ``ref_image_key`` (a ``MetaTensor``
    with its affine), as the network's output does on its input.
    """

    def __init__(self, keys: KeysCollection, ref_image_key: str = "image", output_key: str = "pred_landmarks",
                 voxel_key: str | None = None, method: str = "argmax", window: int = 3,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got '{method}'.")
        self.ref_image_key, self.output_key, self.voxel_key = ref_image_key, output_key, voxel_key
        self.method, self.window = method, int(window)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        reference = d[self.ref_image_key]
        affine = getattr(reference, "affine", None)
        if affine is None:
            raise ValueError(f"DecodeLandmarksd: '{self.ref_image_key}' has no affine (expected a MetaTensor).")
        for key in self.key_iterator(d):
            heatmaps = d[key]
            if tuple(heatmaps.shape[1:]) != tuple(reference.shape[1:]):
                raise ValueError(f"DecodeLandmarksd: heatmaps '{key}' of spatial shape {tuple(heatmaps.shape[1:])} "
                                 f"are not on the grid of '{self.ref_image_key}' {tuple(reference.shape[1:])}.")
            voxels = decode_heatmaps(heatmaps, self.method, self.window)
            d[self.output_key] = voxel_to_world(voxels, affine)
            if self.voxel_key is not None:
                d[self.voxel_key] = voxels
        return d


def landmark_label_map(points: Any, affine: Any, spatial_shape: Sequence[int], radius_mm: float = 2.0) -> np.ndarray:
    """
    A label map of ``spatial_shape`` on the grid of ``affine`` (voxel indices to world mm) in which landmark ``n``
    (0-based, row ``n`` of the world points ``points``, ``(N, 3)``) is the ball of ``radius_mm`` around it, of value
    ``n + 1``; 0 elsewhere. Where balls overlap, a voxel takes the nearest landmark. The voxel nearest to a point is
    always part of its ball, so no landmark inside the grid vanishes however small the radius, unless two points fall
    in one voxel (the one nearer the voxel's centre keeps it) or a point lies outside the grid (no mark); a warning
    names such landmarks.
    """
    points = np.asarray(torch.as_tensor(points, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1, 3)
    affine = np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu(), dtype=np.float64)
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != 3 or affine.shape != (4, 4):
        raise ValueError(f"landmark_label_map needs 3 spatial sizes and a 4 x 4 affine, got {shape} and "
                         f"{affine.shape}.")
    if radius_mm < 0:
        raise ValueError(f"radius_mm must be >= 0, got {radius_mm}.")
    dtype = np.uint8 if len(points) < 256 else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    nearest = np.full(shape, np.inf)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    voxels = np.linalg.solve(linear, (points - affine[:3, 3]).T).T
    own_voxel: dict[tuple[int, ...], int] = {}
    for index, centre in enumerate(voxels):
        rounded = np.rint(centre).astype(int)
        if np.any(rounded < 0) or np.any(rounded >= shape):
            logger.warning("Landmark %d at voxel %s lies outside the grid %s: not in the label map.", index + 1,
                           np.round(centre, 2).tolist(), shape)
            continue
        reach = np.ceil(radius_mm / spacing).astype(int)
        box = tuple(slice(max(0, r - k), min(n, r + k + 1)) for r, k, n in zip(rounded, reach, shape))
        grid = np.stack(np.meshgrid(*[np.arange(b.start, b.stop) for b in box], indexing="ij"), axis=-1)
        distance = np.linalg.norm((grid - centre) @ linear.T, axis=-1)
        closer = (distance <= radius_mm) & (distance < nearest[box])
        labels[box][closer] = index + 1
        nearest[box][closer] = distance[closer]
        key = tuple(int(r) for r in rounded)
        other = own_voxel.get(key)
        if other is None or np.linalg.norm((centre - rounded) @ linear.T) < np.linalg.norm(
                (voxels[other] - rounded) @ linear.T):
            own_voxel[key] = index
        if other is not None:
            logger.warning("Landmarks %d and %d fall in the voxel %s: the label map shows only %d.", other + 1,
                           index + 1, list(key), own_voxel[key] + 1)
    for key, index in own_voxel.items():  # every landmark keeps the voxel it falls in
        labels[key] = index + 1
    return labels


def landmarks_from_label_map(label_map: Any, affine: Any, num_landmarks: int, where: str = "label map") -> np.ndarray:
    """
    The world points ``(num_landmarks, 3)`` (float64, the space of ``affine``) of a label map in which landmark ``n``
    (0-based) is marked by the voxels of value ``n + 1``: the centroid of those voxels. A missing landmark is an error
    naming ``where``; other values (0 and above ``num_landmarks``) are ignored.
    """
    labels = np.asarray(torch.as_tensor(label_map).detach().cpu())
    if labels.ndim == 4 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.ndim != 3:
        raise ValueError(f"{where}: expected a 3D label map, got shape {labels.shape}.")
    values = np.rint(labels).astype(np.int64)
    voxels = np.zeros((num_landmarks, 3))
    missing = []
    for index in range(num_landmarks):
        found = np.argwhere(values == index + 1)
        if len(found) == 0:
            missing.append(index + 1)
        else:
            voxels[index] = found.mean(axis=0)
    if missing:
        raise ValueError(f"{where}: no voxels of the landmark value(s) {missing}; every landmark 1 ... {num_landmarks} "
                         f"needs a blob labelled with its number.")
    return np.asarray(voxel_to_world(voxels, affine))


class LandmarkLabelMapd(MapTransform):
    """
    The world points under ``keys`` (:class:`DecodeLandmarksd`) as a label map on the grid the reference image was
    read from (its meta ``original_affine`` and ``spatial_shape``), :func:`landmark_label_map`, a ``MetaTensor``
    ``(1, *spatial)`` with that affine stored under each of ``output_keys``. With ``result_key`` and
    ``landmark_names``, the points also go to ``data[result_key]["landmarks"]`` as ``{name, value, x, y, z}``
    records (world RAS mm): the JSON that MONAI Label answers beside the label map.
    """

    def __init__(self, keys: KeysCollection, ref_image_key: str = "image",
                 output_keys: str | Sequence[str] = "landmark_map", radius_mm: float = 2.0,
                 landmark_names: Sequence[str] | None = None, result_key: str | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_image_key, self.radius_mm = ref_image_key, float(radius_mm)
        self.output_keys = [output_keys] if isinstance(output_keys, str) else list(output_keys)
        self.landmark_names = None if landmark_names is None else [str(n) for n in landmark_names]
        self.result_key = result_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = getattr(d[self.ref_image_key], "meta", {}) or {}
        affine, shape = meta.get("original_affine"), meta.get("spatial_shape")
        if affine is None or shape is None:
            raise ValueError(f"LandmarkLabelMapd: '{self.ref_image_key}' lacks the meta 'original_affine' / "
                             "'spatial_shape' of the file it was read from (expected a MetaTensor from LoadImaged).")
        affine = torch.as_tensor(affine, dtype=torch.float64)
        for key in self.key_iterator(d):
            points = torch.as_tensor(d[key], dtype=torch.float64)
            if self.landmark_names is not None and points.shape[0] != len(self.landmark_names):
                raise ValueError(f"LandmarkLabelMapd: {points.shape[0]} points under '{key}' for the "
                                 f"{len(self.landmark_names)} landmarks {self.landmark_names}.")
            labels = landmark_label_map(points, affine, [int(s) for s in shape], self.radius_mm)
            label_meta = {k: meta[k] for k in ("filename_or_obj", "original_affine", "spatial_shape") if k in meta}
            for output_key in self.output_keys:
                d[output_key] = MetaTensor(torch.from_numpy(labels[None].copy()), affine=affine.clone(),
                                           meta=dict(label_meta))
            if self.result_key is not None and self.landmark_names is not None:
                records = [{"name": name, "value": index + 1,
                            **{axis: round(float(v), 3) for axis, v in zip("xyz", points[index])}}
                           for index, name in enumerate(self.landmark_names)]
                d[self.result_key] = {**(d.get(self.result_key) or {}), "landmarks": records}
        return d


class LandmarksFromLabelMapd(MapTransform):
    """
    Training points from label maps: for each of ``keys`` that holds a label map (a file path, read with MONAI's
    ``LoadImage``, or a ``MetaTensor`` with its affine) in which landmark ``n`` is marked by the voxels of value
    ``n + 1``, the world points (:func:`landmarks_from_label_map`, float32 ``(num_landmarks, 3)``) go to
    ``output_key``. This is how MONAI Label's ``/train`` datalist (``{"image", "label"}`` with the annotated label
    maps) reaches a config that trains on points; with ``allow_missing_keys`` items that carry points already pass.
    """

    def __init__(self, keys: KeysCollection, num_landmarks: int, output_key: str = "landmarks",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.num_landmarks, self.output_key = int(num_landmarks), output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            where = f"label map '{label}'" if isinstance(label, (str, os.PathLike)) else f"label map '{key}'"
            if isinstance(label, (str, os.PathLike)):
                label = LoadImage(image_only=True)(os.fspath(label))
            affine = getattr(label, "affine", None)
            if affine is None:
                raise ValueError(f"LandmarksFromLabelMapd: {where} has no affine (expected a file or a MetaTensor).")
            points = landmarks_from_label_map(label, affine, self.num_landmarks, where)
            d[self.output_key] = torch.as_tensor(points, dtype=torch.float32)
        return d


class RadialErrorMetric(CumulativeIterationMetric):
    """
    Radial error: the Euclidean distance between predicted and true points, ``y_pred`` and ``y`` of shape
    ``(batch, landmarks, dims)`` in world mm (or one case ``(landmarks, dims)``). The buffer holds the errors per case
    and landmark; :meth:`aggregate` reduces it with ``reduction`` (``"mean"``: the MRE; ``"mean_batch"``: the mean
    error of each landmark).
    """

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN) -> None:
        super().__init__()
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y_pred, y = torch.as_tensor(y_pred, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
        if y_pred.ndim == 2:
            y_pred, y = y_pred[None], y[None]
        if y_pred.shape != y.shape:
            raise ValueError(f"predicted points {tuple(y_pred.shape)} and true points {tuple(y.shape)} differ in "
                             "shape.")
        return torch.linalg.vector_norm(y_pred - y, dim=-1)

    def __call__(self, y_pred: Any, y: Any = None, **kwargs: Any) -> Any:
        # points are not images: one (landmarks, dims) tensor per case, stacked here
        if isinstance(y_pred, (list, tuple)):
            y_pred = torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in y_pred])
            y = torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in y])
        return super().__call__(y_pred=y_pred, y=y, **kwargs)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:  # type: ignore[override]
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            return torch.tensor(float("nan"))
        result, _ = do_metric_reduction(buffer, reduction or self.reduction)
        return result


class MeanRadialError(IgniteMetricHandler):
    """The ignite handler of :class:`RadialErrorMetric` (``reduction`` as there, plus ``output_transform`` and
    ``save_details`` of :class:`monai.handlers.IgniteMetricHandler`). Lower is better: select models with it through
    ``metric_cmp_fn`` of the evaluator and ``key_metric_negative_sign`` of the checkpoint saver."""

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN,
                 output_transform: Any = lambda x: x, save_details: bool = True) -> None:
        super().__init__(metric_fn=RadialErrorMetric(reduction), output_transform=output_transform,
                         save_details=save_details)


class LandmarkWriter:
    """
    Writes, when the engine completes, the predicted points of every item it scored to ``csv_path`` (atomically):
    one row per case and landmark with ``case, image, landmark, x, y, z`` (world RAS mm), ``i, j, k`` (voxel indices
    of the input file, through the affine it was read with) and, where the batch holds the true points, their
    ``error_mm``. The points come from the output's ``points_key`` (:class:`DecodeLandmarksd`); the true points from
    the batch's ``true_key``.

    Args:
        csv_path: the CSV file.
        landmark_names: the names of the landmarks, in channel order.
        points_key: output key of the predicted world points.
        true_key: batch key of the true world points (optional).
        image_key: batch key of the image (for the file name and its original affine).
    """

    def __init__(self, csv_path: str, landmark_names: Sequence[str], points_key: str = "pred_landmarks",
                 true_key: str = "landmarks", image_key: str = "image") -> None:
        self.csv_path = os.fspath(csv_path)
        self.landmark_names = [str(n) for n in landmark_names]
        self.points_key, self.true_key, self.image_key = points_key, true_key, image_key
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self.rows = []

    def _record(self, engine: Engine) -> None:
        for item, out in zip(engine.state.batch, engine.state.output):
            image = item.get(self.image_key)
            meta = getattr(image, "meta", {}) or {}
            filename = str(meta.get("filename_or_obj", ""))
            case = str(item.get("case") or os.path.basename(filename).split(".nii")[0])
            points = torch.as_tensor(out[self.points_key], dtype=torch.float64)
            if points.shape[0] != len(self.landmark_names):
                raise ValueError(f"case '{case}': {points.shape[0]} predicted points for the "
                                 f"{len(self.landmark_names)} landmarks {self.landmark_names}.")
            original = meta.get("original_affine")
            voxels = None
            if original is not None:
                original = torch.as_tensor(original, dtype=torch.float64)
                voxels = torch.linalg.solve(original[:3, :3], (points - original[:3, 3]).T).T
            true = item.get(self.true_key)
            errors = None if true is None else torch.linalg.vector_norm(
                points - torch.as_tensor(true, dtype=torch.float64), dim=-1)
            for index, name in enumerate(self.landmark_names):
                row = {"case": case, "image": filename, "landmark": name,
                       **{axis: f"{float(v) + 0.0:.3f}" for axis, v in zip("xyz", points[index])}}
                if voxels is not None:
                    row.update({axis: f"{float(v) + 0.0:.2f}" for axis, v in zip("ijk", voxels[index])})
                if errors is not None:
                    row["error_mm"] = f"{float(errors[index]):.3f}"
                self.rows.append(row)

    def _write(self, engine: Engine) -> None:
        columns = ["case", "image", "landmark", "x", "y", "z", "i", "j", "k", "error_mm"]
        columns = [c for c in columns if any(c in r for r in self.rows)] or columns[:6]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomically(text.getvalue(), self.csv_path)
        logger.info("Wrote %d predicted landmarks of %d cases to '%s'.", len(self.rows),
                    len(self.rows) // max(1, len(self.landmark_names)), self.csv_path)
