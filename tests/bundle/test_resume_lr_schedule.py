# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Resuming a finished or interrupted run with more epochs continues the configured LR schedule (closed form at the
restored step, computed by hand here) instead of the saved one that ended at learning rate 0."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler

from shared_networks.bundle import CheckpointError, TrainingCheckpoint

ITERATIONS = 3  # per epoch
BASE_LR = 0.1


def _run(
    path: Path,
    epochs: int,
    make_scheduler: Callable[[torch.optim.Optimizer, int], object],
    resume: bool,
    **checkpoint_args,
) -> dict:
    """Trains a tiny network for ``epochs`` epochs of ``ITERATIONS`` iterations with an iteration-level schedule
    built for that length; returns the learning rate seen by every iteration and the weights before/after."""
    torch.manual_seed(0)
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=BASE_LR, momentum=0.9)
    scheduler = make_scheduler(optimizer, epochs * ITERATIONS)
    data = [{"image": torch.randn(4, 2), "label": torch.randn(4, 1)} for _ in range(ITERATIONS)]
    checkpoint = TrainingCheckpoint(str(path), network, optimizer, lr_scheduler=scheduler, resume=resume,
                                    **checkpoint_args)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        epoch_length=ITERATIONS,
        train_data_loader=data,
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        train_handlers=[LrScheduleHandler(scheduler, epoch_level=False, print_lr=False), checkpoint],
        amp=False,
    )
    seen = {"lr": {}, "weights_at_start": None}

    @trainer.on(Events.STARTED)
    def _start(engine):  # registered after the checkpoint's own STARTED handler: sees the restored state
        seen["weights_at_start"] = network.weight.detach().clone()

    @trainer.on(Events.ITERATION_STARTED)
    def _lr(engine):
        seen["lr"][engine.state.iteration] = optimizer.param_groups[0]["lr"]

    trainer.run()
    seen["weights_at_end"] = network.weight.detach().clone()
    seen["scheduler"] = scheduler
    return seen


def _polynomial(optimizer, total):
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=0.9)


def test_polynomial_schedule_is_extended_when_resuming_with_more_epochs(tmp_path, caplog):
    path = tmp_path / "checkpoint_last.pt"
    first = _run(path, epochs=2, make_scheduler=_polynomial, resume=False)
    assert first["scheduler"].get_last_lr()[0] == 0.0  # the first run's schedule ran out

    with caplog.at_level(logging.WARNING):
        resumed = _run(path, epochs=4, make_scheduler=_polynomial, resume=True)
    # iteration t (1-based) runs with the lr after t - 1 scheduler steps: 0.1 * (1 - (t - 1) / 12) ** 0.9
    expected = {t: BASE_LR * (1 - (t - 1) / 12) ** 0.9 for t in range(7, 13)}
    assert expected[7] == pytest.approx(0.1 * 0.5**0.9) and expected[7] > 0
    assert resumed["lr"].keys() == expected.keys()
    for t, lr in expected.items():
        assert resumed["lr"][t] == pytest.approx(lr, rel=1e-6), t
    assert not torch.equal(resumed["weights_at_start"], resumed["weights_at_end"])  # the extra epochs trained
    assert str(path) in caplog.text and "extended from 6 to 12 steps" in caplog.text
    assert f"is now {expected[7]:.6g}" in caplog.text
    assert resumed["scheduler"].total_iters == 12


def test_cosine_schedule_is_extended_when_resuming_with_more_epochs(tmp_path, caplog):
    def cosine(optimizer, total):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=0.001)

    path = tmp_path / "checkpoint_last.pt"
    _run(path, epochs=2, make_scheduler=cosine, resume=False)
    with caplog.at_level(logging.WARNING):
        resumed = _run(path, epochs=3, make_scheduler=cosine, resume=True)
    # after s steps of a 9-step cosine: 0.001 + (0.1 - 0.001) * (1 + cos(pi * s / 9)) / 2
    for t in range(7, 10):
        s = t - 1
        expected = 0.001 + (BASE_LR - 0.001) * (1 + math.cos(math.pi * s / 9)) / 2
        assert resumed["lr"][t] == pytest.approx(expected, rel=1e-6), t
    assert "CosineAnnealingLR schedule was extended from 6 to 9 steps (T_max 6 -> 9" in caplog.text


def test_schedule_without_closed_form_refuses_a_longer_run(tmp_path):
    def one_cycle(optimizer, total):
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=BASE_LR, total_steps=total)

    path = tmp_path / "checkpoint_last.pt"
    _run(path, epochs=2, make_scheduler=one_cycle, resume=False)
    with pytest.raises(ValueError) as error:
        _run(path, epochs=4, make_scheduler=one_cycle, resume=True)
    message = str(error.value)
    assert f"'{path}'" in message and "OneCycleLR" in message and "total_steps 6 -> 12" in message
    assert "no closed form" in message


def test_resume_with_learning_rate_zero_and_iterations_left_is_refused(tmp_path, caplog):
    """A schedule whose length does not follow the number of epochs ends at lr 0; more epochs would not train."""

    def fixed_length(optimizer, total):
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=6, power=0.9)

    path = tmp_path / "checkpoint_last.pt"
    _run(path, epochs=2, make_scheduler=fixed_length, resume=False)
    with pytest.raises(ValueError) as error:
        _run(path, epochs=3, make_scheduler=fixed_length, resume=True)
    message = str(error.value)
    assert f"'{path}'" in message and "learning rate is 0" in message and "3 iterations left" in message

    with caplog.at_level(logging.WARNING):
        resumed = _run(path, epochs=3, make_scheduler=fixed_length, resume=True, allow_zero_lr=True)
    assert "learning rate is 0" in caplog.text
    assert set(resumed["lr"].values()) == {0.0}


def test_resume_from_a_weights_file_points_to_finetune(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 1).state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        _run(path, epochs=1, make_scheduler=_polynomial, resume=True)
    message = str(error.value)
    assert f"'{path}'" in message and "not a training checkpoint" in message and "--finetune True" in message


def test_resume_from_a_non_finite_training_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    _run(path, epochs=1, make_scheduler=_polynomial, resume=False)
    state = torch.load(path, weights_only=True)
    state["network"]["bias"].fill_(float("nan"))
    torch.save(state, path)  # as an older version of the code could have written it
    with pytest.raises(CheckpointError) as error:
        _run(path, epochs=2, make_scheduler=_polynomial, resume=True)
    assert f"'{path}'" in str(error.value) and "network.bias (1 NaN of 1 values)" in str(error.value)
