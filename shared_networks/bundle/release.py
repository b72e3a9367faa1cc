# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
The release archive of a bundle: ``<name>_v<version>.zip`` holding one top folder ``<name>/``.

That is the layout ``monai.bundle.download(name=<name>, url=<zip>)`` needs (it unzips into ``bundle_dir`` and expects
``bundle_dir/<name>/configs/...``) and the name the Model Zoo release uses. What goes in:

- the bundle's source files (configs, docs, LICENSE, scripts/, large_files.yml), without run outputs, local data and
  caches (``eval/``, ``runs/``, ``mlruns/``, ``data/``, ``datalist*.json``, ``__pycache__``, ``*.pyc``, ...; see
  :func:`shared_networks.bundle.layout.is_bundle_source`);
- ``configs/train.json`` and ``configs/inference.json`` generated from ``train.yaml`` / ``inference.yaml`` when the
  bundle has no JSON of its own: ``monai.bundle.load(..., workflow_type="train"|"inference")`` builds the network only
  from ``configs/<workflow_type>.json`` (it returns a bare state dict otherwise). The JSON holds the same content as
  the YAML (comments aside); the YAML stays what the docs give ``python -m monai.bundle run --config_file``;
- ``models/``: ``models="auto"`` includes the weight files that are present, ``"yes"`` requires ``models/model.pt``,
  ``"no"`` leaves them out (a config-only archive, weights restored with ``python -m monai.bundle
  download_large_files``). Weights listed in ``large_files.yml`` must match their sha256, otherwise packaging stops.
  When every listed large file is in the archive, ``large_files.yml`` is dropped, as the Model Zoo release does;
  otherwise it is kept so that users can fetch the missing files.

The archive is deterministic (sorted entries, fixed timestamps and permissions) and written atomically
(:func:`shared_networks.io.atomic_write`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

from shared_networks.bundle.layout import MODEL_SUFFIXES, WEIGHTS_DIR, is_bundle_source, large_file_entries
from shared_networks.io import atomic_write

__all__ = ["MODELS_CHOICES", "ZIP_DATE_TIME", "json_twins", "package_bundle", "select_files", "sha256_of"]

#: How :func:`package_bundle` treats ``models/``.
MODELS_CHOICES = ("auto", "yes", "no")
#: 2022-05-30 00:00, the timestamp the Model Zoo release script stamps on every file before zipping.
ZIP_DATE_TIME = (2022, 5, 30, 0, 0, 0)
_CHUNK = 1 << 20

logger = logging.getLogger(__name__)


def sha256_of(path: str | os.PathLike, chunk: int = _CHUNK) -> str:
    """Hex sha256 of the file ``path``, read in blocks of ``chunk`` bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def select_files(bundle: str | os.PathLike, models: str = "auto") -> list[Path]:
    """
    The files (relative to ``bundle``, sorted) that go into the archive: the bundle's source files, and the weight
    files of ``models/`` as ``models`` says (see the module docstring).

    Raises:
        ValueError: ``models`` is not one of :data:`MODELS_CHOICES`.
        FileNotFoundError: ``models="yes"`` and ``models/model.pt`` does not exist.
    """
    if models not in MODELS_CHOICES:
        raise ValueError(f"models must be one of {MODELS_CHOICES}, got '{models}'")
    bundle = Path(bundle)
    selected = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle)
        if not path.is_file() or not is_bundle_source(rel):
            continue
        if rel.parts[0] == WEIGHTS_DIR and (models == "no" or rel.suffix not in MODEL_SUFFIXES):
            continue
        selected.append(rel)
    if models == "yes" and Path(WEIGHTS_DIR, "model.pt") not in selected:
        raise FileNotFoundError(f"models='yes', but {bundle / WEIGHTS_DIR / 'model.pt'} does not exist")
    return selected


def json_twins(bundle: str | os.PathLike, files: Sequence[Path]) -> dict[Path, bytes]:
    """
    ``configs/<stem>.json`` (4-space indented, as bytes) for the YAML train and inference configs among ``files``
    that have no JSON twin there.

    Raises:
        ValueError: a YAML config does not parse.
    """
    import yaml

    bundle = Path(bundle)
    twins = {}
    for stem in ("train", "inference"):
        yaml_rel = next((Path("configs") / f"{stem}{ext}" for ext in (".yaml", ".yml")
                         if Path("configs") / f"{stem}{ext}" in files), None)
        json_rel = Path("configs") / f"{stem}.json"
        if yaml_rel is None or json_rel in files:
            continue
        try:
            content = yaml.safe_load((bundle / yaml_rel).read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{bundle / yaml_rel} does not parse as YAML: {e}") from e
        twins[json_rel] = (json.dumps(content, indent=4) + "\n").encode()
    return twins


def _check_large_files(bundle: Path, files: list[Path]) -> Path | None:
    """Verify the sha256 of every listed large file that goes into the archive; return ``large_files.yml`` when it
    is to be dropped (every listed file is inside), else ``None``."""
    large_files_path, entries = large_file_entries(bundle)
    listed = []
    for entry in entries:
        rel = Path(os.path.normpath(str(entry.get("path", ""))))
        listed.append(rel)
        if rel not in files:
            continue
        hash_type = str(entry.get("hash_type", "")).lower()
        if hash_type != "sha256":
            raise ValueError(f"{large_files_path}: entry '{rel}' needs hash_type: sha256, got '{hash_type}'")
        actual = sha256_of(bundle / rel)
        if actual != str(entry.get("hash_val", "")).lower():
            raise ValueError(f"{bundle / rel} has sha256 {actual}, but {large_files_path.name} says "
                             f"{entry.get('hash_val')}: refusing to package mismatching weights")
    if large_files_path is not None and listed and all(rel in files for rel in listed):
        return large_files_path.relative_to(bundle)
    return None


def package_bundle(bundle: str | os.PathLike, output_dir: str | os.PathLike, models: str = "auto") -> Path:
    """
    Write ``<output_dir>/<name>_v<version>.zip`` for the bundle folder ``bundle`` (see the module docstring).

    Args:
        bundle: the bundle folder; its name is the bundle name.
        output_dir: folder of the archive, created if missing.
        models: ``"auto"``, ``"yes"`` or ``"no"``: which weights of ``models/`` go in.

    Returns:
        the path of the archive.

    Raises:
        FileNotFoundError: ``bundle`` has no ``configs/metadata.json``, or ``models="yes"`` without weights.
        ValueError: bad bundle name or version, unknown ``models``, or weights that do not match
            ``large_files.yml``.
    """
    bundle = Path(bundle).resolve()
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{bundle} is not a bundle: {meta_file} is missing")
    name = bundle.name
    if re.search(r"_v\d", name):
        raise ValueError(f"bundle name '{name}' must not contain '_v<digit>' (MONAI splits name and version there)")
    version = str(json.loads(meta_file.read_text()).get("version", ""))
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"{meta_file}: 'version' must be X.Y.Z, got '{version}'")
    files = select_files(bundle, models)
    dropped = _check_large_files(bundle, files)
    if dropped is not None:
        files.remove(dropped)
    generated = json_twins(bundle, files)
    target = Path(output_dir) / f"{name}_v{version}.zip"
    with atomic_write(target) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED,
                                                    compresslevel=9) as archive:
        for rel in sorted([*files, *generated]):
            info = zipfile.ZipInfo(f"{name}/{rel.as_posix()}", date_time=ZIP_DATE_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            if rel in generated:
                archive.writestr(info, generated[rel])
                continue
            with open(bundle / rel, "rb") as src, archive.open(info, "w") as dst:
                for block in iter(lambda: src.read(_CHUNK), b""):
                    dst.write(block)
    logger.info("wrote %s (%d files, %d generated: %s; sha256 %s)", target, len(files) + len(generated),
                len(generated), ", ".join(p.as_posix() for p in generated) or "-", sha256_of(target))
    return target
