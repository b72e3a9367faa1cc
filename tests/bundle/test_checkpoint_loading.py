# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Loading weights from the files users actually pass: the right outcome for each kind of wrong checkpoint, and a
message that names the file and says what it is."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.networks.nets import UNet

from shared_networks.bundle import (
    CheckpointError,
    SafeCheckpointLoader,
    TrainingCheckpoint,
    load_checkpoint_into,
    load_network_weights,
    read_checkpoint,
)
from shared_networks.nets import SegMamba

TINY = {"in_channels": 4, "out_channels": 4, "feature_sizes": (8, 16, 32, 64), "hidden_size": 32}


def _segmamba(mode: str = "release", seed: int = 0, **overrides) -> SegMamba:
    torch.manual_seed(seed)
    return SegMamba(**{**TINY, **overrides}, mode=mode)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def release_weights(tmp_path_factory) -> tuple[Path, SegMamba]:
    """A release-mode SegMamba (seed 1) and its state dict file."""
    network = _segmamba(seed=1)
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.save(network.state_dict(), path)
    return path, network


def test_paper_mode_weights_into_release_mode(tmp_path):
    path = tmp_path / "paper_model.pt"
    torch.save(_segmamba("paper").state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_network_weights(_segmamba("release"), path)
    message = str(error.value)
    assert f"'{path}'" in message and "does not fit the network SegMamba" in message
    assert "keys are missing from the file" in message and "keys are not in the network" in message
    assert "different network or configuration" in message
    assert len(message) < 1500  # one short message, not a wall of keys


def test_other_network_weights(tmp_path):
    path = tmp_path / "unet.pt"
    torch.save(UNet(3, 4, 4, channels=(8, 16), strides=(2,)).state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_network_weights(_segmamba(), path)
    message = str(error.value)
    assert f"'{path}'" in message
    expected_keys = len(_segmamba().state_dict())
    assert f"{expected_keys} of the network's {expected_keys} keys are missing" in message
    assert "'model.0.conv.weight'" in message  # an example of the UNet's keys
    assert "different network or configuration" in message


def test_other_number_of_channels_is_a_shape_mismatch(tmp_path):
    path = tmp_path / "three_classes.pt"
    torch.save(_segmamba(out_channels=3).state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_network_weights(_segmamba(), path)
    message = str(error.value)
    assert f"'{path}'" in message and "differ in shape" in message
    assert "file (3," in message and "network (4," in message


def test_training_checkpoint_as_model_loads_its_network(tmp_path, caplog):
    network = _segmamba(seed=2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
    path = tmp_path / "checkpoint_last.pt"
    engine = Engine(lambda e, b: None)
    engine.run([0], max_epochs=1)
    TrainingCheckpoint(str(path), network, optimizer).save(engine)  # the file the bundle writes every epoch

    target = _segmamba(seed=3)
    with caplog.at_level(logging.INFO):
        load_network_weights(target, path)
    assert _same_weights(target, network)
    assert f"'{path}' is a training checkpoint" in caplog.text and "'network' entry" in caplog.text


def test_ddp_module_prefix_is_stripped(tmp_path, release_weights, caplog):
    _, source = release_weights
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    target = _segmamba()
    with caplog.at_level(logging.INFO):
        load_network_weights(target, path)
    assert _same_weights(target, source)
    assert str(path) in caplog.text and "stripped the 'module.' prefix" in caplog.text


def test_text_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("placeholder: the weights are on the release page\n")
    with pytest.raises(CheckpointError, match="text file") as error:
        load_network_weights(_segmamba(), path)
    assert f"'{path}'" in str(error.value) and "not a PyTorch checkpoint" in str(error.value)


def test_empty_file(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)") as error:
        load_network_weights(_segmamba(), path)
    assert f"'{path}'" in str(error.value)


def test_truncated_file(tmp_path, release_weights):
    source, _ = release_weights
    path = tmp_path / "model.pt"
    path.write_bytes(source.read_bytes()[:4096])  # an interrupted copy
    with pytest.raises(CheckpointError, match="truncated") as error:
        read_checkpoint(path)
    assert f"'{path}'" in str(error.value)


def test_missing_file(tmp_path):
    path = tmp_path / "models" / "model.pt"
    with pytest.raises(FileNotFoundError) as error:
        load_network_weights(_segmamba(), path)
    assert f"'{path}' does not exist" in str(error.value)


def test_pickle_with_a_custom_class_is_refused_without_running_it(tmp_path):
    """The file is written by another process from a class of its own ``__main__``; loading must refuse it (and not
    run it), explain why, and say how to re-save the weights."""
    path = tmp_path / "model.pt"
    marker = tmp_path / "code_ran"
    code = (
        "import torch\n"
        "class Payload:\n"
        f"    def __reduce__(self): return (open, ({str(marker)!r}, 'w'))\n"
        "class Wrapped:\n"
        "    def __init__(self): self.weights = {'w': torch.ones(2)}; self.payload = Payload()\n"
        f"torch.save({{'model': Wrapped()}}, {str(path)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with pytest.raises(CheckpointError) as error:
        load_network_weights(_segmamba(), path)
    message = str(error.value)
    assert f"'{path}'" in message
    assert "__main__.Wrapped" in message and "weights_only=True" in message
    assert "state dict" in message and "state_dict()" in message
    assert not marker.exists()


def test_plain_pickle_is_not_a_torch_file(tmp_path, release_weights):
    _, source = release_weights
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump({k: v.numpy() for k, v in source.state_dict().items()}, f, protocol=4)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert f"'{path}'" in message and "plain Python pickle" in message and "torch.save" in message


def test_nan_state_dict_is_refused(tmp_path, release_weights):
    _, source = release_weights
    state = {k: v.clone() for k, v in source.state_dict().items()}
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 3)
    state[name].view(-1)[:3] = float("nan")
    path = tmp_path / "model.pt"
    torch.save(state, path)
    target = _segmamba(seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        load_network_weights(target, path)
    message = str(error.value)
    assert f"'{path}'" in message and f"{name} (3 NaN of" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing was loaded


def test_strict_false_loads_the_matching_keys_with_a_warning(tmp_path, caplog):
    source = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    path = tmp_path / "partial.pt"
    torch.save({"0.weight": source[0].weight.detach(), "0.bias": source[0].bias.detach(), "extra": torch.ones(1)}, path)
    target = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    with caplog.at_level(logging.WARNING):
        load_network_weights(target, path, strict=False)
    assert torch.equal(target[0].weight, source[0].weight)
    assert "2 network keys were not in the file" in caplog.text and "1 file keys were ignored" in caplog.text


def test_several_entries_load_network_and_optimizer(tmp_path):
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.3, momentum=0.9)
    network(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    path = tmp_path / "both.pt"
    torch.save({"net": network.state_dict(), "opt": optimizer.state_dict()}, path)

    target = torch.nn.Linear(2, 1)
    target_optimizer = torch.optim.SGD(target.parameters(), lr=0.01, momentum=0.9)
    load_checkpoint_into({"net": target, "opt": target_optimizer}, path)
    assert torch.equal(target.weight, network.weight)
    assert target_optimizer.param_groups[0]["lr"] == 0.3
    with pytest.raises(CheckpointError, match=r"lacks the entries 'lr'") as error:
        load_checkpoint_into({"net": target, "lr": target_optimizer}, path)
    assert f"'{path}'" in str(error.value)


def test_handler_loads_on_start_and_names_the_file_on_error(tmp_path, release_weights, caplog):
    path, source = release_weights
    target = _segmamba(seed=7)
    engine = Engine(lambda e, b: None)
    SafeCheckpointLoader(load_path=str(path), load_dict={"model": target}, strict=True, map_location="cpu").attach(
        engine
    )
    with caplog.at_level(logging.INFO):
        engine.run([0], max_epochs=1)
    assert _same_weights(target, source)
    assert f"Restored all variables from {path}" in caplog.text

    bad = tmp_path / "bad.pt"
    bad.write_text("not weights")
    engine = Engine(lambda e, b: None)
    SafeCheckpointLoader(load_path=str(bad), load_dict={"model": target}).attach(engine)
    with pytest.raises(CheckpointError, match="text file") as error:
        engine.run([0], max_epochs=1)
    assert f"'{bad}'" in str(error.value)
