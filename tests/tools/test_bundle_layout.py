# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The bundle-folder conventions of ``shared_networks.bundle.layout``: config lookup, bundle listing, source files vs
run outputs, copies, ``large_files.yml``, and the checks files that declare each bundle's synthetic data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import CHECKS_DIR, CHECKS_DIRS, FIXTURE_BUNDLE, FIXTURE_CHECKS_DIR, bundle_params

from shared_networks.bundle import layout


def _write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_find_config_and_list_bundles(tmp_path):
    bundle = tmp_path / "bundles" / "b"
    assert layout.find_config(bundle, "train") is None
    _write(bundle / "configs" / "train.yaml")
    _write(bundle / "configs" / "train.json")
    assert layout.find_config(bundle, "train") == bundle / "configs" / "train.json"  # .json first, as MONAI
    (tmp_path / "bundles" / "not_a_bundle").mkdir()
    _write(tmp_path / "bundles" / "a" / "configs" / "inference.yml")
    assert layout.list_bundles(tmp_path / "bundles") == [tmp_path / "bundles" / "a", bundle]
    assert layout.list_bundles(tmp_path / "missing") == []


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("configs/train.yaml", True),
        ("models/model.pt", True),  # weights belong to the bundle; the packager decides which ship
        ("scripts/data/split.py", True),  # only the top-level data/ folder is local data
        ("docs/eval/figure.png", True),
        ("data/case/image.nii.gz", False),
        ("eval/metrics.csv", False),
        ("runs/events.out", False),
        ("mlruns/0/meta.yaml", False),
        ("datalist.json", False),
        ("configs/datalist_fold0.json", True),  # a config, not the datalist a run writes at the top
        ("scripts/__pycache__/net.cpython-311.pyc", False),
        ("scripts/net.pyc", False),
        ("docs/.ipynb_checkpoints/x.ipynb", False),
        ("configs/.train.yaml.abc.tmp", False),
    ],
)
def test_is_bundle_source(rel, expected):
    assert layout.is_bundle_source(Path(rel)) is expected


def test_copy_bundle_keeps_source_files_only(tmp_path):
    bundle = tmp_path / "src" / "b"
    for rel in ("configs/train.yaml", "models/model.pt", "scripts/data/split.py", "data/x.nii.gz", "eval/m.csv",
                "datalist.json", "scripts/__pycache__/a.pyc"):
        _write(bundle / rel)
    assert _files(layout.copy_bundle(bundle, tmp_path / "plain" / "b")) == ["configs/train.yaml",
                                                                            "scripts/data/split.py"]
    assert _files(layout.copy_bundle(bundle, tmp_path / "weights" / "b", weights=True)) == [
        "configs/train.yaml", "models/model.pt", "scripts/data/split.py"]


def test_large_file_entries(tmp_path):
    assert layout.large_file_entries(tmp_path) == (None, [])
    path = _write(tmp_path / "large_files.yml", "large_files:\n- path: models/model.pt\n  url: u\n")
    assert layout.large_file_entries(tmp_path) == (path, [{"path": "models/model.pt", "url": "u"}])
    path.write_text("large_files: models/model.pt\n")
    with pytest.raises(ValueError, match="large_files.yml must hold a 'large_files:' list"):
        layout.large_file_entries(tmp_path)
    path.write_text("large_files: [\n")
    with pytest.raises(ValueError, match="does not parse"):
        layout.large_file_entries(tmp_path)


@pytest.mark.parametrize("bundle", bundle_params())
def test_every_bundle_declares_synthetic_data(bundle):
    # the bundle tests (tests/bundles) and the workflow checks take their data from this declaration
    checks = layout.load_bundle_checks(bundle, [CHECKS_DIR])
    assert checks.path == CHECKS_DIR / f"{bundle.name}.yaml"
    assert checks.synthetic_data is not None and "_target_" in checks.synthetic_data


def test_first_checks_dir_wins(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _write(second / "b.yaml", "train:\n  epochs: 2\n")
    bundle = tmp_path / "bundles" / "b"
    assert layout.load_bundle_checks(bundle, [first, second]).train == {"epochs": 2}
    _write(first / "b.yaml", "train:\n  epochs: 1\n")
    checks = layout.load_bundle_checks(bundle, [first, second])
    assert (checks.path, checks.train, checks.searched) == (first / "b.yaml", {"epochs": 1},
                                                            (first / "b.yaml", second / "b.yaml"))


def test_missing_checks_file_gives_empty_sections(tmp_path):
    checks = layout.load_bundle_checks(tmp_path / "b", [tmp_path])
    assert checks.path is None and checks.network_def == checks.train == checks.inference == {}
    assert checks.config_consistency == {"same": [], "preprocessing": None}
    with pytest.raises(layout.MissingSyntheticDataError, match=r"it has no checks file \(looked for .*b\.yaml\): add "
                                                               r".*b\.yaml with a 'synthetic_data:' section"):
        checks.make_synthetic_data(tmp_path / "data")
    _write(tmp_path / "b.yaml", "train:\n  epochs: 1\n")
    with pytest.raises(layout.MissingSyntheticDataError, match=r"b\.yaml has no 'synthetic_data:' section: add one"):
        layout.make_synthetic_data(tmp_path / "b", tmp_path / "data", [tmp_path])


@pytest.mark.parametrize(
    "content, message",
    [
        ("phantoms:\n  num_cases: 5\n", r"unknown sections \['phantoms'\].*'synthetic_data:'"),
        ("synthetic_data:\n  num_cases: 5\n", "synthetic_data needs '_target_"),
        ("synthetic_data:\n  _target_: m.f\n  output_dir: /tmp\n", "no 'output_dir'"),
        ("train: [1, 2]\n", "'train' must be a mapping"),
        ("config_consistency:\n  same: patch_size\n", "config_consistency#same must be a list"),
        ("config_consistency:\n  preprocessing:\n    train: a\n", "must map 'train' and 'inference'"),
        ("config_consistency:\n  identical: [a]\n", r"unknown keys \['identical'\]"),
        ("train: [\n", "does not parse as YAML"),
    ],
)
def test_malformed_checks_file_names_the_file(tmp_path, content, message):
    _write(tmp_path / "b.yaml", content)
    with pytest.raises(ValueError, match=message) as error:
        layout.load_bundle_checks(tmp_path / "b", [tmp_path])
    assert str(tmp_path / "b.yaml") in str(error.value)


def test_make_synthetic_data_calls_the_bundle_generator(tmp_path):
    # the fixture bundle's generator is scripts.synthetic, importable only with the bundle root on sys.path
    out = layout.make_synthetic_data(FIXTURE_BUNDLE, tmp_path / "data", CHECKS_DIRS)
    declared = layout.load_bundle_checks(FIXTURE_BUNDLE, [FIXTURE_CHECKS_DIR]).synthetic_data["num_cases"]
    assert out == tmp_path / "data"
    assert len(list((out / "images").glob("*.png"))) == len(list((out / "labels").glob("*.png"))) == declared
    layout.make_synthetic_data(FIXTURE_BUNDLE, tmp_path / "more", CHECKS_DIRS, num_cases=2)
    assert sorted(p.name for p in (tmp_path / "more" / "images").iterdir()) == ["case_00000.png", "case_00001.png"]
    # neither bytecode in the bundle folder nor a leftover `scripts` module for the next bundle
    assert not list(FIXTURE_BUNDLE.rglob("__pycache__"))
    assert "scripts" not in sys.modules and str(FIXTURE_BUNDLE) not in sys.path


def test_unknown_generator_names_the_checks_file(tmp_path):
    _write(tmp_path / "b.yaml", "synthetic_data:\n  _target_: json.no_such_function\n")
    with pytest.raises(ValueError, match=r"b\.yaml: synthetic_data#_target_ 'json.no_such_function'"):
        layout.make_synthetic_data(tmp_path / "b", tmp_path / "data", [tmp_path])
