# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Resilience: a bundle training run killed with SIGKILL mid-epoch resumes with ``--resume True`` from its last
training-state checkpoint, reaches the same final epoch and loses at most the interrupted epoch."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    bundle_params,
    cli_overrides,
    copy_bundle,
    make_synthetic_data,
    reduced_train_overrides,
    subprocess_env,
)

EPOCHS = 4
RESUMED = re.compile(r"Resumed training from '.*' at epoch (\d+)")
SAVED = re.compile(r"Saved the training state of epoch (\d+)")


@pytest.mark.slow
@pytest.mark.parametrize("bundle", bundle_params())
def test_sigkill_then_resume(bundle: Path, tmp_path: Path):
    work = copy_bundle(bundle, tmp_path)
    dataset = make_synthetic_data(bundle, tmp_path / "dataset")
    overrides = {**reduced_train_overrides(bundle), "bundle_root": str(work), "dataset_dir": str(dataset),
                 "epochs": EPOCHS, "val_interval": EPOCHS}
    state_file = work / "models" / "checkpoint_last.pt"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(next((work / "configs").glob("train.*"))),
           *cli_overrides(overrides)]
    log_path = tmp_path / "first_run.log"
    with open(log_path, "w") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(), cwd=work)
        deadline = time.monotonic() + 600
        # wait for the first epoch's training state, then kill in the next epoch (reduced epochs of some bundles take
        # well under a second, hence the short polling)
        while not SAVED.search(log_path.read_text()) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    first_log = log_path.read_text()
    assert state_file.is_file(), first_log[-4000:]
    saved_before_kill = max(int(e) for e in SAVED.findall(first_log))
    assert saved_before_kill < EPOCHS, "the run finished before SIGKILL; nothing to resume"

    resumed = subprocess.run(cmd + ["--resume", "True"], capture_output=True, text=True, env=subprocess_env(),
                             cwd=work, timeout=900)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-5000:]
    start = RESUMED.search(log)
    assert start is not None, log[-5000:]
    resumed_epoch = int(start.group(1))
    # at most the interrupted epoch is lost: training restarts right after the last saved epoch
    assert resumed_epoch == saved_before_kill
    saved_after = [int(e) for e in SAVED.findall(log)]
    assert saved_after == list(range(resumed_epoch + 1, EPOCHS + 1))

    import torch

    state = torch.load(state_file, weights_only=True)
    trainer = state["trainer"]  # ignite keeps either the epoch or the iteration count
    epoch = trainer["epoch"] if "epoch" in trainer else trainer["iteration"] // trainer["epoch_length"]
    assert int(epoch) == EPOCHS
    assert {"network", "optimizer", "trainer"} <= set(state)
