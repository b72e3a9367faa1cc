# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
3D landmark detection data (nnMamba, Sec. 3.4; the paper's fetal cerebellum dataset is private): NIfTI volumes with
named landmarks, a reproducible split, and synthetic volumes with landmarks for demos and tests.

Layout::

    <dataset_dir>/images/<case>.nii[.gz]
    <dataset_dir>/landmarks.json   {"space": "voxel" | "ras" | "lps", "cases": {"<case>": {"<name>": [x, y, z]}}}
    or <dataset_dir>/landmarks.csv with the columns case, landmark, x, y, z (the space given as an argument)

``space`` says what the coordinates are: ``voxel`` indices of the case's volume (0-based, as numpy / nibabel index
it), or world millimetres in RAS (nibabel, MONAI) or LPS (ITK, 3D Slicer, DICOM) convention. Every point is stored in
the datalist in world RAS millimetres, computed with the volume's own affine, so the preprocessing (reorientation,
resampling, cropping) can move it with the image (``monai.transforms.GenerateHeatmapd`` with
``coordinate_space="world"``) and errors are measured in mm.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np

from shared_networks.data.brats import write_case_split
from shared_networks.data.validation import (
    ValidationCache,
    check_image_files,
    list_nifti_files,
    read_datalist,
    recheck_image_files,
    validation_sidecar_path,
)
from shared_networks.io import nifti_gz_bytes, write_bytes_atomically, write_text_atomically

__all__ = [
    "FETAL_CEREBELLUM_LANDMARKS",
    "LANDMARK_SPACES",
    "find_landmark_cases",
    "generate_landmark_phantoms",
    "list_landmark_volumes",
    "make_landmark_datalist",
    "read_landmark_table",
]

logger = logging.getLogger(__name__)

#: The six landmarks of the paper's table (start / end of three fetal cerebellum biometrics: transverse cerebellar
#: diameter, height and anteroposterior diameter of the vermis).
FETAL_CEREBELLUM_LANDMARKS: tuple[str, ...] = ("TCD1", "TCD2", "HDV1", "HDV2", "ADV1", "ADV2")
LANDMARK_SPACES = ("voxel", "ras", "lps")

_DATALIST_KEYS = ("training", "validation", "testing")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_VALIDATION_RULES = "landmarks/1"


def _point(values: Any, where: str) -> tuple[float, float, float]:
    try:
        point = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise ValueError(f"{where}: expected three finite coordinates, got {values!r}.")
    return point  # type: ignore[return-value]


def read_landmark_table(path: str | os.PathLike, space: str | None = None) -> tuple[dict[str, dict], str]:
    """
    The landmarks of a ``landmarks.json`` or ``landmarks.csv`` file (module docstring):
    ``({case: {name: (x, y, z)}}, space)``. A JSON file may declare its ``space``; ``space`` given here must then
    agree. The default is ``voxel``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is malformed, a point is not three finite numbers, a landmark is repeated, or the spaces
            disagree; the message names the file and the case.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"landmarks file '{path}' does not exist.")
    cases: dict[str, dict] = {}
    declared = None
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                content = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"landmarks file '{path}' is not valid JSON ({err}).") from err
        if not isinstance(content, dict) or not isinstance(content.get("cases"), dict):
            raise ValueError(f"landmarks file '{path}' must hold {{\"space\": ..., \"cases\": {{case: {{name: [x, y, "
                             "z]}}}}.")
        declared = content.get("space")
        for case, points in content["cases"].items():
            if not isinstance(points, dict):
                raise ValueError(f"landmarks file '{path}', case '{case}': expected {{name: [x, y, z]}}.")
            cases[str(case)] = {str(n): _point(p, f"landmarks file '{path}', case '{case}', landmark '{n}'")
                                for n, p in points.items()}
    elif path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        columns = list(rows[0]) if rows else []
        if not rows or any(c not in columns for c in ("case", "landmark", "x", "y", "z")):
            raise ValueError(f"landmarks file '{path}' needs the columns case, landmark, x, y, z and a row; got "
                             f"{columns}.")
        for line, row in enumerate(rows, start=2):
            case, name = row["case"].strip(), row["landmark"].strip()
            where = f"landmarks file '{path}', line {line}, case '{case}', landmark '{name}'"
            if name in cases.setdefault(case, {}):
                raise ValueError(f"{where}: the landmark is given twice.")
            cases[case][name] = _point((row["x"], row["y"], row["z"]), where)
    else:
        raise ValueError(f"landmarks file '{path}' must be .json or .csv.")
    if declared is not None and space is not None and declared != space:
        raise ValueError(f"landmarks file '{path}' declares space '{declared}' but '{space}' was asked for.")
    space = declared or space or "voxel"
    if space not in LANDMARK_SPACES:
        raise ValueError(f"landmarks file '{path}': space must be one of {LANDMARK_SPACES}, got '{space}'.")
    return cases, space


def _image_of(images_dir: str, case: str) -> str | None:
    for suffix in _NIFTI_SUFFIXES:
        path = os.path.join(images_dir, case + suffix)
        if os.path.isfile(path):
            return path
    return None


def _to_world(point: Sequence[float], space: str, affine: np.ndarray) -> np.ndarray:
    if space == "voxel":
        return affine[:3, :3] @ np.asarray(point) + affine[:3, 3]
    if space == "lps":
        return np.asarray(point) * np.array([-1.0, -1.0, 1.0])
    return np.asarray(point, dtype=np.float64)


def find_landmark_cases(
    dataset_dir: str | os.PathLike,
    landmark_names: Sequence[str] = FETAL_CEREBELLUM_LANDMARKS,
    landmarks_file: str | os.PathLike | None = None,
    space: str | None = None,
) -> list[dict]:
    """
    The cases of ``dataset_dir`` (module docstring): ``{"case", "image", "landmarks"}`` with the points in world RAS
    mm, in the order of ``landmark_names``, sorted by case.

    Args:
        dataset_dir: folder holding ``images/`` and the landmarks file.
        landmark_names: the landmarks every case must have (the network's output channels, in order); others in the
            file are ignored.
        landmarks_file: the JSON / CSV file; None takes ``<dataset_dir>/landmarks.json``, else ``landmarks.csv``.
        space: the coordinates' space (see :func:`read_landmark_table`).

    Raises:
        FileNotFoundError: a case's volume or the landmarks file is missing (the message names the case).
        ValueError: a case lacks a landmark, or a landmark lies outside its volume (the message names the case, the
            landmark, its voxel position and the volume's shape).
    """
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    if landmarks_file is None:
        found = [os.path.join(dataset_dir, n) for n in ("landmarks.json", "landmarks.csv")
                 if os.path.isfile(os.path.join(dataset_dir, n))]
        if not found:
            raise FileNotFoundError(f"no landmarks.json or landmarks.csv in '{dataset_dir}' (or pass landmarks_file).")
        landmarks_file = found[0]
    table, space = read_landmark_table(landmarks_file, space)
    names = [str(n) for n in landmark_names]
    images_dir = os.path.join(dataset_dir, "images")
    cases = []
    for case in sorted(table):
        image = _image_of(images_dir, case)
        if image is None:
            raise FileNotFoundError(f"landmark case '{case}' (in '{landmarks_file}'): no volume "
                                    f"'{os.path.join(images_dir, case)}.nii[.gz]'.")
        missing = [n for n in names if n not in table[case]]
        if missing:
            raise ValueError(f"landmark case '{case}' (in '{landmarks_file}') lacks the landmarks {missing}; every "
                             f"case needs {names}.")
        header = nib.load(image)
        affine, shape = np.asarray(header.affine, dtype=np.float64), header.shape[:3]
        world = []
        for name in names:
            point = _to_world(table[case][name], space, affine)
            voxel = np.linalg.solve(affine[:3, :3], point - affine[:3, 3])
            if np.any(voxel < -0.5) or np.any(voxel > np.asarray(shape) - 0.5):
                raise ValueError(f"landmark case '{case}', landmark '{name}': {list(table[case][name])} ({space}) "
                                 f"is voxel {np.round(voxel, 2).tolist()}, outside the volume '{image}' of shape "
                                 f"{tuple(shape)}.")
            world.append([float(v) for v in point])
        cases.append({"case": case, "image": image, "landmarks": world})
    if not cases:
        raise ValueError(f"landmarks file '{landmarks_file}' lists no case.")
    return cases


def _check_entry(entry: Any, where: str, num_landmarks: int) -> tuple[str, str]:
    if not isinstance(entry, Mapping) or not {"case", "image", "landmarks"} <= set(entry):
        raise ValueError(f"{where} must be a dict with 'case', 'image' and 'landmarks' keys, got {entry!r:.120}.")
    if not os.path.isfile(entry["image"]):
        raise FileNotFoundError(f"landmark case '{entry['case']}' ({where}): volume '{entry['image']}' does not exist.")
    if np.asarray(entry["landmarks"]).shape != (num_landmarks, 3):
        raise ValueError(f"landmark case '{entry['case']}' ({where}): expected {num_landmarks} points of 3 "
                         f"coordinates, got shape {np.asarray(entry['landmarks']).shape}.")
    return f"landmark case '{entry['case']}' ({where})", os.fspath(entry["image"])


def make_landmark_datalist(
    dataset_dir: str | os.PathLike,
    datalist_path: str | os.PathLike,
    landmark_names: Sequence[str] = FETAL_CEREBELLUM_LANDMARKS,
    landmarks_file: str | os.PathLike | None = None,
    space: str | None = None,
    seed: int = 42,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    overwrite: bool = False,
    num_workers: int | None = None,
) -> dict:
    """
    Build (or reuse) the JSON datalist of a landmark dataset (:func:`find_landmark_cases`), split by case with
    :func:`shared_networks.data.split_case_names`. Every volume is read completely once
    (:func:`shared_networks.data.validation.check_image_file`) before the file is written atomically; an existing
    datalist is reused unchanged and checked again (volumes changed since they last passed are read again).

    Returns:
        ``{"training": [...], "validation": [...], "testing": [...]}`` of ``{"case", "image", "landmarks"}``
        entries, ``landmarks`` being ``len(landmark_names)`` world RAS points in mm.
    """
    datalist_path = os.path.abspath(os.fspath(datalist_path))
    sidecar = validation_sidecar_path(datalist_path)
    if os.path.isfile(datalist_path) and not overwrite:
        logger.info("Reusing the existing datalist '%s' (pass overwrite=True to rebuild it).", datalist_path)
        datalist = read_datalist(datalist_path, _DATALIST_KEYS)
        items = [_check_entry(e, f"entry {i} of split '{k}' of '{datalist_path}'", len(landmark_names))
                 for k in _DATALIST_KEYS for i, e in enumerate(datalist[k])]
        recheck_image_files(items, sidecar, _VALIDATION_RULES, "image", "landmark volumes", num_workers)
        return datalist
    cases = find_landmark_cases(dataset_dir, landmark_names, landmarks_file, space)
    cache = ValidationCache(sidecar, rules=_VALIDATION_RULES)
    items = [(f"landmark case '{c['case']}'", c["image"]) for c in cases]
    check_image_files(items, cache, "image", "landmark volumes", num_workers)
    return write_case_split(cases, datalist_path, seed, fractions, cache)


def list_landmark_volumes(input_dir: str | os.PathLike, num_workers: int | None = None) -> list[dict]:
    """
    The volumes to detect landmarks in: every ``.nii`` / ``.nii.gz`` file under ``input_dir`` (or the one file it
    names), each checked completely like a training volume; ``{"case", "image"}`` entries sorted by path.
    """
    entries = [{"case": os.path.basename(p).split(".nii")[0], "image": p} for p in list_nifti_files(input_dir)]
    check_image_files([(f"landmark volume '{e['case']}'", e["image"]) for e in entries], what="landmark volumes",
                      num_workers=num_workers)
    return entries


def generate_landmark_phantoms(
    output_dir: str | os.PathLike,
    num_cases: int = 12,
    shape: Sequence[int] = (48, 48, 48),
    spacing: float = 1.0,
    landmark_names: Sequence[str] = FETAL_CEREBELLUM_LANDMARKS,
    seed: int = 0,
) -> list[str]:
    """
    Write synthetic volumes with landmarks in the layout of the module docstring, for demos and tests: a noisy
    ellipsoidal "head" holding, for each landmark in order, a small bright blob at a random position, brighter for
    each later landmark (so the landmarks can be told apart), stored LAS (``diag(-spacing, spacing, spacing)``), and
    ``landmarks.json`` with the blob centres as voxel indices (``"space": "voxel"``). Case ``i`` depends only on
    ``(seed, i)``; files are written atomically.

    Returns:
        absolute paths of the volumes, sorted.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes of at least 16 voxels, got {shape}.")
    if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases!r}.")
    output_dir = os.path.abspath(os.fspath(output_dir))
    affine = np.diag([-spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [(shape[0] - 1) * spacing, 0.0, 0.0]
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    size = np.asarray(shape, dtype=np.float64)
    table, paths = {}, []
    for index in range(num_cases):
        rng = np.random.default_rng([seed, index])
        centre = 0.5 * (size - 1) + rng.uniform(-0.05, 0.05, 3) * size
        radius = np.sqrt((((grid - centre) / (0.42 * size)) ** 2).sum(-1))
        volume = 0.3 * (radius < 1.0) + rng.normal(0.0, 0.03, shape)
        points = {}
        for k, name in enumerate(landmark_names):
            point = centre + rng.uniform(-0.25, 0.25, 3) * size
            sigma = 1.2 + 0.3 * (k % 2)
            volume += (0.5 + 0.4 * k) * np.exp(-((grid - point) ** 2).sum(-1) / (2 * sigma**2))
            points[name] = [round(float(v), 3) for v in point]
        case = f"case_{index:03d}"
        path = os.path.join(output_dir, "images", f"{case}.nii.gz")
        write_bytes_atomically(nifti_gz_bytes(volume.astype(np.float32), affine), path)
        table[case], paths = points, paths + [path]
    write_text_atomically(json.dumps({"space": "voxel", "cases": table}, indent=2) + "\n",
                          os.path.join(output_dir, "landmarks.json"))
    logger.info("Wrote %d landmark phantoms of shape %s to '%s'.", num_cases, shape, output_dir)
    return sorted(paths)
