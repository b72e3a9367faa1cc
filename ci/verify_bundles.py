#!/usr/bin/env python
# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Offline re-implementation of the MONAI Model Zoo bundle checks, run over every folder of ``bundles/``.

For each bundle it runs what the Model Zoo CI runs (``ci/verify_bundle.py`` of Project-MONAI/model-zoo: directory,
version, ``verify_metadata``, ``verify_net_in_out``, ``ckpt_export``), plus the key lint the Zoo CONTRIBUTING still asks
for, the ``ConfigWorkflow.check_properties()`` of the Zoo unit tests, ``monai.bundle.load`` and file conventions
(LICENSE, README sections, logging.conf allowlist of MONAI 1.6, relative paths, ``@device``, no process calls or
pickle in configs, sha256 + ``hash_type`` in ``large_files.yml``), and that ``inference`` repeats ``train``'s network,
ids and deterministic preprocessing unchanged (``config_consistency``). It never writes into the bundle folder: every
check that needs weights or data works in a temporary copy of the bundle.

Each bundle's checks file ``<checks-dir>/<bundle>.yaml`` (default ``ci/bundle_checks/``; format in
``shared_networks/bundle/layout.py``) declares its synthetic data generator (for the workflow property checks), its
reduced network (``--reduced``) and what ``config_consistency`` compares beyond ``network_def``.

Usage::

    python ci/verify_bundles.py                       # every folder in bundles/
    python ci/verify_bundles.py --zoo                 # the Model Zoo's premerge steps, failing where it fails
    python ci/verify_bundles.py segmamba_brats -v     # named bundles, with MONAI logs
    python ci/verify_bundles.py --checks metadata,config_lint
    python ci/verify_bundles.py path/to/my_bundle --checks-dir ci/bundle_checks --checks-dir path/to/checks --reduced

Prints a table bundle x check -> pass / FAIL / note (+ reason) and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared_networks.bundle.layout import (
    BUNDLE_CHECKS_DIR,
    CONFIG_EXTENSIONS,
    WEIGHTS_DIR,
    BundleChecks,
    MissingSyntheticDataError,
    bundle_on_path,
    copy_bundle,
    find_config,
    is_bundle_source,
    large_file_entries,
    list_bundles,
    load_bundle_checks,
)
from shared_networks.bundle.release import package_bundle
from shared_networks.io import save_atomically

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
# CI places the shared folder beside the repository; the schema is never copied into the project. Elsewhere the
# schema is downloaded from the metadata's URL, or read from the folder MONAI_BUNDLE_SCHEMA_DIR names (offline use).
SCHEMA_DIR_ENV_VAR = "MONAI_BUNDLE_SCHEMA_DIR"
LOCAL_SCHEMA_DIR = Path(os.environ.get(SCHEMA_DIR_ENV_VAR) or REPO_ROOT.parent / "shared" / "schemas")
# Per-bundle checks files (synthetic data generator, reduced network, config_consistency): the default search path.
DEFAULT_CHECKS_DIR = REPO_ROOT / BUNDLE_CHECKS_DIR
EXPECTED_SCHEMA = "meta_schema_20240725.json"

logger = logging.getLogger("verify_bundles")

PASS, FAIL, NOTE = "pass", "FAIL", "note"

# Files every bundle of this collection must have (the Model Zoo layout: LICENSE, metadata, logging.conf, README, and
# the data terms the Zoo's CONTRIBUTING asks for; a bundle on its users' own data says there that none apply).
REQUIRED_FILES = (
    "LICENSE", "configs/metadata.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt",
)
REQUIRED_CONFIGS = ("train", "inference", "evaluate", "multi_gpu_train")
# Model Zoo metadata keys that the 20240725 schema leaves optional but the Zoo asks for (CONTRIBUTING, CI until
# 2024-08).
ZOO_METADATA_KEYS = (
    "name",
    "changelog",
    "data_source",
    "data_type",
    "image_classes",
    "label_classes",
    "pred_classes",
    "eval_metrics",
    "intended_use",
    "references",
    "required_packages_version",
)
# Sections of the Model Zoo README (spleen / brats / swin_unetr bundles and docs/readme_template.md).
README_SECTIONS = (
    "Model Overview",
    "Data",
    "Training configuration",
    "Input",
    "Output",
    "Performance",
    "MONAI Bundle Commands",
    "References",
    "License",
)
# The Model Zoo requires any file over 25 MB to be a large_files entry instead of a committed file.
MAX_COMMITTED_FILE_BYTES = 25 * 1024 * 1024
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
BARE_VERSION = re.compile(r"^\d+(\.\d+)*([ab]|rc|\.post|\.dev)?\d*$")
# Text that must not appear in any config value: process calls, deserialisation, dynamic code beyond MONAI's `$`.
FORBIDDEN_CONFIG_PATTERNS = {
    "subprocess": re.compile(r"\bsubprocess\b"),
    "os.system": re.compile(r"\bos\s*\.\s*(system|popen|exec\w*|spawn\w*|fork)\b"),
    "pickle": re.compile(r"\b(c?pickle|dill|marshal|shelve|joblib)\b"),
    "eval(": re.compile(r"\beval\s*\("),
    "exec(": re.compile(r"\bexec\s*\("),
    "compile(": re.compile(r"\bcompile\s*\("),
    "__import__": re.compile(r"__import__"),
    "importlib": re.compile(r"\bimportlib\b"),
    "builtins": re.compile(r"\bbuiltins\b"),
    "network access": re.compile(r"\b(socket|urllib|requests|http\.client)\b"),
    "rmtree": re.compile(r"\brmtree\b"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)[^)]*\)"),
}
# A device literal ('cuda', "cuda:0", 'cpu') or `.cuda()` outside the `device` id bypasses `@device`.
DEVICE_LITERAL = re.compile(r"""(['"](cuda|cpu)(:\d+)?['"]|\.cuda\(\))""")
# The Model Zoo's placeholder data root (CONTRIBUTING: "use e.g. /workspace/data/<bundle>"), allowed for dataset_dir.
ZOO_DATA_PLACEHOLDER = "/workspace/data/"
# A quoted absolute path inside a `$` expression that is not appended to another path (`@bundle_root + '/models'`).
ABSOLUTE_PATH_IN_EXPR = re.compile(r"""(?<![+\s])\s*['"](/(?!/)[^'"]*|[A-Za-z]:\\[^'"]*)['"]""")
# Largest side used for the fake input of `verify_net_in_out` / export when the metadata's shape is fixed and larger.
DEFAULT_MAX_SIDE = 32


class BundleCheckError(Exception):
    """A bundle violates a check; the message says what was expected."""


@dataclass
class CheckResult:
    """Outcome of one check on one bundle."""

    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class BundleContext:
    """Per-bundle state shared between checks: the bundle, its checks file, temp working copy, synthetic data."""

    bundle: Path
    settings: BundleChecks
    max_side: int = DEFAULT_MAX_SIDE
    dataset_dir: Path | None = None
    net_override: dict = field(default_factory=dict)
    zoo: bool = False  # --zoo: what the Model Zoo's CI fails on fails here too (missing weights)
    package_dir: Path | None = None  # --zoo: the shared_networks wheel built for the requirements check
    pip_cache: Path | None = None  # --zoo: one pip cache for every bundle's requirements check
    _workdir: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = None
    weights_note: str = ""

    @property
    def name(self) -> str:
        return self.bundle.name

    def config(self, stem: str) -> Path:
        """Path of ``configs/<stem>.{json,yaml,yml}`` in the original bundle (first that exists)."""
        path = find_config(self.bundle, stem)
        if path is None:
            raise BundleCheckError(f"configs/{stem}.json|yaml|yml is missing")
        return path

    @property
    def meta_file(self) -> Path:
        return self.bundle / "configs" / "metadata.json"

    def tmp_dir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"verify_{self.name}_")
        return Path(self._tmp.name)

    def workdir(self) -> Path:
        """A copy of the bundle whose ``models/model.pt`` exists: the shipped one, or the network's initial weights
        (also when the folder only holds a local training run's ``models/model.pt``, see :func:`local_weights`)."""
        if self._workdir is None:
            local = local_weights(self.bundle)
            work = copy_bundle(self.bundle, self.tmp_dir() / self.name, weights=local is None)
            ckpt = work / WEIGHTS_DIR / "model.pt"
            if ckpt.is_file():
                self.weights_note = "shipped models/model.pt"
            else:
                save_atomically(build_network(self, work).state_dict(), ckpt)
                self.weights_note = "no models/model.pt in the bundle: initial weights of network_def"
                if local is not None:
                    self.weights_note += f" ({local} is a local training output, not checked)"
            self._workdir = work
        return self._workdir

    def synthetic_dataset(self) -> Path:
        """The user's ``--dataset-dir``, else the synthetic data the bundle's checks file declares, for the workflow
        property checks."""
        if self.dataset_dir is None:
            try:
                self.dataset_dir = self.settings.make_synthetic_data(self.tmp_dir() / "dataset")
            except MissingSyntheticDataError as e:
                raise BundleCheckError(f"{e} (or pass --dataset-dir)") from e
        return self.dataset_dir

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self._workdir = None


def load_config_file(path: Path) -> Any:
    from monai.bundle import ConfigParser

    try:
        return ConfigParser.load_config_file(str(path))
    except Exception as e:  # JSON/YAML syntax errors have many types
        raise BundleCheckError(f"{path.name} does not parse: {e}") from e


def read_metadata(ctx: BundleContext) -> dict:
    if not ctx.meta_file.is_file():
        raise BundleCheckError("configs/metadata.json is missing")
    try:
        return json.loads(ctx.meta_file.read_text())
    except json.JSONDecodeError as e:
        raise BundleCheckError(f"configs/metadata.json is not valid JSON: {e}") from e


def metadata_schema_path(metadata: dict, tmp_dir: Path) -> tuple[Path, str]:
    """The local copy of the metadata's schema when it exists (offline CI), else a temp path it is downloaded to."""
    url = metadata.get("schema", "")
    local = LOCAL_SCHEMA_DIR / os.path.basename(url)
    if url and local.is_file():
        return local, f"offline schema {local.name}"
    return tmp_dir / "schema.json", f"schema downloaded from {url}"


def iter_config_strings(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(id, text)`` for every key and string value of a parsed config (ids joined with ``#``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}#{key}" if prefix else str(key)
            yield path, str(key)
            yield from iter_config_strings(value, path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_config_strings(value, f"{prefix}#{i}" if prefix else str(i))
    elif isinstance(node, str):
        yield prefix, node


def fake_spatial_shape(shape: Sequence[int | str], max_side: int) -> tuple[tuple[int, ...], str]:
    """Spatial size for a fake input: the metadata's shape with ``p = n = 1`` and ``* = 16``; fixed sides larger than
    ``max_side`` are reduced to ``max_side`` (returned note says so), since e.g. SegMamba at 128^3 is slow on CPU."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    full = _get_fake_spatial_shape(shape, p=1, n=1, any=16)
    reduced = tuple(min(int(s), max_side) for s in full)
    note = "" if reduced == tuple(full) else f"input {list(full)} reduced to {list(reduced)} on CPU"
    return reduced, note


def build_network(ctx: BundleContext, bundle_root: Path, config_stem: str = "inference") -> Any:
    """Instantiate ``network_def`` of ``configs/<config_stem>`` (with ``--net-override`` values), in eval mode on
    CPU."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(find_config(bundle_root, config_stem)))
    parser.read_meta(str(bundle_root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle_root)
    for key, value in ctx.net_override.items():
        parser[f"network_def#{key}"] = value
    with bundle_on_path(bundle_root):
        return parser.get_parsed_content("network_def").eval()


# ------------------------------------------------------------------------------------------------------------------
# checks: each takes the context, raises BundleCheckError on failure, and returns a detail text (or (status, text)).
# ------------------------------------------------------------------------------------------------------------------


def local_weights(bundle: Path) -> str | None:
    """``models/model.pt`` when it is a user's own training output rather than shipped weights: the bundle sits in a
    git checkout that does not track the file, and ``large_files.yml`` does not list it. None otherwise."""
    weights = bundle / WEIGHTS_DIR / "model.pt"
    if not weights.is_file() or "models/model.pt" in {os.path.normpath(str(e.get("path", ""))) for e in
                                                       _large_files(bundle)}:
        return None
    try:
        inside = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=bundle, capture_output=True,
                                text=True, timeout=30)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None  # an unpacked release or a Model Zoo folder: what is there is what ships
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(weights)], cwd=bundle,
                                 capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return None if tracked.returncode == 0 else f"{WEIGHTS_DIR}/model.pt"


def check_files(ctx: BundleContext) -> str:
    """Directory layout: exact file names, bundle name rules, weights present or listed, no committed file > 25 MB."""
    problems = []
    if not re.fullmatch(r"[a-z][a-z0-9_]*", ctx.name) or re.search(r"_v\d", ctx.name):
        problems.append(f"bundle folder name '{ctx.name}' must be snake_case without '_v<digit>'")
    problems += [f"{f} is missing" for f in REQUIRED_FILES if not (ctx.bundle / f).is_file()]
    problems += [f"configs/{c}.json|yaml is missing" for c in REQUIRED_CONFIGS if find_config(ctx.bundle, c) is None]
    if (ctx.bundle / "LICENSE").is_file() and not (ctx.bundle / "LICENSE").read_text().strip():
        problems.append("LICENSE is empty")
    listed = {os.path.normpath(str(e.get("path", ""))) for e in _large_files(ctx.bundle)}
    local = local_weights(ctx.bundle)
    shipped = (ctx.bundle / WEIGHTS_DIR / "model.pt").is_file() and local is None
    weights_missing = not shipped and "models/model.pt" not in listed
    for path in ctx.bundle.rglob("*"):
        rel = path.relative_to(ctx.bundle)
        committed = path.is_file() and is_bundle_source(rel) and rel.parts[0] != WEIGHTS_DIR
        if committed and path.stat().st_size > MAX_COMMITTED_FILE_BYTES:
            problems.append(f"{rel} is over 25 MB: list it in large_files.yml instead")
    if problems:
        raise BundleCheckError("; ".join(problems))
    if weights_missing and ctx.zoo:
        raise BundleCheckError(
            "no trained weights: the Model Zoo's verify_bundle_directory requires models/model.pt (shipped, or listed "
            "in large_files.yml); this bundle has none yet"
            + (f" ({local} is a local training output)" if local else "")
        )
    if weights_missing:
        # no published weights yet: the Zoo CI would need the bundle in its exclude_verify_preferred_files_list
        suffix = f" ({local} is a local training output, untracked by git)" if local else ""
        return NOTE, ("layout complete; no weights: models/model.pt is neither shipped nor listed in large_files.yml"
                      + suffix)
    return PASS, "layout complete"


def check_metadata(ctx: BundleContext) -> str:
    """``monai.bundle.verify_metadata`` against the 20240725 schema (offline copy when present)."""
    from monai.bundle import verify_metadata

    metadata = read_metadata(ctx)
    url = metadata.get("schema", "")
    if os.path.basename(url) != EXPECTED_SCHEMA:
        raise BundleCheckError(f"'schema' must point to {EXPECTED_SCHEMA}, got '{url}'")
    schema, how = metadata_schema_path(metadata, ctx.tmp_dir())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no hash value provided" for the local schema copy
            verify_metadata(meta_file=str(ctx.meta_file), filepath=str(schema), hash_type="sha256")
    except ValueError as e:
        raise BundleCheckError(f"verify_metadata: {e}") from e
    except OSError as e:  # urllib's URLError included
        raise BundleCheckError(
            f"the schema could not be downloaded from {url} ({_first_line(e)}) and there is no offline copy at"
            f" {LOCAL_SCHEMA_DIR / EXPECTED_SCHEMA}; set {SCHEMA_DIR_ENV_VAR} to a folder holding {EXPECTED_SCHEMA}"
        ) from e
    return f"valid ({how})"


def check_metadata_keys(ctx: BundleContext) -> str:
    """Model Zoo key lint: required extra keys, semver in changelog, bare pinned versions, image/pred tensor specs."""
    metadata = read_metadata(ctx)
    problems = [f"'{k}' missing" for k in ZOO_METADATA_KEYS if k not in metadata]
    version = str(metadata.get("version", ""))
    if not SEMVER.match(version):
        problems.append(f"version '{version}' is not X.Y.Z")
    if version not in metadata.get("changelog", {}):
        problems.append(f"version '{version}' is not a key of 'changelog'")
    refs = metadata.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        problems.append("'references' must be a list of strings")
    pins = {k: metadata.get(k) for k in ("monai_version", "pytorch_version", "numpy_version")}
    pins.update(metadata.get("required_packages_version") or {})
    problems += [f"version of '{k}' must be a bare PyPI version, got '{v}'" for k, v in pins.items()
                 if not BARE_VERSION.match(str(v))]
    if "optional_packages_version" in metadata and "required_packages_version" not in metadata:
        problems.append("use 'required_packages_version' (verify_metadata ignores 'optional_packages_version')")
    fmt = metadata.get("network_data_format", {})
    inputs, outputs = fmt.get("inputs", {}), fmt.get("outputs", {})
    if list(inputs)[:1] != ["image"] or "pred" not in outputs:
        problems.append("network_data_format must have inputs.image first and outputs.pred (tools read these keys)")
    # MONAI Label serves the first output: pred, or a label map the inference config derives from it (landmarks)
    served_key, served = next(iter(outputs.items()), ("pred", {}))
    if served_key != "pred":
        channels = served.get("channel_def", {})
        label_values = [str(i) for i in range(len(channels))]
        background = str(channels.get("0", "")).lower() == "background"
        if served.get("format") != "segmentation" or sorted(channels, key=int) != label_values or not background:
            problems.append(f"outputs.{served_key} comes before pred, so MONAI Label serves it: it must be a "
                            "segmentation with channel_def '0': 'background', '1', ... (the label values)")
    for where, spec in (("inputs.image", inputs.get("image", {})), ("outputs.pred", outputs.get("pred", {}))):
        missing = [k for k in ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                               "is_patch_data", "channel_def") if k not in spec]
        if missing:
            problems.append(f"{where} lacks {missing}")
            continue
        expected_keys = [str(i) for i in range(int(spec["num_channels"]))]
        if sorted(spec["channel_def"], key=int) != expected_keys:
            problems.append(f"{where}.channel_def keys must be {expected_keys}")
    # a segmentation's class 0 is its background; a classifier's channels are its classes
    pred_channels = outputs.get("pred", {}).get("channel_def", {})
    segmentation = outputs.get("pred", {}).get("format") == "segmentation"
    if segmentation and pred_channels and str(pred_channels.get("0", "")).lower() != "background":
        problems.append("outputs.pred.channel_def['0'] must be 'background' (MONAI Label drops it from its labels)")
    if problems:
        raise BundleCheckError("; ".join(problems))
    return f"version {version}"


def check_config_lint(ctx: BundleContext) -> str:
    """Every config parses; no absolute paths; device only via ``@device``; no process calls / pickle / eval."""
    problems = []
    configs = sorted(p for p in (ctx.bundle / "configs").iterdir() if p.suffix in CONFIG_EXTENSIONS)
    for path in configs:
        if path.name == "metadata.json":
            continue
        content = load_config_file(path)
        if path.suffix == ".json":
            text = path.read_text()
            if text != json.dumps(json.loads(text), indent=4) + "\n":
                problems.append(f"{path.name}: not 4-space indented JSON ending with a newline")
        for cid, text in iter_config_strings(content):
            where = f"{path.name}:{cid}"
            for label, pattern in FORBIDDEN_CONFIG_PATTERNS.items():
                if pattern.search(text):
                    problems.append(f"{where}: forbidden '{label}' in {text!r}")
            is_expr = text.startswith("$")
            placeholder = cid == "dataset_dir" and text.startswith(ZOO_DATA_PLACEHOLDER)
            absolute = (not is_expr and os.path.isabs(text)) or (is_expr and ABSOLUTE_PATH_IN_EXPR.search(text))
            if absolute and not placeholder:
                problems.append(f"{where}: absolute path in {text!r} (derive it from @bundle_root/@dataset_dir)")
            if cid.split("#")[0] != "device" and DEVICE_LITERAL.search(text):
                problems.append(f"{where}: device literal in {text!r} (use @device)")
    if problems:
        raise BundleCheckError("; ".join(problems))
    return f"{len(configs) - 1} configs clean"


# sentinel for an id or argument that one config lacks
_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


def _resolved_config(path: Path) -> Any:
    """A ``ConfigParser`` of ``path`` with ``%`` macros and relative ids resolved, nothing instantiated."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(load_config_file(path))
    parser.resolve_macro_and_relative_ids()
    return parser


def _differences(a: Any, b: Any, cid: str) -> list[tuple[str, Any, Any]]:
    """``(id, a value, b value)`` for every leaf where the configs ``a`` and ``b`` (below ``cid``) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in dict.fromkeys([*a, *b])
                for d in _differences(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{cid}#{key}")]
    lists = isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
    if lists and any(isinstance(v, (dict, list)) for v in [*a, *b]):  # lists of plain values are shown whole
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{cid}#{i}")]
    return [] if a == b else [(cid, a, b)]


def _transform_list(parser: Any, cid: str, where: str) -> list:
    """The transform list at ``cid``: a list, or a ``Compose`` of one, possibly behind ``@id`` references."""
    value, seen = parser.get(cid, _ABSENT), {cid}
    while True:
        if isinstance(value, dict) and "transforms" in value:
            value = value["transforms"]
        elif isinstance(value, str) and value.startswith("@") and value[1:] not in seen:
            seen.add(value[1:])
            value = parser.get(value[1:], _ABSENT)
        else:
            break
    if value is _ABSENT:
        raise BundleCheckError(f"{where} has no id '{cid}' (declared under config_consistency#preprocessing)")
    if not isinstance(value, list):
        raise BundleCheckError(f"{where} {cid} must be a list of transforms or a Compose of one, got {_show(value)}")
    return value


def _keys_of(transform: dict) -> list:
    keys = transform.get("keys", [])
    return list(keys) if isinstance(keys, (list, tuple)) else [keys]


def _for_key(value: Any, keys: list, key: Any) -> Any:
    """The value a dictionary transform applies to ``key``: a list as long as ``keys`` holds one value per key."""
    return value[keys.index(key)] if isinstance(value, list) and len(value) == len(keys) else value


def _transform_differences(train: Any, infer: Any, train_id: str, infer_id: str) -> list[str]:
    """How the inference transform ``infer`` differs from the train transform ``train``, once the per-key arguments
    of ``train`` are projected onto the keys that ``infer`` transforms (``keys: [image, label]``, ``mode: [bilinear,
    nearest]`` agrees with ``keys: image``, ``mode: bilinear``); every other argument must be equal."""
    if not (isinstance(train, dict) and isinstance(infer, dict)):
        return [] if train == infer else [f"{train_id} {_show(train)} != {infer_id} {_show(infer)}"]
    target = train.get("_target_")
    if infer.get("_target_") != target:
        return [f"{train_id} is {target} but {infer_id} is {infer.get('_target_')}"]
    train_keys, infer_keys = _keys_of(train), _keys_of(infer)
    if any(k not in train_keys for k in infer_keys):
        return [f"{infer_id}#keys ({target}) {infer_keys} are not among {train_id}#keys {train_keys}"]
    problems = []
    for arg in dict.fromkeys([*train, *infer]):
        if arg in ("_target_", "keys"):
            continue
        a, b = train.get(arg, _ABSENT), infer.get(arg, _ABSENT)
        projected = a is not _ABSENT and b is not _ABSENT and all(
            _for_key(a, train_keys, k) == _for_key(b, infer_keys, k) for k in infer_keys)
        if a != b and not projected:
            problems.append(f"{train_id}#{arg} ({target}) {_show(a)} != {infer_id}#{arg} {_show(b)}")
    return problems


def check_config_consistency(ctx: BundleContext) -> str:
    """The inference config repeats what it shares with the train config (each stays a standalone file for
    ``monai.bundle.load``, MONAI Label and the one-file run command): ``network_def`` identical, the ids of the checks
    file's ``config_consistency#same`` equal, and its ``preprocessing`` transform lists matching position by position
    (train's per-key arguments projected onto the keys of the inference transform)."""
    train_path, infer_path = ctx.config("train"), ctx.config("inference")
    train, infer = _resolved_config(train_path), _resolved_config(infer_path)
    declared = ctx.settings.config_consistency
    problems = []
    for cid in ["network_def", *declared["same"]]:
        a, b = train.get(cid, _ABSENT), infer.get(cid, _ABSENT)
        if a is _ABSENT and b is _ABSENT:
            problems.append(f"{cid}: in neither {train_path.name} nor {infer_path.name}")
        problems += [f"{where}: {train_path.name} {_show(x)} != {infer_path.name} {_show(y)}"
                     for where, x, y in _differences(a, b, cid)]
    agreed = ", ".join(["network_def", *declared["same"]])
    pairs = declared["preprocessing"]
    if pairs is not None:
        train_list = _transform_list(train, pairs["train"], train_path.name)
        infer_list = _transform_list(infer, pairs["inference"], infer_path.name)
        if len(train_list) != len(infer_list):
            problems.append(f"{train_path.name} {pairs['train']} has {len(train_list)} transforms but"
                            f" {infer_path.name} {pairs['inference']} has {len(infer_list)}")
        for i, (t, r) in enumerate(zip(train_list, infer_list)):
            problems += _transform_differences(t, r, f"{train_path.name} {pairs['train']}#{i}",
                                               f"{infer_path.name} {pairs['inference']}#{i}")
        agreed += f"; {len(infer_list)} preprocessing transforms ({pairs['train']} ~ {pairs['inference']})"
    if problems:
        raise BundleCheckError(f"{infer_path.name} disagrees with {train_path.name}: " + "; ".join(problems))
    where = f" ({ctx.settings.path.name})" if ctx.settings.path else " (no checks file: network_def only)"
    return f"{agreed} agree{where}"


def check_logging_conf(ctx: BundleContext) -> str:
    """``configs/logging.conf`` passes MONAI 1.6's ``fileConfig`` allowlist and the stdlib parser."""
    path = ctx.bundle / "configs" / "logging.conf"
    if not path.is_file():
        raise BundleCheckError("configs/logging.conf is missing")
    from monai.bundle import workflows

    reject = getattr(workflows, "_reject_executable_logging_config", None)
    if reject is None:
        raise BundleCheckError("this MONAI has no logging.conf allowlist (needs MONAI >= 1.6)")
    try:
        reject(str(path))
    except ValueError as e:
        raise BundleCheckError(f"rejected by MONAI: {e}") from e
    parser = configparser.ConfigParser()
    parser.read(path)
    for section in ("loggers", "handlers", "formatters"):
        if not parser.has_section(section):
            raise BundleCheckError(f"logging.conf has no [{section}] section")
    return "accepted by MONAI's allowlist"


def _large_files(bundle: Path) -> list[dict]:
    """The ``large_files.yml`` entries, a malformed file being a failed check."""
    try:
        return large_file_entries(bundle)[1]
    except ValueError as e:
        raise BundleCheckError(str(e)) from e


def check_large_files(ctx: BundleContext) -> str:
    """``large_files.yml`` entries: relative in-bundle path, url, sha256 ``hash_val`` and explicit ``hash_type``."""
    entries = _large_files(ctx.bundle)
    problems = []
    for i, entry in enumerate(entries):
        path = str(entry.get("path", ""))
        resolved = (ctx.bundle / path).resolve()
        if not path or os.path.isabs(path) or not resolved.is_relative_to(ctx.bundle.resolve()):
            problems.append(f"entry {i}: path '{path}' must be relative and inside the bundle")
        if not entry.get("url"):
            problems.append(f"entry {i} ({path}): no url")
        if str(entry.get("hash_type", "")).lower() != "sha256":
            problems.append(f"entry {i} ({path}): hash_type must be given explicitly as sha256")
        if not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("hash_val", "")).lower()):
            problems.append(f"entry {i} ({path}): hash_val must be a 64-hex-digit sha256")
    if problems:
        raise BundleCheckError("; ".join(problems))
    return f"{len(entries)} entries with sha256" if entries else "no large files"


def check_readme(ctx: BundleContext) -> str:
    """``docs/README.md`` has the Model Zoo sections, and no command uses the removed ``run training`` syntax."""
    path = ctx.bundle / "docs" / "README.md"
    if not path.is_file():
        raise BundleCheckError("docs/README.md is missing")
    headings = [h.strip().lower() for h in re.findall(r"^#+\s*(.+)$", path.read_text(), flags=re.M)]
    missing = [s for s in README_SECTIONS if not any(h.startswith(s.lower()) for h in headings)]
    if missing:
        raise BundleCheckError(f"docs/README.md lacks sections {missing}")
    return "all Model Zoo sections"


def _workflow(ctx: BundleContext, workflow_type: str, stems: Sequence[str], **override: Any) -> Any:
    from monai.bundle import ConfigWorkflow

    work = ctx.workdir()
    configs = [str(find_config(work, s)) for s in stems]
    for key, value in ctx.net_override.items():
        override[f"network_def#{key}"] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MONAI 1.6 warns on every config parse that configs run code
        return ConfigWorkflow(
            config_file=configs if len(configs) > 1 else configs[0],
            meta_file=str(work / "configs" / "metadata.json"),
            logging_file=str(work / "configs" / "logging.conf"),
            workflow_type=workflow_type,
            bundle_root=str(work),
            dataset_dir=str(ctx.synthetic_dataset()),
            **override,
        )


def _check_properties(ctx: BundleContext, workflow_type: str, stems: Sequence[str]) -> str:
    workflow = _workflow(ctx, workflow_type, stems)
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise BundleCheckError(f"ConfigWorkflow({workflow_type}).check_properties() reports {missing}")
    return f"{'+'.join(stems)}: all {workflow_type} properties"


def check_properties_train(ctx: BundleContext) -> str:
    """``check_properties()`` is empty for the train workflow (train config, and train + evaluate merged); the
    ``ValidationHandler`` interval is ``@val_interval`` (Zoo key lint; MONAI's own check crashes on a number there)."""
    handlers = load_config_file(ctx.config("train")).get("train", {}).get("handlers", [])
    for handler in handlers if isinstance(handlers, list) else []:
        if isinstance(handler, dict) and handler.get("_target_", "").endswith("ValidationHandler"):
            if handler.get("interval") != "@val_interval":
                raise BundleCheckError(f"ValidationHandler interval must be '@val_interval', got "
                                       f"{handler.get('interval')!r}")
    done = [_check_properties(ctx, "train", ["train"])]
    if find_config(ctx.bundle, "evaluate") is not None:
        done.append(_check_properties(ctx, "train", ["train", "evaluate"]))
    return "; ".join(done)


def check_properties_infer(ctx: BundleContext) -> str:
    """``check_properties()`` is empty for the inference workflow."""
    return _check_properties(ctx, "infer", ["inference"])


def check_net_in_out(ctx: BundleContext) -> str:
    """``monai.bundle.verify_net_in_out network_def`` on CPU with the metadata's channels (shape possibly reduced)."""
    from monai.bundle import verify_net_in_out

    metadata = read_metadata(ctx)
    image = metadata["network_data_format"]["inputs"]["image"]
    shape, note = fake_spatial_shape(image["spatial_shape"], ctx.max_side)
    override = {f"network_def#{k}": v for k, v in ctx.net_override.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(ctx.meta_file),
            config_file=str(ctx.config("inference")),
            device="cpu",
            bundle_root=str(ctx.bundle),
            **{"_meta_#network_data_format#inputs#image#spatial_shape": list(shape)},
            **override,
        )
    return f"input (1, {image['num_channels']}, {', '.join(map(str, shape))})" + (f"; {note}" if note else "")


def _compare_outputs(reference: Any, exported: Any, what: str) -> float:
    import torch

    if reference.shape != exported.shape:
        raise BundleCheckError(f"{what} output shape {tuple(exported.shape)} != eager {tuple(reference.shape)}")
    err = float((reference - exported).abs().max())
    scale = float(reference.abs().max()) + 1e-6
    if not torch.allclose(reference, exported, rtol=1e-4, atol=1e-4 * scale):
        raise BundleCheckError(f"{what} output differs from eager: max |diff| {err:.3g} (max |out| {scale:.3g})")
    return err


def check_export(ctx: BundleContext) -> tuple[str, str]:
    """``ckpt_export`` with TorchScript scripting (the Model Zoo's export check: its failure fails the check) and with
    tracing, and ``torch.export``; every exported model must reproduce the eager output on an input it was not traced
    with. A failing trace or ``torch.export`` is a note the README must explain."""
    import torch
    from monai.bundle import ckpt_export

    work = ctx.workdir()
    metadata = read_metadata(ctx)
    image = metadata["network_data_format"]["inputs"]["image"]
    shape, shape_note = fake_spatial_shape(image["spatial_shape"], ctx.max_side)
    input_shape = (1, int(image["num_channels"]), *shape)
    net = build_network(ctx, work)
    net.load_state_dict(torch.load(work / "models" / "model.pt", weights_only=True), strict=True)
    torch.manual_seed(0)
    trace_input, check_input = torch.rand(input_shape), torch.rand(input_shape)
    with torch.no_grad():
        reference = net(check_input)
    override = {f"network_def#{k}": v for k, v in ctx.net_override.items()}
    failures, exported = [], []
    for method, use_trace in (("TorchScript script", False), ("TorchScript trace", True)):
        ts_path = ctx.tmp_dir() / f"export_{'trace' if use_trace else 'script'}.ts"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ckpt_export(
                    net_id="network_def",
                    filepath=str(ts_path),
                    ckpt_file=str(work / "models" / "model.pt"),
                    meta_file=str(work / "configs" / "metadata.json"),
                    config_file=str(find_config(work, "inference")),
                    bundle_root=str(work),
                    use_trace=use_trace,
                    input_shape=list(input_shape) if use_trace else None,
                    **override,
                )
                loaded = torch.jit.load(str(ts_path))
                with torch.no_grad():
                    err = _compare_outputs(reference, loaded(check_input), method)
        except Exception as e:
            if not use_trace:
                raise BundleCheckError(
                    "the Model Zoo's export check, ckpt_export with TorchScript scripting (its default), fails: "
                    + _first_line(e)
                ) from e
            failures.append(f"{method} failed: {_first_line(e)}")
            continue
        exported.append(f"{method} via ckpt_export max |diff| {err:.2g}")
    try:
        program = torch.export.export(net, (trace_input,))
        ep_path = ctx.tmp_dir() / "model.pt2"
        torch.export.save(program, str(ep_path))
        with torch.no_grad():
            err = _compare_outputs(reference, torch.export.load(str(ep_path)).module()(check_input), "torch.export")
        exported.append(f"torch.export + save/load max |diff| {err:.2g}")
    except Exception as e:
        failures.append(f"torch.export failed: {_first_line(e)}")
    detail = "; ".join(exported + [ctx.weights_note] + ([shape_note] if shape_note else []))
    if not failures:
        return PASS, detail
    if not _readme_mentions(ctx, "TorchScript"):
        raise BundleCheckError(detail + "; but " + "; ".join(failures) + ", and docs/README.md does not say so")
    # scripting (the Zoo's check) works, and the README explains the export that does not
    return PASS, detail + "; unsupported, as docs/README.md explains: " + "; ".join(failures)


def zoo_json(content: Any) -> str:
    """The text the Model Zoo's ``pretty-format-json`` hook (``--autofix --no-sort-keys --indent=4``) writes."""
    return json.dumps(content, indent=4, ensure_ascii=True) + "\n"


def _json_format_problem(name: str, text: str) -> str | None:
    try:
        content = json.loads(text)
    except json.JSONDecodeError as e:
        return f"{name} is not valid JSON ({e})"
    expected = zoo_json(content)
    if text == expected:
        return None
    line = next((i for i, (a, b) in enumerate(zip(text.splitlines(), expected.splitlines()), 1) if a != b),
                min(len(text.splitlines()), len(expected.splitlines())) + 1)
    return f"{name} line {line} differs from the Zoo's format (4-space indent, key order kept, non-ASCII as \\uXXXX)"


def check_json_format(ctx: BundleContext) -> str:
    """Every JSON file of the bundle and of its release archive (which adds JSON twins of the YAML configs) is in the
    format of the Model Zoo's ``pretty-format-json`` pre-commit hook, which fails a pull request otherwise."""
    problems = [problem for path in sorted(ctx.bundle.rglob("*.json")) if is_bundle_source(path.relative_to(ctx.bundle))
                for problem in [_json_format_problem(str(path.relative_to(ctx.bundle)), path.read_text())] if problem]
    archive = package_bundle(ctx.bundle, ctx.tmp_dir() / "json_format", models="no")
    with zipfile.ZipFile(archive) as zipped:
        released = [name for name in zipped.namelist() if name.endswith(".json")]
        problems += [problem for name in released
                     for problem in [_json_format_problem(f"{archive.name}:{name}", zipped.read(name).decode())]
                     if problem]
    if problems:
        raise BundleCheckError("; ".join(problems))
    return f"{len(released)} JSON files of the release archive in the Zoo's format"


def zoo_requirements(metadata: dict) -> list[str]:
    """The lines the Model Zoo's ``ci/get_bundle_requirements.py`` writes for a bundle (and pip then installs)."""
    lines = [f"monai=={metadata['monai_version']}", f"torch=={metadata['pytorch_version']}",
             f"numpy=={metadata['numpy_version']}"]
    for key in ("optional_packages_version", "required_packages_version"):
        lines += [f"{name}=={version}" for name, version in (metadata.get(key) or {}).items()]
    return lines


def canonical_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def build_package_wheel(out_dir: Path) -> Path:
    """The ``shared_networks`` wheel of this checkout (``python -m build --no-isolation``: no registry needed)."""
    source = out_dir / "source"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "shared_networks", source / "shared_networks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    wheels = out_dir / "wheels"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(wheels),
                            str(source)], capture_output=True, text=True, timeout=900)
    if built.returncode != 0:
        raise RuntimeError("building the shared_networks wheel failed: " + (built.stderr or built.stdout)[-1000:])
    return wheels


def check_requirements(ctx: BundleContext) -> str:
    """``pip install --dry-run`` of the requirements the Model Zoo's CI installs for the bundle, for Python 3.10 (its
    CPU runners' Python) from the package registry, with ``shared_networks`` from the wheel built from this checkout
    (it is not on PyPI yet). pip downloads the wheels to read their metadata (torch's is large); nothing is
    installed."""
    requirements = zoo_requirements(read_metadata(ctx))
    req_file = ctx.tmp_dir() / "zoo_requirements.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    if ctx.package_dir is None:
        ctx.package_dir = build_package_wheel(ctx.tmp_dir() / "package")
    report = ctx.tmp_dir() / "pip_report.json"
    # --ignore-installed: resolve everything for the Zoo's runner, not against what this environment already has
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--python-version",
               "3.10", "--only-binary=:all:", "--find-links", str(ctx.package_dir), "--report", str(report), "-r",
               str(req_file)]
    command += ["--cache-dir", str(ctx.pip_cache)] if ctx.pip_cache else ["--no-cache-dir"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise BundleCheckError("the Zoo's pip install -r of " + ", ".join(requirements) + " does not resolve on "
                               "Python 3.10: " + " / ".join(lines[-3:]))
    resolved = {canonical_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    wrong = [line for line in requirements
             if resolved.get(canonical_name(line.split("==")[0])) != line.split("==")[1]]
    if wrong:
        raise BundleCheckError(f"pip resolved {', '.join(wrong)} to other versions: "
                               + ", ".join(f"{n}=={resolved.get(canonical_name(n.split('==')[0]))}" for n in wrong))
    return f"{', '.join(requirements)} resolve on Python 3.10 ({len(resolved)} packages; shared_networks from the " \
           "wheel of this checkout)"


def _readme_mentions(ctx: BundleContext, word: str) -> bool:
    readme = ctx.bundle / "docs" / "README.md"
    return readme.is_file() and word.lower() in readme.read_text().lower()


def _check_load(ctx: BundleContext, workflow_type: str) -> tuple[str, str]:
    """``monai.bundle.load(..., workflow_type=...)`` on the release archive returns the network with the checkpoint's
    weights, with no dataset around.

    ``load()`` builds the network only from ``configs/<workflow_type>.json``; the release archive adds those as
    JSON twins of YAML configs, so the check runs on what ``download`` delivers: the archive, unpacked."""
    import torch
    from monai.bundle import load

    work = ctx.workdir()
    state = torch.load(work / "models" / "model.pt", weights_only=True)
    release = ctx.tmp_dir() / f"release_{workflow_type}"
    # the weights of the temp copy are stand-ins that large_files.yml does not describe: package without them and
    # put them where download_large_files would
    archive = package_bundle(work, release / "dist", models="no")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(release / "bundles")
    (release / "bundles" / ctx.name / "models").mkdir(exist_ok=True)
    shutil.copy2(work / "models" / "model.pt", release / "bundles" / ctx.name / "models" / "model.pt")
    if not (release / "bundles" / ctx.name / "configs" / f"{workflow_type}.json").is_file():
        raise BundleCheckError(f"the release archive has no configs/{workflow_type}.json, which load() needs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = load(name=ctx.name, bundle_dir=str(release / "bundles"), workflow_type=workflow_type, source="github",
                   device="cpu", net_override=dict(ctx.net_override))
    if not isinstance(net, torch.nn.Module):
        raise BundleCheckError(f"load(workflow_type='{workflow_type}') returned {type(net).__name__}, not a network")
    loaded = net.state_dict()
    bad = [k for k, v in state.items() if k not in loaded or not torch.equal(loaded[k].cpu(), v)]
    if bad or loaded.keys() != state.keys():
        raise BundleCheckError(f"load(workflow_type='{workflow_type}'): weights differ from models/model.pt for"
                               f" {(bad or sorted(set(loaded) ^ set(state)))[:3]}")
    return PASS, (f"load(workflow_type='{workflow_type}') on the release archive returns {type(net).__name__}"
                  f" with models/model.pt ({ctx.weights_note})")


def check_load_train(ctx: BundleContext) -> tuple[str, str]:
    """``monai.bundle.load(..., workflow_type="train")``."""
    return _check_load(ctx, "train")


def check_load_inference(ctx: BundleContext) -> tuple[str, str]:
    """``monai.bundle.load(..., workflow_type="inference")``."""
    return _check_load(ctx, "inference")


CHECKS: dict[str, Callable[[BundleContext], Any]] = {
    "requirements": check_requirements,
    "files": check_files,
    "metadata": check_metadata,
    "metadata_keys": check_metadata_keys,
    "config_lint": check_config_lint,
    "config_consistency": check_config_consistency,
    "logging_conf": check_logging_conf,
    "large_files": check_large_files,
    "json_format": check_json_format,
    "readme": check_readme,
    "properties_train": check_properties_train,
    "properties_infer": check_properties_infer,
    "net_in_out": check_net_in_out,
    "export": check_export,
    "load_train": check_load_train,
    "load_inference": check_load_inference,
}
# The default run leaves out what needs the package registry and minutes of downloads.
DEFAULT_CHECKS = tuple(name for name in CHECKS if name != "requirements")
# --zoo: the steps of the Model Zoo's premerge CI (run_premerge_cpu.sh / verify_bundle.py), in its order: install the
# bundle's requirements, preferred files, metadata, JSON format (its pre-commit hook), net in/out, TorchScript export,
# and the workflow properties of its unit tests.
ZOO_CHECKS = ("requirements", "files", "metadata", "metadata_keys", "json_format", "large_files", "net_in_out",
              "export", "properties_train", "properties_infer")


def _first_line(error: BaseException) -> str:
    """``Type: first line`` of an exception and of each exception it was raised from (MONAI wraps the real cause)."""
    parts = []
    while error is not None and len(parts) < 4:
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        parts.append(f"{type(error).__name__}: {lines[0] if lines else ''}")
        error = error.__cause__
    return " <- ".join(parts)[:500]


@contextlib.contextmanager
def _quiet_logs(verbose: bool) -> Iterator[None]:
    """MONAI and bundle logging.conf files log at INFO to stdout; keep the table readable unless verbose."""
    if verbose:
        yield
        return
    root = logging.getLogger()
    saved = root.level, logging.getLogger("monai").level
    # ckpt_export and the bundles' logging.conf attach their own INFO handlers; only warnings and errors get through
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
        root.setLevel(saved[0])
        logging.getLogger("monai").setLevel(saved[1])


def run_check(ctx: BundleContext, name: str) -> CheckResult:
    """Run one check, turning its outcome or exception into a CheckResult."""
    start = time.perf_counter()
    try:
        with bundle_on_path(ctx.bundle):
            outcome = CHECKS[name](ctx)
        status, detail = outcome if isinstance(outcome, tuple) else (PASS, outcome)
    except BundleCheckError as e:
        status, detail = FAIL, str(e)
    except Exception as e:  # any crash of MONAI or the network is a failed check, reported with its type
        logger.debug("check %s crashed", name, exc_info=True)
        status, detail = FAIL, _first_line(e)
    return CheckResult(status, detail, time.perf_counter() - start)


def verify_bundle(
    bundle: Path,
    checks: Sequence[str] = DEFAULT_CHECKS,
    max_side: int = DEFAULT_MAX_SIDE,
    dataset_dir: Path | None = None,
    net_override: dict | None = None,
    checks_dirs: Sequence[Path] = (DEFAULT_CHECKS_DIR,),
    zoo: bool = False,
    package_dir: Path | None = None,
    pip_cache: Path | None = None,
) -> dict[str, CheckResult]:
    """Run ``checks`` on one bundle folder and return ``{check: CheckResult}``; the bundle's checks file is the first
    ``<dir>/<bundle name>.yaml`` of ``checks_dirs``. ``zoo`` fails what the Model Zoo's CI fails on (missing
    weights); ``package_dir`` (a folder with the shared_networks wheel) and ``pip_cache`` serve the requirements
    check."""
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown checks {unknown}; expected some of {list(CHECKS)}")
    if not (bundle / "configs").is_dir():
        raise FileNotFoundError(f"bundle folder {bundle} has no configs/ folder")
    ctx = BundleContext(bundle=bundle, settings=load_bundle_checks(bundle, checks_dirs), max_side=max_side,
                        dataset_dir=dataset_dir, net_override=net_override or {}, zoo=zoo, package_dir=package_dir,
                        pip_cache=pip_cache)
    try:
        return {name: run_check(ctx, name) for name in checks}
    finally:
        ctx.cleanup()


def format_table(results: dict[str, dict[str, CheckResult]]) -> str:
    """One row per bundle and check: status, seconds, reason."""
    rows = [("bundle", "check", "status", "time", "detail")]
    for bundle, checks in results.items():
        for check, res in checks.items():
            rows.append((bundle, check, res.status, f"{res.seconds:.1f}s", res.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * min(160, sum(widths) + 8 + max(len(r[4]) for r in rows)))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="*", help="bundle names or paths (default: every folder in bundles/)")
    parser.add_argument("--checks", default=None,
                        help=f"comma-separated subset of {','.join(CHECKS)} (default: all but requirements; with --zoo:"
                             f" {','.join(ZOO_CHECKS)})")
    parser.add_argument("--zoo", action="store_true",
                        help="the Model Zoo's premerge steps, offline and in its order, failing where it fails: the"
                             " requirements resolve on Python 3.10 (pip dry run; downloads torch's wheel), the weights"
                             " exist, the JSON files have its format, scripting export works")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help="largest side of the fake input for net_in_out/export (fixed metadata shapes above it are"
                             " reduced; default %(default)s)")
    parser.add_argument("--dataset-dir", type=Path, default=None,
                        help="data for the workflow property checks (default: the synthetic data of the bundle's"
                             " checks file, in a temp dir)")
    parser.add_argument("--net-override", default="{}",
                        help='JSON dict of network_def overrides, e.g. \'{"hidden_size": 64}\' (reduced network)')
    parser.add_argument("--reduced", action="store_true",
                        help="use the network_def overrides of the bundle's checks file (reduced network)")
    parser.add_argument("--checks-dir", type=Path, action="append", default=None, metavar="DIR",
                        help="folder of checks files <bundle>.yaml; repeatable, the first that has the bundle's wins"
                             f" (default: {DEFAULT_CHECKS_DIR.relative_to(REPO_ROOT)})")
    parser.add_argument("-v", "--verbose", action="store_true", help="show MONAI's logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    bundles = [Path(b) if os.sep in b or Path(b).is_dir() else BUNDLES_DIR / b for b in args.bundles]
    bundles = bundles or list_bundles(BUNDLES_DIR)
    if not bundles:
        logger.error("no bundle folders found in %s", BUNDLES_DIR)
        return 1
    missing = [str(b) for b in bundles if not (b / "configs").is_dir()]
    if missing:
        parser.error(f"not bundle folders (no configs/): {missing}")
    bundles = [b.resolve() for b in bundles]  # the folder name selects the checks file, also for "."
    try:
        net_override = json.loads(args.net_override)
    except json.JSONDecodeError as e:
        parser.error(f"--net-override must be a JSON dict: {e}")
    default_checks = ZOO_CHECKS if args.zoo else DEFAULT_CHECKS
    checks = [c.strip() for c in args.checks.split(",") if c.strip()] if args.checks else list(default_checks)
    if not checks or any(c not in CHECKS for c in checks):
        parser.error(f"unknown checks in '{args.checks}'; expected some of {','.join(CHECKS)}")
    checks_dirs = [d.resolve() for d in args.checks_dir or [DEFAULT_CHECKS_DIR]]
    missing_dirs = [str(d) for d in checks_dirs if not d.is_dir()]
    if missing_dirs:
        parser.error(f"--checks-dir: not folders: {missing_dirs}")
    try:  # a malformed checks file stops here, before any check runs
        settings = {b: load_bundle_checks(b, checks_dirs) for b in bundles}
    except ValueError as e:
        parser.error(str(e))
    results = {}
    with _quiet_logs(args.verbose), tempfile.TemporaryDirectory(prefix="verify_bundles_") as shared:
        package_dir = pip_cache = None
        if "requirements" in checks:  # one wheel and one pip cache (torch's wheel downloads once) for every bundle
            package_dir, pip_cache = build_package_wheel(Path(shared) / "package"), Path(shared) / "pip_cache"
        for bundle in bundles:
            override = {**(settings[bundle].network_def if args.reduced else {}), **net_override}
            results[bundle.name] = verify_bundle(bundle, checks, args.max_side, args.dataset_dir, override,
                                                 checks_dirs, zoo=args.zoo, package_dir=package_dir,
                                                 pip_cache=pip_cache)
    print(format_table(results))
    failed = [(b, c) for b, r in results.items() for c, res in r.items() if res.status == FAIL]
    print(f"\n{sum(len(r) for r in results.values()) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
