# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Model Zoo checks (ci/verify_bundles.py) on every bundle in bundles/ and on the fixture bundle
tests/fixtures/bundles/basic_unet_rgb_segmentation (2D RGB PNG, MONAI BasicUNet), and tests that the checker itself
catches each kind of defect, on throwaway copies of the fixture bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    CHECKS_DIR,
    CHECKS_DIRS,
    CI_DIR,
    FIXTURE_BUNDLE,
    FIXTURE_CHECKS_DIR,
    REPO_ROOT,
    SCHEMA_FILE,
    bundle_checks,
    bundle_params,
    list_weights,
    metadata_schema_available,
    subprocess_env,
)

CHECK_NAMES = (
    "requirements",
    "files",
    "metadata",
    "metadata_keys",
    "config_lint",
    "config_consistency",
    "logging_conf",
    "large_files",
    "json_format",
    "readme",
    "properties_train",
    "properties_infer",
    "net_in_out",
    "export",
    "load_train",
    "load_inference",
)

# the checks of a default run: all but requirements (the package registry and minutes of downloads)
DEFAULT_CHECK_NAMES = tuple(name for name in CHECK_NAMES if name != "requirements")

_results_cache: dict = {}


def _bundle_results(verify_bundles, bundle: Path) -> dict:
    """All checks of one bundle, run once per session. ``net_in_out`` uses the bundle's full network (as the Zoo);
    the checks that export, save or train it use the reduced network of ``ci/bundle_checks/<bundle>.yaml``."""
    if bundle not in _results_cache:
        reduced = bundle_checks(bundle).network_def
        checks = [c for c in DEFAULT_CHECK_NAMES if c != "net_in_out"]
        results = verify_bundles.verify_bundle(bundle, checks, net_override=reduced, checks_dirs=CHECKS_DIRS)
        results.update(verify_bundles.verify_bundle(bundle, ["net_in_out"], checks_dirs=CHECKS_DIRS))
        _results_cache[bundle] = results
    return _results_cache[bundle]


def test_check_names_match_the_checker(verify_bundles):
    assert tuple(verify_bundles.CHECKS) == CHECK_NAMES
    assert verify_bundles.DEFAULT_CHECKS == DEFAULT_CHECK_NAMES
    assert set(verify_bundles.ZOO_CHECKS) <= set(CHECK_NAMES)


@pytest.mark.slow
@pytest.mark.parametrize("check", DEFAULT_CHECK_NAMES)
@pytest.mark.parametrize("bundle", bundle_params())
def test_bundle_passes_zoo_check(verify_bundles, bundle: Path, check: str):
    result = _bundle_results(verify_bundles, bundle)[check]
    if check == "metadata" and not metadata_schema_available():
        # the check cannot validate without the schema; it must say why and how to fix it
        assert result.status == verify_bundles.FAIL and "MONAI_BUNDLE_SCHEMA_DIR" in result.detail, result.detail
        pytest.skip(f"{SCHEMA_FILE.name}: no offline copy at {SCHEMA_FILE.parent} and no network to download it")
    assert result.status != verify_bundles.FAIL, f"{bundle.name}: {check}: {result.detail}"
    if check == "export":
        # scripting (the Zoo's export), tracing and torch.export, each checked against the eager output
        assert result.status == verify_bundles.PASS, result.detail
        for method in ("TorchScript script via ckpt_export", "TorchScript trace via ckpt_export", "torch.export"):
            assert method in result.detail, result.detail


# ---------------------------------------------------------------------------------------------------------------
# the fixture bundle passes every check; the checker itself, on copies of the fixture bundle
# ---------------------------------------------------------------------------------------------------------------


def _edit_yaml(path: Path, **items) -> None:
    content = yaml.safe_load(path.read_text())
    content.update(items)
    path.write_text(yaml.safe_dump(content, sort_keys=False, width=200))


def _drop_yaml_key(path: Path, key: str) -> None:
    content = yaml.safe_load(path.read_text())
    del content[key]
    path.write_text(yaml.safe_dump(content, sort_keys=False, width=200))


def _edit_metadata(bundle: Path, edit) -> None:
    path = bundle / "configs" / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=4) + "\n")


def _table_rows(stdout: str) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(bundle, check): (status, detail)}`` from the table ``verify_bundles.py`` prints."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4 and parts[1] in CHECK_NAMES and parts[3].endswith("s"):
            rows[(parts[0], parts[1])] = (parts[2], parts[4] if len(parts) == 5 else "")
    return rows


def test_fixture_bundle_passes_every_check():
    # the documented command: the fixture bundle lives outside bundles/ and brings its checks file from elsewhere
    cmd = [sys.executable, str(CI_DIR / "verify_bundles.py"), str(FIXTURE_BUNDLE.relative_to(REPO_ROOT)),
           "--checks-dir", str(CHECKS_DIR.relative_to(REPO_ROOT)),
           "--checks-dir", str(FIXTURE_CHECKS_DIR.relative_to(REPO_ROOT)), "--reduced"]
    run = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=600, cwd=REPO_ROOT)
    rows = _table_rows(run.stdout)
    name = FIXTURE_BUNDLE.name
    assert sorted(check for bundle, check in rows if bundle == name) == sorted(DEFAULT_CHECK_NAMES), run.stdout[-3000:]
    if not metadata_schema_available():  # offline without the schema copy: only that check fails, and says why
        status, detail = rows.pop((name, "metadata"))
        assert status == "FAIL" and "MONAI_BUNDLE_SCHEMA_DIR" in detail, detail
        pytest.skip(f"{SCHEMA_FILE.name}: no offline copy at {SCHEMA_FILE.parent} and no network to download it")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"{len(DEFAULT_CHECK_NAMES)} passed, 0 failed" in run.stdout
    # the one note segmamba_brats has too: no published weights (test_listed_weights_pass_files lists them)
    assert rows.pop((name, "files")) == (
        "note", "layout complete; no weights: models/model.pt is neither shipped nor listed in large_files.yml")
    assert {check: status for (_, check), (status, _) in rows.items()} == dict.fromkeys(
        [c for c in DEFAULT_CHECK_NAMES if c != "files"], "pass"), run.stdout[-3000:]
    # the BasicUNet scripts; the synthetic PNGs feed the workflow checks; train and inference repeat each other
    assert "TorchScript script via ckpt_export" in rows[(name, "export")][1]
    assert "train+evaluate: all train properties" in rows[(name, "properties_train")][1]
    assert "network_def, patch_size; 5 preprocessing transforms" in rows[(name, "config_consistency")][1]
    if SCHEMA_FILE.is_file():
        assert "offline schema" in rows[(name, "metadata")][1]
    # YAML configs: monai.bundle.load(workflow_type=...) reads configs/<type>.json only; the release archive has twins
    for check in ("load_train", "load_inference"):
        assert "on the release archive returns BasicUNet" in rows[(name, check)][1]
    assert not list(FIXTURE_BUNDLE.rglob("__pycache__")), "the checks wrote into the bundle folder"


def test_listed_weights_pass_files(verify_bundles, fixture_bundle):
    list_weights(fixture_bundle, "0" * 64)
    results = verify_bundles.verify_bundle(fixture_bundle, ["files", "large_files"], checks_dirs=CHECKS_DIRS)
    assert {c: (r.status, r.detail) for c, r in results.items()} == {
        "files": (verify_bundles.PASS, "layout complete"),
        "large_files": (verify_bundles.PASS, "1 entries with sha256"),
    }


def test_checks_that_need_data_name_the_missing_checks_file(verify_bundles, fixture_bundle):
    # without tests/fixtures/bundle_checks on the search path the fixture bundle declares no synthetic data
    results = verify_bundles.verify_bundle(fixture_bundle, ["properties_train", "properties_infer",
                                                            "config_consistency"], checks_dirs=[CHECKS_DIR])
    expected_file = str(CHECKS_DIR / f"{fixture_bundle.name}.yaml")
    for check in ("properties_train", "properties_infer"):
        assert results[check].status == verify_bundles.FAIL
        assert f"add {expected_file} with a 'synthetic_data:' section" in results[check].detail, results[check].detail
    # the consistency check still compares network_def, the one thing it needs no declaration for
    assert results["config_consistency"].status == verify_bundles.PASS
    assert "no checks file: network_def only" in results["config_consistency"].detail


def test_load_fails_when_initialize_needs_the_dataset(verify_bundles, fixture_bundle):
    # load() runs the config's `initialize`; one that reads data cannot serve a user who only wants the network
    _edit_yaml(fixture_bundle / "configs" / "inference.yaml",
               initialize=["$sorted(__import__('os').listdir(@dataset_dir))"])
    results = verify_bundles.verify_bundle(fixture_bundle, ["load_inference"], checks_dirs=CHECKS_DIRS)
    assert results["load_inference"].status == verify_bundles.FAIL, results["load_inference"].detail


def test_load_passes_with_json_configs(verify_bundles, fixture_bundle):
    for stem in ("train", "inference"):
        yaml_path = fixture_bundle / "configs" / f"{stem}.yaml"
        (fixture_bundle / "configs" / f"{stem}.json").write_text(json.dumps(yaml.safe_load(yaml_path.read_text()),
                                                                          indent=4) + "\n")
        yaml_path.unlink()
    results = verify_bundles.verify_bundle(fixture_bundle, ["load_train", "load_inference", "config_lint",
                                                           "config_consistency"], checks_dirs=CHECKS_DIRS)
    assert {c: r.status for c, r in results.items()} == dict.fromkeys(results, verify_bundles.PASS)


@pytest.mark.parametrize(
    "check, mutate, expected",
    [
        ("files", lambda b: (b / "LICENSE").unlink(), "LICENSE is missing"),
        ("files", lambda b: (b / "configs" / "evaluate.yaml").unlink(), "configs/evaluate.json|yaml is missing"),
        ("metadata", lambda b: _edit_metadata(b, lambda m: m.pop("copyright")), "copyright"),
        ("metadata", lambda b: _edit_metadata(b, lambda m: m.update(schema="https://x/meta_schema_20220324.json")),
         "meta_schema_20240725.json"),
        ("metadata_keys", lambda b: _edit_metadata(b, lambda m: m.update(version="0.2.0")),
         "'0.2.0' is not a key of 'changelog'"),
        ("metadata_keys", lambda b: _edit_metadata(b, lambda m: m.update(pytorch_version="2.13.0+cu128")),
         "bare PyPI version"),
        ("metadata_keys",
         lambda b: _edit_metadata(b, lambda m: m["network_data_format"]["outputs"]["pred"]["channel_def"].update(
             {"0": "tumour", "1": "background"})),
         "must be 'background'"),
        # an output listed before pred is what MONAI Label serves: it must be a label map with its background at 0
        ("metadata_keys",
         lambda b: _edit_metadata(b, lambda m: m["network_data_format"].update(outputs={
             "points": {"format": "points", "channel_def": {"0": "TCD1"}}, **m["network_data_format"]["outputs"]})),
         "comes before pred"),
        ("config_lint", lambda b: _edit_yaml(b / "configs" / "train.yaml", dataset_dir="/home/alice/data"),
         "absolute path"),
        ("config_lint", lambda b: _edit_yaml(b / "configs" / "inference.yaml",
                                             dataset_dir="$os.path.join('/data/cases', 'x')"), "absolute path"),
        ("config_lint", lambda b: _edit_yaml(b / "configs" / "train.yaml", network="$@network_def.to('cuda:0')"),
         "device literal"),
        ("config_lint", lambda b: _edit_yaml(b / "configs" / "train.yaml",
                                             initialize=["$__import__('subprocess').run(['true'])"]), "subprocess"),
        ("config_lint", lambda b: _edit_yaml(b / "configs" / "train.yaml", ckpt="$torch.load(@bundle_root)"),
         "weights_only"),
        ("config_lint", lambda b: _edit_yaml(b / "configs" / "evaluate.yaml", run=["$eval('1+1')"]), "eval("),
        ("logging_conf", lambda b: (b / "configs" / "logging.conf").write_text(
            (b / "configs" / "logging.conf").read_text().replace("class=StreamHandler", "class=os.system")),
         "rejected by MONAI"),
        ("large_files", lambda b: (b / "large_files.yml").write_text(
            "large_files:\n- path: models/model.pt\n  url: https://example.invalid/m.pt\n  hash_val: abc\n"),
         "hash_type must be given explicitly"),
        ("large_files", lambda b: (b / "large_files.yml").write_text(
            f"large_files:\n- path: ../model.pt\n  url: u\n  hash_val: {'0' * 64}\n  hash_type: sha256\n"),
         "inside the bundle"),
        ("readme", lambda b: (b / "docs" / "README.md").write_text("# Model Overview\n## Data\n"), "Performance"),
        ("properties_train",
         lambda b: _edit_yaml(b / "configs" / "train.yaml", train={
             **yaml.safe_load((b / "configs" / "train.yaml").read_text())["train"],
             "handlers": [{"_target_": "ValidationHandler", "validator": "@validate#evaluator", "interval": 1}]}),
         "val_interval"),
        ("properties_infer", lambda b: _drop_yaml_key(b / "configs" / "inference.yaml", "inferer"), "inferer"),
        ("net_in_out", lambda b: _edit_metadata(
            b, lambda m: m["network_data_format"]["outputs"]["pred"].update(num_channels=3)), "output channel"),
    ],
)
def test_checker_catches_defect(verify_bundles, fixture_bundle, check, mutate, expected):
    if check == "metadata" and expected == "copyright" and not metadata_schema_available():
        pytest.skip(f"{SCHEMA_FILE.name}: no offline copy at {SCHEMA_FILE.parent} and no network to download it")
    mutate(fixture_bundle)
    result = verify_bundles.verify_bundle(fixture_bundle, [check], checks_dirs=CHECKS_DIRS)[check]
    assert result.status == verify_bundles.FAIL
    assert expected in result.detail


def _edit_transform(bundle: Path, stem: str, list_id: str, target: str, **items) -> None:
    """Update (``None`` removes) arguments of the first ``target`` transform of the list at ``list_id``."""
    path = bundle / "configs" / f"{stem}.yaml"
    content = yaml.safe_load(path.read_text())
    node = content
    for key in list_id.split("#"):
        node = node[key]
    transform = next(t for t in node if t["_target_"] == target)
    transform.update(items)
    for key in [k for k, v in items.items() if v is None]:
        del transform[key]
    path.write_text(yaml.safe_dump(content, sort_keys=False, width=200))


def _edit_inference_transform(bundle: Path, target: str, **items) -> None:
    _edit_transform(bundle, "inference", "preprocessing#transforms", target, **items)


def _drop_inference_transform(bundle: Path, target: str) -> None:
    path = bundle / "configs" / "inference.yaml"
    content = yaml.safe_load(path.read_text())
    content["preprocessing"]["transforms"] = [t for t in content["preprocessing"]["transforms"]
                                              if t["_target_"] != target]
    path.write_text(yaml.safe_dump(content, sort_keys=False, width=200))


def _widen_inference_network(bundle: Path) -> None:
    path = bundle / "configs" / "inference.yaml"
    network = yaml.safe_load(path.read_text())["network_def"]
    _edit_yaml(path, network_def={**network, "features": [8, 8, 16, 16, 32, 8]})


def _write_checks_file(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


TRAIN_TRANSFORMS = "train.yaml train#deterministic_transforms"
INFER_TRANSFORMS = "inference.yaml preprocessing#transforms"


@pytest.mark.parametrize(
    "mutate, expected",
    [
        # the weights train.yaml writes would not load into the network inference.yaml builds
        (_widen_inference_network,
         "network_def#features: train.yaml [4, 4, 8, 8, 16, 4] != inference.yaml [8, 8, 16, 16, 32, 8]"),
        (lambda b: _edit_yaml(b / "configs" / "inference.yaml", patch_size=[64, 64]),
         "patch_size: train.yaml [32, 32] != inference.yaml [64, 64]"),
        (lambda b: _edit_inference_transform(b, "Spacingd", pixdim=[2.0, 2.0]),
         f"{TRAIN_TRANSFORMS}#2#pixdim (Spacingd) [1.0, 1.0] != {INFER_TRANSFORMS}#2#pixdim [2.0, 2.0]"),
        # projection keeps the image's own value: train interpolates the image bilinearly, not nearest
        (lambda b: _edit_inference_transform(b, "Spacingd", mode="nearest"),
         f"{TRAIN_TRANSFORMS}#2#mode (Spacingd) ['bilinear', 'nearest'] != {INFER_TRANSFORMS}#2#mode 'nearest'"),
        (lambda b: _edit_inference_transform(b, "ScaleIntensityRanged", clip=None),
         f"{TRAIN_TRANSFORMS}#3#clip (ScaleIntensityRanged) True != {INFER_TRANSFORMS}#3#clip (absent)"),
        (lambda b: _edit_transform(b, "train", "train#deterministic_transforms", "ScaleIntensityRanged", a_max=1.0),
         f"{TRAIN_TRANSFORMS}#3#a_max (ScaleIntensityRanged) 1.0 != {INFER_TRANSFORMS}#3#a_max 255.0"),
        (lambda b: _edit_inference_transform(b, "EnsureTyped", keys="img"),
         f"{INFER_TRANSFORMS}#4#keys (EnsureTyped) ['img'] are not among {TRAIN_TRANSFORMS}#4#keys"),
        (lambda b: _drop_inference_transform(b, "Spacingd"),
         f"{TRAIN_TRANSFORMS} has 5 transforms but {INFER_TRANSFORMS} has 4"),
    ],
)
def test_config_consistency_catches_drift(verify_bundles, fixture_bundle, mutate, expected):
    before = verify_bundles.verify_bundle(fixture_bundle, ["config_consistency"], checks_dirs=CHECKS_DIRS)
    assert before["config_consistency"].status == verify_bundles.PASS, before["config_consistency"].detail
    mutate(fixture_bundle)
    result = verify_bundles.verify_bundle(fixture_bundle, ["config_consistency"],
                                          checks_dirs=CHECKS_DIRS)["config_consistency"]
    assert result.status == verify_bundles.FAIL
    assert result.detail.startswith("inference.yaml disagrees with train.yaml: ")
    assert expected in result.detail, result.detail


@pytest.mark.parametrize(
    "declaration, expected",
    [
        ("same: [no_such_id]", "no_such_id: in neither train.yaml nor inference.yaml"),
        ("preprocessing: {train: train#no_such_list, inference: preprocessing#transforms}",
         "train.yaml has no id 'train#no_such_list'"),
        ("preprocessing: {train: train#deterministic_transforms, inference: dataset}",
         "inference.yaml dataset must be a list of transforms or a Compose of one"),
    ],
)
def test_config_consistency_reports_bad_declarations(verify_bundles, fixture_bundle, tmp_path, declaration, expected):
    checks_file = _write_checks_file(tmp_path / "checks", fixture_bundle.name,
                                     f"config_consistency:\n  {declaration}\n")
    result = verify_bundles.verify_bundle(fixture_bundle, ["config_consistency"],
                                          checks_dirs=[checks_file.parent])["config_consistency"]
    assert result.status == verify_bundles.FAIL
    assert expected in result.detail, result.detail


def test_config_consistency_projects_per_key_arguments(verify_bundles, fixture_bundle):
    # keys and per-key arguments as one-item lists say the same as the plain values the fixture uses
    _edit_inference_transform(fixture_bundle, "Spacingd", keys=["image"], mode=["bilinear"])
    result = verify_bundles.verify_bundle(fixture_bundle, ["config_consistency"],
                                          checks_dirs=CHECKS_DIRS)["config_consistency"]
    assert result.status == verify_bundles.PASS, result.detail


UNSCRIPTABLE_NET = '''
import torch


class TraceOnlyNet(torch.nn.Module):
    """A conv net whose forward uses ``**kwargs`` and a generator: torch.jit.script rejects it, tracing works."""

    def __init__(self, in_channels: int = 3, out_channels: int = 2):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x, **kwargs):
        return sum(c for c in (self.conv(x), x[:, :1] * 0))
'''


def test_missing_weights_are_a_note(verify_bundles, fixture_bundle):
    (fixture_bundle / "large_files.yml").write_text("large_files: []\n")
    result = verify_bundles.verify_bundle(fixture_bundle, ["files"])["files"]
    assert result.status == verify_bundles.NOTE
    assert "models/model.pt is neither shipped nor listed" in result.detail


def test_export_fails_where_scripting_fails_even_when_the_readme_says_so(verify_bundles, fixture_bundle):
    """The Model Zoo exports with TorchScript scripting; a bundle whose network only traces fails there, whatever its
    README says, and the check names the Zoo's step."""
    assert (fixture_bundle / "scripts" / "__init__.py").is_file()  # the bundle's scripts/ (synthetic data) package
    (fixture_bundle / "scripts" / "net.py").write_text(UNSCRIPTABLE_NET)
    for stem in ("train", "inference"):
        _edit_yaml(fixture_bundle / "configs" / f"{stem}.yaml", network_def={"_target_": "scripts.net.TraceOnlyNet"})
    readme = fixture_bundle / "docs" / "README.md"
    for text in ("", "\n### Export\n\nTorchScript scripting fails (``**kwargs``); trace it.\n"):
        readme.write_text(readme.read_text() + text)
        result = verify_bundles.verify_bundle(fixture_bundle, ["export"], checks_dirs=CHECKS_DIRS)["export"]
        assert result.status == verify_bundles.FAIL, result.detail
        assert "ckpt_export with TorchScript scripting (its default), fails" in result.detail


def test_cli_prints_table_and_exit_code(fixture_bundle):
    cmd = [sys.executable, str(CI_DIR / "verify_bundles.py"), str(fixture_bundle), "--checks", "files,readme",
           "--checks-dir", str(FIXTURE_CHECKS_DIR)]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "basic_unet_rgb_segmentation  files" in ok.stdout and "2 passed, 0 failed" in ok.stdout
    (fixture_bundle / "docs" / "README.md").unlink()
    bad = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "docs/README.md is missing" in bad.stdout
    unknown = subprocess.run(cmd[:3] + ["--checks", "nope"], capture_output=True, text=True, env=subprocess_env(),
                             timeout=300)
    assert unknown.returncode != 0 and "unknown checks" in unknown.stderr
    no_dir = subprocess.run(cmd[:3] + ["--checks-dir", str(fixture_bundle / "nope")], capture_output=True, text=True,
                            env=subprocess_env(), timeout=300)
    assert no_dir.returncode != 0 and "--checks-dir: not folders" in no_dir.stderr


def test_local_training_output_is_not_taken_for_shipped_weights(fixture_bundle, verify_bundles, tmp_path):
    """In a git checkout, an untracked models/model.pt is the user's own run (e.g. other widths): the checks use the
    network's initial weights and say so, instead of failing on weights the bundle does not ship."""
    import torch

    repo = fixture_bundle.parent
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (fixture_bundle / "models").mkdir(exist_ok=True)
    torch.save({"a stray tensor": torch.zeros(3)}, fixture_bundle / "models" / "model.pt")
    results = verify_bundles.verify_bundle(fixture_bundle, checks=("files", "export"),
                                           checks_dirs=(FIXTURE_CHECKS_DIR,))
    assert results["files"].status == "note" and "local training output" in results["files"].detail
    assert results["export"].status == "pass", results["export"].detail
    assert "local training output" in results["export"].detail
    # tracked by git, the same file is the bundle's weights, and the export check rightly fails on it
    subprocess.run(["git", "-C", str(repo), "add", "-f", str(fixture_bundle / "models" / "model.pt")], check=True)
    results = verify_bundles.verify_bundle(fixture_bundle, checks=("files", "export"),
                                           checks_dirs=(FIXTURE_CHECKS_DIR,))
    assert results["files"].status == "pass" and results["export"].status == "FAIL"


# ---------------------------------------------------------------------------------------------------------------
# --zoo: what the Model Zoo's CI fails on fails here, with its reason
# ---------------------------------------------------------------------------------------------------------------


def test_json_format_is_the_zoos_and_names_file_and_line(verify_bundles, fixture_bundle):
    result = verify_bundles.verify_bundle(fixture_bundle, ["json_format"])["json_format"]
    assert result.status == verify_bundles.PASS, result.detail
    assert "JSON files of the release archive in the Zoo's format" in result.detail
    metadata = fixture_bundle / "configs" / "metadata.json"
    content = json.loads(metadata.read_text())
    for text, line in ((json.dumps(content, indent=2) + "\n", 2),  # the hook indents by 4
                       (json.dumps({**content, "task": "Läsion"}, indent=4, ensure_ascii=False) + "\n", None)):
        metadata.write_text(text)
        result = verify_bundles.verify_bundle(fixture_bundle, ["json_format"])["json_format"]
        assert result.status == verify_bundles.FAIL, result.detail
        assert "configs/metadata.json line" in result.detail and "differs from the Zoo's format" in result.detail
        if line is not None:
            assert f"configs/metadata.json line {line} " in result.detail


def test_zoo_mode_fails_without_weights_naming_the_zoo_step(fixture_bundle):
    cmd = [sys.executable, str(CI_DIR / "verify_bundles.py"), str(fixture_bundle), "--zoo", "--checks",
           "files,json_format", "--checks-dir", str(FIXTURE_CHECKS_DIR)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    rows = _table_rows(run.stdout)
    status, detail = rows[(fixture_bundle.name, "files")]
    assert status == "FAIL" and "verify_bundle_directory requires models/model.pt" in detail, run.stdout
    assert rows[(fixture_bundle.name, "json_format")][0] == "pass"
    # the same bundle outside --zoo: the missing weights are a note
    default = subprocess.run(cmd[:3] + cmd[4:], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert default.returncode == 0 and _table_rows(default.stdout)[(fixture_bundle.name, "files")][0] == "note"


def test_requirements_that_python_3_10_cannot_install_fail(verify_bundles, fixture_bundle, tmp_path):
    """The issue's case: numpy 2.4.6 has no Python 3.10 wheel. pip answers from the registry's index pages before it
    downloads any wheel, so this takes seconds."""
    _edit_metadata(fixture_bundle, lambda meta: meta.update(numpy_version="2.4.6"))
    package_dir = verify_bundles.build_package_wheel(tmp_path / "package")
    assert len(list(package_dir.glob("shared_networks-*.whl"))) == 1
    result = verify_bundles.verify_bundle(fixture_bundle, ["requirements"], package_dir=package_dir)["requirements"]
    if "Could not fetch URL" in result.detail or "connection" in result.detail.lower():
        pytest.skip(f"the package registry is not reachable: {result.detail}")
    assert result.status == verify_bundles.FAIL, result.detail
    assert "numpy==2.4.6" in result.detail and "does not resolve on Python 3.10" in result.detail, result.detail
    assert verify_bundles.zoo_requirements(json.loads((fixture_bundle / "configs" / "metadata.json").read_text()))[:3] \
        == ["monai==1.6.1", "torch==2.13.0", "numpy==2.4.6"]
