# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Small helpers referenced from bundle configs: atomic saving, channel selection for metrics, output file names."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

import torch

from shared_networks.data.brats import BRATS_FILE_EXTENSION, BRATS_MODALITIES

__all__ = ["save_atomically", "write_text_atomically", "select_channel_from_engine", "brats_case_name_formatter"]


def _replace_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write`` on a temporary file in the folder of ``path``, then moves it over ``path`` (``os.replace``)."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def save_atomically(obj: Any, path: str | os.PathLike) -> None:
    """
    ``torch.save`` ``obj`` to ``path`` atomically: the data go to a temporary file in the same folder, which then
    replaces ``path`` with ``os.replace``. A reader (or a crash) therefore never sees a half-written file.

    Args:
        obj: object to save; keep it to tensors and plain Python types so it loads with ``weights_only=True``.
        path: destination file; its folder is created if missing.
    """
    _replace_atomically(path, lambda f: torch.save(obj, f))


def write_text_atomically(text: str, path: str | os.PathLike) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically, like :func:`save_atomically`."""
    _replace_atomically(path, lambda f: f.write(text.encode("utf-8")))


def select_channel_from_engine(keys: Sequence[str], channel: int) -> Callable:
    """
    Like :func:`monai.handlers.from_engine`, but keeps only channel ``channel`` (as a 1-channel tensor) of every
    item. Used to log one metric per region, e.g. the Dice of the ET channel of a [TC, WT, ET] prediction.

    Args:
        keys: keys to read from each decollated item, e.g. ``["pred", "label"]``.
        channel: index of the channel to keep.

    Returns:
        a callable mapping ``[{key: tensor(C, ...)}, ...]`` to ``([tensor(1, ...), ...], ...)``, one list per key.
    """
    if isinstance(keys, str):
        keys = [keys]
    if isinstance(channel, bool) or not isinstance(channel, int) or channel < 0:
        raise ValueError(f"channel must be a non-negative integer, got {channel!r}.")

    def _select(data: Sequence[Mapping] | Mapping) -> tuple:
        items = [data] if isinstance(data, Mapping) else data
        selected = []
        for key in keys:
            values = []
            for item in items:
                value = item[key]
                if value.shape[0] <= channel:
                    raise ValueError(f"'{key}' has {value.shape[0]} channels, cannot select channel {channel}.")
                values.append(value[channel : channel + 1])
            selected.append(values)
        return tuple(selected)

    return _select


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
    source = metadict.get("filename_or_obj") if isinstance(metadict, Mapping) else None
    if isinstance(source, (list, tuple)):
        source = source[0] if source else None
    if not source:
        raise ValueError(f"cannot name the output: metadata has no 'filename_or_obj' (got {source!r}).")
    name = os.path.basename(os.fspath(source))
    for extension in (BRATS_FILE_EXTENSION, ".nii"):
        if name.endswith(extension):
            name = name[: -len(extension)]
            break
    for modality in BRATS_MODALITIES:
        if name.endswith(f"-{modality}"):
            name = name[: -len(modality) - 1]
            break
    return {"subject": name, "idx": None}
