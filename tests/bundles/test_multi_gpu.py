# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``configs/multi_gpu_train`` merged onto ``configs/train`` runs under ``torchrun --nproc_per_node 2`` on CPU
(gloo), also when the validation split has fewer cases than ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    bundle_params,
    cli_overrides,
    copy_bundle,
    free_port,
    make_synthetic_data,
    reduced_train_overrides,
    subprocess_env,
)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_params())
def test_multi_gpu_config_runs_two_processes_on_cpu(bundle: Path, tmp_path: Path):
    work = copy_bundle(bundle, tmp_path)
    # 20 cases: enough for a validation case per rank (DistributedSampler needs >= 1 per rank), e.g. 2 of the
    # 70/10/20 split of segmamba_brats
    dataset = make_synthetic_data(bundle, tmp_path / "dataset", num_cases=20)
    configs = [str(next((work / "configs").glob(f"{stem}.*"))) for stem in ("train", "multi_gpu_train")]
    overrides = {**reduced_train_overrides(bundle), "bundle_root": str(work), "dataset_dir": str(dataset)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "monai.bundle", "run",
           "--config_file", str(configs), *cli_overrides(overrides)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=work, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    # gloo's process group needs both ranks, so exit 0 means both trained; rank 0 wrote the best model, unwrapped
    import torch

    state = torch.load(work / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "DDP prefix leaked into the saved state dict"


def _torchrun(work: Path, overrides: dict) -> subprocess.CompletedProcess:
    configs = [str(next((work / "configs").glob(f"{stem}.*"))) for stem in ("train", "multi_gpu_train")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "monai.bundle", "run",
           "--config_file", str(configs), *cli_overrides(overrides)]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=work, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_params())
def test_multi_gpu_with_a_one_case_validation_split(bundle: Path, tmp_path: Path):
    from monai.bundle import ConfigParser

    work = copy_bundle(bundle, tmp_path)
    dataset = make_synthetic_data(bundle, tmp_path / "dataset")
    # the bundle's own datalist, then cut to one validation case (bundles reuse an existing datalist file)
    parser = ConfigParser()
    parser.read_config(str(next((work / "configs").glob("train.*"))))
    parser.update({"bundle_root": str(work), "dataset_dir": str(dataset)})
    datalist = parser.get_parsed_content("datalist")
    datalist["validation"] = datalist["validation"][:1]
    path = Path(parser.get_parsed_content("datalist_path"))
    path.write_text(json.dumps(datalist))
    try:
        parser.get_parsed_content("datalist", lazy=False)
    except RuntimeError as err:  # e.g. a classifier, whose validation split must hold every class
        if "validation split has no" not in str(err.__cause__):
            raise
        pytest.skip(f"{bundle.name} refuses a one-case validation split: {err.__cause__}")
    result = _torchrun(work, {**reduced_train_overrides(bundle), "bundle_root": str(work),
                              "dataset_dir": str(dataset)})
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert "less than the number of participating ranks" not in log
    assert (work / "models" / "model.pt").is_file(), "no validation ran on the one case"
