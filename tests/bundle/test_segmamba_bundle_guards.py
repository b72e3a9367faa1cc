# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The shared checkpoint machinery through the ``segmamba_brats`` bundle's configs (ConfigWorkflow, reduced size,
synthetic phantoms): resuming with more epochs continues the LR schedule, fine-tuning accepts a training checkpoint,
and evaluating a wrong ``model.pt`` names the file."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from shared_networks.data import generate_brats_phantoms

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "segmamba_brats" / "configs"
# the reduced configuration of the bundle's README (a few seconds per iteration on CPU)
REDUCED = {
    "patch_size": [32, 32, 32],
    "network_def#feature_sizes": [8, 16, 32, 64],
    "network_def#hidden_size": 64,
    "batch_size": 1,
    "num_workers": 0,
    "sw_batch_size": 1,
}


def _workflow(config_files: list[str], **overrides) -> None:
    workflow = ConfigWorkflow(
        workflow_type="train",
        config_file=[str(CONFIGS / name) for name in config_files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        **REDUCED,
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()


def _messages(error: BaseException) -> list[str]:
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return messages


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    generate_brats_phantoms(root, num_cases=6, shape=(32, 32, 32), seed=3)
    return root


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory, dataset_dir) -> Path:
    """A bundle_root after one epoch of 2 iterations: the poly schedule of 2 steps ended at learning rate 0."""
    root = tmp_path_factory.mktemp("trained")
    _workflow(["train.yaml"], bundle_root=str(root), dataset_dir=str(dataset_dir), epochs=1, iterations_per_epoch=2,
              val_interval=1)
    return root


def test_resume_with_more_epochs_continues_the_schedule(trained_root, dataset_dir, tmp_path, caplog):
    root = tmp_path / "resume"
    shutil.copytree(trained_root, root)
    before = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert before["lr_scheduler"]["_last_lr"][0] == 0.0 and before["lr_scheduler"]["total_iters"] == 2

    with caplog.at_level(logging.INFO):
        _workflow(["train.yaml"], bundle_root=str(root), dataset_dir=str(dataset_dir), resume=True, epochs=2,
                  iterations_per_epoch=2, val_interval=2)
    lr = 0.01 * (1 - 2 / 4) ** 0.9  # learning_rate * (1 - step / total_iters) ** power, at the restored step 2
    assert "the PolynomialLR schedule was extended from 2 to 4 steps" in caplog.text
    assert f"the learning rate at step 2 is now {lr:.6g}" in caplog.text
    after = torch.load(root / "models" / "checkpoint_last.pt", weights_only=True)
    assert after["lr_scheduler"]["total_iters"] == 4 and after["lr_scheduler"]["last_epoch"] == 4
    changed = [k for k, v in before["network"].items() if not torch.equal(v, after["network"][k])]
    assert changed, "the resumed epoch did not change the weights (learning rate 0)"


def test_finetune_from_a_training_checkpoint_loads_its_network(trained_root, dataset_dir, tmp_path, caplog):
    checkpoint = trained_root / "models" / "checkpoint_last.pt"
    with caplog.at_level(logging.INFO):
        _workflow(["train.yaml"], bundle_root=str(tmp_path / "finetune"), dataset_dir=str(dataset_dir),
                  finetune=True, finetune_model_path=str(checkpoint), epochs=1, iterations_per_epoch=1,
                  val_interval=5)
    assert f"'{checkpoint}' is a training checkpoint" in caplog.text
    assert f"Restored all variables from {checkpoint}" in caplog.text


def test_evaluate_with_a_wrong_model_file_names_it(trained_root, dataset_dir, tmp_path):
    root = tmp_path / "evaluate"
    shutil.copytree(trained_root, root)
    model = root / "models" / "model.pt"
    model.write_bytes(b"")  # an interrupted copy
    with pytest.raises(Exception) as error:
        _workflow(["train.yaml", "evaluate.yaml"], bundle_root=str(root), dataset_dir=str(dataset_dir),
                  output_dir=str(tmp_path / "eval"))
    assert any(f"'{model}' is empty (0 bytes)" in m for m in _messages(error.value))
