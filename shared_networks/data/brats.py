# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
BraTS 2023 adult glioma (GLI) data layer: case discovery, validation, a reproducible train/validation/test datalist,
and a deterministic phantom generator that writes cases in the real challenge layout.

Layout (BraTS 2023 GLI training data)::

    <dataset_dir>/<case>/<case>-t1n.nii.gz
    <dataset_dir>/<case>/<case>-t1c.nii.gz
    <dataset_dir>/<case>/<case>-t2w.nii.gz
    <dataset_dir>/<case>/<case>-t2f.nii.gz
    <dataset_dir>/<case>/<case>-seg.nii.gz

Labels (BraTS 2023): 0 background, 1 necrotic tumour core (NCR), 2 surrounding non-enhancing FLAIR hyperintensity
(SNFH, edema), 3 enhancing tumour (ET). The evaluated regions are TC = {1, 3}, WT = {1, 2, 3} and ET = {3}.

The network channel order ``[t2w, t2f, t1n, t1c]`` and the 70/10/20 split with seed 42 follow the SegMamba release
(Xing et al., "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical Image Segmentation", MICCAI 2024,
https://arxiv.org/abs/2401.13560). Unlike the release, which shuffles an unsorted ``glob`` result, case names are sorted
before shuffling with a local ``random.Random(seed)``, so the split is the same on every file system.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared_networks.data.validation import (
    ImageFileSummary,
    ValidationCache,
    check_image_file,
    check_same_grid,
    nifti_source_stem,
    read_datalist,
    run_checks,
    validation_sidecar_path,
)
from shared_networks.io import nifti_gz_bytes, write_bytes_atomically, write_text_atomically

__all__ = [
    "BRATS_MODALITIES",
    "BRATS_LABELS",
    "BRATS_REGIONS",
    "BRATS_LABEL_SUFFIX",
    "BRATS_FILE_EXTENSION",
    "find_brats_cases",
    "validate_brats_cases",
    "split_case_names",
    "make_brats_datalist",
    "generate_brats_phantoms",
    "phantom_affine",
    "brats_case_name_formatter",
]

logger = logging.getLogger(__name__)

#: Network input channel order of the SegMamba release (channels 0..3).
BRATS_MODALITIES: tuple[str, ...] = ("t2w", "t2f", "t1n", "t1c")
#: BraTS 2023 label values and their names.
BRATS_LABELS: dict[int, str] = {0: "background", 1: "NCR", 2: "SNFH", 3: "ET"}
#: Evaluated regions (tumour core, whole tumour, enhancing tumour) as the label values each one unites.
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"TC": (1, 3), "WT": (1, 2, 3), "ET": (3,)}
#: File name suffix of the segmentation, ``<case>-seg.nii.gz``.
BRATS_LABEL_SUFFIX = "seg"
BRATS_FILE_EXTENSION = ".nii.gz"

_DATALIST_KEYS = ("training", "validation", "testing")
_LAYOUT = "<dataset_dir>/<case>/<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz"
#: Cases between two progress messages of a validation.
_LOG_EVERY_CASES = 100


def _case_file(case_dir: str, case: str, suffix: str) -> str:
    return os.path.join(case_dir, f"{case}-{suffix}{BRATS_FILE_EXTENSION}")


def find_brats_cases(dataset_dir: str | os.PathLike, require_label: bool = True) -> list[dict]:
    """
    Find the cases of a BraTS 2023 GLI style dataset folder (see the module docstring for the layout).

    A sub-folder is a case when it holds at least one file named ``<folder>-<t1n|t1c|t2w|t2f|seg>.nii.gz``; other
    folders and unknown extra files are ignored. Only the presence of the files is checked here; use
    :func:`validate_brats_cases` to read them.

    Args:
        dataset_dir: folder holding one sub-folder per case.
        require_label: if True every case must have its ``<case>-seg.nii.gz``; if False the ``"label"`` key is left
            out for cases without one (e.g. the challenge validation data).

    Returns:
        cases sorted by name, each ``{"case": name, "image": [paths in BRATS_MODALITIES order], "label": path}``
        with absolute paths.

    Raises:
        FileNotFoundError: when ``dataset_dir`` does not exist, or a case misses a modality (or its label when
            ``require_label`` is True); the message names the case and the missing file.
        NotADirectoryError: when ``dataset_dir`` is not a folder.
        ValueError: when ``dataset_dir`` is empty or no sub-folder follows the layout.
    """
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    if not os.path.exists(dataset_dir):
        raise FileNotFoundError(f"dataset_dir '{dataset_dir}' does not exist; expected the layout {_LAYOUT}.")
    if not os.path.isdir(dataset_dir):
        raise NotADirectoryError(f"dataset_dir '{dataset_dir}' is not a folder; expected the layout {_LAYOUT}.")
    entries = sorted(e.name for e in os.scandir(dataset_dir) if not e.name.startswith("."))
    if not entries:
        raise ValueError(f"dataset_dir '{dataset_dir}' is empty; expected the layout {_LAYOUT}.")

    suffixes = (*BRATS_MODALITIES, BRATS_LABEL_SUFFIX)
    cases = []
    for name in entries:
        case_dir = os.path.join(dataset_dir, name)
        if not os.path.isdir(case_dir):
            continue
        expected = {suffix: _case_file(case_dir, name, suffix) for suffix in suffixes}
        present = {suffix for suffix, path in expected.items() if os.path.isfile(path)}
        if not present:
            logger.debug(
                "Ignoring folder '%s': it holds no file named %s-<modality>%s.", case_dir, name, BRATS_FILE_EXTENSION
            )
            continue
        missing = [m for m in BRATS_MODALITIES if m not in present]
        if missing:
            raise FileNotFoundError(
                f"BraTS case '{name}': missing modality file(s) "
                + ", ".join(f"'{expected[m]}'" for m in missing)
                + f"; every case needs {', '.join(f'{name}-{m}{BRATS_FILE_EXTENSION}' for m in BRATS_MODALITIES)}."
            )
        case = {"case": name, "image": [expected[m] for m in BRATS_MODALITIES]}
        if BRATS_LABEL_SUFFIX in present:
            case["label"] = expected[BRATS_LABEL_SUFFIX]
        elif require_label:
            raise FileNotFoundError(
                f"BraTS case '{name}': missing label file '{expected[BRATS_LABEL_SUFFIX]}' (require_label=True)."
            )
        cases.append(case)

    if not cases:
        hint = ""
        base = os.path.basename(dataset_dir)
        if any(os.path.isfile(_case_file(dataset_dir, base, m)) for m in BRATS_MODALITIES):
            hint = f" '{dataset_dir}' looks like a single case folder: pass its parent folder instead."
        raise ValueError(
            f"dataset_dir '{dataset_dir}' has no case folder matching the layout {_LAYOUT} "
            f"(found: {', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}).{hint}"
        )
    logger.info("Found %d BraTS cases in '%s'.", len(cases), dataset_dir)
    return cases


#: Version tag of the BraTS checks in the validation records (bump it when the checks below change).
_VALIDATION_RULES = "brats-2023/1"
#: Kinds of file checks (recorded in the validation record): images; labels with their values checked; labels read
#: as files only (``check_labels=False``).
_IMAGE, _LABEL, _LABEL_FILE = "image", "label", "label-file"


def _parse_case_entry(entry: Any, where: str, check_labels: bool, owner: str = "") -> tuple[str, list[tuple[str, str]]]:
    """
    Check the structure of one case entry and that its files exist.

    Args:
        entry: ``{"case": name, "image": [4 paths], "label": path}``.
        where: how to name the entry when it has no case name (e.g. ``"cases[3]"``).
        check_labels: the entry must have a ``"label"``.
        owner: appended to the case in messages, e.g. ``" (split 'testing' of datalist 'datalist.json')"``.

    Returns:
        the message context (``"BraTS case '<name>'<owner>"``) and the ``(path, kind)`` of its files, images first.
    """
    if not isinstance(entry, Mapping) or "image" not in entry:
        raise ValueError(f"{where}{owner} must be a dict with 'case', 'image' and 'label' keys, got {entry!r}.")
    context = f"BraTS case '{entry.get('case', where)}'{owner}"
    images = entry["image"]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or len(images) != len(BRATS_MODALITIES):
        raise ValueError(
            f"{context}: 'image' must list {len(BRATS_MODALITIES)} files in the order {list(BRATS_MODALITIES)}, "
            f"got {images!r}."
        )
    if check_labels and "label" not in entry:
        raise ValueError(f"{context}: no 'label' file given (check_labels=True).")
    files = [(os.fspath(path), _IMAGE) for path in images]
    if "label" in entry:
        files.append((os.fspath(entry["label"]), _LABEL if check_labels else _LABEL_FILE))
    for path, _ in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{context}: file '{path}' does not exist.")
    return context, files


def _check_case_file(path: str, kind: str, context: str, cache: ValidationCache | None) -> ImageFileSummary:
    """Full check of one file (:func:`check_image_file`, plus the label values), unless ``cache`` vouches for it."""
    summary = cache.lookup(path, kind) if cache is not None else None
    if summary is not None:
        return summary
    summary = check_image_file(path, context, allow_uniform=kind != _IMAGE, keep_data=kind == _LABEL)
    if kind == _LABEL:
        _check_label_values(context, path, summary.data)
        summary = dataclasses.replace(summary, data=None)
    if cache is not None:
        cache.record(summary, kind)
    return summary


def _check_cases(
    cases: Sequence[tuple[str, list[tuple[str, str]]]], cache: ValidationCache | None, num_workers: int | None
) -> None:
    """Check every file of every case (see :func:`_check_case_file`) and that each case's files share one grid."""

    def check_case(case: tuple[str, list[tuple[str, str]]]) -> None:
        context, files = case
        check_same_grid([_check_case_file(path, kind, context, cache) for path, kind in files], context)

    logger.info("Validating %d BraTS cases (%d files).", len(cases), sum(len(files) for _, files in cases))
    run_checks(check_case, cases, num_workers=num_workers, what="BraTS cases", log_every=_LOG_EVERY_CASES)


def validate_brats_cases(cases: Sequence[Mapping], check_labels: bool = True, num_workers: int | None = None) -> None:
    """
    Check BraTS cases before training or inference; every file is read completely (see
    :func:`shared_networks.data.validation.check_image_file`).

    - every file exists and is a readable single-file NIfTI; a ``.nii.gz`` is decompressed completely, so a corrupt
      (CRC mismatch) or truncated gzip stream is reported;
    - every file is a 3D scalar volume (not 4D, not an RGB / vector image) with finite values (no NaN or Inf);
    - the images (modalities) are neither all zero nor constant;
    - the four modalities and the label share one grid: the same shape and affines equal within the tolerance of
      MONAI's ``LoadImage`` (:func:`shared_networks.data.validation.check_same_grid`);
    - if ``check_labels``, the label only holds integer values in :data:`BRATS_LABELS`.

    The existence and the structure of all entries are checked first, so a missing file is reported at once. Files
    are then checked in ``num_workers`` threads, with an INFO line every 100 cases.

    Args:
        cases: entries as returned by :func:`find_brats_cases` (``"case"``, ``"image"`` and optionally ``"label"``).
        check_labels: if True every case must have a ``"label"`` whose values are checked; if False labels are
            optional and, when present, checked as files (readable, 3D, finite, on the grid of the images) only.
        num_workers: threads reading files; None: one per CPU, at most 8; 0 or 1: no threads.

    Raises:
        FileNotFoundError: a file is missing; the message names the case and the file.
        ValueError: an entry is malformed or a check fails; the message names the case, the file and what was
            expected.
    """
    _validate_case_list(cases, check_labels, num_workers, cache=None)


def _validate_case_list(
    cases: Sequence[Mapping], check_labels: bool, num_workers: int | None, cache: ValidationCache | None
) -> None:
    """:func:`validate_brats_cases`, recording the files that pass in ``cache`` (if given)."""
    if isinstance(cases, (str, bytes, Mapping)) or not isinstance(cases, Sequence):
        raise ValueError(f"cases must be a list of case dicts, got {type(cases).__name__}.")
    if len(cases) == 0:
        raise ValueError("cases is empty: there are no BraTS cases to validate.")
    parsed = [_parse_case_entry(entry, f"cases[{index}]", check_labels) for index, entry in enumerate(cases)]
    _check_cases(parsed, cache=cache, num_workers=num_workers)
    logger.info("Validated %d BraTS cases.", len(cases))


def _check_label_values(context: str, path: str, labels: np.ndarray) -> None:
    """The label values must be integers in :data:`BRATS_LABELS` (``labels`` are finite, see check_image_file)."""
    # the labels are the integers 0..3, so range checks replace np.unique (sorting ~9 M voxels is slow)
    unexpected_mask = (labels < min(BRATS_LABELS)) | (labels > max(BRATS_LABELS))
    if not np.issubdtype(labels.dtype, np.integer):
        unexpected_mask |= labels != np.floor(labels)  # fractional values
    if unexpected_mask.any():
        unexpected = np.unique(labels[unexpected_mask]).tolist()
        hint = " (label 4 is the pre-2023 ET code: map it to 3)" if 4 in unexpected else ""
        raise ValueError(
            f"{context}: label file '{path}' holds values {unexpected[:10]} outside "
            f"{sorted(BRATS_LABELS)} {list(BRATS_LABELS.values())}{hint}."
        )


def split_case_names(
    case_names: Sequence[str], seed: int = 42, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> tuple[list[str], list[str], list[str]]:
    """
    Reproducible train/validation/test split of case names, following the SegMamba release (seed 42, 70/10/20):
    the names are sorted, shuffled with ``random.Random(seed)``, then training takes the first ``int(f_train * N)``,
    validation the next ``int(f_val * N)`` and testing the rest.

    For small N a split with a positive fraction that would be empty takes one case from the largest split (on a tie,
    the later one), so that, e.g., 6 cases give 3/1/2 instead of 4/0/2 and 4 cases 2/1/1 instead of 2/0/2.
    For N = 1251 the sizes are 875/125/251; the release takes the same 875/125 and tests on the last 250, leaving one
    case unused.

    Args:
        case_names: unique case names.
        seed: seed of the local ``random.Random`` used to shuffle.
        fractions: training, validation and testing fractions, non-negative and summing to 1.

    Raises:
        ValueError: when ``fractions`` is not three non-negative numbers summing to 1, or names are repeated.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"fractions must be three non-negative numbers (training, validation, testing) summing to 1, "
            f"got {tuple(fractions)}."
        )
    names = sorted(case_names)
    if len(set(names)) != len(names):
        raise ValueError("case_names holds repeated names; every case needs a unique name.")
    random.Random(seed).shuffle(names)
    total = len(names)
    # the epsilon guards against products such as 0.7 * 10 = 6.9999... flooring one case too low
    sizes = [int(fractions[0] * total + 1e-9), int(fractions[1] * total + 1e-9)]
    sizes.append(total - sum(sizes))
    for index in range(3):
        if fractions[index] > 0 and sizes[index] == 0:
            largest = max(reversed(range(3)), key=lambda i: sizes[i])  # ties: the later split gives
            if sizes[largest] > 1:
                sizes[largest] -= 1
                sizes[index] += 1
    return names[: sizes[0]], names[sizes[0] : sizes[0] + sizes[1]], names[sizes[0] + sizes[1] :]


def write_case_split(
    cases: Sequence[Mapping], datalist_path: str | os.PathLike, seed: int, fractions: Sequence[float],
    cache: ValidationCache,
) -> dict:
    """Split ``cases`` by their ``"case"`` name (:func:`split_case_names`), write the datalist atomically, then the
    validation record ``cache`` of its files; returns ``{"training", "validation", "testing"}``."""
    by_name = {case["case"]: case for case in cases}
    splits = split_case_names(list(by_name), seed=seed, fractions=fractions)
    datalist = {key: [by_name[name] for name in names] for key, names in zip(_DATALIST_KEYS, splits)}
    write_text_atomically(json.dumps(datalist, indent=2) + "\n", datalist_path)
    cache.save()
    logger.info("Wrote datalist '%s': %s.", datalist_path, ", ".join(f"{len(v)} {k}" for k, v in datalist.items()))
    return datalist


def _revalidate_datalist(datalist: dict, datalist_path: str, num_workers: int | None) -> None:
    """
    Check every file of every split of a reused datalist: their existence always, and a full check of the files
    whose fingerprint changed since the validation record beside the datalist was written.
    """
    cases, seen = [], {}
    for split in _DATALIST_KEYS:
        for index, entry in enumerate(datalist[split]):
            owner = f" (split '{split}' of datalist '{datalist_path}')"
            cases.append(_parse_case_entry(entry, f"entry {index}", check_labels=True, owner=owner))
            name = entry.get("case")
            if name is not None and name in seen and seen[name] != split:
                logger.warning(
                    "Datalist '%s': case '%s' is listed in both '%s' and '%s' (its results leak between splits).",
                    datalist_path, name, seen[name], split,
                )
            seen.setdefault(name, split)
    cache = ValidationCache.load(validation_sidecar_path(datalist_path), rules=_VALIDATION_RULES)
    try:
        if cases:
            _check_cases(cases, cache=cache, num_workers=num_workers)
    finally:
        # kept on failure too: after fixing one bad file, the next run reads only what changed
        cache.keep_only(path for _, files in cases for path, _ in files)
        cache.save()
    logger.info(
        "Validated %d BraTS cases of the datalist '%s': %d files read in full, %d unchanged since their last check.",
        len(cases), datalist_path, cache.misses, cache.hits,
    )


def make_brats_datalist(
    dataset_dir: str | os.PathLike,
    datalist_path: str | os.PathLike,
    seed: int = 42,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    overwrite: bool = False,
    num_workers: int | None = None,
) -> dict:
    """
    Build (or reuse) the JSON datalist of a BraTS 2023 GLI dataset with a reproducible split (see
    :func:`split_case_names`).

    If ``datalist_path`` does not exist or ``overwrite`` is True, the cases are found and validated completely
    (:func:`find_brats_cases`, :func:`validate_brats_cases` with ``check_labels=True``) before the file is written
    atomically. Otherwise it is reused unchanged, so a user can edit it, but every file of every split (training,
    validation and testing; every entry needs its label) is checked again as :func:`validate_brats_cases` does with
    ``check_labels=True``: its existence always, and a full check of the files whose ``(size, mtime_ns)`` changed
    since they last passed. Those fingerprints are kept in a
    validation record beside the datalist, ``.<datalist name>.validated.json`` (see
    :class:`shared_networks.data.validation.ValidationCache`); when it is missing or stale every file is read, so a
    reuse with nothing changed only costs a ``stat`` per file.

    Args:
        dataset_dir: folder with one sub-folder per case.
        datalist_path: JSON file to write or reuse.
        seed: split seed (42 in the SegMamba release).
        fractions: training, validation and testing fractions.
        overwrite: rebuild the file even if it exists.
        num_workers: threads reading files (see :func:`validate_brats_cases`).

    Returns:
        ``{"training": [...], "validation": [...], "testing": [...]}``; each entry is
        ``{"case": name, "image": [4 absolute paths in BRATS_MODALITIES order], "label": absolute path}``.

    Raises:
        FileNotFoundError: a file is missing; the message names the case (and the split on reuse) and the file.
        ValueError: a check fails, or the existing datalist is malformed; the message names the case (and the split
            on reuse), the file and what was expected.
    """
    datalist_path = os.fspath(datalist_path)
    if os.path.isfile(datalist_path) and not overwrite:
        logger.info("Reusing the existing datalist '%s' (pass overwrite=True to rebuild it).", datalist_path)
        datalist = read_datalist(datalist_path, _DATALIST_KEYS)
        _revalidate_datalist(datalist, datalist_path, num_workers)
        return datalist

    cases = find_brats_cases(dataset_dir, require_label=True)
    # a new, empty record: every file is read, and the record is written with the datalist
    cache = ValidationCache(validation_sidecar_path(datalist_path), rules=_VALIDATION_RULES)
    _validate_case_list(cases, check_labels=True, num_workers=num_workers, cache=cache)
    return write_case_split(cases, datalist_path, seed, fractions, cache)


def brats_case_name_formatter(metadict: Mapping, saver: Any = None) -> dict:
    """
    ``output_name_formatter`` for :class:`monai.transforms.SaveImaged` that names outputs after the BraTS case:
    the input ``<dir>/<case>/<case>-t2w.nii.gz`` (first modality of the stacked image) gives the subject ``<case>``,
    so ``SaveImaged(output_postfix="seg", separate_folder=True)`` writes ``<output_dir>/<case>/<case>_seg.nii.gz``.

    Args:
        metadict: meta data of the item; ``filename_or_obj`` is the source file (or the list of source files).
        saver: the calling transform (unused, part of the formatter signature).

    Returns:
        ``{"subject": case, "idx": None}``.
    """
    name = nifti_source_stem(metadict)
    for modality in BRATS_MODALITIES:
        if name.endswith(f"-{modality}"):
            name = name[: -len(modality) - 1]
            break
    return {"subject": name, "idx": None}


# Phantom tissues and their mean intensities per modality in BRATS_MODALITIES order (t2w, t2f, t1n, t1c). The values
# mimic the usual MR contrasts: CSF and necrosis bright on T2w, edema bright on FLAIR (t2f), the enhancing rim bright
# on post-contrast T1 (t1c), white matter brighter than grey matter on T1. Tissue codes 1..3 equal the BraTS labels.
_PHANTOM_TISSUES = ("grey_matter", "NCR", "SNFH", "ET", "white_matter", "csf")
_PHANTOM_TISSUE_MEANS = np.array(
    [
        (800.0, 600.0, 450.0, 480.0),  # grey matter
        (1400.0, 400.0, 220.0, 250.0),  # NCR
        (1250.0, 1100.0, 380.0, 400.0),  # SNFH
        (900.0, 850.0, 420.0, 1300.0),  # ET
        (550.0, 450.0, 650.0, 680.0),  # white matter
        (1500.0, 150.0, 250.0, 280.0),  # CSF
    ]
)
_PHANTOM_NOISE_STD = 35.0
_PHANTOM_MIN_SIZE = 32


def phantom_affine(shape: Sequence[int]) -> np.ndarray:
    """
    Affine of the phantom volumes: 1 mm isotropic voxels, axes flipped like an LPS-stored scan (``diag(-1, -1, 1)``
    in RAS world coordinates) and a non-trivial origin that puts the volume centre near the world origin.
    """
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[:3, 3] = (0.5 * (shape[0] - 1), 0.5 * (shape[1] - 1) + 17.0, -0.5 * (shape[2] - 1) - 9.0)
    return affine


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _smooth(volume: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 filter along every axis (edge-replicated): a light partial-volume blur."""
    for axis in range(volume.ndim):
        padded = np.pad(volume, [(1, 1) if a == axis else (0, 0) for a in range(volume.ndim)], mode="edge")
        n = volume.shape[axis]
        volume = 0.25 * (
            padded.take(range(0, n), axis) + 2 * padded.take(range(1, n + 1), axis) + padded.take(range(2, n + 2), axis)
        )
    return volume


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation with the 6-connected (face) neighbourhood."""
    grown = mask.copy()
    for axis in range(mask.ndim):
        lower = [slice(None)] * mask.ndim
        upper = [slice(None)] * mask.ndim
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        grown[tuple(lower)] |= mask[tuple(upper)]
        grown[tuple(upper)] |= mask[tuple(lower)]
    return grown


def _erode(mask: np.ndarray) -> np.ndarray:
    """Binary erosion with the 6-connected (face) neighbourhood; voxels outside the volume count as background."""
    return ~_dilate(~np.pad(mask, 1))[1:-1, 1:-1, 1:-1]


def _phantom_case(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw one phantom: four modality volumes (int16, BRATS_MODALITIES order) and the label map (uint8)."""
    size = np.asarray(shape, dtype=np.float64)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), axis=-1)

    # brain: an ellipsoid that leaves a zero background margin on every side
    brain_centre = 0.5 * (size - 1) + rng.uniform(-0.03, 0.03, 3) * size
    brain_axes = rng.uniform(0.36, 0.43, 3) * size
    brain_radius = np.sum(((grid - brain_centre) / brain_axes) ** 2, axis=-1)
    brain = brain_radius <= 1.0
    tissue = np.where(brain_radius <= 0.45, _PHANTOM_TISSUES.index("white_matter"), 0)
    ventricle_radius = np.sum(((grid - brain_centre) / (brain_axes * np.array([0.15, 0.3, 0.12]))) ** 2, axis=-1)
    tissue[ventricle_radius <= 1.0] = _PHANTOM_TISSUES.index("csf")

    # tumour: one irregular lesion whose nested regions are sublevel sets of one function (the ellipsoidal radius
    # scaled by a smooth positive function of the direction), widened where needed so that an ET shell of at least one
    # voxel encloses the NCR core, SNFH encloses the tumour core, and the tumour core stays inside the brain
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    tumour_centre = brain_centre + rng.uniform(0.1, 0.4) * brain_axes * direction
    tumour_axes = max(rng.uniform(0.15, 0.25) * size.min(), 6.0) * rng.uniform(0.8, 1.25, 3)
    scaled = ((grid - tumour_centre) @ _random_rotation(rng)) / tumour_axes
    radius = np.sqrt(np.sum(scaled**2, axis=-1))
    unit = scaled / np.maximum(radius, 1e-6)[..., None]
    core_level = rng.uniform(0.5, 0.7)
    lobes = np.zeros(shape)
    for _ in range(4):
        amplitude, frequency, phase = rng.uniform(0.05, 0.15), rng.uniform(1.5, 4.0), rng.uniform(0.0, 2 * np.pi)
        lobes += amplitude * np.cos(frequency * np.pi * (unit @ rng.normal(size=3)) + phase)
    tumour_radius = radius * np.exp(lobes)
    inner_brain = _erode(brain)
    necrosis = _erode(inner_brain) & (tumour_radius <= core_level * rng.uniform(0.5, 0.7))
    necrosis[tuple(np.rint(tumour_centre).astype(int))] = True
    core = (inner_brain & (tumour_radius <= core_level)) | _dilate(necrosis)
    whole = brain & ((tumour_radius <= 1.0) | _dilate(core))
    label = np.zeros(shape, dtype=np.uint8)
    label[whole] = 2
    label[core] = 3
    label[necrosis] = 1
    tissue = np.where(label > 0, label, tissue)

    images = []
    for channel in range(len(BRATS_MODALITIES)):
        # smooth multiplicative bias field along a random direction and a random gain, different per modality
        gradient = rng.normal(size=3)
        gradient /= np.linalg.norm(gradient)
        bias = 1.0 + 0.1 * (((grid - brain_centre) / brain_axes) @ gradient)
        gain = rng.uniform(0.85, 1.15)
        means = _smooth(_PHANTOM_TISSUE_MEANS[tissue, channel])
        volume = gain * bias * means + rng.normal(0.0, _PHANTOM_NOISE_STD, shape)
        volume = np.where(brain, np.clip(np.rint(volume), 1, np.iinfo(np.int16).max), 0).astype(np.int16)
        images.append(volume)
    return images, label


def generate_brats_phantoms(
    output_dir: str | os.PathLike,
    num_cases: int = 6,
    shape: Sequence[int] = (64, 64, 64),
    seed: int = 0,
) -> list[str]:
    """
    Write synthetic BraTS-like cases in the BraTS 2023 GLI layout, for demos and tests.

    Each case has a brain-like ellipsoid (white/grey matter, ventricles) on an exactly zero background and one
    irregular tumour at a random position and size: the NCR core inside the ET shell inside the SNFH edema. The four
    modalities have distinct contrasts per region (bright edema on t2f, bright enhancing rim on t1c, ...) plus a bias
    field, a random gain and Gaussian noise, so a segmentation network can learn the task. Volumes are int16 and labels
    uint8 NIfTI with a 1 mm affine (see :func:`phantom_affine`). Case ``i`` only depends on ``(seed, i)``, and the
    files are byte-identical between runs. Files are written atomically; existing phantom files are replaced.

    Args:
        output_dir: dataset folder to create or fill.
        num_cases: number of cases, named ``BraTS-PHANTOM-00000-000``, ``BraTS-PHANTOM-00001-000``, ...
        shape: volume shape, at least 32 along every axis.
        seed: base seed.

    Returns:
        absolute paths of the case folders, sorted.
    """
    if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 1:
        raise ValueError(f"num_cases must be a positive integer, got {num_cases!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < _PHANTOM_MIN_SIZE:
        raise ValueError(
            f"shape must be 3 sizes of at least {_PHANTOM_MIN_SIZE} voxels (to resolve the nested tumour regions), "
            f"got {shape}."
        )
    output_dir = os.path.abspath(os.fspath(output_dir))
    affine = phantom_affine(shape)
    case_dirs = []
    for index in range(num_cases):
        case = f"BraTS-PHANTOM-{index:05d}-000"
        case_dir = os.path.join(output_dir, case)
        images, label = _phantom_case(shape, np.random.default_rng([seed, index]))
        for modality, volume in zip(BRATS_MODALITIES, images):
            write_bytes_atomically(nifti_gz_bytes(volume, affine), _case_file(case_dir, case, modality))
        write_bytes_atomically(nifti_gz_bytes(label, affine), _case_file(case_dir, case, BRATS_LABEL_SUFFIX))
        case_dirs.append(case_dir)
    logger.info("Wrote %d BraTS phantom cases of shape %s to '%s'.", num_cases, shape, output_dir)
    return case_dirs
