# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Image writers for ``monai.transforms.SaveImage(d)`` (``writer=...``) that write atomically, and the selection of the
items a batch still has to process, so that an interrupted batch inference resumes where it stopped.

MONAI's writers save straight to the final name, so a ``kill -9`` leaves a truncated ``<case>_seg.nii.gz`` that looks
finished. These write to a temporary name beside it (keeping the extension, which selects the format) and rename.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from monai.data import NibabelWriter, PILWriter

from shared_networks.io import atomic_path

__all__ = ["AtomicNibabelWriter", "AtomicPILWriter", "pending_items"]

logger = logging.getLogger(__name__)


class AtomicNibabelWriter(NibabelWriter):
    """:class:`monai.data.NibabelWriter` whose files appear only complete: written to a temporary ``.nii(.gz)`` file
    in the destination folder, then moved over the destination (``os.replace``)."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        with atomic_path(filename, keep_extension=True) as temporary:
            super().write(temporary, verbose=False, **obj_kwargs)
        if verbose:
            logger.info("Wrote '%s'.", os.fspath(filename))


class AtomicPILWriter(PILWriter):
    """:class:`monai.data.PILWriter` (PNG, JPEG, ...) whose files appear only complete, as
    :class:`AtomicNibabelWriter`."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **kwargs: Any) -> None:
        with atomic_path(filename, keep_extension=True) as temporary:
            super().write(temporary, verbose=False, **kwargs)
        if verbose:
            logger.info("Wrote '%s'.", os.fspath(filename))


def pending_items(
    items: Sequence[Any], output_path: Callable[[Any], str | os.PathLike], skip_existing: bool = True
) -> list[Any]:
    """
    The items of a batch whose output does not exist yet (all of them when ``skip_existing`` is False). With atomic
    writers an existing output is a finished one, so re-running an interrupted batch picks up where it stopped.

    Args:
        items: the datalist entries.
        output_path: maps an entry to the file it produces.
        skip_existing: leave out the entries whose output file exists.
    """
    items = list(items)
    if not skip_existing:
        return items
    pending = [item for item in items if not os.path.isfile(output_path(item))]
    if len(pending) < len(items):
        logger.info(
            "Skipping %d of %d items whose output already exists (skip_existing=False recomputes them).",
            len(items) - len(pending),
            len(items),
        )
    return pending
