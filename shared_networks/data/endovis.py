# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
EndoVis 2017 robotic instrument type segmentation (Allan et al., "2017 Robotic Instrument Segmentation Challenge",
arXiv:1902.06426): finding frames and labels, validating them, a reproducible datalist, and synthetic frames.

Three layouts are read (:func:`find_endovis_cases` detects which):

- the challenge's own: ``instrument_dataset_<n>/left_frames/<frame>.png`` (RGB) with one grey-scale mask per
  instrument, ``instrument_dataset_<n>/ground_truth/<Instrument>_labels/<frame>.png`` (non-zero = that instrument;
  the values 10/20/30/40 code its parts). The masks of a frame are merged into one label map by
  :func:`merge_instrument_masks`;
- nnU-Net raw (``Dataset704_Endovis17``, the data the Swin-UMamba and U-Mamba authors trained on):
  ``imagesTr/<case>_0000.png`` (RGB) with ``labelsTr/<case>.png``;
- plain: ``images/<name>.png`` with ``labels/<name>.png``.

Label values (:data:`ENDOVIS17_LABELS`, as in Dataset704): 0 background, 1 bipolar forceps, 2 prograsp forceps,
3 large needle driver, 4 vessel sealer, 5 grasping retractor, 6 monopolar curved scissors, 7 ultrasound probe.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from shared_networks.data.brats import split_case_names
from shared_networks.data.validation import (
    ImageFileSummary,
    ValidationCache,
    check_png_file,
    read_datalist,
    run_checks,
    validation_sidecar_path,
)
from shared_networks.io import write_bytes_atomically, write_text_atomically

__all__ = [
    "ENDOVIS17_LABELS",
    "INSTRUMENT_FOLDER_CLASSES",
    "find_endovis_cases",
    "generate_endovis_phantoms",
    "instrument_class",
    "make_endovis_datalist",
    "merge_instrument_masks",
    "validate_endovis_cases",
]

logger = logging.getLogger(__name__)

ENDOVIS17_LABELS = {
    "background": 0,
    "bipolar_forceps": 1,
    "prograsp_forceps": 2,
    "large_needle_driver": 3,
    "vessel_sealer": 4,
    "grasping_retractor": 5,
    "monopolar_curved_scissors": 6,
    "ultrasound_probe": 7,
}
#: Words in the challenge's mask folder names (``Left_Prograsp_Forceps_labels``, ``Maryland_Bipolar_Forceps_labels``,
#: ``Other_labels``, ...) and the class they stand for; "Other" is the ultrasound probe, as in the challenge's
#: instrument-type task and Dataset704.
INSTRUMENT_FOLDER_CLASSES = (
    ("Bipolar_Forceps", 1),
    ("Prograsp_Forceps", 2),
    ("Large_Needle_Driver", 3),
    ("Vessel_Sealer", 4),
    ("Grasping_Retractor", 5),
    ("Monopolar_Curved_Scissors", 6),
    ("Other", 7),
)
_DATALIST_KEYS = ("training", "validation", "testing")
_VALIDATION_RULES = "endovis-2017/1"
_FRAME, _LABEL, _MASK = "frame", "label", "instrument-mask"
_LOG_EVERY = 200


def instrument_class(folder_name: str) -> int:
    """The class of a challenge mask folder (see :data:`INSTRUMENT_FOLDER_CLASSES`)."""
    for word, label in INSTRUMENT_FOLDER_CLASSES:
        if word.lower() in folder_name.lower():
            return label
    raise ValueError(
        f"mask folder '{folder_name}' names none of the EndoVis 2017 instrument types "
        f"{[word for word, _ in INSTRUMENT_FOLDER_CLASSES]}; rename it or remove it from ground_truth/."
    )


def _pngs(folder: str) -> dict[str, str]:
    names = sorted(os.listdir(folder))
    return {name[:-4]: os.path.join(folder, name) for name in names if name.lower().endswith(".png")}


def _videos(dataset_dir: str) -> list[str]:
    if os.path.isdir(os.path.join(dataset_dir, "left_frames")):
        return [dataset_dir]
    return sorted(
        os.path.join(dataset_dir, d) for d in os.listdir(dataset_dir)
        if re.match(r"instrument_dataset_\d+$", d) and os.path.isdir(os.path.join(dataset_dir, d, "left_frames"))
    )


def _find_challenge_cases(dataset_dir: str, videos: list[str], require_label: bool) -> list[dict]:
    cases = []
    for video in videos:
        name = os.path.basename(os.path.normpath(video))
        frames = _pngs(os.path.join(video, "left_frames"))
        truth = os.path.join(video, "ground_truth")
        folders = sorted(d for d in os.listdir(truth) if os.path.isdir(os.path.join(truth, d))) if os.path.isdir(
            truth) else []
        if require_label and not folders:
            raise FileNotFoundError(
                f"EndoVis video '{video}' has no ground_truth/<Instrument>_labels folders; expected one grey-scale "
                "mask per instrument and frame."
            )
        masks = {folder: _pngs(os.path.join(truth, folder)) for folder in folders}
        for folder in folders:
            instrument_class(folder)
        for frame, path in frames.items():
            entry: dict[str, Any] = {"case": f"{name}/{frame}", "image": path, "video": name}
            if folders:
                missing = [folder for folder in folders if frame not in masks[folder]]
                if missing and require_label:
                    raise FileNotFoundError(
                        f"EndoVis frame '{path}' has no mask in {missing} (expected "
                        f"'{os.path.join(truth, missing[0], frame + '.png')}'); every frame needs one mask per "
                        "instrument folder of its video."
                    )
                entry["masks"] = {folder: masks[folder][frame] for folder in folders if frame in masks[folder]}
            cases.append(entry)
    return cases


def _find_paired_cases(image_dir: str, label_dir: str, suffix: str, require_label: bool) -> list[dict]:
    images = _pngs(image_dir)
    labels = _pngs(label_dir) if os.path.isdir(label_dir) else {}
    cases = []
    for stem, path in images.items():
        if suffix:
            if not stem.endswith(suffix):
                raise ValueError(
                    f"image '{path}' does not end in '{suffix}.png'; nnU-Net raw images are <case>{suffix}.png."
                )
            stem = stem[: -len(suffix)]
        entry = {"case": stem, "image": path}
        if stem in labels:
            entry["label"] = labels[stem]
        elif require_label:
            raise FileNotFoundError(
                f"image '{path}' has no label: expected '{os.path.join(label_dir, stem + '.png')}'."
            )
        cases.append(entry)
    unmatched = sorted(set(labels) - {c["case"] for c in cases})
    if unmatched:
        logger.warning("%d label(s) in '%s' have no image, e.g. '%s'; they are ignored.", len(unmatched), label_dir,
                       labels[unmatched[0]])
    return cases


def find_endovis_cases(dataset_dir: str | os.PathLike, require_label: bool = True) -> list[dict]:
    """
    Find the frames (and labels) of an EndoVis-style dataset in any of the three layouts of this module.

    Args:
        dataset_dir: the dataset folder: the challenge's folder of ``instrument_dataset_<n>`` videos (or one video),
            an nnU-Net raw dataset folder (``imagesTr``/``labelsTr``), or a folder with ``images``/``labels``; a
            folder of PNG frames alone is read as images without labels.
        require_label: every frame must have its label (its masks in the challenge layout).

    Returns:
        entries sorted by name: ``{"case", "image"}`` plus ``"label"`` (paired layouts) or ``"masks"`` (``{mask
        folder: path}``, challenge layout, with ``"video"``).

    Raises:
        FileNotFoundError: the folder, a frame's label or mask is missing; the message names the file expected.
        ValueError: no frames found, or a file or folder name that does not fit the layout.
    """
    dataset_dir = os.path.abspath(os.fspath(dataset_dir))
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset_dir '{dataset_dir}' does not exist or is not a folder.")
    videos = _videos(dataset_dir)
    if videos:
        cases = _find_challenge_cases(dataset_dir, videos, require_label)
    elif os.path.isdir(os.path.join(dataset_dir, "imagesTr")):
        cases = _find_paired_cases(
            os.path.join(dataset_dir, "imagesTr"), os.path.join(dataset_dir, "labelsTr"), "_0000", require_label
        )
    elif os.path.isdir(os.path.join(dataset_dir, "images")):
        cases = _find_paired_cases(
            os.path.join(dataset_dir, "images"), os.path.join(dataset_dir, "labels"), "", require_label
        )
    elif not require_label and _pngs(dataset_dir):
        cases = [{"case": stem, "image": path} for stem, path in _pngs(dataset_dir).items()]
    else:
        cases = []
    if not cases:
        raise ValueError(
            f"no EndoVis frames found in '{dataset_dir}': expected instrument_dataset_<n>/left_frames/*.png with "
            "ground_truth/<Instrument>_labels/*.png, imagesTr/<case>_0000.png with labelsTr/<case>.png, or "
            "images/<name>.png with labels/<name>.png"
            + (" (or, without labels, a folder of .png frames)." if not require_label else ".")
        )
    logger.info("Found %d EndoVis frames in '%s'.", len(cases), dataset_dir)
    return sorted(cases, key=lambda c: c["case"])


def merge_instrument_masks(masks: Mapping[str, str], output_path: str | os.PathLike) -> int:
    """
    Merge the challenge's per-instrument masks of one frame into one label map and write it as an 8-bit grey PNG
    (atomically). Rule: a pixel takes the class (:func:`instrument_class`) of the folder whose mask is non-zero there;
    where masks overlap, the folder that comes last in alphabetical order wins (the masks of one frame rarely
    overlap); elsewhere it is background (0).

    Returns:
        the number of pixels where two or more masks overlapped.
    """
    label, covered = None, None
    for folder in sorted(masks):
        with Image.open(masks[folder]) as image:
            mask = np.asarray(image) > 0
        if label is None:
            label = np.zeros(mask.shape, np.uint8)
            covered = np.zeros(mask.shape, np.uint8)
        label[mask] = instrument_class(folder)
        covered += mask
    overlap = int((covered > 1).sum())
    write_bytes_atomically(_png_bytes(label), output_path)
    return overlap


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _check_file(path: str, kind: str, context: str, cache: ValidationCache | None) -> ImageFileSummary:
    summary = cache.lookup(path, kind) if cache is not None else None
    if summary is not None:
        return summary
    summary = check_png_file(path, context, rgb=kind == _FRAME, allow_uniform=kind != _FRAME, keep_data=kind == _LABEL)
    if kind == _LABEL:
        values = np.unique(summary.data)
        unexpected = [int(v) for v in values if int(v) not in ENDOVIS17_LABELS.values()]
        if unexpected:
            raise ValueError(
                f"{context}: label file '{path}' holds values {unexpected[:10]} outside 0..7 "
                f"({list(ENDOVIS17_LABELS)})."
            )
        summary = dataclasses.replace(summary, data=None)
    if cache is not None:
        cache.record(summary, kind)
    return summary


def _case_files(entry: Any, where: str, check_labels: bool) -> tuple[str, list[tuple[str, str]]]:
    if not isinstance(entry, Mapping) or "image" not in entry:
        raise ValueError(f"{where} must be a dict with 'case', 'image' and 'label' keys, got {entry!r}.")
    context = f"EndoVis frame '{entry.get('case', where)}'"
    files = [(os.fspath(entry["image"]), _FRAME)]
    if "label" in entry:
        files.append((os.fspath(entry["label"]), _LABEL))
    files += [(os.fspath(path), _MASK) for path in dict(entry.get("masks", {})).values()]
    if check_labels and len(files) == 1:
        raise FileNotFoundError(f"{context}: no label for '{files[0][0]}' (check_labels=True).")
    for path, _ in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{context}: file '{path}' does not exist.")
    return context, files


def _check_cases(cases: Sequence[tuple[str, list[tuple[str, str]]]], cache: ValidationCache | None,
                 num_workers: int | None) -> None:
    def check_case(case: tuple[str, list[tuple[str, str]]]) -> None:
        context, files = case
        summaries = [_check_file(path, kind, context, cache) for path, kind in files]
        for summary in summaries[1:]:
            if summary.shape != summaries[0].shape:
                raise ValueError(
                    f"{context}: '{summary.path}' is {summary.shape[0]}x{summary.shape[1]} pixels, but its frame "
                    f"'{summaries[0].path}' is {summaries[0].shape[0]}x{summaries[0].shape[1]} (width x height); a "
                    "label must have its frame's size."
                )

    run_checks(check_case, cases, num_workers=num_workers, what="EndoVis frames", log_every=_LOG_EVERY)


def validate_endovis_cases(cases: Sequence[Mapping], check_labels: bool = True, num_workers: int | None = None) -> None:
    """
    Check EndoVis frames before training or inference; every file is decoded completely
    (:func:`shared_networks.data.validation.check_png_file`): frames are intact, non-constant 8-bit RGB PNGs (RGBA,
    grey-scale and palette frames are refused); labels and instrument masks are intact single-channel PNGs of the
    frame's size; label maps hold only the values 0..7.

    Raises:
        FileNotFoundError: a file is missing; the message names the frame and the file.
        ValueError: a check fails; the message names the frame, the file and what was expected.
    """
    if isinstance(cases, (str, bytes, Mapping)) or not isinstance(cases, Sequence) or not cases:
        raise ValueError(f"cases must be a non-empty list of frame dicts, got {cases!r:.80}.")
    parsed = [_case_files(entry, f"cases[{i}]", check_labels) for i, entry in enumerate(cases)]
    _check_cases(parsed, cache=None, num_workers=num_workers)
    logger.info("Validated %d EndoVis frames.", len(cases))


def _merged_label_path(labels_dir: str, case: str) -> str:
    return os.path.join(labels_dir, *case.split("/")) + ".png"


def _split(cases: list[dict], seed: int, fractions: Sequence[float]) -> list[list[dict]]:
    """Split by video when there are at least 3 (neighbouring frames of a video are nearly equal), else by frame."""
    videos = sorted({c["video"] for c in cases if "video" in c})
    if len(videos) >= 3:
        groups = split_case_names(videos, seed=seed, fractions=fractions)
        return [[c for c in cases if c.get("video") in set(group)] for group in groups]
    if videos:
        logger.warning("Only %d EndoVis video(s): splitting by frame, so neighbouring frames of one video fall into "
                       "different splits.", len(videos))
    by_name = {c["case"]: c for c in cases}
    return [[by_name[name] for name in group] for group in split_case_names(list(by_name), seed, fractions)]


def make_endovis_datalist(
    dataset_dir: str | os.PathLike,
    datalist_path: str | os.PathLike,
    labels_dir: str | os.PathLike | None = None,
    seed: int = 42,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    overwrite: bool = False,
    num_workers: int | None = None,
) -> dict:
    """
    Build (or reuse) the JSON datalist of an EndoVis-style dataset (:func:`find_endovis_cases`) with a reproducible
    split: by video when there are at least three videos, else by frame (:func:`shared_networks.data.split_case_names`).

    The challenge's per-instrument masks are merged into one label map per frame (:func:`merge_instrument_masks`),
    written under ``labels_dir`` (default: ``endovis_labels`` beside the datalist) as ``<video>/<frame>.png``. All
    files are validated (:func:`validate_endovis_cases`) before the datalist is written atomically. An existing
    datalist is reused unchanged (so it can be edited), with every file of every split checked again: its existence
    always, and a full check of those changed since they last passed (a validation record beside the datalist, as
    for BraTS).

    Returns:
        ``{"training": [...], "validation": [...], "testing": [...]}`` of ``{"case", "image", "label"}`` entries.
    """
    datalist_path = os.path.abspath(os.fspath(datalist_path))
    sidecar = validation_sidecar_path(datalist_path)
    if os.path.isfile(datalist_path) and not overwrite:
        logger.info("Reusing the existing datalist '%s' (pass overwrite=True to rebuild it).", datalist_path)
        datalist = read_datalist(datalist_path, _DATALIST_KEYS)
        parsed = []
        for split in _DATALIST_KEYS:
            for index, entry in enumerate(datalist[split]):
                context, files = _case_files(entry, f"entry {index}", check_labels=True)
                parsed.append((f"{context} (split '{split}' of datalist '{datalist_path}')", files))
        cache = ValidationCache.load(sidecar, rules=_VALIDATION_RULES)
        try:
            if parsed:
                _check_cases(parsed, cache, num_workers)
        finally:
            cache.keep_only(path for _, files in parsed for path, _ in files)
            cache.save()
        logger.info("Validated %d EndoVis frames of '%s': %d files read in full, %d unchanged.", len(parsed),
                    datalist_path, cache.misses, cache.hits)
        return datalist

    cases = find_endovis_cases(dataset_dir, require_label=True)
    cache = ValidationCache(sidecar, rules=_VALIDATION_RULES)
    _check_cases([_case_files(c, c["case"], True) for c in cases], cache, num_workers)
    labels_dir = os.fspath(labels_dir) if labels_dir else os.path.join(os.path.dirname(datalist_path), "endovis_labels")
    overlaps = 0
    for case in cases:
        masks = case.pop("masks", None)
        if masks is not None:
            case["label"] = _merged_label_path(labels_dir, case["case"])
            overlaps += merge_instrument_masks(masks, case["label"])
    if overlaps:
        logger.info("Merged instrument masks overlapped on %d pixels (the later folder won).", overlaps)
    splits = _split(cases, seed, fractions)
    datalist = {key: [{k: c[k] for k in ("case", "image", "label")} for c in group]
                for key, group in zip(_DATALIST_KEYS, splits)}
    write_text_atomically(json.dumps(datalist, indent=2) + "\n", datalist_path)
    cache.save()
    logger.info("Wrote datalist '%s': %s.", datalist_path, ", ".join(f"{len(v)} {k}" for k, v in datalist.items()))
    return datalist


# ------------------------------------------------------------------------------------------------------------------
# synthetic frames

#: Mask folder names written by the generator (one per class, in the challenge's naming style).
_PHANTOM_FOLDERS = (
    "Maryland_Bipolar_Forceps_labels", "Left_Prograsp_Forceps_labels", "Right_Large_Needle_Driver_labels",
    "Vessel_Sealer_labels", "Grasping_Retractor_labels", "Monopolar_Curved_Scissors_labels", "Other_labels",
)
#: RGB colour, shaft half-width (fraction of the frame height) and head radius of each class.
_PHANTOM_INSTRUMENTS = (
    ((40, 40, 150), 0.035, 0.07), ((200, 200, 200), 0.045, 0.05), ((25, 25, 25), 0.04, 0.08),
    ((60, 150, 200), 0.06, 0.05), ((220, 200, 60), 0.03, 0.09), ((90, 170, 90), 0.05, 0.06),
    ((245, 245, 245), 0.08, 0.0),
)


def _phantom_frame(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
    """One RGB frame (tissue with texture and highlights) and the part-coded mask of each class (0/10/30)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    tissue = np.empty((height, width, 3), np.float32)
    for channel, base in enumerate((170, 70, 70)):
        wave = sum(np.sin(xx * rng.uniform(0.02, 0.12) + yy * rng.uniform(0.02, 0.12) + rng.uniform(0, 6.3))
                   for _ in range(3))
        tissue[..., channel] = base + 18 * wave
    for _ in range(rng.integers(1, 4)):  # specular highlights
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(2, 0.06 * height + 3)
        tissue[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 250
    masks = [np.zeros((height, width), np.uint8) for _ in _PHANTOM_INSTRUMENTS]
    for label in rng.choice(len(_PHANTOM_INSTRUMENTS), size=rng.integers(1, 4), replace=False):
        colour, half_width, head = _PHANTOM_INSTRUMENTS[label]
        # a shaft from a point on the left, right or bottom border to a tip inside the frame
        side = rng.integers(3)
        start = [(rng.uniform(0.2, 0.9) * height, 0.0), (rng.uniform(0.2, 0.9) * height, width - 1.0),
                 (height - 1.0, rng.uniform(0.1, 0.9) * width)][side]
        tip = (rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width)
        direction = np.subtract(tip, start)
        length = float(np.hypot(*direction)) or 1.0
        along = ((yy - start[0]) * direction[0] + (xx - start[1]) * direction[1]) / length
        across = np.abs((yy - start[0]) * direction[1] - (xx - start[1]) * direction[0]) / length
        shaft = (along >= 0) & (along <= length) & (across <= half_width * height)
        head_mask = (yy - tip[0]) ** 2 + (xx - tip[1]) ** 2 <= (head * height) ** 2
        shade = 0.75 + 0.25 * np.clip(1 - across / (half_width * height + 1e-6), 0, 1)[..., None]
        tissue[shaft] = (np.asarray(colour, np.float32) * shade)[shaft]
        tissue[head_mask] = np.asarray(colour, np.float32) * 0.85
        masks[label][shaft] = 10
        masks[label][head_mask] = 30
        for other in masks[:label] + masks[label + 1:]:  # later instruments occlude earlier ones
            other[shaft | head_mask] = 0
    tissue += rng.normal(0, 6, tissue.shape)
    return np.clip(tissue, 0, 255).astype(np.uint8), masks


def generate_endovis_phantoms(
    output_dir: str | os.PathLike,
    num_videos: int = 4,
    frames_per_video: int = 6,
    shape: Sequence[int] = (96, 128),
    layout: str = "endovis17",
    seed: int = 0,
    num_cases: int | None = None,
) -> list[str]:
    """
    Write synthetic endoscopy-like RGB frames with instrument-shaped objects of the 7 classes, for demos and tests.

    Each frame shows textured reddish tissue with specular highlights and one to three instruments (a shaft from the
    frame border to a tip with a head; class-specific colour, width and head size; later ones occlude earlier ones).
    ``layout="endovis17"`` writes the challenge layout (``instrument_dataset_<n>/left_frames`` and one part-coded
    grey mask per class in ``ground_truth/<Instrument>_labels``: shaft 10, head 30); ``layout="plain"`` writes
    ``images/`` and ``labels/`` with merged label maps (values 0..7). Frame ``i`` of video ``v`` only depends on
    ``(seed, v, i)``; files are written atomically.

    Args:
        output_dir: the dataset folder.
        num_videos: videos (challenge layout) or groups of frames (plain layout).
        frames_per_video: frames per video.
        shape: (height, width) of the frames, at least 32 each.
        layout: "endovis17" or "plain".
        seed: base seed.
        num_cases: the number of frames in all, instead of ``num_videos * frames_per_video``: spread over the
            ``num_videos`` videos, the first ones taking one more where it does not divide.

    Returns:
        the paths of the frames written, sorted.
    """
    height, width = (int(s) for s in shape)
    if min(height, width) < 32:
        raise ValueError(f"shape must be (height, width) of at least 32 pixels each, got {tuple(shape)}.")
    if layout not in ("endovis17", "plain"):
        raise ValueError(f"layout must be 'endovis17' or 'plain', got {layout!r}.")
    if num_cases is not None and (num_cases < 1 or num_videos < 1):
        raise ValueError(f"num_cases and num_videos must be at least 1, got {num_cases} and {num_videos}.")
    counts = [frames_per_video] * num_videos if num_cases is None else [
        num_cases // num_videos + (video < num_cases % num_videos) for video in range(num_videos)]
    output_dir = os.path.abspath(os.fspath(output_dir))
    frames = []
    for video, count in enumerate(counts, start=1):
        for index in range(count):
            rgb, masks = _phantom_frame(height, width, np.random.default_rng([seed, video, index]))
            name = f"frame{index:03d}"
            if layout == "endovis17":
                base = os.path.join(output_dir, f"instrument_dataset_{video}")
                frame_path = os.path.join(base, "left_frames", name + ".png")
                for folder, mask in zip(_PHANTOM_FOLDERS, masks):
                    write_bytes_atomically(_png_bytes(mask), os.path.join(base, "ground_truth", folder, name + ".png"))
            else:
                frame_path = os.path.join(output_dir, "images", f"video{video:02d}_{name}.png")
                label = np.zeros((height, width), np.uint8)
                for folder, mask in zip(_PHANTOM_FOLDERS, masks):
                    label[mask > 0] = instrument_class(folder)
                label_path = os.path.join(output_dir, "labels", f"video{video:02d}_{name}.png")
                write_bytes_atomically(_png_bytes(label), label_path)
            write_bytes_atomically(_png_bytes(rgb), frame_path)
            frames.append(frame_path)
    logger.info("Wrote %d synthetic EndoVis frames (%dx%d, %s layout) to '%s'.", len(frames), height, width, layout,
                output_dir)
    return sorted(frames)
