# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
U-Mamba as a network choice of ``bundles/segmamba_brats`` (overlay ``configs/umamba.yaml``): the network of nnU-Net's
BraTS 3d_fullres plan with the January-2024 release's layout and parameter count, nnU-Net's deep-supervision weights
and recipe, U-Mamba_Enc by one changed line, and train / evaluate / inference through ``python -m monai.bundle run`` at
a reduced size, every weighted deep-supervision head trained.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import subprocess_env

from shared_networks.data import generate_brats_phantoms
from shared_networks.nets import UMambaBot, UMambaEnc

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "segmamba_brats"
SMALL = {"features_per_stage": [8, 16, 32, 64], "strides": [1, 2, 2, 2]}
REDUCED = ["--patch_size", "[32,32,32]", "--network_def#features_per_stage", "[8,16,32,64]",
           "--network_def#strides", "[1,2,2,2]", "--num_workers", "0", "--sw_batch_size", "1"]


def _parsed(configs: list[str]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in configs])
    parser["bundle_root"] = "."
    return parser


@pytest.mark.parametrize("base", ["train.yaml", "inference.yaml"])
def test_overlay_builds_the_planned_umamba_bot_and_enc_by_one_line(base):
    parser = _parsed([base, "umamba.yaml"])
    with torch.device("meta"):
        bot = parser.get_parsed_content("network_def")
        parser["network_def"]["_target_"] = "shared_networks.nets.UMambaEnc"
        enc = parser.get_parsed_content("network_def", lazy=False)
    assert type(bot) is UMambaBot and sum(p.numel() for p in bot.parameters()) == 58_410_964
    assert type(enc) is UMambaEnc and sum(p.numel() for p in enc.parameters()) == 59_684_564
    keys = bot.state_dict().keys()
    assert {"ln.weight", "mamba.A_log", "decoder.encoder.stem.convs.0.conv.weight"} <= keys
    assert len([k for k in keys if k.startswith("decoder.seg_layers.") and k.endswith(".weight")]) == 5


def test_overlay_sets_nnunets_recipe():
    parser = _parsed(["train.yaml", "umamba.yaml"])
    loss = parser.get_parsed_content("loss")
    assert loss.weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 1e-2
    assert optimizer.defaults["momentum"] == 0.99 and optimizer.defaults["nesterov"]
    assert optimizer.defaults["weight_decay"] == 3e-5 and parser.get_parsed_content("batch_size") == 2
    # a smaller plan keeps one weight per head
    parser["network_def"]["features_per_stage"] = SMALL["features_per_stage"]
    assert parser.get_parsed_content("loss", lazy=False).weights == pytest.approx([2 / 3, 1 / 3, 0.0])


def _run(configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    config = "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *REDUCED,
                             *overrides], cwd=BUNDLE, capture_output=True, text=True, timeout=600,
                            env=subprocess_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_evaluate_infer_with_umamba(tmp_path):
    data = tmp_path / "BraTS"
    generate_brats_phantoms(data, num_cases=6, shape=(32, 32, 32), seed=3)
    root = tmp_path / "run"
    torch.manual_seed(0)
    small = {"spatial_dims": 3, "in_channels": 4, "out_channels": 4, **SMALL, "deep_supervision": True}
    initial = UMambaBot(**small).state_dict()
    (root / "models").mkdir(parents=True)
    torch.save(initial, root / "models" / "initial.pt")
    common = ["--dataset_dir", str(data), "--bundle_root", str(root)]
    _run(["train.yaml", "umamba.yaml"], *common, "--epochs", "1", "--iterations_per_epoch", "2", "--batch_size", "2",
         "--val_interval", "1", "--finetune", "True", "--finetune_model_path", str(root / "models" / "initial.pt"))
    trained = torch.load(root / "models" / "model.pt", weights_only=True)
    UMambaBot(**small).load_state_dict(trained, strict=True)
    # the release numbers the heads from the lowest resolution (decoder.seg_layers.0) up: the full-resolution and the
    # next head (weights 2/3, 1/3) learnt; the lowest one (weight 0, as in nnU-Net) moved only by the weight decay
    # (lr 1e-2 x 3e-5 per step, relative)
    def relative_change(i: int) -> float:
        before, after = initial[f"decoder.seg_layers.{i}.weight"], trained[f"decoder.seg_layers.{i}.weight"]
        return float((after - before).norm() / before.norm())

    changes = [relative_change(i) for i in range(3)]
    assert changes[2] > 1e-4 and changes[1] > 1e-4 and changes[0] < 1e-5, changes
    assert not torch.equal(trained["mamba.A_log"], initial["mamba.A_log"])

    result = _run(["train.yaml", "umamba.yaml", "evaluate.yaml"], *common)
    assert f"Restored all variables from {root / 'models' / 'model.pt'}" in result.stdout + result.stderr
    assert (root / "eval" / "metrics_summary.json").is_file()
    out = tmp_path / "segmentations"
    _run(["inference.yaml", "umamba.yaml"], *common, "--output_dir", str(out))
    for case in sorted(p.name for p in data.iterdir()):
        source = nib.load(data / case / f"{case}-t1n.nii.gz")
        segmentation = nib.load(out / case / f"{case}_seg.nii.gz")
        assert segmentation.shape == source.shape
        np.testing.assert_allclose(segmentation.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(segmentation.dataobj))) <= {0, 1, 2, 3}
