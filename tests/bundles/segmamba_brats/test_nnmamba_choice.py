# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
nnMamba as a network choice of ``bundles/segmamba_brats`` (overlays ``configs/nnmamba.yaml`` and
``configs/nnmamba_paper.yaml``): the configured networks have the released parameter counts and key layouts, the
recipes are the released and the paper's, and train / evaluate / inference run through ``python -m monai.bundle run``
at a reduced size, with every deep-supervision head trained.
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
from shared_networks.nets import nnMambaSeg

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "segmamba_brats"
REDUCED = ["--patch_size", "[32,32,32]", "--network_def#feature_size", "16", "--network_def#blocks", "1",
           "--num_workers", "0", "--sw_batch_size", "1"]


def _parsed(configs: list[str]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in configs])
    return parser


@pytest.mark.parametrize("base", ["train.yaml", "inference.yaml"])
def test_overlays_build_the_released_and_the_paper_networks(base):
    release = _parsed([base, "nnmamba.yaml"]).get_parsed_content("network_def")
    assert isinstance(release, nnMambaSeg) and sum(p.numel() for p in release.parameters()) == 15_859_266
    keys = release.state_dict().keys()
    assert {"ds1_cls_conv.weight", "ds2_cls_conv.weight", "ds3_cls_conv.weight"} <= keys
    paper = _parsed([base, "nnmamba.yaml", "nnmamba_paper.yaml"]).get_parsed_content("network_def")
    assert sum(p.numel() for p in paper.parameters()) == 15_945_270
    assert not any(k.startswith("ds") for k in paper.state_dict())


def test_overlays_set_the_released_and_the_paper_recipes():
    release = _parsed(["train.yaml", "nnmamba.yaml"])
    release["bundle_root"] = "."
    optimizer = release.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 1e-4
    assert optimizer.defaults["momentum"] == 0.99 and optimizer.defaults["nesterov"]
    loss = release.get_parsed_content("loss")
    assert loss.weights == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    assert release.get_parsed_content("batch_size") == 5 and release.get_parsed_content("amp") is False
    paper = _parsed(["train.yaml", "nnmamba.yaml", "nnmamba_paper.yaml"])
    optimizer = paper.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["lr"] == 2e-3 and optimizer.defaults["weight_decay"] == 1e-3
    assert paper.get_parsed_content("batch_size") == 2


def _run(configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    config = "[" + ",".join(f"'configs/{c}'" for c in configs) + "]"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *REDUCED,
                             *overrides], cwd=BUNDLE, capture_output=True, text=True, timeout=600,
                            env=subprocess_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_evaluate_infer_with_nnmamba(tmp_path):
    data = tmp_path / "BraTS"
    generate_brats_phantoms(data, num_cases=6, shape=(32, 32, 32), seed=3)
    root = tmp_path / "run"
    torch.manual_seed(0)
    initial = nnMambaSeg(4, 4, feature_size=16, blocks=1, mamba_layer="nnunet", deep_supervision=True).state_dict()
    (root / "models").mkdir(parents=True)
    torch.save(initial, root / "models" / "initial.pt")
    common = ["--dataset_dir", str(data), "--bundle_root", str(root)]
    _run(["train.yaml", "nnmamba.yaml"], *common, "--epochs", "1", "--iterations_per_epoch", "2", "--batch_size", "2",
         "--val_interval", "1", "--finetune", "True", "--finetune_model_path", str(root / "models" / "initial.pt"))
    trained = torch.load(root / "models" / "model.pt", weights_only=True)
    nnMambaSeg(4, 4, feature_size=16, blocks=1, mamba_layer="nnunet", deep_supervision=True).load_state_dict(
        trained, strict=True)
    # the deep-supervision loss reaches every head: each one moved from the initial weights
    for head in ("ds1_cls_conv", "ds2_cls_conv", "ds3_cls_conv", "conv8.conv.0"):
        changed = [k for k in trained if k.startswith(head) and not torch.equal(trained[k], initial[k])]
        assert changed, head

    result = _run(["train.yaml", "nnmamba.yaml", "evaluate.yaml"], *common)
    assert f"Restored all variables from {root / 'models' / 'model.pt'}" in result.stdout + result.stderr
    assert (root / "eval" / "metrics_summary.json").is_file()
    out = tmp_path / "segmentations"
    _run(["inference.yaml", "nnmamba.yaml"], *common, "--output_dir", str(out))
    for case in sorted(p.name for p in data.iterdir()):
        source = nib.load(data / case / f"{case}-t1n.nii.gz")
        segmentation = nib.load(out / case / f"{case}_seg.nii.gz")
        assert segmentation.shape == source.shape
        np.testing.assert_allclose(segmentation.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(segmentation.dataobj))) <= {0, 1, 2, 3}
