#!/usr/bin/env python
# Copyright (c) the shared_networks authors. Licensed under the Apache License, Version 2.0.
"""
Build the release archive of a bundle: ``<name>_v<version>.zip`` holding one top folder ``<name>/``.

That is the layout ``monai.bundle.download(name=<name>, url=<zip>)`` needs (it unzips into ``bundle_dir`` and expects
``bundle_dir/<name>/configs/...``) and the name the Model Zoo release uses. What goes in:

- everything tracked in the bundle folder (configs, docs, LICENSE, scripts/, large_files.yml), except run outputs and
  local data: ``eval/``, ``runs/``, ``mlruns/``, ``data/``, ``datalist*.json``, caches (``__pycache__``, ``*.pyc``);
- ``configs/train.json`` and ``configs/inference.json`` generated from ``train.yaml`` / ``inference.yaml`` when the
  bundle has no JSON of its own: ``monai.bundle.load(..., workflow_type="train"|"inference")`` builds the network only
  from ``configs/<workflow_type>.json`` (it returns a bare state dict otherwise). The JSON holds the same content as
  the YAML (comments aside); the YAML stays what the docs give ``python -m monai.bundle run --config_file``;
- ``models/``: ``--models auto`` (default) includes the weight files that are present, ``--models yes`` requires
  ``models/model.pt``, ``--models no`` leaves them out (a config-only archive, weights restored with
  ``python -m monai.bundle download_large_files``). Weights listed in ``large_files.yml`` must match their sha256,
  otherwise packaging stops. When every listed large file is in the archive, ``large_files.yml`` is dropped, as the
  Model Zoo release does; otherwise it is kept so that users can fetch the missing files.

The archive is deterministic (sorted entries, fixed timestamps and permissions) and written atomically.

Usage::

    python ci/package_bundle.py segmamba_brats [--output-dir dist] [--models auto|yes|no]
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
EXCLUDED_DIRS = ("eval", "runs", "mlruns", "data", "__pycache__", ".ipynb_checkpoints", ".pytest_cache")
EXCLUDED_FILES = ("datalist*.json", "*.pyc", "*.pyo", ".DS_Store", "*.tmp", "*.swp")
MODEL_SUFFIXES = (".pt", ".ts", ".onnx", ".pt2")
# 2022-05-30 00:00, the timestamp the Model Zoo release script stamps on every file before zipping.
ZIP_DATE_TIME = (2022, 5, 30, 0, 0, 0)
MODELS_CHOICES = ("auto", "yes", "no")

logger = logging.getLogger("package_bundle")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _large_file_entries(bundle: Path) -> tuple[Path | None, list[dict]]:
    import yaml

    for ext in (".yml", ".yaml", ".json"):
        path = bundle / f"large_files{ext}"
        if path.is_file():
            content = json.loads(path.read_text()) if ext == ".json" else yaml.safe_load(path.read_text())
            if not isinstance(content, dict) or not isinstance(content.get("large_files"), list):
                raise ValueError(f"{path} must hold a 'large_files:' list")
            return path, content["large_files"]
    return None, []


def select_files(bundle: Path, models: str = "auto") -> list[Path]:
    """Paths (relative to ``bundle``) that go into the archive, sorted; see the module docstring for the rules."""
    if models not in MODELS_CHOICES:
        raise ValueError(f"models must be one of {MODELS_CHOICES}, got '{models}'")
    selected = []
    for path in sorted(bundle.rglob("*")):
        rel = path.relative_to(bundle)
        if not path.is_file() or any(part in EXCLUDED_DIRS for part in rel.parts[:-1]):
            continue
        if any(fnmatch.fnmatch(rel.name, pattern) for pattern in EXCLUDED_FILES):
            continue
        if rel.parts[0] == "models" and (models == "no" or rel.suffix not in MODEL_SUFFIXES):
            continue
        selected.append(rel)
    if models == "yes" and Path("models/model.pt") not in selected:
        raise FileNotFoundError(f"--models yes, but {bundle / 'models' / 'model.pt'} does not exist")
    return selected


def json_twins(bundle: Path, files: Sequence[Path]) -> dict[Path, bytes]:
    """``configs/<stem>.json`` for the YAML train and inference configs that have no JSON twin among ``files``."""
    import yaml

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


def package_bundle(bundle: Path, output_dir: Path, models: str = "auto") -> Path:
    """Write ``<output_dir>/<name>_v<version>.zip`` for the bundle folder ``bundle`` and return its path."""
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
    large_files_path, entries = _large_file_entries(bundle)
    listed = {}
    for entry in entries:
        rel = Path(os.path.normpath(str(entry.get("path", ""))))
        listed[rel] = entry
        if rel in files:
            hash_type = str(entry.get("hash_type", "")).lower()
            if hash_type != "sha256":
                raise ValueError(f"{large_files_path}: entry '{rel}' needs hash_type: sha256, got '{hash_type}'")
            actual = sha256_of(bundle / rel)
            if actual != str(entry.get("hash_val", "")).lower():
                raise ValueError(f"{bundle / rel} has sha256 {actual}, but {large_files_path.name} says "
                                 f"{entry.get('hash_val')}: refusing to package mismatching weights")
    if large_files_path is not None and listed and all(rel in files for rel in listed):
        files.remove(large_files_path.relative_to(bundle))
    generated = json_twins(bundle, files)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{name}_v{version}.zip"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=output_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp_name, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for rel in sorted([*files, *generated]):
                info = zipfile.ZipInfo(f"{name}/{rel.as_posix()}", date_time=ZIP_DATE_TIME)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                if rel in generated:
                    archive.writestr(info, generated[rel])
                    continue
                with open(bundle / rel, "rb") as src, archive.open(info, "w") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        dst.write(block)
        os.replace(tmp_name, target)
    except BaseException:
        os.unlink(tmp_name)
        raise
    logger.info("wrote %s (%d files, %d generated: %s; sha256 %s)", target, len(files) + len(generated),
                len(generated), ", ".join(p.as_posix() for p in generated) or "-", sha256_of(target))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle name in bundles/ or a path to a bundle folder")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "dist", help="default: %(default)s")
    parser.add_argument("--models", choices=MODELS_CHOICES, default="auto",
                        help="include models/ weights: auto = those present (default), yes = require model.pt, no")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    bundle = Path(args.bundle) if os.sep in args.bundle else BUNDLES_DIR / args.bundle
    try:
        target = package_bundle(bundle, args.output_dir, args.models)
    except (ValueError, FileNotFoundError) as e:
        logger.error("error: %s", e)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
