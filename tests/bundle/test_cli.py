# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``shared_networks.bundle.cli.check_command_line`` through a real ``python -m monai.bundle run`` command line:
misspelt overrides are refused with suggestions, and input errors end with a short summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared_networks.bundle.cli import FULL_TRACEBACK_ENV_VAR, text_boolean_overrides, unknown_overrides

CONFIG = {
    "imports": ["$import shared_networks.bundle.cli", "$import shared_networks.data", "$import shared_networks"],
    "epochs": 2,
    "dataset_dir": "/nonexistent/BraTS",
    "network_def": {"_target_": "torch.nn.Identity"},
    "initialize": ["$shared_networks.bundle.cli.check_command_line()"],
    "run": ["$print('epochs =', @epochs)"],
    "find": ["$shared_networks.data.find_brats_cases(@dataset_dir)"],
    "check": ["$shared_networks.data.check_image_file(@dataset_dir, 'case x')"],
}


def run_bundle(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args, "--config_file", str(config)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


@pytest.fixture
def child_env(monkeypatch):
    import os

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop(FULL_TRACEBACK_ENV_VAR, None)
    return env


def test_known_override_runs(tmp_path, child_env):
    result = run_bundle(tmp_path, "--epochs", "5", "--network_def#inplace", "True", env=child_env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epochs = 5" in result.stdout


def test_lowercase_boolean_is_refused_before_it_reads_as_true(tmp_path, child_env):
    # python-fire passes 'false' on as text, so `$not @finetune` would be False and fine-tuning would start
    result = run_bundle(tmp_path, "--network_def#inplace", "false", "--epochs=3", env=child_env)
    assert result.returncode != 0 and "epochs =" not in result.stdout
    assert "write --network_def#inplace False." in result.stderr and "Traceback" not in result.stderr
    assert text_boolean_overrides({"finetune": "false", "resume": "TRUE", "amp": "False", "x#_disabled_": "true",
                                   "epochs": "3", "name": "falsely"}) == {"finetune": "false", "resume": "TRUE"}


def test_misspelt_override_is_refused_with_a_suggestion(tmp_path, child_env):
    result = run_bundle(tmp_path, "--epoch", "1", env=child_env)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-3:]
    assert any("unknown config id(s) on the command line: --epoch (did you mean --epochs?)" in line for line in last)
    assert "Traceback" not in result.stderr  # an input error: the message, not MONAI's traceback
    assert "epochs =" not in result.stdout


def test_input_error_ends_with_its_message_and_full_traceback_on_request(tmp_path, child_env):
    result = run_bundle(tmp_path, "find", env=child_env)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "The run stopped: FileNotFoundError: dataset_dir '/nonexistent/BraTS' does not exist" in result.stderr
    verbose = run_bundle(tmp_path, "find", env={**child_env, FULL_TRACEBACK_ENV_VAR: "1"})
    assert "Traceback" in verbose.stderr and "Failed to evaluate" in verbose.stderr
    assert verbose.stderr.strip().splitlines()[-2].startswith("The run stopped: FileNotFoundError")


def test_the_summary_is_the_package_message_not_its_low_level_cause(tmp_path, child_env):
    import gzip

    # a gzip file of the right length whose deflate data are damaged: zlib raises, check_image_file names the file
    data = bytearray(gzip.compress(bytes(range(256)) * 64, mtime=0))
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.nii.gz").write_bytes(bytes(data))
    result = run_bundle(tmp_path, "check", "--dataset_dir", str(tmp_path / "bad.nii.gz"), env=child_env)
    assert result.returncode != 0
    summary = [line for line in result.stderr.splitlines() if line.startswith("The run stopped:")]
    assert summary and summary[0].startswith("The run stopped: ValueError: case x: file "), summary
    assert "bad.nii.gz' is corrupt or truncated" in summary[0]


def test_unknown_overrides_allows_new_keys_under_existing_entries(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    found = unknown_overrides([str(config)], ["epochs", "network_def#inplace", "epoch", "config_file", "nework_def#x"])
    assert set(found) == {"epoch", "nework_def#x"}
    assert found["epoch"] == ["epochs"] and found["nework_def#x"][0] == "network_def"
