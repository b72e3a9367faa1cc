# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Atomic file writing: every file the package, the bundles and the project scripts write goes through
:func:`atomic_write`, so a crash, a ``kill -9`` or a concurrent reader (MONAI Label polling ``models/model.pt``) never
meets a half-written file. The data go to a temporary file in the destination folder (same file system), are flushed
to disk, and the temporary file then replaces the destination with ``os.replace``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO

__all__ = ["TEMP_SUFFIX", "atomic_write", "write_bytes_atomically", "write_text_atomically", "save_atomically"]

#: Suffix of the temporary files; ``.<name>.<random>.tmp`` beside the destination.
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: int = 0o644) -> Iterator[BinaryIO]:
    """
    Open a temporary binary file beside ``path``; when the block ends without an exception, the file is flushed,
    synced and moved over ``path``. On an exception the temporary file is removed and ``path`` is left untouched.

    Args:
        path: the destination; its folder is created if missing.
        mode: permission bits of the written file (``mkstemp`` would leave 0o600).

    Example::

        with atomic_write("eval/metrics.csv") as f:
            f.write(b"case,dice\\n")
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp_path, mode)
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_path)
        raise


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
