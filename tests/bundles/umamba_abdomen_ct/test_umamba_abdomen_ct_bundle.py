# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
``bundles/umamba_abdomen_ct``: the network of the shipped nnU-Net plan (U-Mamba_Bot, U-Mamba_Enc by one line), the
plan's normalisation against nnU-Net's CT formula by hand, the checks that stop a run whose plan or network does not
fit, and train / evaluate / inference through ``python -m monai.bundle run`` at a reduced size on synthetic CT in
nnU-Net raw format (per-organ DSC / NSD tables, label maps on the input's grid).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import subprocess_env

from shared_networks.data import ABDOMEN_ORGAN_LABELS, generate_abdomen_ct_phantoms
from shared_networks.nets import UMambaBot, UMambaEnc
from shared_networks.planning import (
    NNUNetNormalized,
    check_network_matches_plan,
    check_plan_fits_dataset,
    configuration_summary,
)

BUNDLE = Path(__file__).resolve().parents[3] / "bundles" / "umamba_abdomen_ct"
PLANS = BUNDLE / "plans" / "nnUNetPlans.json"
ORGANS = [name for name in ABDOMEN_ORGAN_LABELS if name != "background"]
REDUCED = ["--network_def#features_per_stage", "[8,16,32,64,64]", "--patch_size", "[16,32,32]", "--num_workers", "0",
           "--sw_batch_size", "1", "--plans_path", str(PLANS)]


def _parsed(*configs: str):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / config) for config in configs])
    parser["plans_path"] = str(PLANS)
    parser["bundle_root"] = str(BUNDLE)
    return parser


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_network_is_the_plans_and_enc_is_one_line(config):
    parser = _parsed(config)
    bot = parser.get_parsed_content("network_def")
    assert type(bot) is UMambaBot and sum(p.numel() for p in bot.parameters()) == 32_321_432
    plan = parser.get_parsed_content("plan")
    check_network_matches_plan(bot, plan, PLANS, num_classes=14)  # the literal values are the plan's
    parser["network_def"]["_target_"] = "shared_networks.nets.UMambaEnc"
    enc = parser.get_parsed_content("network_def", lazy=False)
    assert type(enc) is UMambaEnc and sum(p.numel() for p in enc.parameters()) == 32_919_192
    assert parser.get_parsed_content("patch_size") == [32, 64, 64]  # plan order (after Transposed)
    assert parser.get_parsed_content("spacing") == [1.5, 1.5, 3.0]  # MONAI order


def test_network_that_does_not_fit_the_plan_is_stopped_with_the_overrides(caplog):
    plan = configuration_summary(PLANS, "3d_fullres")
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 14, "kernel_sizes": 3,
              "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
              "features_per_stage": [8, 16, 32, 64, 64]}
    with torch.device("meta"):
        with pytest.raises(ValueError, match=r"kernel_sizes.*--network_def#kernel_sizes '\[\[1,3,3\],\[3,3,3\]"):
            check_network_matches_plan(UMambaBot(**kwargs), plan, PLANS, num_classes=14)
        kwargs["kernel_sizes"] = [[1, 3, 3]] + [[3, 3, 3]] * 4
        with pytest.raises(ValueError, match="out_channels: 14 instead of 6"):
            check_network_matches_plan(UMambaBot(**kwargs), plan, PLANS, num_classes=6)
        check_network_matches_plan(UMambaBot(**kwargs), plan, PLANS, num_classes=14)  # narrower: a warning only
    assert "features_per_stage ([8, 16, 32, 64, 64] instead of [32, 64, 128, 256, 320])" in caplog.text


def test_plan_of_another_dataset_is_stopped(tmp_path):
    plan = configuration_summary(PLANS, "3d_fullres")
    data = tmp_path / "Dataset701_AbdomenCT"
    generate_abdomen_ct_phantoms(data, num_cases=1, num_test_cases=0, shape=(16, 16, 16))
    with pytest.raises(ValueError, match="made for dataset 'Dataset901_AbdomenCTPhantom', not 'Dataset701_AbdomenCT'.*"
                                         "shared_networks.planning.nnunet plan"):
        check_plan_fits_dataset(plan, PLANS, data)
    check_plan_fits_dataset(plan, PLANS, data, same_dataset=False)
    check_plan_fits_dataset(plan, PLANS, data, same_dataset="false")  # as text, e.g. from an --args_file
    with pytest.raises(ValueError, match="but the network predicts"):
        check_plan_fits_dataset(plan, PLANS, data, same_dataset=False, label_names=["background", "liver"])
    dataset_json = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**dataset_json, "channel_names": {"0": "CT", "1": "PET"}}))
    with pytest.raises(ValueError, match=r"normalise 1 input channel\(s\), but dataset .* has 2"):
        check_plan_fits_dataset(plan, PLANS, data, same_dataset=False)


def test_normalisation_is_nnunets_ct_formula_by_hand():
    plan = configuration_summary(PLANS, "3d_fullres")
    properties = json.loads(PLANS.read_text())["foreground_intensity_properties_per_channel"]["0"]
    lower, upper = properties["percentile_00_5"], properties["percentile_99_5"]
    image = torch.linspace(-1200.0, 1500.0, 2 * 3 * 4 * 5).reshape(1, 3, 4, 10)
    expected = (np.clip(image.numpy().astype(np.float64), lower, upper) - properties["mean"]) / properties["std"]
    out = NNUNetNormalized("image", plan)({"image": image})["image"]
    np.testing.assert_allclose(np.asarray(out, dtype=np.float64), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2 channels"):
        NNUNetNormalized("image", plan)({"image": torch.zeros(2, 4, 4, 4)})


def _run(configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    config = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *REDUCED,
                             *overrides], cwd=BUNDLE, capture_output=True, text=True, timeout=600,
                            env=subprocess_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_evaluate_infer(tmp_path):
    data = tmp_path / "nnUNet_raw" / "Dataset901_AbdomenCTPhantom"  # the dataset the shipped plan was made for
    generate_abdomen_ct_phantoms(data, num_cases=5, num_test_cases=2, shape=(32, 32, 16), seed=4)
    root = tmp_path / "run"
    common = ["--dataset_dir", str(data), "--bundle_root", str(root)]
    result = _run(["configs/train.yaml"], *common, "--epochs", "1", "--iterations_per_epoch", "2", "--batch_size",
                  "1", "--val_interval", "1")
    assert "Wrote datalist" in result.stdout + result.stderr
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    UMambaBot(3, 1, 14, features_per_stage=[8, 16, 32, 64, 64], kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * 4,
              strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
              deep_supervision=True).load_state_dict(state, strict=True)

    out = tmp_path / "eval"
    _run(["configs/train.yaml", "configs/evaluate.yaml"], *common, "--output_dir", str(out))
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2
    for metric in ("organ_dice", "organ_nsd"):
        assert list(summary["metrics"][metric]) == ORGANS
        values = [v for v in summary["metrics"][metric].values() if v is not None]
        assert values and all(0.0 <= v <= 1.0 for v in values)
        with open(out / f"{metric}_raw.csv") as f:
            assert len(list(csv.DictReader(f))) == 2

    segmentations = tmp_path / "segmentations"
    _run(["configs/inference.yaml"], "--dataset_dir", str(data), "--ckpt_dir", str(root / "models"),
         "--output_dir", str(segmentations), "--patch_size", "[16,32,32]")
    for case in ("phantom_005", "phantom_006"):  # the imagesTs cases, named as nnU-Net names its predictions
        source = nib.load(data / "imagesTs" / f"{case}_0000.nii.gz")
        segmentation = nib.load(segmentations / f"{case}.nii.gz")
        assert segmentation.shape == source.shape and segmentation.get_data_dtype() == np.uint8
        np.testing.assert_allclose(segmentation.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(segmentation.dataobj))) <= set(range(14))


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_2d_overlay_is_the_plans_2d_configuration(config):
    from shared_networks.nets import umamba_from_plans

    parser = _parsed(config, "2d.yaml")
    net = parser.get_parsed_content("network_def")
    plan = parser.get_parsed_content("plan")
    assert plan.name == "2d" and type(net) is UMambaBot
    check_network_matches_plan(net, plan, PLANS, num_classes=14)
    reference = umamba_from_plans(json.loads(PLANS.read_text()), "2d", 1, 14, variant="bot", deep_supervision=True)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())
    assert list(net.state_dict()) == list(reference.state_dict())
    # in plane only: the slice spacing of each file is kept (0); the volume's slice axis (MONAI axis 2) goes first
    assert parser.get_parsed_content("spacing") == [1.5, 1.5, 0.0]
    assert parser.get_parsed_content("patch_size") == [64, 64]
    assert type(parser.get_parsed_content("inferer")).__name__ == "SliceInferer"


def _slice_by_slice_labels(net: torch.nn.Module, image_path: Path) -> np.ndarray:
    """The labels of the 2D configuration computed by hand for a phantom stored with affine diag(-1.5, -1.5, 3): RAS
    flips the first two axes, the spacing is already the plan's, nnU-Net's CT normalisation, then every axial slice
    (plan order: slice axis k, then j, i) through the network on its own."""
    plan = configuration_summary(PLANS, "2d")
    properties = json.loads(PLANS.read_text())["foreground_intensity_properties_per_channel"]["0"]
    image = np.asarray(nib.load(image_path).dataobj, dtype=np.float64)[::-1, ::-1, :]
    image = (np.clip(image, properties["percentile_00_5"], properties["percentile_99_5"]) - properties["mean"]) / (
        properties["std"])
    assert plan.volume_transpose_indices == (0, 3, 2, 1)
    labels = np.zeros(image.shape, dtype=np.uint8)
    with torch.no_grad():
        for k in range(image.shape[2]):
            slice_plan_order = torch.as_tensor(image[:, :, k].T.copy(), dtype=torch.float32)[None, None]
            labels[:, :, k] = net(slice_plan_order)[0].argmax(0).numpy().T
    return labels[::-1, ::-1, :]


@pytest.mark.slow
def test_2d_train_evaluate_infer_slice_by_slice(tmp_path):
    data = tmp_path / "nnUNet_raw" / "Dataset901_AbdomenCTPhantom"
    generate_abdomen_ct_phantoms(data, num_cases=4, num_test_cases=1, shape=(32, 32, 16), seed=5)
    root = tmp_path / "run"
    common = ["--dataset_dir", str(data), "--bundle_root", str(root), "--patch_size", "[32,32]",
              "--network_def#features_per_stage", "[8,16,32,64,64]"]
    _run(["configs/train.yaml", "configs/2d.yaml"], *common, "--epochs", "1", "--iterations_per_epoch", "2",
         "--batch_size", "2", "--val_interval", "1")
    net = UMambaBot(2, 1, 14, features_per_stage=[8, 16, 32, 64, 64], kernel_sizes=3,
                    strides=[[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], deep_supervision=True)
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True), strict=True)
    net.eval()

    out = tmp_path / "eval"
    _run(["configs/train.yaml", "configs/2d.yaml", "configs/evaluate.yaml"], *common, "--output_dir", str(out))
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 1 and list(summary["metrics"]["organ_nsd"]) == ORGANS

    segmentations = tmp_path / "segmentations"
    _run(["configs/inference.yaml", "configs/2d.yaml"], "--dataset_dir", str(data), "--ckpt_dir",
         str(root / "models"), "--output_dir", str(segmentations), "--patch_size", "[32,32]",
         "--network_def#features_per_stage", "[8,16,32,64,64]")
    source_path = data / "imagesTs" / "phantom_004_0000.nii.gz"
    source, segmentation = nib.load(source_path), nib.load(segmentations / "phantom_004.nii.gz")
    assert segmentation.shape == source.shape
    np.testing.assert_allclose(segmentation.affine, source.affine, atol=1e-4)
    # one 32 x 32 window per 32 x 32 slice: the bundle's labels are the network's on each slice by hand
    expected = _slice_by_slice_labels(net, source_path)
    assert len(np.unique(expected)) > 1
    np.testing.assert_array_equal(np.asarray(segmentation.dataobj), expected)
