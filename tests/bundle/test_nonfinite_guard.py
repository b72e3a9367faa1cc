# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The non-finite guard and the savers' refusal of NaN/Inf weights: a training whose forward pass or optimizer step
goes non-finite stops with a message naming where and which files, and no saver writes a non-finite model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedTrainer

from shared_networks.bundle import AtomicCheckpointSaver, NonFiniteError, NonFiniteGuard, TrainingCheckpoint

FILES = [f"/data/case_{i}/case_{i}-image.nii.gz" for i in range(4)]


class SwitchableNaN(torch.nn.Module):
    """A 1x1x1 convolution whose output turns into NaN while ``nan`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, kernel_size=1)
        self.nan = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * float("nan") if self.nan else y


def _loader() -> DataLoader:
    """Two batches of two cases; every image carries its source file as MONAI's loaders do."""
    generator = torch.Generator().manual_seed(0)
    items = [
        {
            "image": MetaTensor(torch.randn(1, 4, 4, 4, generator=generator), meta={"filename_or_obj": name}),
            "label": torch.randn(1, 4, 4, 4, generator=generator),
        }
        for name in FILES
    ]
    return DataLoader(items, batch_size=2, shuffle=False, num_workers=0)


def _trainer(network: torch.nn.Module, models: Path, max_epochs: int, extra_handlers: list | None = None):
    """A SupervisedTrainer with the bundle's order of handlers: the guard, then the savers (a best-model saver on a
    training metric, and the resumable training checkpoint)."""
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    handlers = [NonFiniteGuard(), *(extra_handlers or [])]
    handlers.append(TrainingCheckpoint(str(models / "checkpoint_last.pt"), network, optimizer))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=_loader(),
        network=network,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
        train_handlers=handlers,
        amp=False,
    )

    @trainer.on(Events.EPOCH_COMPLETED)
    def _score(engine):  # the key metric of the best-model saver
        engine.state.metrics["score"] = float(engine.state.epoch)

    AtomicCheckpointSaver(
        save_dir=str(models), save_dict={"model": network}, save_key_metric=True, key_metric_name="score",
        key_metric_filename="model.pt",
    ).attach(trainer)
    return trainer


def test_nan_forward_stops_training_naming_the_batch_files_and_writes_nothing(tmp_path):
    network = SwitchableNaN()
    network.nan = True
    models = tmp_path / "models"
    trainer = _trainer(network, models, max_epochs=2)
    with pytest.raises(NonFiniteError) as error:
        trainer.run()
    message = str(error.value)
    assert "loss is nan" in message
    assert "epoch 1, iteration 1" in message
    assert FILES[0] in message and FILES[1] in message  # the first batch's two cases
    assert FILES[2] not in message
    assert "image: finite" in message  # the data were fine: the forward pass produced the NaN
    assert trainer.state.iteration == 1  # stopped at the first iteration
    assert not models.exists() or os.listdir(models) == []  # no model.pt, no checkpoint_last.pt


def test_nan_in_second_epoch_keeps_the_finite_files_of_the_first(tmp_path):
    network = SwitchableNaN()
    models = tmp_path / "models"
    trainer = _trainer(network, models, max_epochs=3)

    @trainer.on(Events.EPOCH_STARTED)
    def _diverge(engine):
        network.nan = engine.state.epoch == 2

    with pytest.raises(NonFiniteError, match=r"epoch 2, iteration 3 \(1 of 2 in the epoch\)"):
        trainer.run()
    assert sorted(os.listdir(models)) == ["checkpoint_last.pt", "model.pt"]
    last = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2  # the state of epoch 1
    assert all(torch.isfinite(v).all() for v in last["network"].values())
    best = torch.load(models / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in best.values())


def test_nan_input_is_reported_as_a_data_problem(tmp_path):
    network = SwitchableNaN()
    loader = _loader()
    loader.dataset[3]["image"][0, 1, 1, 1] = float("nan")  # one voxel of the last case
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=loader, network=network, optimizer=optimizer,
        loss_function=torch.nn.MSELoss(), train_handlers=[NonFiniteGuard()], amp=False,
    )
    with pytest.raises(NonFiniteError) as error:
        trainer.run()
    message = str(error.value)
    assert "epoch 1, iteration 2" in message and FILES[3] in message and FILES[2] in message
    assert "image: 1 non-finite values" in message and "input batch holds NaN" in message


def test_non_finite_weights_stop_at_epoch_end_before_any_save(tmp_path):
    """A finite loss but an optimizer step that leaves NaN weights (simulated on the last iteration): the guard
    stops at the end of the epoch, before the checkpoint handlers of that epoch run."""
    network = SwitchableNaN()
    models = tmp_path / "models"
    trainer = _trainer(network, models, max_epochs=1)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _corrupt(engine):
        if engine.state.iteration == 2:
            with torch.no_grad():
                network.conv.weight.fill_(float("inf"))

    with pytest.raises(NonFiniteError) as error:
        trainer.run()
    message = str(error.value)
    assert "after epoch 1, iteration 2" in message
    assert "conv.weight (1 inf of 1 values)" in message
    assert not models.exists() or os.listdir(models) == []


def test_loss_check_on_a_plain_ignite_engine():
    """Engines without MONAI's iteration events are checked at the end of each iteration."""
    losses = iter([1.0, float("inf")])
    engine = Engine(lambda e, batch: {"loss": torch.tensor(next(losses))})
    NonFiniteGuard(network=torch.nn.Linear(1, 1)).attach(engine)
    with pytest.raises(NonFiniteError, match=r"loss is inf at epoch 1, iteration 2"):
        engine.run([0, 1], max_epochs=1)


def test_atomic_checkpoint_saver_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path):
    network = torch.nn.Linear(2, 1)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": network}, save_key_metric=True, key_metric_name="score",
        key_metric_filename="model.pt",
    )
    scores = iter([0.5, 0.9])
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e):
        e.state.metrics["score"] = next(scores)
        if e.state.epoch == 2:  # the better score comes with NaN weights
            with torch.no_grad():
                network.bias.fill_(float("nan"))

    saver.attach(engine)
    with pytest.raises(NonFiniteError) as error:
        engine.run([0], max_epochs=2)
    message = str(error.value)
    assert f"refusing to write '{tmp_path / 'model.pt'}'" in message
    assert "bias (1 NaN of 1 values)" in message
    saved = torch.load(tmp_path / "model.pt", weights_only=True)  # the epoch-1 file, untouched
    assert torch.isfinite(saved["bias"]).all()
    assert os.listdir(tmp_path) == ["model.pt"]


def test_training_checkpoint_refuses_to_save_non_finite_state(tmp_path):
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    path = tmp_path / "checkpoint_last.pt"
    checkpoint = TrainingCheckpoint(str(path), network, optimizer)
    engine = Engine(lambda e, b: None)
    engine.run([0], max_epochs=1)
    checkpoint.save(engine)
    before = path.read_bytes()
    with torch.no_grad():
        network.weight[0, 1] = float("nan")
    with pytest.raises(NonFiniteError) as error:
        checkpoint.save(engine)
    assert f"'{path}'" in str(error.value) and "network.weight (1 NaN of 2 values)" in str(error.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["checkpoint_last.pt"]
