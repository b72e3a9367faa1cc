# Copyright (c) the shared_networks authors. Licensed under the Apache License, Version 2.0.
"""Model Zoo checks (ci/verify_bundles.py) on every bundle in bundles/, and tests that the checker itself catches
each kind of defect, using a tiny throwaway bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import CI_DIR, SCHEMA_FILE, bundle_params, metadata_schema_available, subprocess_env

CHECK_NAMES = (
    "files",
    "metadata",
    "metadata_keys",
    "config_lint",
    "logging_conf",
    "large_files",
    "readme",
    "properties_train",
    "properties_infer",
    "net_in_out",
    "export",
    "load_train",
    "load_inference",
)

_results_cache: dict = {}


def _bundle_results(verify_bundles, bundle: Path) -> dict:
    """All checks of one bundle, run once per session. ``net_in_out`` uses the bundle's full network (as the Zoo);
    the checks that export, save or train it use the reduced network of ``ci/bundle_checks/<bundle>.yaml``."""
    if bundle not in _results_cache:
        reduced = verify_bundles.reduced_settings(bundle.name).get("network_def", {})
        checks = [c for c in CHECK_NAMES if c != "net_in_out"]
        results = verify_bundles.verify_bundle(bundle, checks, net_override=reduced)
        results.update(verify_bundles.verify_bundle(bundle, ["net_in_out"]))
        _results_cache[bundle] = results
    return _results_cache[bundle]


def test_check_names_match_the_checker(verify_bundles):
    assert tuple(verify_bundles.CHECKS) == CHECK_NAMES


@pytest.mark.slow
@pytest.mark.parametrize("check", CHECK_NAMES)
@pytest.mark.parametrize("bundle", bundle_params())
def test_bundle_passes_zoo_check(verify_bundles, bundle: Path, check: str):
    result = _bundle_results(verify_bundles, bundle)[check]
    if check == "metadata" and not metadata_schema_available():
        # the check cannot validate without the schema; it must say why and how to fix it
        assert result.status == verify_bundles.FAIL and "MONAI_BUNDLE_SCHEMA_DIR" in result.detail, result.detail
        pytest.skip(f"{SCHEMA_FILE.name}: no offline copy at {SCHEMA_FILE.parent} and no network to download it")
    assert result.status != verify_bundles.FAIL, f"{bundle.name}: {check}: {result.detail}"
    if check == "export":
        # every bundle exports in some form, checked against the eager output; what is unsupported the README says
        assert result.status == verify_bundles.PASS and "max |diff|" in result.detail, result.detail


# ---------------------------------------------------------------------------------------------------------------
# the checker itself, on the tiny bundle
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


def test_tiny_bundle_passes_every_check(verify_bundles, tiny_bundle, tiny_dataset):
    results = verify_bundles.verify_bundle(tiny_bundle, dataset_dir=tiny_dataset)
    failed = {c: r.detail for c, r in results.items() if r.status == verify_bundles.FAIL}
    if not metadata_schema_available():  # offline without the schema copy: only that check fails, and says why
        assert "MONAI_BUNDLE_SCHEMA_DIR" in failed.pop("metadata", "")
    assert not failed
    # the UNet scripts; the metadata validates against the offline schema when CI has it
    assert results["export"].status == verify_bundles.PASS and "script" in results["export"].detail
    if SCHEMA_FILE.is_file():
        assert "offline schema" in results["metadata"].detail
    # no model.pt in the tiny bundle, but it is listed in large_files.yml
    assert results["files"].status == verify_bundles.PASS
    # YAML configs: monai.bundle.load(workflow_type=...) reads configs/<type>.json only; the release archive has twins
    for check in ("load_train", "load_inference"):
        assert "on the release archive returns" in results[check].detail


def test_load_fails_when_initialize_needs_the_dataset(verify_bundles, tiny_bundle, tiny_dataset):
    # load() runs the config's `initialize`; one that reads data cannot serve a user who only wants the network
    _edit_yaml(tiny_bundle / "configs" / "inference.yaml",
               initialize=["$sorted(__import__('os').listdir(@dataset_dir))"])
    result = verify_bundles.verify_bundle(tiny_bundle, ["load_inference"], 64, tiny_dataset)["load_inference"]
    assert result.status == verify_bundles.FAIL, result.detail


def test_load_passes_with_json_configs(verify_bundles, tiny_bundle, tiny_dataset):
    for stem in ("train", "inference"):
        yaml_path = tiny_bundle / "configs" / f"{stem}.yaml"
        (tiny_bundle / "configs" / f"{stem}.json").write_text(json.dumps(yaml.safe_load(yaml_path.read_text()),
                                                                          indent=4) + "\n")
        yaml_path.unlink()
    results = verify_bundles.verify_bundle(tiny_bundle, ["load_train", "load_inference", "config_lint"], 64,
                                           tiny_dataset)
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
        ("config_lint", lambda b: _edit_yaml(b / "configs" / "train.yaml", dataset_dir="/home/alice/brats"),
         "absolute path"),
        ("config_lint", lambda b: _edit_yaml(b / "configs" / "inference.yaml",
                                             dataset_dir="$os.path.join('/data/brats', 'x')"), "absolute path"),
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
def test_checker_catches_defect(verify_bundles, tiny_bundle, tiny_dataset, check, mutate, expected):
    if check == "metadata" and expected == "copyright" and not metadata_schema_available():
        pytest.skip(f"{SCHEMA_FILE.name}: no offline copy at {SCHEMA_FILE.parent} and no network to download it")
    mutate(tiny_bundle)
    result = verify_bundles.verify_bundle(tiny_bundle, [check], 64, tiny_dataset)[check]
    assert result.status == verify_bundles.FAIL
    assert expected in result.detail


UNSCRIPTABLE_NET = '''
import torch


class TraceOnlyNet(torch.nn.Module):
    """A conv net whose forward uses ``**kwargs`` and a generator: torch.jit.script rejects it, tracing works."""

    def __init__(self, in_channels: int = 4, out_channels: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv3d(in_channels, out_channels, 3, padding=1)

    def forward(self, x, **kwargs):
        return sum(c for c in (self.conv(x), x[:, :1] * 0))
'''


def test_missing_weights_are_a_note(verify_bundles, tiny_bundle):
    (tiny_bundle / "large_files.yml").write_text("large_files: []\n")
    result = verify_bundles.verify_bundle(tiny_bundle, ["files"])["files"]
    assert result.status == verify_bundles.NOTE
    assert "models/model.pt is neither present nor listed" in result.detail


def test_export_falls_back_to_trace_only_when_the_readme_says_so(verify_bundles, tiny_bundle, tiny_dataset):
    (tiny_bundle / "scripts").mkdir()
    (tiny_bundle / "scripts" / "__init__.py").write_text("")
    (tiny_bundle / "scripts" / "net.py").write_text(UNSCRIPTABLE_NET)
    for stem in ("train", "inference"):
        _edit_yaml(tiny_bundle / "configs" / f"{stem}.yaml", network_def={"_target_": "scripts.net.TraceOnlyNet"})
    readme = tiny_bundle / "docs" / "README.md"
    assert "torchscript" not in readme.read_text().lower()
    result = verify_bundles.verify_bundle(tiny_bundle, ["export"], 64, tiny_dataset)["export"]
    assert result.status == verify_bundles.FAIL, result.detail
    assert "script failed" in result.detail and "docs/README.md does not say so" in result.detail

    readme.write_text(readme.read_text() + "\n### Export\n\nTorchScript scripting fails (``**kwargs``); trace it.\n")
    result = verify_bundles.verify_bundle(tiny_bundle, ["export"], 64, tiny_dataset)["export"]
    assert result.status == verify_bundles.PASS, result.detail
    assert "TorchScript trace via ckpt_export" in result.detail and "torch.export + save/load" in result.detail
    assert "unsupported, as docs/README.md explains: TorchScript script failed" in result.detail


def test_cli_prints_table_and_exit_code(tiny_bundle, tiny_dataset):
    cmd = [sys.executable, str(CI_DIR / "verify_bundles.py"), str(tiny_bundle), "--checks", "files,readme",
           "--dataset-dir", str(tiny_dataset)]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "tiny_unet_segmentation  files" in ok.stdout and "2 passed, 0 failed" in ok.stdout
    (tiny_bundle / "docs" / "README.md").unlink()
    bad = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert bad.returncode == 1
    assert "FAIL" in bad.stdout and "docs/README.md is missing" in bad.stdout
    unknown = subprocess.run(cmd[:3] + ["--checks", "nope"], capture_output=True, text=True, env=subprocess_env(),
                             timeout=300)
    assert unknown.returncode != 0 and "unknown checks" in unknown.stderr
