# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Every command of the bundle README's "MONAI Bundle Commands" section, run in the README's order by bash in a copy of
the bundle, at a reduced size: the placeholder paths become synthetic phantoms, and the reduced network, patch and
run length of ``ci/bundle_checks/segmamba_brats.yaml`` replace the sizes on the command line. Left out: multi-GPU
(``torchrun``, covered by tests/bundles/test_multi_gpu.py), the demo (README's main command) and the viewers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared_networks.bundle.layout import copy_bundle
from shared_networks.data import generate_brats_phantoms

REPO_ROOT = Path(__file__).resolve().parents[3]
BUNDLE = REPO_ROOT / "bundles" / "segmamba_brats"
SKIPPED = ("source ", "torchrun ", "bash ci/demo.sh", "tensorboard ", "mlflow ui")
# the reduced run of CI; a value on the README's command line is replaced, a missing one appended
REDUCED = {
    "--patch_size": '"[32,32,32]"',
    "--network_def#feature_sizes": '"[8,16,32,64]"',
    "--network_def#hidden_size": "64",
    "--epochs": "1",
    "--iterations_per_epoch": "2",
    "--val_interval": "1",
    "--batch_size": "1",
    "--num_workers": "0",
    "--sw_batch_size": "1",
}
TRAINING_ONLY = ("--epochs", "--iterations_per_epoch", "--val_interval", "--batch_size")
EXPORT_REDUCED = {
    "--input_shape": '"[1, 4, 32, 32, 32]"',
    "--network_def#feature_sizes": '"[8,16,32,64]"',
    "--network_def#hidden_size": "64",
}


def readme_commands() -> list[str]:
    """The shell commands of the section, one per entry (continuation lines joined, comments dropped)."""
    text = (BUNDLE / "docs" / "README.md").read_text()
    section = text[text.index("## MONAI Bundle Commands"):text.index("## Trust model")]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" # ")[0].strip()
            if command and not command.startswith("#"):
                commands.append(re.sub(r"\s+", " ", command))
    return commands


def reduce(command: str, values: dict[str, str]) -> str:
    for option, value in values.items():
        pattern = re.compile(rf"{re.escape(option)} (\"[^\"]*\"|\S+)")
        if pattern.search(command):
            command = pattern.sub(f"{option} {value}", command)
        else:
            command = f"{command} {option} {value}"
    return command


def test_the_section_has_the_commands_users_need():
    commands = readme_commands()
    for needed in ("run training", "configs/evaluate.yaml", "configs/inference.yaml", "--finetune True",
                   "--resume True", "--tracking mlflow", "ckpt_export"):
        assert any(needed in command for command in commands), needed


@pytest.mark.slow
def test_every_command_runs_as_written(tmp_path):
    data = tmp_path / "BraTS2023-GLI"
    generate_brats_phantoms(data, num_cases=6, shape=(32, 32, 32), seed=5)
    cases = tmp_path / "cases"
    for case in sorted(data.iterdir())[:2]:
        shutil.copytree(case, cases / case.name, ignore=shutil.ignore_patterns("*-seg.nii.gz"))
    bundle = copy_bundle(BUNDLE, tmp_path / "bundles" / BUNDLE.name)
    placeholders = {"/path/to/BraTS2023-GLI": str(data), "/path/to/data": str(data), "/path/to/cases": str(cases),
                    "/path/to/predictions": str(tmp_path / "predictions"), "/path/to/model.pt": "models/model.pt"}
    # the venv's python first on PATH: what `source .venv/bin/activate` does
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    ran = []
    for command in readme_commands():
        if command.startswith(SKIPPED):
            continue
        for placeholder, value in placeholders.items():
            command = command.replace(placeholder, value)
        if "monai.bundle run" in command and "configs/train.yaml" not in command:  # inference: no training ids
            command = reduce(command, {k: v for k, v in REDUCED.items() if k not in TRAINING_ONLY})
        elif "monai.bundle run" in command:
            command = reduce(command, {**REDUCED, **({"--epochs": "2"} if "--resume True" in command else {})})
        elif "monai.bundle ckpt_export" in command:
            command = reduce(command, EXPORT_REDUCED)
        result = subprocess.run(["bash", "-c", command], cwd=bundle, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        ran.append(command)
    assert len(ran) >= 9
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "models" / "model.ts").is_file()
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == sorted(p.name for p in cases.iterdir())
    assert (bundle / "eval" / "metrics_summary.json").is_file() and (bundle / "eval" / "mlruns.db").is_file()
