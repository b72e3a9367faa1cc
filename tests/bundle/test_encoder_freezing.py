# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""EncoderFreezing in a real ignite training loop: the encoder stays bit-identical for N epochs (with AdamW weight
decay, which would move a parameter whose gradient were merely zero), then trains with fresh optimiser state."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.losses import DiceCELoss

from shared_networks.bundle import EncoderFreezing
from shared_networks.nets import SwinUMamba, SwinUMambaD


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


@pytest.mark.parametrize("network_class", [SwinUMamba, SwinUMambaD])
def test_encoder_frozen_for_n_epochs_then_trained(network_class):
    torch.manual_seed(0)
    network = network_class(3, 3, feature_size=8 if network_class is SwinUMamba else 16, depths=(1, 1, 1, 1))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2, weight_decay=0.05)
    images = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 3, (2, 1, 32, 32))
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=4, train_data_loader=[{"image": images, "label": labels}] * 2,
        network=network, optimizer=optimizer, loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        decollate=False,
    )
    EncoderFreezing(network, epochs=2).attach(trainer)
    # as released, the patch embedding (the layer that meets the new modality) is never frozen
    encoder_names = {f"vssm_encoder.{k}" for k in network.vssm_encoder.state_dict() if "patch_embed" not in k}
    encoder_params = [p for n, p in network.named_parameters() if n in encoder_names]
    history = []

    @trainer.on(Events.EPOCH_COMPLETED)
    def record(engine):
        history.append((engine.state.epoch, _changed(snapshots[-1], network),
                        sum(p in optimizer.state for p in encoder_params)))
        snapshots.append(_snapshot(network))

    snapshots = [_snapshot(network)]
    trainer.run()
    (e1, changed1, state1), (e2, changed2, state2), (e3, changed3, state3), (e4, changed4, _) = history
    for changed, state in ((changed1, state1), (changed2, state2)):
        assert not changed & encoder_names  # bit-identical encoder
        assert changed - encoder_names  # the decoder trains
        assert {"vssm_encoder.patch_embed.proj.weight", "vssm_encoder.patch_embed.norm.weight"} <= changed
        assert state == 0  # no moment estimates for frozen tensors
    assert changed3 & encoder_names and changed4 & encoder_names
    assert state3 == len(encoder_params)  # optimiser state starts when unfrozen
    assert all(p.requires_grad for p in network.parameters())


def test_resumed_run_lands_in_the_right_phase_and_bad_arguments():
    network = SwinUMamba(3, 2, feature_size=8, depths=(1, 1, 1, 1))
    handler = EncoderFreezing(network, epochs=10)

    class State:
        epoch = 11

    class Engine:
        state = State()

    network.freeze_encoder()
    handler(Engine())  # resumed after epoch 10
    assert all(p.requires_grad for p in network.parameters())
    Engine.state.epoch = 10
    handler(Engine())
    assert [n for n, p in network.vssm_encoder.named_parameters() if p.requires_grad] == [
        f"patch_embed.{n}" for n, _ in network.vssm_encoder.patch_embed.named_parameters()]
    with pytest.raises(ValueError, match="non-negative"):
        EncoderFreezing(network, epochs=-1)
    with pytest.raises(TypeError, match="freeze_encoder"):
        EncoderFreezing(torch.nn.Linear(2, 2))
