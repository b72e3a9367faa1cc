# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Datasets in nnU-Net v2's raw format (U-Mamba trains on them: FLARE22 abdomen CT and AMOS MR are distributed this way
for it), a reproducible split, and synthetic abdomen-like CT phantoms in that format for demos and tests.

Layout (https://github.com/MIC-DKFZ/nnUNet/blob/master/documentation/dataset_format.md)::

    <dataset_dir>/dataset.json     {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, ...},
                                    "numTraining": 50, "file_ending": ".nii.gz"}
    <dataset_dir>/imagesTr/<case>_0000.nii.gz ...   one file per channel, numbered as in channel_names
    <dataset_dir>/labelsTr/<case>.nii.gz            integer label map on the grid of the case's images
    <dataset_dir>/imagesTs/<case>_0000.nii.gz ...   optional test cases, with labelsTs/<case>.nii.gz when scored

Only NIfTI (``.nii.gz`` / ``.nii``) datasets and plain (not region-based) labels are read here; the labels must be
the consecutive integers 0 ... K that nnU-Net requires, 0 being the background.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import re
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
    "ABDOMEN_ORGAN_LABELS",
    "NnUNetDataset",
    "find_nnunet_cases",
    "generate_abdomen_ct_phantoms",
    "list_nnunet_images",
    "make_nnunet_datalist",
    "nnunet_case_name_formatter",
    "read_nnunet_dataset",
    "validate_nnunet_cases",
]

logger = logging.getLogger(__name__)

#: The 13 organs of FLARE22 / AMOS as U-Mamba's Dataset701_AbdomenCT and Dataset702_AbdomenMR label them.
ABDOMEN_ORGAN_LABELS: dict[str, int] = {
    "background": 0, "liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5,
    "inferior vena cava": 6, "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9, "esophagus": 10,
    "stomach": 11, "duodenum": 12, "left kidney": 13,
}

_FILE_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_DATALIST_KEYS = ("training", "validation", "testing")
_VALIDATION_RULES = "nnunet-raw/1"
_IMAGE, _LABEL = "image", "label"


@dataclasses.dataclass(frozen=True)
class NnUNetDataset:
    """What ``dataset.json`` of a raw nnU-Net v2 dataset says.

    Attributes:
        path: the dataset folder.
        channel_names: the input channels in order (e.g. ``("CT",)``).
        labels: label name -> value, 0 (background) first, values 0 ... K.
        file_ending: ``".nii.gz"`` or ``".nii"``.
        num_training: ``numTraining``.
    """

    path: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    file_ending: str
    num_training: int

    @property
    def label_names(self) -> list[str]:
        """The label names in value order, background first (one output channel each)."""
        return sorted(self.labels, key=self.labels.__getitem__)


def read_nnunet_dataset(dataset_dir: str | os.PathLike) -> NnUNetDataset:
    """
    Read and check ``<dataset_dir>/dataset.json`` (nnU-Net v2): ``channel_names`` numbered 0 ... C-1, ``labels`` the
    consecutive integers 0 ... K with 0 the background, ``file_ending`` a NIfTI ending, ``numTraining`` an integer.

    Raises:
        FileNotFoundError: no ``dataset.json``.
        ValueError: a key is missing or malformed; the message names the file and the key.
    """
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    path = os.path.join(dataset_dir, "dataset.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"'{path}' does not exist: a dataset in nnU-Net raw format has a dataset.json beside imagesTr/ and "
            "labelsTr/ (https://github.com/MIC-DKFZ/nnUNet/blob/master/documentation/dataset_format.md)."
        )
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"'{path}' is not a readable JSON file: {err}") from err
    if not isinstance(content, Mapping):
        raise ValueError(f"'{path}' must hold a JSON object, got {type(content).__name__}.")
    if "channel_names" not in content:
        hint = (" It has 'modality': an nnU-Net v1 dataset.json; convert the dataset with "
                "nnUNetv2_convert_old_nnUNet_dataset.") if "modality" in content else ""
        raise ValueError(f"'{path}' has no 'channel_names' (nnU-Net v2 format).{hint}")
    for key in ("labels", "numTraining", "file_ending"):
        if key not in content:
            raise ValueError(f"'{path}' has no '{key}' (nnU-Net v2 format).")
    channels = content["channel_names"]
    if not isinstance(channels, Mapping) or sorted(channels, key=str) != [str(i) for i in range(len(channels))] \
            or not channels:
        raise ValueError(f"'{path}': 'channel_names' must map '0' ... 'C-1' to channel names, got {channels!r}.")
    labels = content["labels"]
    if not isinstance(labels, Mapping) or not labels:
        raise ValueError(f"'{path}': 'labels' must map label names to integer values, got {labels!r}.")
    if any(not isinstance(v, int) or isinstance(v, bool) for v in labels.values()):
        raise ValueError(f"'{path}': 'labels' has region-based or non-integer values {labels!r}; only plain label "
                         "maps (one integer per label) are supported.")
    values = sorted(labels.values())
    if values != list(range(len(values))) or labels.get("background") != 0:
        raise ValueError(f"'{path}': 'labels' must be the consecutive integers 0 ... K with 'background': 0, as "
                         f"nnU-Net requires; got {dict(labels)}.")
    ending = content["file_ending"]
    if ending not in _FILE_ENDINGS:
        raise ValueError(f"'{path}': file_ending {ending!r} is not supported here; expected one of {_FILE_ENDINGS}.")
    num_training = content["numTraining"]
    if not isinstance(num_training, int) or isinstance(num_training, bool) or num_training < 0:
        raise ValueError(f"'{path}': 'numTraining' must be a non-negative integer, got {num_training!r}.")
    return NnUNetDataset(dataset_dir, tuple(str(channels[str(i)]) for i in range(len(channels))),
                         {str(k): int(v) for k, v in labels.items()}, ending, num_training)


def _case_files(folder: str, dataset: NnUNetDataset, where: str,
                names: Sequence[str] | None = None) -> dict[str, list[str]]:
    """``{case: [channel files in order]}`` of an images folder (or of its files ``names``); every file must be
    ``<case>_<XXXX><ending>`` and every case must have exactly the channels of ``dataset.json``."""
    channels: dict[str, dict[int, str]] = {}
    for name in sorted(os.listdir(folder) if names is None else names):
        if not name.endswith(dataset.file_ending) or name.startswith("."):
            continue
        match = _CHANNEL_FILE.match(name[: -len(dataset.file_ending)])
        if match is None:
            raise ValueError(f"{where}: file '{os.path.join(folder, name)}' is not named <case>_<XXXX>"
                             f"{dataset.file_ending} (a 4-digit channel number).")
        channels.setdefault(match["case"], {})[int(match["channel"])] = os.path.join(folder, name)
    expected = list(range(len(dataset.channel_names)))
    for case, files in channels.items():
        if sorted(files) != expected:
            wanted = [f"{case}_{c:04d}{dataset.file_ending}" for c in expected]
            raise ValueError(f"{where}: case '{case}' has the channel files {sorted(files)}, expected {wanted} "
                             f"(channel_names {list(dataset.channel_names)} of dataset.json).")
    return {case: [files[c] for c in expected] for case, files in channels.items()}


def find_nnunet_cases(dataset_dir: str | os.PathLike, split: str = "Tr", require_labels: bool = True) -> list[dict]:
    """
    The cases of ``images<split>/`` (``"Tr"`` or ``"Ts"``) of a raw nnU-Net dataset, sorted by name:
    ``{"case", "image": [one file per channel], "label"}`` (``"label"`` from ``labels<split>/``, when it exists).
    Only names and existence are checked here (see :func:`validate_nnunet_cases` for the files' contents).

    Raises:
        FileNotFoundError: the images folder is missing, or (``require_labels``) a case has no label file.
        ValueError: a file is misnamed, a case lacks a channel, a label file has no images, or the number of
            training cases differs from ``numTraining``.
    """
    dataset = read_nnunet_dataset(dataset_dir)
    if split not in ("Tr", "Ts"):
        raise ValueError(f"split must be 'Tr' or 'Ts', got {split!r}.")
    images_dir = os.path.join(dataset.path, f"images{split}")
    labels_dir = os.path.join(dataset.path, f"labels{split}")
    where = f"nnU-Net dataset '{dataset.path}'"
    if not os.path.isdir(images_dir):
        raise FileNotFoundError(f"{where}: folder '{images_dir}' does not exist.")
    files = _case_files(images_dir, dataset, where)
    labels = {}
    if os.path.isdir(labels_dir):
        labels = {n[: -len(dataset.file_ending)]: os.path.join(labels_dir, n) for n in sorted(os.listdir(labels_dir))
                  if n.endswith(dataset.file_ending) and not n.startswith(".")}
    orphans = sorted(set(labels) - set(files))
    if orphans:
        raise ValueError(f"{where}: label file '{labels[orphans[0]]}' has no images in '{images_dir}' "
                         f"({len(orphans)} label file(s) without images).")
    if require_labels:
        missing = sorted(set(files) - set(labels))
        if missing:
            raise FileNotFoundError(f"{where}: case '{missing[0]}' has no label file "
                                    f"'{os.path.join(labels_dir, missing[0] + dataset.file_ending)}' "
                                    f"({len(missing)} case(s) without labels).")
    if split == "Tr" and len(files) != dataset.num_training:
        raise ValueError(f"{where}: dataset.json says numTraining {dataset.num_training}, but '{images_dir}' holds "
                         f"{len(files)} cases.")
    if not files:
        raise ValueError(f"{where}: no {dataset.file_ending} cases in '{images_dir}'.")
    return [{"case": case, "image": images, **({"label": labels[case]} if case in labels else {})}
            for case, images in sorted(files.items())]


def _check_label_values(context: str, path: str, labels: np.ndarray, allowed: Mapping[str, int]) -> None:
    values = labels.ravel()
    if np.issubdtype(values.dtype, np.integer) and values.size and values.min() >= 0:
        present = np.flatnonzero(np.bincount(values.astype(np.int64)))
    else:
        present = np.unique(values)
    unexpected = [float(v) if not float(v).is_integer() else int(v) for v in present
                  if not float(v).is_integer() or int(v) not in allowed.values()]
    if unexpected:
        raise ValueError(f"{context}: label file '{path}' holds values {unexpected[:10]} that are not labels of "
                         f"dataset.json {dict(allowed)}.")


def _check_case_file(path: str, kind: str, context: str, labels: Mapping[str, int],
                     cache: ValidationCache | None) -> ImageFileSummary:
    summary = cache.lookup(path, kind) if cache is not None else None
    if summary is not None:
        return summary
    summary = check_image_file(path, context, allow_uniform=kind == _LABEL, keep_data=kind == _LABEL)
    if kind == _LABEL:
        _check_label_values(context, path, summary.data, labels)
        summary = dataclasses.replace(summary, data=None)
    if cache is not None:
        cache.record(summary, kind)
    return summary


def validate_nnunet_cases(cases: Sequence[Mapping], labels: Mapping[str, int], num_workers: int | None = None,
                          cache: ValidationCache | None = None) -> None:
    """
    Read every file of every case completely (:func:`shared_networks.data.validation.check_image_file`): readable
    3D scalar NIfTI volumes with finite values, images not constant, label values among ``labels``, and the channels
    and the label of a case on one grid (:func:`shared_networks.data.validation.check_same_grid`). Errors name the
    case and the file. Files that ``cache`` vouches for are not read again; those that pass are recorded in it.
    """
    if not cases:
        raise ValueError("no nnU-Net cases to validate.")

    def check(case: Mapping) -> None:
        context = f"nnU-Net case '{case['case']}'"
        files = [(p, _IMAGE) for p in case["image"]] + ([(case["label"], _LABEL)] if "label" in case else [])
        for path, _ in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{context}: file '{path}' does not exist.")
        check_same_grid([_check_case_file(p, kind, context, labels, cache) for p, kind in files], context)

    logger.info("Validating %d nnU-Net cases.", len(cases))
    run_checks(check, list(cases), num_workers=num_workers, what="nnU-Net cases")


def _split_training(names: Sequence[str], validation_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Sorted names shuffled with ``random.Random(seed)``; validation takes the first round(f * N) (at least one
    when f > 0 and N > 1), training the rest."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}.")
    shuffled = sorted(names)
    random.Random(seed).shuffle(shuffled)
    count = int(math.floor(validation_fraction * len(shuffled) + 0.5))
    if validation_fraction > 0 and len(shuffled) > 1:
        count = min(max(count, 1), len(shuffled) - 1)
    return sorted(shuffled[count:]), sorted(shuffled[:count])


def make_nnunet_datalist(
    dataset_dir: str | os.PathLike,
    datalist_path: str | os.PathLike,
    validation_fraction: float = 0.2,
    seed: int = 42,
    overwrite: bool = False,
    num_workers: int | None = None,
) -> dict:
    """
    Build (or reuse) the JSON datalist of a raw nnU-Net dataset: ``training`` and ``validation`` split the cases of
    ``imagesTr`` by name (``validation_fraction``, ``seed``), ``testing`` holds the cases of ``imagesTs`` that have a
    label in ``labelsTs`` (none when there is no such folder). Every file is validated first
    (:func:`validate_nnunet_cases`, with a validation record beside the datalist so a reused datalist only reads the
    files changed since); the datalist is written atomically, and an existing one is reused unchanged.

    Returns:
        ``{"training": [...], "validation": [...], "testing": [...]}`` of ``{"case", "image", "label"}``.
    """
    dataset = read_nnunet_dataset(dataset_dir)
    datalist_path = os.path.abspath(os.fspath(datalist_path))
    sidecar = validation_sidecar_path(datalist_path)
    if os.path.isfile(datalist_path) and not overwrite:
        logger.info("Reusing the existing datalist '%s' (pass overwrite=True to rebuild it).", datalist_path)
        datalist = read_datalist(datalist_path, _DATALIST_KEYS)
        cache = ValidationCache.load(sidecar, rules=_VALIDATION_RULES)
        items = [entry for key in _DATALIST_KEYS for entry in datalist[key]]
        try:
            validate_nnunet_cases(items, dataset.labels, num_workers, cache)
        finally:
            cache.keep_only(p for e in items for p in [*e["image"], *([e["label"]] if "label" in e else [])])
            cache.save()
        return datalist
    cases = find_nnunet_cases(dataset.path, "Tr")
    testing = []
    if os.path.isdir(os.path.join(dataset.path, "imagesTs")):
        testing = [c for c in find_nnunet_cases(dataset.path, "Ts", require_labels=False) if "label" in c]
    cache = ValidationCache(sidecar, rules=_VALIDATION_RULES)
    validate_nnunet_cases(cases + testing, dataset.labels, num_workers, cache)
    by_name = {case["case"]: case for case in cases}
    training, validation = _split_training(list(by_name), validation_fraction, seed)
    datalist = {"training": [by_name[n] for n in training], "validation": [by_name[n] for n in validation],
                "testing": testing}
    write_text_atomically(json.dumps(datalist, indent=2) + "\n", datalist_path)
    cache.save()
    logger.info("Wrote datalist '%s': %s.", datalist_path, ", ".join(f"{len(v)} {k}" for k, v in datalist.items()))
    return datalist


def list_nnunet_images(input_dir: str | os.PathLike, num_channels: int = 1, file_ending: str = ".nii.gz",
                       num_workers: int | None = None) -> list[dict]:
    """
    The cases to segment in a folder laid out like ``imagesTs`` (``<case>_<XXXX><file_ending>``, one file per
    channel), or, for one channel, any ``<case><file_ending>`` file; each file checked completely like a training
    image. A raw dataset folder (with ``dataset.json``) stands for its ``imagesTs``. ``{"case", "image": [files]}``
    sorted by case.
    """
    input_dir = os.path.abspath(os.fspath(input_dir))
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"input folder '{input_dir}' does not exist.")
    if os.path.isfile(os.path.join(input_dir, "dataset.json")):
        test_images = os.path.join(input_dir, "imagesTs")
        if not os.path.isdir(test_images):
            raise FileNotFoundError(f"'{input_dir}' is an nnU-Net raw dataset without imagesTs/: pass the folder of "
                                    "the images to segment.")
        input_dir = test_images
    dataset = NnUNetDataset(input_dir, tuple(str(c) for c in range(num_channels)), {"background": 0}, file_ending, 0)
    names = [n for n in os.listdir(input_dir) if n.endswith(file_ending) and not n.startswith(".")]
    plain = [n for n in names if _CHANNEL_FILE.match(n[: -len(file_ending)]) is None]
    if plain and num_channels != 1:
        raise ValueError(f"'{os.path.join(input_dir, plain[0])}' is not named <case>_<XXXX>{file_ending}: with "
                         f"{num_channels} channels every case needs one file per channel.")
    cases = {n[: -len(file_ending)]: [os.path.join(input_dir, n)] for n in plain}
    where = f"input folder '{input_dir}'"
    if len(plain) < len(names):
        numbered = _case_files(input_dir, dataset, where, [n for n in names if n not in plain])
        clash = sorted(set(numbered) & set(cases))
        if clash:
            raise ValueError(f"{where}: case '{clash[0]}' is there both as one file and as channel files.")
        cases.update(numbered)
    if not cases:
        raise ValueError(f"{where}: no {file_ending} files.")
    entries = [{"case": case, "image": files} for case, files in sorted(cases.items())]

    def check(entry: dict) -> None:
        context = f"case '{entry['case']}'"
        check_same_grid([check_image_file(p, context) for p in entry["image"]], context)

    run_checks(check, entries, num_workers=num_workers, what="volumes")
    return entries


def nnunet_case_name_formatter(metadict: Mapping, saver: Any = None) -> dict:
    """
    ``output_name_formatter`` for :class:`monai.transforms.SaveImaged` that names an output after its nnU-Net case, as
    nnU-Net does: the input ``<case>_0000.nii.gz`` (first channel of the stacked image; or a plain ``<case>.nii.gz``)
    gives ``<case>``, so ``SaveImaged(output_postfix="", separate_folder=False)`` writes ``<output_dir>/<case>.nii.gz``.
    """
    name = nifti_source_stem(metadict)
    match = _CHANNEL_FILE.match(name)
    return {"subject": match["case"] if match else name, "idx": None}


# Synthetic abdomen: the 13 organs of ABDOMEN_ORGAN_LABELS in label order, each (mean HU, centre as a fraction of the
# body's half-axes (x, y, z), radii as fractions); x runs to the patient's left in the stored voxel order
_PHANTOM_ORGANS: tuple[tuple[float, tuple[float, float, float], tuple[float, float, float]], ...] = (
    (60.0, (-0.38, 0.10, 0.15), (0.34, 0.40, 0.42)),  # liver
    (160.0, (-0.42, -0.45, -0.25), (0.12, 0.16, 0.28)),  # right kidney
    (45.0, (0.50, -0.10, 0.25), (0.15, 0.20, 0.26)),  # spleen
    (90.0, (0.10, 0.00, -0.05), (0.22, 0.07, 0.12)),  # pancreas
    (220.0, (0.08, -0.40, 0.00), (0.06, 0.07, 0.95)),  # aorta
    (130.0, (-0.12, -0.38, 0.00), (0.06, 0.07, 0.90)),  # inferior vena cava
    (20.0, (-0.25, -0.35, 0.35), (0.05, 0.05, 0.10)),  # right adrenal gland
    (20.0, (0.28, -0.35, 0.35), (0.05, 0.05, 0.10)),  # left adrenal gland
    (5.0, (-0.25, 0.35, -0.10), (0.08, 0.08, 0.12)),  # gallbladder
    (35.0, (0.02, -0.30, 0.70), (0.05, 0.05, 0.30)),  # esophagus
    (25.0, (0.32, 0.25, 0.35), (0.18, 0.16, 0.20)),  # stomach
    (70.0, (-0.05, 0.22, -0.30), (0.22, 0.07, 0.10)),  # duodenum
    (160.0, (0.42, -0.45, -0.30), (0.12, 0.16, 0.28)),  # left kidney
)


def generate_abdomen_ct_phantoms(
    output_dir: str | os.PathLike,
    num_cases: int = 10,
    num_test_cases: int = 2,
    shape: Sequence[int] = (64, 64, 32),
    spacing: Sequence[float] = (1.5, 1.5, 3.0),
    seed: int = 0,
) -> list[str]:
    """
    Write a raw nnU-Net dataset of synthetic abdomen-like CT volumes for demos and tests: air (-1000 HU) around an
    elliptic body of fat (-100) and soft tissue (40) with a spine (600), holding the 13 organs of FLARE22 with their
    labels (:data:`ABDOMEN_ORGAN_LABELS`) as randomly moved / scaled ellipsoids of their own mean HU (later organs
    drawn over earlier ones), noise of 20 HU; stored int16 with an LPS-like affine (``diag(-sx, -sy, sz)``) and
    anisotropic ``spacing``. ``num_cases`` go to ``imagesTr`` / ``labelsTr``, ``num_test_cases`` to ``imagesTs`` /
    ``labelsTs``; ``dataset.json`` lists the channel ``CT`` and the 14 labels as U-Mamba's Dataset701_AbdomenCT does.
    Case ``i`` depends only on ``(seed, i)``; files are written atomically. At the small default size the adrenal
    glands span only a few voxels.

    Returns:
        the image files, sorted.
    """
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < 16 or len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"shape must be 3 sizes of at least 16 and spacing 3 positive numbers, got {shape}, "
                         f"{spacing}.")
    if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 1 or num_test_cases < 0:
        raise ValueError(f"num_cases must be >= 1 and num_test_cases >= 0, got {num_cases}, {num_test_cases}.")
    output_dir = os.path.abspath(os.fspath(output_dir))
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    grid = np.stack(np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij"), axis=-1)
    labels = dict(ABDOMEN_ORGAN_LABELS)
    paths = []
    for index in range(num_cases + num_test_cases):
        rng = np.random.default_rng([seed, index])
        body_radii = np.array([0.92, 0.72, 1.6]) * rng.uniform(0.92, 1.0, 3)
        body = (((grid - [0, rng.uniform(-0.05, 0.05), 0]) / body_radii) ** 2).sum(-1)
        volume = np.full(shape, -1000.0)
        volume[body < 1.0] = -100.0
        volume[body < 0.8] = 40.0
        volume[((grid[..., :2] - [0.0, -0.62]) / [0.12, 0.1]) ** 2 @ np.ones(2) < 1.0] = 600.0
        label = np.zeros(shape, dtype=np.uint8)
        for value, (hu, centre, radii) in enumerate(_PHANTOM_ORGANS, start=1):
            centre = np.asarray(centre) * body_radii[:3] * [1, 1, 0.5] + rng.normal(0, 0.03, 3)
            radii = np.asarray(radii) * body_radii[:3] * [1.15, 1.15, 0.9] * rng.uniform(0.85, 1.15, 3)
            organ = ((((grid - centre) / radii) ** 2).sum(-1) < 1.0) & (body < 0.8)
            volume[organ] = hu + rng.normal(0, 5)
            label[organ] = value
        volume += rng.normal(0.0, 20.0, shape)
        split = "Tr" if index < num_cases else "Ts"
        case = f"phantom_{index:03d}"
        image_path = os.path.join(output_dir, f"images{split}", f"{case}_0000.nii.gz")
        write_bytes_atomically(nifti_gz_bytes(np.clip(volume, -1024, 3071).astype(np.int16), affine), image_path)
        write_bytes_atomically(nifti_gz_bytes(label, affine), os.path.join(output_dir, f"labels{split}",
                                                                             f"{case}.nii.gz"))
        paths.append(image_path)
    description: dict[str, Any] = {
        "name": "AbdomenCTPhantom",
        "description": "synthetic abdomen-like CT phantoms (shared_networks), FLARE22 labels",
        "channel_names": {"0": "CT"}, "labels": labels, "numTraining": num_cases, "file_ending": ".nii.gz",
    }
    write_text_atomically(json.dumps(description, indent=2) + "\n", os.path.join(output_dir, "dataset.json"))
    logger.info("Wrote %d abdomen CT phantoms (%d training, %d test) of shape %s to '%s'.", num_cases + num_test_cases,
                num_cases, num_test_cases, shape, output_dir)
    return sorted(paths)
