# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
ADNI T1 MRI for Alzheimer's disease classification (nnMamba, Sec. 3.3): the layouts ADNI users keep their volumes in,
reproducible subject-level splits, and synthetic brains for demos and tests.

Two layouts are read (:func:`find_adni_scans`):

- **folder per class**, as the nnMamba release reads them: ``<dataset_dir>/<NC|AD|sMCI|pMCI>/*.nii[.gz]``; or the
  release's two cohorts ``<dataset_dir>/adni1/<class>/...`` (training) and ``<dataset_dir>/adni2/<class>/...``
  (testing). The label is the folder's name; folders of classes outside the task are ignored.
- **a CSV** with the columns ``subject`` and ``label`` (a class name of the task), and optionally ``image`` (the
  volume, relative to ``dataset_dir`` or absolute) and ``split`` (``training`` / ``validation`` / ``testing``, or
  ``train`` / ``val`` / ``test``). Without ``image`` the volume is ``<dataset_dir>/<subject>.nii[.gz]`` or the one
  NIfTI file in ``<dataset_dir>/<subject>/``.

ADNI subjects have several visits, and a subject's scans must not fall into two splits. The subject of a file in the
folder layout is its ADNI participant ID (``ddd_S_dddd``, as in ``mwp1ADNI_002_S_0295_MR_...nii``) when the name holds
one, else the file name; in a CSV, the ``subject`` column (rows may repeat it, one per scan). Splits are stratified by
class and made over subjects (:func:`split_adni_subjects`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared_networks.data.brats import split_case_names
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
    "ADNI_SPACING",
    "ADNI_SPATIAL_SIZE",
    "ADNI_TASKS",
    "adni_task_classes",
    "find_adni_scans",
    "generate_adni_phantoms",
    "list_adni_volumes",
    "make_adni_datalist",
    "split_adni_subjects",
]

logger = logging.getLogger(__name__)

#: The binary tasks of the paper: class names in label order (label 0, label 1), as the release names its folders.
ADNI_TASKS: dict[str, tuple[str, str]] = {"NC_v_AD": ("NC", "AD"), "sMCI_v_pMCI": ("sMCI", "pMCI")}
#: Grid of the release's CAT12-preprocessed volumes (MNI space): 113 x 137 x 113 voxels of 1.5 mm.
ADNI_SPATIAL_SIZE: tuple[int, int, int] = (113, 137, 113)
ADNI_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)

_DATALIST_KEYS = ("training", "validation", "testing")
_SPLIT_ALIASES = {"training": "training", "train": "training", "validation": "validation", "val": "validation",
                  "valid": "validation", "testing": "testing", "test": "testing"}
_RELEASE_COHORTS = ("adni1", "adni2")  # the release trains on ADNI-1 and tests on ADNI-2
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_PARTICIPANT_ID = re.compile(r"(?<!\d)(\d{3}_S_\d{4})(?!\d)")
_VALIDATION_RULES = "adni-t1/1"


def adni_task_classes(task: str | Sequence[str]) -> tuple[str, ...]:
    """The class names of ``task`` in label order: a key of :data:`ADNI_TASKS`, or an explicit list of names."""
    if isinstance(task, str):
        if task not in ADNI_TASKS:
            raise ValueError(f"task must be one of {sorted(ADNI_TASKS)} or a list of class names, got '{task}'.")
        return ADNI_TASKS[task]
    classes = tuple(str(c) for c in task)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"task as a list must hold at least two distinct class names, got {list(task)}.")
    return classes


def _nifti_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in _NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _subject_of_file(name: str) -> str:
    found = _PARTICIPANT_ID.search(name)
    return found.group(1) if found else _nifti_stem(name) or name


def _scan(subject: str, scan: str, image: str, classes: Sequence[str], diagnosis: str, split: str | None) -> dict:
    entry = {"subject": subject, "scan": scan, "image": os.path.abspath(image), "label": classes.index(diagnosis),
             "diagnosis": diagnosis}
    if split is not None:
        entry["split"] = split
    return entry


def _scans_in_class_folders(root: str, classes: Sequence[str], split: str | None) -> list[dict]:
    scans = []
    for diagnosis in classes:
        folder = os.path.join(root, diagnosis)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            stem = _nifti_stem(name)
            if stem is not None and os.path.isfile(os.path.join(folder, name)):
                scans.append(_scan(_subject_of_file(name), stem, os.path.join(folder, name), classes, diagnosis, split))
    return scans


def _volume_of_subject(dataset_dir: str, subject: str) -> tuple[str | None, list[str]]:
    tried = [os.path.join(dataset_dir, subject + suffix) for suffix in _NIFTI_SUFFIXES]
    for path in tried:
        if os.path.isfile(path):
            return path, tried
    folder = os.path.join(dataset_dir, subject)
    tried.append(os.path.join(folder, "*.nii[.gz]"))
    if os.path.isdir(folder):
        found = sorted(n for n in os.listdir(folder) if _nifti_stem(n) is not None)
        if len(found) == 1:
            return os.path.join(folder, found[0]), tried
        if len(found) > 1:
            raise ValueError(f"ADNI subject '{subject}': '{folder}' holds {len(found)} NIfTI files ({found[:4]}); "
                             "name the volume of each row in an 'image' column of the CSV.")
    return None, tried


def _scans_in_csv(csv_path: str, dataset_dir: str, classes: Sequence[str], skip_labels: Sequence[str]) -> list[dict]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
            columns = [c.strip() for c in (rows[0].keys() if rows else [])]
    except OSError as err:
        raise FileNotFoundError(f"subjects CSV '{csv_path}' cannot be read ({err}).") from err
    missing = [c for c in ("subject", "label") if c not in columns]
    if not rows or missing:
        raise ValueError(f"subjects CSV '{csv_path}' must have a header with the columns 'subject' and 'label' "
                         f"(optional: 'image', 'split') and at least one row; got columns {columns}.")
    scans, skipped, stems = [], 0, {}
    for line, raw in enumerate(rows, start=2):
        row = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        subject, diagnosis = row["subject"], row["label"]
        where = f"subjects CSV '{csv_path}', line {line}, subject '{subject}'"
        if not subject:
            raise ValueError(f"subjects CSV '{csv_path}', line {line}: empty 'subject'.")
        if diagnosis in skip_labels:
            skipped += 1
            continue
        if diagnosis not in classes:
            raise ValueError(f"{where}: label '{diagnosis}' is not a class of the task {list(classes)} (list other "
                             "diagnoses in skip_labels to leave their rows out).")
        split = row.get("split") or None
        if split is not None and split.lower() not in _SPLIT_ALIASES:
            raise ValueError(f"{where}: split '{split}' is not one of training, validation, testing.")
        if row.get("image"):
            image = row["image"] if os.path.isabs(row["image"]) else os.path.join(dataset_dir, row["image"])
            if not os.path.isfile(image):
                raise FileNotFoundError(f"{where}: its volume '{image}' does not exist.")
        else:
            image, tried = _volume_of_subject(dataset_dir, subject)
            if image is None:
                raise FileNotFoundError(f"{where}: no volume found; looked for {tried} (or give an 'image' column).")
        stem = _nifti_stem(os.path.basename(image)) or os.path.basename(image)
        scan = stem if stems.setdefault(stem, image) == image else f"{subject}/{stem}"
        scans.append(_scan(subject, scan, image, classes, diagnosis, split and _SPLIT_ALIASES[split.lower()]))
    if skipped:
        logger.info("Subjects CSV '%s': left out %d rows with labels in skip_labels %s.", csv_path, skipped,
                    list(skip_labels))
    with_split = sum("split" in s for s in scans)
    if 0 < with_split < len(scans):
        raise ValueError(f"subjects CSV '{csv_path}': {with_split} of {len(scans)} rows give a split; give it in "
                         "every row or in none.")
    return scans


def find_adni_scans(
    dataset_dir: str | os.PathLike,
    task: str | Sequence[str] = "NC_v_AD",
    csv_path: str | os.PathLike | None = None,
    skip_labels: Sequence[str] = (),
) -> list[dict]:
    """
    The labelled T1 volumes of ``dataset_dir`` in one of the layouts of the module docstring.

    Args:
        dataset_dir: the folder of the class folders, of ``adni1`` / ``adni2``, or of the volumes a CSV names.
        task: ``"NC_v_AD"``, ``"sMCI_v_pMCI"`` (:data:`ADNI_TASKS`) or a list of class names (label order).
        csv_path: a subjects CSV; None reads the folder layout.
        skip_labels: CSV labels whose rows are left out (e.g. ``["MCI"]`` for an NC-vs-AD run on a table of every
            diagnosis); any other label outside the task is an error.

    Returns:
        sorted ``{"subject", "scan", "image", "label", "diagnosis"}`` dicts (plus ``"split"`` when the layout fixes
        it: the CSV's column, or ``training`` for ``adni1`` and ``testing`` for ``adni2``); ``label`` is the index of
        ``diagnosis`` in the task's classes.

    Raises:
        FileNotFoundError: ``dataset_dir`` or a subject's volume is missing (the message names the subject and the
            CSV line).
        ValueError: a label is not a class of the task, or the CSV is malformed, or no volume was found.
    """
    classes = adni_task_classes(task)
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset_dir '{dataset_dir}' is not a folder.")
    if csv_path is not None:
        scans = _scans_in_csv(os.path.abspath(os.fspath(csv_path)), dataset_dir, classes, tuple(skip_labels))
        layout = f"the subjects CSV '{csv_path}'"
    elif all(os.path.isdir(os.path.join(dataset_dir, c)) for c in _RELEASE_COHORTS):
        scans = [scan for cohort, split in zip(_RELEASE_COHORTS, ("training", "testing"))
                 for scan in _scans_in_class_folders(os.path.join(dataset_dir, cohort), classes, split)]
        layout = f"'{dataset_dir}/{{adni1,adni2}}/<{'|'.join(classes)}>/*.nii[.gz]'"
    else:
        scans = _scans_in_class_folders(dataset_dir, classes, None)
        layout = f"'{dataset_dir}/<{'|'.join(classes)}>/*.nii[.gz]'"
    if not scans:
        raise ValueError(f"no T1 volumes of the classes {list(classes)} in {layout}; expected class folders "
                         f"<dataset_dir>/<class>/*.nii[.gz] (or adni1/ + adni2/ holding them), or pass csv_path.")
    by_scan: dict[str, dict] = {}
    for scan in scans:
        other = by_scan.setdefault(scan["scan"], scan)
        if other is not scan:
            raise ValueError(f"ADNI scan '{scan['scan']}' is listed twice ('{other['image']}' and '{scan['image']}').")
    return sorted(scans, key=lambda s: (s.get("split", ""), s["label"], s["scan"]))


def split_adni_subjects(
    scans: Sequence[Mapping], seed: int = 42, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> tuple[list[dict], list[dict], list[dict]]:
    """
    Reproducible training / validation / testing split of scans over **subjects**, stratified by class: the subjects
    of each class (by their first scan's label) are split with :func:`shared_networks.data.split_case_names`, and
    every scan follows its subject.
    """
    label_of: dict[str, int] = {}
    for scan in scans:
        label_of.setdefault(scan["subject"], int(scan["label"]))
    split_of: dict[str, int] = {}
    for label in sorted(set(label_of.values())):
        subjects = [s for s, lab in label_of.items() if lab == label]
        for index, group in enumerate(split_case_names(subjects, seed=seed, fractions=fractions)):
            split_of.update(dict.fromkeys(group, index))
    groups: tuple[list[dict], list[dict], list[dict]] = ([], [], [])
    for scan in scans:
        groups[split_of[scan["subject"]]].append(dict(scan))
    return groups


def _preset_splits(scans: list[dict], seed: int, fractions: Sequence[float]) -> list[list[dict]]:
    """Splits a layout fixes; a cohort given only as training (adni1) gives up its validation share of subjects."""
    splits = {key: [s for s in scans if s["split"] == key] for key in _DATALIST_KEYS}
    if not splits["validation"] and splits["training"]:
        train, val = float(fractions[0]), float(fractions[1])
        parts = split_adni_subjects(splits["training"], seed, (train / (train + val), val / (train + val), 0.0))
        splits["training"], splits["validation"] = parts[0] + parts[2], parts[1]
        logger.info("No validation split given: %d scans of the training subjects were set aside for model "
                    "selection.", len(parts[1]))
    return [splits[key] for key in _DATALIST_KEYS]


def _check_entry(entry: Any, where: str) -> tuple[str, str]:
    if not isinstance(entry, Mapping) or not {"subject", "image", "label"} <= set(entry):
        raise ValueError(f"{where} must be a dict with 'subject', 'image' and 'label' keys, got {entry!r:.120}.")
    if not os.path.isfile(entry["image"]):
        raise FileNotFoundError(f"ADNI subject '{entry['subject']}' ({where}): volume '{entry['image']}' does not "
                                "exist.")
    return f"ADNI subject '{entry['subject']}' ({where})", os.fspath(entry["image"])


def _check_splits(datalist: Mapping[str, list], classes: Sequence[str], where: str) -> None:
    for key in ("training", "validation"):
        present = {int(e["label"]) for e in datalist[key]}
        absent = [classes[i] for i in range(len(classes)) if i not in present]
        if absent:
            raise ValueError(
                f"{where}: the {key} split has no {' or '.join(absent)} scan ({len(datalist[key])} scans); training "
                "and the validation AUC / Youden threshold need every class. Add subjects or change the split."
            )
    if not datalist["testing"]:
        logger.warning("%s: the testing split is empty; evaluate.yaml will score the validation split only.", where)
    subjects = {key: {e["subject"] for e in datalist[key]} for key in _DATALIST_KEYS}
    for a, b in (("training", "validation"), ("training", "testing"), ("validation", "testing")):
        shared = sorted(subjects[a] & subjects[b])
        if shared:
            logger.warning("%s: %d subjects have scans in both '%s' and '%s' (e.g. %s): their results leak between "
                           "splits.", where, len(shared), a, b, shared[:3])


def make_adni_datalist(
    dataset_dir: str | os.PathLike,
    datalist_path: str | os.PathLike,
    task: str | Sequence[str] = "NC_v_AD",
    csv_path: str | os.PathLike | None = None,
    skip_labels: Sequence[str] = (),
    seed: int = 42,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    overwrite: bool = False,
    num_workers: int | None = None,
) -> dict:
    """
    Build (or reuse) the JSON datalist of an ADNI classification task (:func:`find_adni_scans`).

    The split is the layout's when it gives one (a CSV ``split`` column; ``adni1`` / ``adni2``, where the validation
    subjects are drawn from ``adni1``), else :func:`split_adni_subjects` with ``seed`` and ``fractions``. The training
    and validation splits must hold every class (model selection and the Youden threshold are chosen on validation,
    never on the test split). Every volume is read completely once
    (:func:`shared_networks.data.validation.check_image_file`: an intact 3D scalar NIfTI volume, finite, not
    constant) before the datalist is written atomically. An existing datalist is reused unchanged (so it can be
    edited), with its volumes checked again when they changed since they last passed (a validation record beside it).

    Returns:
        ``{"training": [...], "validation": [...], "testing": [...]}`` of
        ``{"subject", "scan", "image", "label", "diagnosis"}`` entries.
    """
    classes = adni_task_classes(task)
    datalist_path = os.path.abspath(os.fspath(datalist_path))
    sidecar = validation_sidecar_path(datalist_path)
    if os.path.isfile(datalist_path) and not overwrite:
        logger.info("Reusing the existing datalist '%s' (pass overwrite=True to rebuild it).", datalist_path)
        datalist = read_datalist(datalist_path, _DATALIST_KEYS)
        items = [_check_entry(e, f"entry {i} of split '{k}' of '{datalist_path}'")
                 for k in _DATALIST_KEYS for i, e in enumerate(datalist[k])]
        for key in _DATALIST_KEYS:
            for entry in datalist[key]:
                if not 0 <= int(entry["label"]) < len(classes):
                    raise ValueError(f"ADNI subject '{entry['subject']}' (split '{key}' of '{datalist_path}'): label "
                                     f"{entry['label']} is not a class index of {list(classes)}.")
        _check_splits(datalist, classes, f"datalist '{datalist_path}'")
        recheck_image_files(items, sidecar, _VALIDATION_RULES, "t1", "ADNI volumes", num_workers)
        return datalist

    scans = find_adni_scans(dataset_dir, task, csv_path, skip_labels)
    if "split" in scans[0]:
        splits = _preset_splits(scans, seed, fractions)
    else:
        splits = list(split_adni_subjects(scans, seed, fractions))
    datalist = {key: [{k: v for k, v in s.items() if k != "split"} for s in group]
                for key, group in zip(_DATALIST_KEYS, splits)}
    _check_splits(datalist, classes, f"ADNI data in '{dataset_dir}'")
    cache = ValidationCache(sidecar, rules=_VALIDATION_RULES)
    items = [(f"ADNI subject '{s['subject']}'", s["image"]) for s in scans]
    check_image_files(items, cache, "t1", "ADNI volumes", num_workers)
    write_text_atomically(json.dumps(datalist, indent=2) + "\n", datalist_path)
    cache.save()
    logger.info("Wrote datalist '%s' (%s): %s.", datalist_path, " vs ".join(classes),
                ", ".join(f"{len(v)} {k} ({sum(e['label'] > 0 for e in v)} {classes[-1]})"
                          for k, v in datalist.items()))
    return datalist


def list_adni_volumes(input_dir: str | os.PathLike, num_workers: int | None = None) -> list[dict]:
    """
    The T1 volumes to classify: every ``.nii`` / ``.nii.gz`` file under ``input_dir`` (recursively; or the one file
    ``input_dir`` names), each checked completely like a training volume. Entries are ``{"subject", "scan",
    "image"}`` with the subject parsed as in the folder layout, sorted by path.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist.
        ValueError: it holds no NIfTI file, or a volume fails its check (the message names the file).
    """
    paths = list_nifti_files(input_dir)
    entries = [{"subject": _subject_of_file(os.path.basename(p)), "scan": _nifti_stem(os.path.basename(p)),
                "image": p} for p in paths]
    check_image_files([(f"ADNI volume '{e['scan']}'", e["image"]) for e in entries], what="ADNI volumes",
                      num_workers=num_workers)
    return entries


# ------------------------------------------------------------------------------------------------------------------
# synthetic brains


def _soft_inside(radius: np.ndarray, scale_mm: float, edge_mm: float) -> np.ndarray:
    """1 inside the surface ``radius == 1`` of an ellipsoid of mean semi-axis ``scale_mm``, 0 outside, with a
    sigmoid edge of ``edge_mm``: a partial-volume model that keeps sub-voxel thickness differences visible."""
    return 1.0 / (1.0 + np.exp(np.clip((radius - 1.0) * scale_mm / edge_mm, -50, 50)))


def _phantom_brain(shape: tuple[int, int, int], spacing: float, diseased: bool,
                   rng: np.random.Generator) -> np.ndarray:
    """One skull-stripped T1-like brain (float32, background 0) on a RAS grid of ``spacing`` mm."""
    axes = [(np.arange(n) - 0.5 * (n - 1)) * spacing for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    centre = rng.uniform(-4.0, 4.0, 3)
    x, y, z = x - centre[0], y - centre[1], z - centre[2]
    fov = np.asarray(shape) * spacing
    semi = np.array([0.42, 0.43, 0.40]) * fov * rng.uniform(0.94, 1.04)
    mean_semi = float(semi.mean())
    radius = np.sqrt((x / semi[0]) ** 2 + (y / semi[1]) ** 2 + (z / semi[2]) ** 2)
    brain = _soft_inside(radius, mean_semi, 1.0)
    # cortex: a grey-matter shell, thinner with atrophy; atrophy also widens the sulcal CSF under the surface
    cortex_mm = rng.uniform(5.5, 8.0) if diseased else rng.uniform(7.5, 10.5)
    sulcal_mm = rng.uniform(1.5, 2.5) if diseased else rng.uniform(0.5, 1.5)
    inside_csf = _soft_inside(radius, mean_semi - sulcal_mm, 1.0)
    white = _soft_inside(radius * mean_semi / (mean_semi - sulcal_mm - cortex_mm), mean_semi, 1.0)
    # lateral ventricles: two ellipsoids beside the midline, enlarged with atrophy
    scale = rng.uniform(1.25, 1.9) if diseased else rng.uniform(0.8, 1.3)
    ventricles = np.zeros(shape)
    vent_semi = np.array([0.035, 0.11, 0.045]) * fov * scale
    for side in (-1.0, 1.0):
        offset = np.array([side * (0.045 * fov[0] + 0.5 * vent_semi[0]), 0.01 * fov[1], 0.03 * fov[2]])
        r = np.sqrt(((x - offset[0]) / vent_semi[0]) ** 2 + ((y - offset[1]) / vent_semi[1]) ** 2
                    + ((z - offset[2]) / vent_semi[2]) ** 2)
        ventricles = np.maximum(ventricles, _soft_inside(r, float(vent_semi.mean()), 1.0))
    # T1 contrast: white matter bright, grey matter mid, CSF dark
    t1 = 0.25 * brain + 0.35 * inside_csf + 0.4 * white
    t1 = t1 - 0.65 * ventricles * white
    bias = 1.0 + 0.08 * (rng.normal() * x / fov[0] + rng.normal() * y / fov[1] + rng.normal() * z / fov[2])
    t1 = t1 * bias * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.02, shape)
    return (np.clip(t1, 0.0, None) * (brain > 0.05)).astype(np.float32)


def generate_adni_phantoms(
    output_dir: str | os.PathLike,
    num_cases: int = 24,
    shape: Sequence[int] = (40, 48, 40),
    spacing: float = 4.0,
    task: str = "NC_v_AD",
    layout: str = "folders",
    seed: int = 0,
) -> list[str]:
    """
    Write synthetic T1 brains for demos and tests, half of each class of ``task``: skull-stripped ellipsoidal brains
    (white matter, a grey-matter cortex, sulcal CSF, lateral ventricles) with a bias field, a random gain, noise and
    a random position and head size. The second class ("AD", "pMCI") has enlarged ventricles, a thinner cortex and
    wider sulci, with distributions that overlap the first class's, so a classifier can learn it but not perfectly.
    Volumes are float32 NIfTI stored left-flipped (LAS, ``diag(-spacing, spacing, spacing)``) so the preprocessing's
    reorientation matters. Subject ``i`` depends only on ``(seed, i)``; files are written atomically.

    Args:
        output_dir: folder to create or fill.
        num_cases: number of subjects (one scan each, classes alternating), at least 2; named like ADNI participants
            (``ddd_S_dddd``).
        shape: grid in voxels, at least 16 per axis.
        spacing: isotropic voxel size in mm.
        task: the task whose class names label the subjects (:data:`ADNI_TASKS`).
        layout: ``"folders"`` (``<output_dir>/<class>/ADNI_<id>_MR_T1.nii.gz``, the release's layout) or ``"csv"``
            (``<output_dir>/images/<id>.nii.gz`` plus ``<output_dir>/subjects.csv`` with ``subject,label,image``).
        seed: base seed.

    Returns:
        absolute paths of the volumes written, sorted.
    """
    if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 2:
        raise ValueError(f"num_cases must be an integer of at least 2 (one subject per class), got {num_cases!r}.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be 3 sizes of at least 16 voxels, got {shape}.")
    if layout not in ("folders", "csv"):
        raise ValueError(f"layout must be 'folders' or 'csv', got '{layout}'.")
    classes = adni_task_classes(task)
    output_dir = os.path.abspath(os.fspath(output_dir))
    affine = np.diag([-spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [0.5 * (shape[0] - 1) * spacing, -0.5 * (shape[1] - 1) * spacing, -0.5 * (shape[2] - 1) * spacing]
    written, rows = [], []
    for index in range(num_cases):
        label = index % 2
        subject = f"{index % 7 + 2:03d}_S_{1000 + index:04d}"
        volume = _phantom_brain(shape, float(spacing), bool(label), np.random.default_rng([seed, index]))
        # stored LAS: the first axis runs right to left
        data = nifti_gz_bytes(volume[::-1].copy(), affine)
        if layout == "folders":
            path = os.path.join(output_dir, classes[label], f"ADNI_{subject}_MR_T1.nii.gz")
        else:
            path = os.path.join(output_dir, "images", f"{subject}.nii.gz")
            rows.append(f"{subject},{classes[label]},images/{subject}.nii.gz")
        write_bytes_atomically(data, path)
        written.append(path)
    if rows:
        write_text_atomically("subject,label,image\n" + "\n".join(rows) + "\n", os.path.join(output_dir,
                                                                                           "subjects.csv"))
    logger.info("Wrote %d synthetic %s brains of shape %s at %.1f mm to '%s'.", num_cases, " / ".join(classes),
                shape, spacing, output_dir)
    return sorted(written)
