# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Dataset-agnostic validation of NIfTI image files, shared by the dataset modules (``find_<x>_cases``,
``validate_<x>_cases``, ``make_<x>_datalist``) so that a broken file is reported before training or inference, with a
message naming the case, the file and what was expected, instead of failing deep inside a loader, or worse, silently
giving wrong results.

- :func:`check_image_file` reads one file completely, once: the whole gzip stream is decompressed (so its CRC-32 and
  length are verified, and truncation is detected), the header is parsed from the decompressed bytes and the voxels
  are decoded in place from the same buffer. It rejects files that are not single-file NIfTI, not a 3D scalar volume
  (4D, 2D, RGB / vector, complex), hold NaN or infinite values, or (unless allowed) are all zero or constant.
- :func:`check_png_file` does the same for a 2D PNG frame or label map: every chunk's CRC and the whole zlib stream
  are verified while it is decoded, and the colour mode must be the one expected (RGB frames, single-channel labels).
- :func:`check_same_grid` checks that the files of one case share one voxel grid (shape and affine).
- :class:`ValidationCache` remembers, in a JSON sidecar file, the fingerprint ``(size, mtime_ns)`` of every file that
  passed, so that checking a reused datalist again only reads the files that changed since.
- :func:`run_checks` runs one check per case in threads (decompression and numpy release the GIL), in order, and logs
  the progress.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeVar

import numpy as np
from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling
from PIL import Image, UnidentifiedImageError

from shared_networks.io import write_text_atomically

__all__ = [
    "ImageFileSummary",
    "ValidationCache",
    "check_image_file",
    "check_image_files",
    "check_png_file",
    "check_same_grid",
    "default_num_workers",
    "list_nifti_files",
    "read_datalist",
    "recheck_image_files",
    "run_checks",
    "validation_sidecar_path",
]

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
#: ``sizeof_hdr`` of the NIfTI-1 and NIfTI-2 headers, and the header classes that read them.
_NIFTI_HEADERS: dict[int, type[Nifti1Header]] = {348: Nifti1Header, 540: Nifti2Header}
#: ``magic`` of the single-file formats (``.nii``, ``.nii.gz``); ``ni1`` / ``ni2`` are header + image pairs.
_SINGLE_FILE_MAGIC = (b"n+1", b"n+2")
#: Intent codes of a vector per voxel (NIfTI ``NIFTI_INTENT_VECTOR``, ``_RGB_VECTOR``, ``_RGBA_VECTOR``).
_VECTOR_INTENTS = ("vector", "rgb vector", "rgba vector")
#: A file modified less than this before it was checked is not trusted from its fingerprint alone: on file systems
#: with coarse timestamps (FAT: 2 s, HFS+ and ext3: 1 s) a change within the same tick keeps ``mtime_ns``.
_UNSETTLED_NS = 2_000_000_000
_CACHE_FORMAT = "shared_networks.data.validation/1"

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFileSummary:
    """
    What :func:`check_image_file` learnt about a file that passed: enough for the checks across the files of a case
    (:func:`check_same_grid`) and for :class:`ValidationCache`.

    Attributes:
        path: the file, as given.
        shape: the 3D shape of the volume; for a PNG (:func:`check_png_file`) its (width, height), the order of
            MONAI's ``PILReader``.
        affine: the 4x4 voxel-to-world affine, as nibabel (and MONAI's ``NibabelReader``) reads it; the identity for a
            PNG, which has no geometry.
        dtype: the on-disk data type (numpy ``dtype.str``, e.g. ``"<i2"``).
        minimum: smallest voxel value (after the header's scaling).
        maximum: largest voxel value (after the header's scaling).
        size: file size in bytes when it was checked.
        mtime_ns: modification time (ns) when it was checked.
        checked_ns: wall-clock time (ns) of the ``stat`` taken before the file was read.
        data: the decoded voxels (read-only) when :func:`check_image_file` was called with ``keep_data=True``.
    """

    path: str
    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: str
    minimum: float
    maximum: float
    size: int
    mtime_ns: int
    checked_ns: int
    data: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The summary (without ``data``) as JSON-compatible types."""
        return {
            "shape": list(self.shape),
            "affine": self.affine.tolist(),
            "dtype": self.dtype,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "checked_ns": self.checked_ns,
        }

    @classmethod
    def from_json(cls, path: str, record: dict[str, Any]) -> ImageFileSummary:
        """Inverse of :meth:`to_json`; raises ``KeyError``, ``TypeError`` or ``ValueError`` on a malformed record."""
        affine = np.asarray(record["affine"], dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine of shape {affine.shape}")
        return cls(
            path=path,
            shape=tuple(int(s) for s in record["shape"]),
            affine=affine,
            dtype=str(record["dtype"]),
            minimum=float(record["minimum"]),
            maximum=float(record["maximum"]),
            size=int(record["size"]),
            mtime_ns=int(record["mtime_ns"]),
            checked_ns=int(record["checked_ns"]),
        )


def _where(context: str | None) -> str:
    return f"{context}: " if context else ""


def _gunzip(raw: bytes, path: str, where: str) -> bytes:
    """
    Decompress every member of a gzip stream; zlib verifies each member's CRC-32 and length (ISIZE) trailer.

    Raises:
        ValueError: the stream is corrupt (bad deflate data, CRC or length mismatch, trailing garbage) or truncated.
    """
    parts: list[bytes] = []
    rest = raw
    while True:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip wrapper: header and trailer checked
        try:
            parts.append(decompressor.decompress(rest))
        except zlib.error as err:
            raise ValueError(
                f"{where}file '{path}' is corrupt or truncated: its gzip stream fails the integrity check after "
                f"{sum(map(len, parts))} decompressed bytes ({err}); re-download or re-export the file."
            ) from err
        if not decompressor.eof:
            parts.append(decompressor.flush())
            _raise_truncated_gzip(b"".join(parts), path, where)
        rest = decompressor.unused_data
        if rest.startswith(_GZIP_MAGIC):
            continue  # a legal multi-member gzip file
        if rest.strip(b"\0"):
            raise ValueError(
                f"{where}file '{path}' is corrupt: {len(rest)} bytes of trailing data follow its gzip stream; "
                "re-download or re-export the file."
            )
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _raise_truncated_gzip(data: bytes, path: str, where: str) -> NoReturn:
    """Report a gzip stream that ends before its end-of-stream marker, with the size the header needs if known."""
    try:
        header = _parse_header(data, path, where)
    except ValueError:
        raise ValueError(
            f"{where}file '{path}' is not a readable NIfTI image: the file is truncated, its gzip stream ends after "
            f"{len(data)} decompressed bytes, before the end of the NIfTI header; re-download or re-export the file."
        ) from None
    try:
        needed = f"; its header needs {_data_end(header)}"
    except (HeaderDataError, KeyError, ValueError):
        needed = ""
    raise ValueError(
        f"{where}file '{path}' is corrupt or truncated: its gzip stream ends early, after {len(data)} decompressed "
        f"bytes{needed}; re-download or re-export the file."
    )


def _parse_header(data: bytes, path: str, where: str) -> Nifti1Header:
    """Read the NIfTI-1 or NIfTI-2 header at the start of the (decompressed) file contents."""
    not_nifti = f"{where}file '{path}' is not a readable NIfTI image"
    if len(data) < min(_NIFTI_HEADERS):
        raise ValueError(f"{not_nifti}: it holds {len(data)} bytes, fewer than a NIfTI header.")
    header_class = None
    for byteorder in ("little", "big"):
        header_class = header_class or _NIFTI_HEADERS.get(int.from_bytes(data[:4], byteorder))
    if header_class is None:
        raise ValueError(
            f"{not_nifti}: its first 4 bytes ({data[:4]!r}) are not the size of a NIfTI-1 (348) or NIfTI-2 (540) "
            "header; expected a .nii or .nii.gz file."
        )
    try:
        header = header_class.from_fileobj(io.BytesIO(data), check=False)
    except (HeaderDataError, ValueError, EOFError, OSError) as err:
        raise ValueError(f"{not_nifti} ({err}).") from err
    magic = bytes(header["magic"]).rstrip(b"\0")
    if magic not in _SINGLE_FILE_MAGIC:
        kind = "the header of a .hdr/.img pair" if magic in (b"ni1", b"ni2") else "not NIfTI (an Analyze 7.5 header?)"
        raise ValueError(
            f"{not_nifti}: its header magic is {magic!r}, {kind}; expected a single-file NIfTI (.nii or .nii.gz)."
        )
    return header


def _data_end(header: Nifti1Header) -> int:
    """Offset of the end of the voxel data: the size the (decompressed) file must have at least."""
    return int(header.get_data_offset()) + math.prod(header.get_data_shape()) * header.get_data_dtype().itemsize


def _check_scalar_volume(header: Nifti1Header, path: str, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """The 3D shape and on-disk dtype of a scalar volume; ``ValueError`` for colour, vector, complex, 2D or 4D data."""
    try:
        dtype = header.get_data_dtype()
    except (HeaderDataError, KeyError, ValueError) as err:
        raise ValueError(f"{where}file '{path}' has an unsupported NIfTI datatype ({err}).") from err
    shape = tuple(int(s) for s in header.get_data_shape())
    expected = "expected a 3D scalar volume (one intensity or label value per voxel)"
    if dtype.fields is not None:
        raise ValueError(
            f"{where}file '{path}' is a colour/vector image (datatype {header.get_value_label('datatype')}, "
            f"{len(dtype.fields)} components per voxel); {expected}: convert it to a single-channel image."
        )
    if dtype.kind == "c":
        raise ValueError(f"{where}file '{path}' is complex-valued (dtype {dtype}); {expected}.")
    if dtype.kind not in "biuf":
        raise ValueError(f"{where}file '{path}' has the unsupported dtype {dtype}; {expected}.")
    intent = header.get_intent()[0]
    if (len(shape) >= 5 and shape[4] > 1) or intent in _VECTOR_INTENTS:
        components = f"{shape[4]} components per voxel along the 5th dimension" if len(shape) >= 5 else "vector data"
        raise ValueError(
            f"{where}file '{path}' has shape {shape}: a colour/vector image ({components}, intent '{intent}'); "
            f"{expected}: convert it to a single-channel image."
        )
    if len(shape) != 3:
        if len(shape) > 3 and all(s == 1 for s in shape[3:]):
            hint = ": drop the trailing dimensions of size 1"
        elif len(shape) == 4:
            hint = ": a 4D file (time series, or several channels in one file) must be split into one file per volume"
        else:
            hint = ""
        raise ValueError(f"{where}file '{path}' has shape {shape} ({len(shape)}D); {expected}{hint}.")
    if 0 in shape:
        raise ValueError(f"{where}file '{path}' has shape {shape}, with no voxels; {expected}.")
    return shape, dtype


def _check_affine(affine: np.ndarray, path: str, where: str) -> None:
    if not np.all(np.isfinite(affine)):
        raise ValueError(
            f"{where}file '{path}' has a non-finite affine (its qform/sform is broken):\n{affine}\n"
            "expected a finite voxel-to-world matrix; fix the header."
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError(
            f"{where}file '{path}' has a singular affine (a voxel size of 0?):\n{affine}\n"
            "expected an invertible voxel-to-world matrix; fix the header (pixdim, qform/sform)."
        )


def _check_values(array: np.ndarray, path: str, where: str, allow_uniform: bool) -> tuple[float, float]:
    """``(min, max)`` of the voxels; ``ValueError`` for NaN / Inf, and (unless ``allow_uniform``) uniform volumes."""
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            nan = int(np.count_nonzero(np.isnan(array)))
            positive = int(np.count_nonzero(np.isposinf(array)))
            negative = array.size - int(np.count_nonzero(finite)) - nan - positive
            found = [f"{nan} NaN voxel(s)"] if nan else []
            if positive or negative:
                found.append(f"{positive + negative} infinite voxel(s) ({positive} +Inf, {negative} -Inf)")
            first = tuple(int(i) for i in np.unravel_index(int(np.argmin(finite)), array.shape))
            raise ValueError(
                f"{where}file '{path}' holds {' and '.join(found)} out of {array.size} (the first at voxel {first}); "
                "expected finite values only: a single NaN turns every prediction into background and the training "
                "loss into NaN. Fix the image (e.g. replace them with 0) or re-export it."
            )
    minimum, maximum = float(array.min()), float(array.max())
    if minimum == maximum and not allow_uniform:
        if minimum == 0:
            raise ValueError(
                f"{where}file '{path}' is all zeros ({array.size} voxels); expected an image with signal: "
                "check the export or conversion that wrote it."
            )
        raise ValueError(
            f"{where}file '{path}' is constant: all {array.size} voxels equal {minimum:g}; expected an image with "
            "contrast (no imaging modality is constant): check the export or conversion that wrote it."
        )
    return minimum, maximum


def check_image_file(
    path: str | os.PathLike, context: str | None = None, *, allow_uniform: bool = False, keep_data: bool = False
) -> ImageFileSummary:
    """
    Check one NIfTI file completely (``.nii`` or ``.nii.gz``), reading it once.

    The file is read in one go; a gzip stream (detected from its magic bytes) is decompressed completely, member by
    member, so that zlib verifies the CRC-32 and the length stored in every member's trailer; the header is parsed
    from the decompressed bytes and the voxels are decoded in place from the same buffer (no second read, no copy),
    with the header's scaling (``scl_slope``, ``scl_inter``) applied as nibabel does.

    Checked, in order: the file exists and can be read; it is not a corrupt or truncated gzip stream; it is a
    single-file NIfTI-1 or NIfTI-2 image; it is a 3D scalar volume (not 2D, not 4D, not an RGB/RGBA datatype, not a
    vector image with a 5th dimension, not complex); it holds all the voxels its header announces; its affine is
    finite and invertible; its values are finite (NaN and Inf are counted separately); and unless ``allow_uniform``,
    it is neither all zero nor constant (use ``allow_uniform=True`` for label maps, which may be all background).

    Args:
        path: the file.
        context: how messages introduce the file's owner, e.g. ``"case 'BraTS-GLI-00000-000'"``.
        allow_uniform: accept volumes whose voxels are all equal (all zero included).
        keep_data: return the decoded (read-only) voxels in :attr:`ImageFileSummary.data`, e.g. to check label
            values without reading the file again.

    Returns:
        the summary of the file: shape, affine, dtype, min/max and the fingerprint taken before it was read.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: any other failed check; the message names ``context``, the file and what was expected.
    """
    path = os.fspath(path)
    where = _where(context)
    checked_ns = time.time_ns()
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}file '{path}' does not exist.") from None
    except OSError as err:
        raise ValueError(f"{where}file '{path}' cannot be read ({err}).") from err
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{where}'{path}' is not a regular file; expected a NIfTI image file.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"{where}file '{path}' cannot be read ({err}).") from err

    compressed = data.startswith(_GZIP_MAGIC)
    if compressed:
        data = _gunzip(data, path, where)
    elif path.endswith(".gz"):
        raise ValueError(
            f"{where}file '{path}' is not a readable NIfTI image: it is named '.gz' but is not gzip-compressed "
            f"(it starts with {data[:8]!r}); expected a gzip-compressed NIfTI file."
        )
    header = _parse_header(data, path, where)
    shape, dtype = _check_scalar_volume(header, path, where)
    if len(data) < _data_end(header):
        stored = "decompressed bytes" if compressed else "bytes"
        raise ValueError(
            f"{where}file '{path}' is truncated: it holds {len(data)} {stored}, its header needs {_data_end(header)} "
            f"(shape {shape}, dtype {dtype}); re-download or re-export the file."
        )
    affine = header.get_best_affine()
    _check_affine(affine, path, where)
    try:
        slope, inter = header.get_slope_inter()
    except HeaderDataError as err:
        raise ValueError(f"{where}file '{path}' has an invalid intensity scaling ({err}); fix its header.") from err
    raw = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=int(header.get_data_offset()))
    array = apply_read_scaling(raw.reshape(shape, order="F"), slope, inter)
    minimum, maximum = _check_values(array, path, where, allow_uniform)
    return ImageFileSummary(
        path=path,
        shape=shape,
        affine=affine,
        dtype=dtype.str,
        minimum=minimum,
        maximum=maximum,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        checked_ns=checked_ns,
        data=array if keep_data else None,
    )


#: PNG colour modes (Pillow's names) by what they hold, for the messages of :func:`check_png_file`.
_PNG_MODE_NAMES = {
    "RGB": "RGB", "RGBA": "RGB with an alpha channel (RGBA)", "L": "grey-scale", "LA": "grey-scale with alpha",
    "P": "palette-indexed", "PA": "palette-indexed with alpha", "1": "1-bit", "I": "32-bit grey-scale",
    "I;16": "16-bit grey-scale", "I;16B": "16-bit grey-scale",
}
#: Single-channel modes a label map may be stored in (palette indices are the label values).
_PNG_LABEL_MODES = ("L", "P", "1", "I", "I;16", "I;16B")


def check_png_file(
    path: str | os.PathLike,
    context: str | None = None,
    *,
    rgb: bool = True,
    allow_uniform: bool = False,
    keep_data: bool = False,
) -> ImageFileSummary:
    """
    Check one PNG file completely: it is a PNG, every chunk's CRC-32 and its zlib stream are intact (Pillow's
    ``verify``, then a full decode, so truncation is reported), and it holds what is expected: an 8-bit RGB image
    (``rgb=True``; an RGBA, grey-scale or palette image is refused, naming its mode) or a single-channel label map
    (``rgb=False``: grey-scale, palette indices or 1-bit; RGB is refused). Unless ``allow_uniform`` it is not constant.

    Args:
        path: the file.
        context: how messages introduce the file's owner, e.g. ``"frame 'instrument_dataset_1/frame000'"``.
        rgb: expect an RGB image (True) or a single-channel map (False).
        allow_uniform: accept images whose pixels are all equal (label maps may be all background).
        keep_data: return the decoded pixels, (height, width[, 3]), in :attr:`ImageFileSummary.data`.

    Returns:
        the summary: (width, height) as ``shape``, the identity as ``affine``, the mode as ``dtype``, min/max, and
        the fingerprint taken before it was read.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: any other failed check; the message names ``context``, the file and what was expected.
    """
    path = os.fspath(path)
    where = _where(context)
    expected = "an 8-bit RGB PNG" if rgb else "a single-channel label PNG (grey-scale or palette indices)"
    checked_ns = time.time_ns()
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}file '{path}' does not exist.") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{where}'{path}' is not a regular file; expected {expected}.")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"{where}file '{path}' is a {image.format} image, expected {expected}.")
            image.verify()
        with Image.open(path) as image:
            image.load()
            mode, size = image.mode, image.size
            array = np.asarray(image)
    except UnidentifiedImageError as err:
        raise ValueError(f"{where}file '{path}' is not an image Pillow can read; expected {expected}.") from err
    except (OSError, SyntaxError, zlib.error) as err:  # Pillow reports bad CRCs as SyntaxError, truncation as OSError
        raise ValueError(
            f"{where}file '{path}' is corrupt or truncated ({err}); re-download or re-export it."
        ) from err
    if (rgb and mode != "RGB") or (not rgb and mode not in _PNG_LABEL_MODES):
        raise ValueError(
            f"{where}file '{path}' is a {_PNG_MODE_NAMES.get(mode, mode)} PNG (mode {mode}), expected {expected}."
        )
    minimum, maximum = float(array.min()), float(array.max())
    if not allow_uniform and minimum == maximum:
        raise ValueError(f"{where}file '{path}' is constant (every pixel is {minimum:g}); expected a real image.")
    return ImageFileSummary(
        path=path,
        shape=(int(size[0]), int(size[1])),
        affine=np.eye(4),
        dtype=mode,
        minimum=minimum,
        maximum=maximum,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        checked_ns=checked_ns,
        data=array if keep_data else None,
    )


def check_same_grid(
    summaries: Sequence[ImageFileSummary], context: str | None = None, *, rtol: float = 1e-5, atol: float = 1e-8
) -> None:
    """
    Check that files of one case (e.g. the modalities and the label) share one voxel grid: the same shape exactly,
    and affines equal within ``|affine - reference| <= atol + rtol * |reference|`` element-wise, the first file being
    the reference. The defaults are those of the check MONAI's ``LoadImage`` applies when it stacks files as
    channels, so a case that passes here also loads there.

    Args:
        summaries: summaries of the files (:func:`check_image_file`), the reference first.
        context: how messages introduce the files' owner, e.g. ``"case 'BraTS-GLI-00000-000'"``.
        rtol: relative tolerance on the affine elements.
        atol: absolute tolerance on the affine elements.

    Raises:
        ValueError: the shapes or affines differ; the message names both files and the largest difference.
    """
    if not summaries:
        return
    where = _where(context)
    advice = (
        "all files of a case must share one voxel grid: resample them onto one grid (e.g. with MONAI's "
        "ResampleToMatch onto the first file of the case)"
    )
    reference = summaries[0]
    for summary in summaries[1:]:
        if summary.shape != reference.shape:
            raise ValueError(
                f"{where}file '{summary.path}' has shape {summary.shape}, but '{reference.path}' has "
                f"{reference.shape}; {advice}."
            )
        difference = np.abs(summary.affine - reference.affine)
        if not np.all(difference <= atol + rtol * np.abs(reference.affine)):
            row, column = np.unravel_index(int(np.argmax(difference)), difference.shape)
            raise ValueError(
                f"{where}file '{summary.path}' and file '{reference.path}' have different affines: the largest "
                f"difference is {difference.max():.6g} (element [{row}, {column}]: {summary.affine[row, column]:.6g} "
                f"vs {reference.affine[row, column]:.6g}), beyond rtol={rtol:g}, atol={atol:g}; {advice}, or fix "
                f"the header if only the header is wrong.\naffine of '{summary.path}':\n{summary.affine}\n"
                f"affine of '{reference.path}':\n{reference.affine}"
            )


def nifti_source_stem(metadict: Mapping) -> str:
    """
    The name of the file an item was read from, without ``.nii.gz`` / ``.nii``: ``filename_or_obj`` of its meta data
    (the first file when channels were stacked from several). For the ``output_name_formatter`` of
    :class:`monai.transforms.SaveImaged`; a ValueError when the meta data name no file.
    """
    source = metadict.get("filename_or_obj") if isinstance(metadict, Mapping) else None
    if isinstance(source, (list, tuple)):
        source = source[0] if source else None
    if not source:
        raise ValueError(f"cannot name the output: metadata has no 'filename_or_obj' (got {source!r}).")
    name = os.path.basename(os.fspath(source))
    for extension in (".nii.gz", ".nii"):
        if name.endswith(extension):
            return name[: -len(extension)]
    return name


def list_nifti_files(input_path: str | os.PathLike) -> list[str]:
    """
    Every ``.nii`` / ``.nii.gz`` file under the folder ``input_path`` (recursively, sorted), or the one file it names,
    as absolute paths: the volumes an inference config is pointed at.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        ValueError: it holds no NIfTI file.
    """
    input_path = os.path.abspath(os.fspath(input_path))
    if os.path.isfile(input_path):
        return [input_path]
    if not os.path.isdir(input_path):
        raise FileNotFoundError(f"input '{input_path}' is neither a NIfTI file nor a folder.")
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(input_path) for name in names
                   if name.lower().endswith((".nii", ".nii.gz")))
    if not paths:
        raise ValueError(f"no .nii / .nii.gz volume under '{input_path}'.")
    return paths


def read_datalist(datalist_path: str | os.PathLike,
                  keys: Sequence[str] = ("training", "validation", "testing")) -> dict[str, Any]:
    """
    The JSON datalist at ``datalist_path``: an object holding a list under each of ``keys`` (the splits).

    Raises:
        ValueError: the file is not valid JSON or lacks one of the lists; the message names the file.
    """
    datalist_path = os.fspath(datalist_path)
    try:
        with open(datalist_path, encoding="utf-8") as f:
            datalist = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist_path '{datalist_path}' is not valid JSON ({err}).") from err
    if not isinstance(datalist, dict) or any(not isinstance(datalist.get(key), list) for key in keys):
        raise ValueError(
            f"datalist_path '{datalist_path}' must hold a JSON object with the lists {list(keys)}; "
            "fix the file or pass overwrite=True to rebuild it."
        )
    return datalist


def validation_sidecar_path(datalist_path: str | os.PathLike) -> str:
    """The :class:`ValidationCache` file kept beside a datalist: ``<folder>/.<datalist name>.validated.json``."""
    datalist_path = os.path.abspath(os.fspath(datalist_path))
    folder, name = os.path.split(datalist_path)
    return os.path.join(folder, f".{name}.validated.json")


class ValidationCache:
    """
    Fingerprints of the files that passed a full check, kept in a JSON sidecar file, so that checking the same files
    again (e.g. every time a datalist is reused) only reads the files that changed.

    A file is trusted without being read again when its ``(size, mtime_ns)`` equals the one recorded and it was
    checked for the same ``kind``; its recorded :class:`ImageFileSummary` (shape, affine, ...) then stands in for a new
    check, so the checks across files (:func:`check_same_grid`) still run. Files modified less than 2 s before they
    were checked are not recorded (a change within one tick of a coarse file-system clock would keep their mtime).
    The sidecar is ignored as a whole (every file is checked again) when it is missing, unreadable, of another
    format, or recorded under other ``rules``. It is thread-safe; :meth:`save` writes it atomically.

    Args:
        path: the sidecar file (see :func:`validation_sidecar_path`).
        rules: version tag of the caller's checks; bump it when they change, so older records are not trusted.
    """

    def __init__(self, path: str | os.PathLike, rules: str) -> None:
        self.path = os.fspath(path)
        self.rules = rules
        self.hits = 0
        self.misses = 0
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._changed = True  # until it is known to equal the file on disk (see load)

    @classmethod
    def load(cls, path: str | os.PathLike, rules: str) -> ValidationCache:
        """The cache stored at ``path``; empty (every file will be checked) when it is missing or stale."""
        cache = cls(path, rules)
        try:
            with open(cache.path, encoding="utf-8") as f:
                stored = json.load(f)
        except FileNotFoundError:
            logger.info("No validation record '%s': every file is checked.", cache.path)
            return cache
        except (OSError, ValueError) as err:
            logger.warning("Ignoring the unreadable validation record '%s' (%s): every file is checked.", path, err)
            return cache
        if (
            not isinstance(stored, dict)
            or stored.get("format") != _CACHE_FORMAT
            or stored.get("rules") != rules
            or not isinstance(stored.get("files"), dict)
        ):
            logger.info("Ignoring the stale validation record '%s' (other format or rules): every file is checked.",
                        path)
            return cache
        cache._records = {k: v for k, v in stored["files"].items() if isinstance(v, dict)}
        cache._changed = False
        return cache

    def lookup(self, path: str | os.PathLike, kind: str) -> ImageFileSummary | None:
        """
        The recorded summary of ``path`` if it passed a ``kind`` check and its fingerprint is unchanged, else None
        (also when the file is missing: the full check then reports it).
        """
        path = os.fspath(path)
        key = os.path.abspath(path)
        summary = None
        with self._lock:
            record = self._records.get(key)
        if record is not None and record.get("kind") == kind:
            try:
                info = os.stat(path)
                cached = ImageFileSummary.from_json(path, record)
            except (OSError, KeyError, TypeError, ValueError):
                cached = None
            if cached is not None and (info.st_size, info.st_mtime_ns) == (cached.size, cached.mtime_ns):
                summary = cached
        with self._lock:
            if summary is None:
                self.misses += 1
            else:
                self.hits += 1
        return summary

    def record(self, summary: ImageFileSummary, kind: str) -> None:
        """Record that ``summary.path`` passed a ``kind`` check (skipped when the file was modified just before)."""
        key = os.path.abspath(summary.path)
        with self._lock:
            if summary.checked_ns - summary.mtime_ns < _UNSETTLED_NS:
                logger.debug("Not recording '%s': modified less than 2 s before it was checked.", summary.path)
                self._changed |= self._records.pop(key, None) is not None
            else:
                self._records[key] = {"kind": kind, **summary.to_json()}
                self._changed = True

    def keep_only(self, paths: Iterable[str | os.PathLike]) -> None:
        """Forget the files not in ``paths`` (e.g. those no longer listed in the datalist)."""
        keep = {os.path.abspath(os.fspath(p)) for p in paths}
        with self._lock:
            if set(self._records) - keep:
                self._records = {k: v for k, v in self._records.items() if k in keep}
                self._changed = True

    def save(self) -> None:
        """
        Write the sidecar atomically unless it was loaded and nothing changed since; a failure to write is logged, not
        raised (the next check then reads every file again).
        """
        with self._lock:
            if not self._changed:
                return
            text = json.dumps({"format": _CACHE_FORMAT, "rules": self.rules, "files": self._records})
            self._changed = False
        try:
            write_text_atomically(text + "\n", self.path)
        except OSError as err:
            logger.warning("Could not write the validation record '%s' (%s); the next check reads every file.",
                           self.path, err)


def default_num_workers() -> int:
    """Threads for :func:`run_checks`: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def run_checks(
    check: Callable[[T], R],
    items: Sequence[T],
    *,
    num_workers: int | None = None,
    what: str = "cases",
    log_every: int = 100,
) -> list[R]:
    """
    Apply ``check`` to every item, in up to ``num_workers`` threads, and return the results in the order of
    ``items``. The exception of the first failing item (in that order) is raised, once the checks then running have
    ended; the others are cancelled. An INFO line reports the progress every ``log_every`` items.

    Args:
        check: the check of one item (e.g. all files of one case); it must be thread-safe.
        items: the items.
        num_workers: threads; None: :func:`default_num_workers`; 0 or 1: in the calling thread.
        what: what the items are, for the progress messages (e.g. ``"BraTS cases"``).
        log_every: items between progress messages.
    """
    total = len(items)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    start = time.perf_counter()
    results: list[R] = []

    def collect(result: R) -> None:
        results.append(result)
        if len(results) % max(1, log_every) == 0 and len(results) < total:
            logger.info("Checked %d/%d %s (%.0f s).", len(results), total, what, time.perf_counter() - start)

    if workers <= 1 or total <= 1:
        for item in items:
            collect(check(item))
        return results
    executor = ThreadPoolExecutor(max_workers=min(workers, total), thread_name_prefix="check")
    try:
        for result in executor.map(check, items):
            collect(result)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return results


def check_image_files(
    items: Sequence[tuple[str, str]],
    cache: ValidationCache | None = None,
    kind: str = "image",
    what: str = "volumes",
    num_workers: int | None = None,
) -> None:
    """
    :func:`check_image_file` on every ``(context, path)`` of ``items`` (one volume each, e.g. a subject's T1), in
    threads (:func:`run_checks`), skipping the files ``cache`` vouches for as ``kind`` and recording those that pass.
    """

    def check(item: tuple[str, str]) -> None:
        context, path = item
        if cache is None or cache.lookup(path, kind) is None:
            summary = check_image_file(path, context)
            if cache is not None:
                cache.record(summary, kind)

    run_checks(check, items, num_workers=num_workers, what=what)


def recheck_image_files(
    items: Sequence[tuple[str, str]],
    sidecar: str | os.PathLike,
    rules: str,
    kind: str = "image",
    what: str = "volumes",
    num_workers: int | None = None,
) -> None:
    """
    :func:`check_image_files` for the files of a reused datalist, with the validation record ``sidecar``: only the
    files changed since they last passed are read; the record is updated (and kept to these files) even when a check
    fails, so the next run reads only what changed.
    """
    cache = ValidationCache.load(sidecar, rules=rules)
    try:
        check_image_files(items, cache, kind, what, num_workers)
    finally:
        cache.keep_only(path for _, path in items)
        cache.save()
