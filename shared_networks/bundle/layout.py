# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
The conventions of a MONAI bundle folder that every tool of this collection shares (``ci/verify_bundles.py``,
``ci/package_bundle.py`` through :mod:`shared_networks.bundle.release`, and the tests): which files are the bundle's
source and which are run outputs, where configs and ``large_files.yml`` live, and the per-bundle checks file
``ci/bundle_checks/<bundle>.yaml`` that declares the bundle's reduced CPU settings and its synthetic data generator.

A checks file holds any of these sections (all optional)::

    network_def:          # merged as `network_def#<key>` for a reduced network on CPU
      hidden_size: 64
    train:                # id -> value overrides for short CPU training runs
      epochs: 1
    inference:            # id -> value overrides for inference runs
      sw_batch_size: 1
    synthetic_data:       # the generator, called with output_dir=<folder> plus these arguments
      _target_: shared_networks.data.brats.generate_brats_phantoms
      num_cases: 5
      shape: [32, 32, 32]
    config_consistency:   # what ci/verify_bundles.py compares between train and inference configs
      same: [patch_size]
      preprocessing:
        train: train#deterministic_transforms
        inference: preprocessing#transforms

A bundle without a checks file runs at full size and has no synthetic data: the tools that need data say which file
to add.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUNDLE_CHECKS_DIR",
    "BUNDLE_CHECKS_SECTIONS",
    "CACHE_DIRS",
    "CACHE_FILES",
    "CONFIG_EXTENSIONS",
    "MODEL_SUFFIXES",
    "RUN_OUTPUT_DIRS",
    "RUN_OUTPUT_FILES",
    "WEIGHTS_DIR",
    "BundleChecks",
    "MissingSyntheticDataError",
    "bundle_on_path",
    "copy_bundle",
    "find_config",
    "is_bundle_source",
    "large_file_entries",
    "list_bundles",
    "load_bundle_checks",
    "make_synthetic_data",
]

#: Extensions of bundle config files, in the order a stem is looked up.
CONFIG_EXTENSIONS = (".json", ".yaml", ".yml")
#: Folder of the trained weights (``models/model.pt``): shipped in a release, or listed in ``large_files.yml``.
WEIGHTS_DIR = "models"
#: Suffixes of weight files in ``models/``.
MODEL_SUFFIXES = (".pt", ".ts", ".onnx", ".pt2")
#: Top-level folders that running a bundle writes (logs, metrics, TensorBoard, MLflow) or that hold local data.
RUN_OUTPUT_DIRS = ("eval", "runs", "mlruns", "data")
#: Top-level files that running a bundle writes.
RUN_OUTPUT_FILES = ("datalist*.json", ".datalist*.json.validated.json")
#: Cache folders, at any depth.
CACHE_DIRS = ("__pycache__", ".ipynb_checkpoints", ".pytest_cache")
#: Cache, editor and temporary files, at any depth.
CACHE_FILES = ("*.pyc", "*.pyo", ".DS_Store", "*.tmp", "*.swp")
#: Where the checks files ``<bundle>.yaml`` live, relative to the repository root.
BUNDLE_CHECKS_DIR = Path("ci") / "bundle_checks"
#: The sections a checks file may hold.
BUNDLE_CHECKS_SECTIONS = ("network_def", "train", "inference", "synthetic_data", "config_consistency")
_LARGE_FILES_EXTENSIONS = (".yml", ".yaml", ".json")


class MissingSyntheticDataError(LookupError):
    """The bundle declares no synthetic data generator; the message names the checks file to add or complete."""


def find_config(bundle: str | os.PathLike, stem: str) -> Path | None:
    """``configs/<stem>.json``, ``.yaml`` or ``.yml`` of ``bundle``, whichever exists first; ``None`` if none does."""
    for ext in CONFIG_EXTENSIONS:
        path = Path(bundle) / "configs" / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def list_bundles(bundles_dir: str | os.PathLike) -> list[Path]:
    """Every bundle folder (a folder holding ``configs/``) directly under ``bundles_dir``, sorted by name."""
    bundles_dir = Path(bundles_dir)
    if not bundles_dir.is_dir():
        return []
    return sorted(p for p in bundles_dir.iterdir() if p.is_dir() and (p / "configs").is_dir())


def _is_excluded_dir(rel_dir: Path) -> bool:
    """A run-output folder at the top of the bundle, or a cache folder anywhere."""
    return (len(rel_dir.parts) == 1 and rel_dir.name in RUN_OUTPUT_DIRS) or rel_dir.name in CACHE_DIRS


def is_bundle_source(rel: str | os.PathLike) -> bool:
    """
    Whether the file ``rel`` (relative to the bundle root) belongs to the bundle: not in a run-output or cache
    folder (:data:`RUN_OUTPUT_DIRS` at the top, :data:`CACHE_DIRS` anywhere), not a top-level run-output file
    (:data:`RUN_OUTPUT_FILES`) and not a cache file (:data:`CACHE_FILES`). Weights in ``models/`` are part of the
    bundle; which of them a release carries is the packager's choice.
    """
    rel = Path(rel)
    parents = rel.parts[:-1]
    if any(_is_excluded_dir(Path(*parents[: i + 1])) for i in range(len(parents))):
        return False
    if len(rel.parts) == 1 and any(fnmatch.fnmatch(rel.name, p) for p in RUN_OUTPUT_FILES):
        return False
    return not any(fnmatch.fnmatch(rel.name, p) for p in CACHE_FILES)


def copy_bundle(bundle: str | os.PathLike, dest: str | os.PathLike, weights: bool = False) -> Path:
    """
    Copy the source files of the bundle folder ``bundle`` (see :func:`is_bundle_source`) to the new folder ``dest``.

    Args:
        bundle: the bundle folder.
        dest: the folder to create; its name is usually the bundle's (tools look bundles up by folder name).
        weights: also copy ``models/`` (the shipped weights); otherwise the copy has no ``models/`` folder.

    Returns:
        ``dest``.
    """
    bundle, dest = Path(bundle), Path(dest)

    def ignore(folder: str, names: list[str]) -> list[str]:
        rel_dir = Path(folder).relative_to(bundle)
        skipped = []
        for name in names:
            rel = rel_dir / name
            if rel.parts[0] == WEIGHTS_DIR and not weights:
                skipped.append(name)
            elif (Path(folder) / name).is_dir():
                if _is_excluded_dir(rel):
                    skipped.append(name)
            elif not is_bundle_source(rel):
                skipped.append(name)
        return skipped

    return Path(shutil.copytree(bundle, dest, ignore=ignore))


def large_file_entries(bundle: str | os.PathLike) -> tuple[Path | None, list[dict]]:
    """
    The ``large_files.yml`` (or ``.yaml`` / ``.json``) of ``bundle`` and its ``large_files`` entries.

    Returns:
        ``(path, entries)``; ``(None, [])`` when the bundle has no such file.

    Raises:
        ValueError: when the file does not parse or holds no ``large_files:`` list of mappings.
    """
    import yaml

    for ext in _LARGE_FILES_EXTENSIONS:
        path = Path(bundle) / f"large_files{ext}"
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text()) if ext == ".json" else yaml.safe_load(path.read_text())
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"{path} does not parse: {e}") from e
        entries = content.get("large_files") if isinstance(content, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"{path} must hold a 'large_files:' list of entries (path, url, hash_val, hash_type)")
        return path, entries
    return None, []


@contextlib.contextmanager
def bundle_on_path(bundle_root: str | os.PathLike) -> Iterator[None]:
    """
    Put the bundle root first on ``sys.path`` (as ``ConfigWorkflow.run`` and the Model Zoo's PYTHONPATH do) so that
    ``scripts.*`` targets import. A ``scripts`` module of another bundle is dropped before and after, and no
    ``__pycache__`` is written meanwhile, so that importing from a bundle never writes into the bundle folder.
    """
    root = str(bundle_root)
    saved_bytecode_flag = sys.dont_write_bytecode
    _drop_scripts_modules()
    sys.path.insert(0, root)
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = saved_bytecode_flag
        sys.path.remove(root)
        _drop_scripts_modules()


def _drop_scripts_modules() -> None:
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


def _mapping(content: Any, path: Path, section: str) -> dict:
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: '{section}' must be a mapping, got {type(content).__name__}")
    return content


def _consistency_section(content: Any, path: Path) -> dict:
    """The ``config_consistency`` section, validated: ``same`` a list of ids, ``preprocessing`` train/inference ids."""
    content = _mapping(content, path, "config_consistency")
    unknown = sorted(set(content) - {"same", "preprocessing"})
    if unknown:
        raise ValueError(f"{path}: config_consistency has unknown keys {unknown}; expected 'same' and 'preprocessing'")
    same = content.get("same", [])
    if not isinstance(same, list) or not all(isinstance(i, str) and i for i in same):
        raise ValueError(f"{path}: config_consistency#same must be a list of config ids, got {same!r}")
    preprocessing = content.get("preprocessing")
    if preprocessing is not None and (
        not isinstance(preprocessing, dict)
        or set(preprocessing) != {"train", "inference"}
        or not all(isinstance(v, str) and v for v in preprocessing.values())
    ):
        raise ValueError(f"{path}: config_consistency#preprocessing must map 'train' and 'inference' to the config ids"
                         f" of their transform lists, got {preprocessing!r}")
    return {"same": same, "preprocessing": preprocessing}


@dataclass(frozen=True)
class BundleChecks:
    """
    The checks file of one bundle (see the module docstring); every section is empty when the bundle has none.

    Attributes:
        bundle: the bundle folder.
        path: the checks file, ``None`` when there is none.
        searched: the checks files that were looked for (first found wins), for error messages.
        network_def: ``network_def`` overrides of a reduced network.
        train: id -> value overrides for short training runs.
        inference: id -> value overrides for inference runs.
        synthetic_data: ``{"_target_": <generator>, <argument>: <value>, ...}``, or ``None``.
        config_consistency: ``{"same": [ids], "preprocessing": {"train": id, "inference": id} or None}``.
    """

    bundle: Path
    path: Path | None = None
    searched: tuple[Path, ...] = ()
    network_def: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    inference: dict = field(default_factory=dict)
    synthetic_data: dict | None = None
    config_consistency: dict = field(default_factory=lambda: {"same": [], "preprocessing": None})

    @property
    def name(self) -> str:
        return self.bundle.name

    def make_synthetic_data(self, output_dir: str | os.PathLike, num_cases: int | None = None) -> Path:
        """
        Call the declared generator with ``output_dir=<output_dir>`` and the declared arguments (``scripts.*``
        generators import from the bundle folder).

        Args:
            output_dir: the dataset folder to write; the generator creates it.
            num_cases: replaces the declared ``num_cases`` argument (e.g. more cases for a 2-rank run).

        Returns:
            ``output_dir``, to use as the bundle's ``dataset_dir``.

        Raises:
            MissingSyntheticDataError: when the bundle has no checks file or it has no ``synthetic_data`` section.
        """
        if self.synthetic_data is None:
            if self.path is not None:
                problem = f"{self.path} has no 'synthetic_data:' section: add one"
            else:
                looked_for = ", ".join(map(str, self.searched)) or f"{self.name}.yaml"
                target = self.searched[0] if self.searched else Path(f"{self.name}.yaml")
                problem = (f"it has no checks file (looked for {looked_for}): add {target} with a 'synthetic_data:'"
                           " section")
            raise MissingSyntheticDataError(
                f"bundle '{self.name}' declares no synthetic data generator; {problem} holding"
                " '_target_: <module.function>' (called with output_dir=<folder>) and the generator's arguments,"
                " e.g. '_target_: scripts.synthetic.generate' for a function in the bundle's scripts/ folder"
            )
        args = {k: v for k, v in self.synthetic_data.items() if k != "_target_"}
        if num_cases is not None:
            args["num_cases"] = num_cases
        with bundle_on_path(self.bundle):
            generator = _locate(self.synthetic_data["_target_"], self.path)
            generator(output_dir=str(output_dir), **args)
        return Path(output_dir)


def _locate(target: str, where: Path | None) -> Any:
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ValueError(f"{where}: synthetic_data#_target_ must be a dotted path 'module.function', got '{target}'")
    generator = getattr(importlib.import_module(module_name), attr, None)
    if not callable(generator):
        raise ValueError(f"{where}: synthetic_data#_target_ '{target}': module '{module_name}' has no function"
                         f" '{attr}'")
    return generator


def load_bundle_checks(bundle: str | os.PathLike, checks_dirs: Sequence[str | os.PathLike]) -> BundleChecks:
    """
    Read the checks file ``<dir>/<bundle name>.yaml`` of the first of ``checks_dirs`` that has one.

    Args:
        bundle: the bundle folder (its name selects the checks file).
        checks_dirs: folders to search, in order; the repository's is ``<repo>/``:data:`BUNDLE_CHECKS_DIR`.

    Returns:
        the bundle's :class:`BundleChecks`, with empty sections when no checks file exists.

    Raises:
        ValueError: when the file does not parse, has unknown sections or malformed ones.
    """
    import yaml

    bundle = Path(bundle)
    searched = tuple(Path(d) / f"{bundle.name}.yaml" for d in checks_dirs)
    path = next((p for p in searched if p.is_file()), None)
    if path is None:
        return BundleChecks(bundle=bundle, searched=searched)
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} does not parse as YAML: {e}") from e
    content = _mapping(content, path, "the file")
    unknown = sorted(set(content) - set(BUNDLE_CHECKS_SECTIONS))
    if unknown:
        raise ValueError(f"{path} has unknown sections {unknown}; expected some of {list(BUNDLE_CHECKS_SECTIONS)}"
                         " (synthetic data are declared under 'synthetic_data:' with a '_target_' generator)")
    synthetic = content.get("synthetic_data")
    if synthetic is not None:
        synthetic = _mapping(synthetic, path, "synthetic_data")
        if not isinstance(synthetic.get("_target_"), str) or "output_dir" in synthetic:
            raise ValueError(f"{path}: synthetic_data needs '_target_: <module.function>' (and no 'output_dir', which"
                             f" the tools pass), got {synthetic!r}")
    return BundleChecks(
        bundle=bundle,
        path=path,
        searched=searched,
        network_def=_mapping(content.get("network_def"), path, "network_def"),
        train=_mapping(content.get("train"), path, "train"),
        inference=_mapping(content.get("inference"), path, "inference"),
        synthetic_data=synthetic,
        config_consistency=_consistency_section(content.get("config_consistency"), path),
    )


def make_synthetic_data(
    bundle: str | os.PathLike,
    output_dir: str | os.PathLike,
    checks_dirs: Sequence[str | os.PathLike],
    num_cases: int | None = None,
) -> Path:
    """
    Write the synthetic dataset that ``bundle`` declares in its checks file (see
    :meth:`BundleChecks.make_synthetic_data`) to ``output_dir`` and return ``output_dir``.
    """
    return load_bundle_checks(bundle, checks_dirs).make_synthetic_data(output_dir, num_cases=num_cases)
