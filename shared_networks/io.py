# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Atomic file writing: every file the package, the bundles and the project scripts write goes through
:func:`atomic_write`, so a crash, a ``kill -9`` or a concurrent reader (MONAI Label polling ``models/model.pt``) never
meets a half-written file. The data go to a temporary file in the destination folder (same file system), are flushed
to disk, and the temporary file then replaces the destination with ``os.replace``. A process killed between the two
steps leaves its temporary file behind; :func:`remove_stale_temporaries` removes those (the savers of
:mod:`shared_networks.bundle` call it for their folder when training starts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

__all__ = [
    "TEMP_SUFFIX",
    "atomic_path",
    "atomic_write",
    "write_bytes_atomically",
    "write_text_atomically",
    "save_atomically",
    "remove_stale_temporaries",
    "nifti_gz_bytes",
]

logger = logging.getLogger(__name__)

#: Suffix of the temporary files; ``.<name>.<random>.tmp`` beside the destination.
TEMP_SUFFIX = ".tmp"

# the names of the temporary files: "." + destination name + "." + 8 characters of tempfile's alphabet + ".tmp",
# followed by the destination's extension for writers that pick the format from the name (atomic_path)
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + r"(\.[A-Za-z0-9]+){0,2}$")


def _extension(name: str) -> str:
    """``.nii.gz`` for ``case_seg.nii.gz``, ``.png`` for ``a.b.png``: the part of the name that selects a format."""
    stem, last = os.path.splitext(name)
    if last.lower() in (".gz", ".bz2", ".xz", ".zst"):
        last = os.path.splitext(stem)[1] + last
    return last


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644, keep_extension: bool = False) -> Iterator[str]:
    """
    A temporary path beside ``path`` for a writer that wants a file name (nibabel, PIL, ...); when the block ends
    without an exception the file is synced and moved over ``path``. On an exception the temporary file is removed
    and ``path`` is left untouched.

    Args:
        path: the destination; its folder is created if missing.
        mode: permission bits of the written file (``mkstemp`` would leave 0o600).
        keep_extension: end the temporary name with the destination's extension (``.nii.gz``), for writers that
            choose the format from the name.
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    suffix = TEMP_SUFFIX + (_extension(name) if keep_extension else "")
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=suffix)
    os.close(handle)
    try:
        yield temp_path
        with open(temp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(temp_path, mode)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: int = 0o644) -> Iterator[BinaryIO]:
    """
    Open a temporary binary file beside ``path`` (see :func:`atomic_path`); when the block ends without an exception,
    the file is flushed and moved over ``path``.

    Example::

        with atomic_write("eval/metrics.csv") as f:
            f.write(b"case,dice\\n")
    """
    with atomic_path(path, mode) as temp_path, open(temp_path, "wb") as f:
        yield f
        f.flush()


def write_bytes_atomically(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as f:
        f.write(data)


def write_text_atomically(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    write_bytes_atomically(text.encode("utf-8"), path)


def save_atomically(obj: Any, path: str | os.PathLike) -> None:
    """
    ``torch.save`` ``obj`` to ``path`` atomically (see :func:`atomic_write`).

    Args:
        obj: object to save; keep it to tensors and plain Python types so it loads with ``weights_only=True``.
        path: destination file; its folder is created if missing.
    """
    import torch

    with atomic_write(path) as f:
        torch.save(obj, f)


def nifti_gz_bytes(array: Any, affine: Any) -> bytes:
    """
    A gzipped single-file NIfTI-1 image of ``array`` with ``affine`` as both qform and sform (mm units), as bytes for
    :func:`write_bytes_atomically`; ``mtime=0`` keeps the stream byte-identical between runs (synthetic data).
    """
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def remove_stale_temporaries(
    folder: str | os.PathLike, min_age_s: float = 0.0, recursive: bool = False
) -> list[str]:
    """
    Remove the temporary files that :func:`atomic_path` / :func:`atomic_write` leave in ``folder`` when their process
    is killed (``kill -9``, out-of-memory killer, power loss) between creating and renaming them: regular files named
    ``.<name>.<8 random characters>.tmp[<extension>]``. Files of any other pattern and symbolic links are left alone.
    Each removed file is logged.

    Args:
        folder: the folder to clean; a missing folder is not an error.
        min_age_s: only remove files whose last modification is at least this many seconds old, so that a file
            another process is writing at this moment is not taken from under it.
        recursive: also clean the sub-folders (e.g. the per-case folders of a batch inference's output).

    Returns:
        The paths of the removed files.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    removed = []
    now = time.time()
    with os.scandir(folder) as entries:
        for entry in entries:
            if recursive and entry.is_dir(follow_symlinks=False):
                removed += remove_stale_temporaries(entry.path, min_age_s, recursive=True)
                continue
            if not _TEMP_NAME.match(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
                if now - stat.st_mtime < min_age_s:
                    continue
                os.remove(entry.path)
            except FileNotFoundError:  # renamed or removed by its writer meanwhile
                continue
            logger.info(
                "Removed the stale temporary file '%s' (%d bytes, left by an interrupted write of '%s').",
                entry.path,
                stat.st_size,
                _TEMP_NAME.match(entry.name).group("target"),
            )
            removed.append(entry.path)
    return removed
