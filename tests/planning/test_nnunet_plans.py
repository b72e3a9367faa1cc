# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""nnU-Net v2 plans (shared_networks.planning.nnunet): plans files in both formats, as nnU-Net 2.2.1 and 2.8.1 wrote
them for the fingerprints of docs/planning.md, read unchanged and summarised in MONAI axis order (also for a
transposed plan); U-Mamba networks built from them run the planned patch; bad files give errors naming the file and
the key; the MONAI normalisation equals nnU-Net's. Planning itself calls nnU-Net's code: those tests run only where
``nnunetv2`` is importable or $SHARED_NETWORKS_NNUNET_PYTHON names an interpreter that has it."""

import copy
import json
import os
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from shared_networks.nets import umamba_from_plans
from shared_networks.planning import (
    NNUNET_PYTHON_ENV_VAR,
    PLANNING_INSTALL_COMMAND,
    PlansError,
    configuration_summary,
    plan_nnunet_dataset,
    plan_nnunet_fingerprint,
    read_nnunet_plans,
    write_demo_raw_dataset,
)
from shared_networks.planning import nnunet as planning

# ---------------------------------------------------------------------------------------------------------------------
# plans files as nnU-Net wrote them (the resampling entries and the architecture boilerplate are the same in every
# configuration, so they are added by helpers; the result is key for key the file nnU-Net wrote)

_RESAMPLING = {
    "resampling_fn_data": "resample_data_or_seg_to_shape",
    "resampling_fn_seg": "resample_data_or_seg_to_shape",
    "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
    "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
    "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
    "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
}


def _config(identifier, batch, patch, median, spacing, schemes, **network):
    return {"data_identifier": f"nnUNetPlans_{identifier}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": batch, "patch_size": patch, "median_image_size_in_voxels": median, "spacing": spacing,
            "normalization_schemes": schemes, "use_mask_for_norm": [False] * len(schemes), **network}


def _old_network(kernels, strides, max_features):
    """The network keys of nnU-Net 2.1-2.2 (PlainConvUNet)."""
    n = len(kernels)
    return {"UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 32, "n_conv_per_stage_encoder": [2] * n,
            "n_conv_per_stage_decoder": [2] * (n - 1),
            "num_pool_per_axis": [sum(s[a] == 2 for s in strides) for a in range(len(kernels[0]))],
            "pool_op_kernel_sizes": strides, "conv_kernel_sizes": kernels, "unet_max_num_features": max_features}


def _new_network(kernels, strides):
    """The ``architecture`` dict of nnU-Net >= 2.3 (PlainConvUNet)."""
    n, dims = len(kernels), len(kernels[0])
    return {"architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": n, "features_per_stage": [min(32 * 2**i, 512 if dims == 2 else 320)
                                                              for i in range(n)],
                        "conv_op": f"torch.nn.modules.conv.Conv{dims}d", "kernel_sizes": kernels, "strides": strides,
                        "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dims}d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}


def _plans(name, median_spacing, median_shape, forward, configurations, properties):
    return {"dataset_name": name, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": median_spacing,
            "original_median_shape_after_transp": median_shape, "image_reader_writer": "SimpleITKIO",
            "transpose_forward": forward, "transpose_backward": [forward.index(i) for i in range(3)],
            "configurations": configurations, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": properties}}


def _props(mean, std, low, high, **extra):
    return {"mean": mean, "std": std, "median": extra.get("median", mean), "min": extra.get("min", low - 100.0),
            "max": extra.get("max", high + 100.0), "percentile_00_5": low, "percentile_99_5": high}


K2, S2 = [3, 3], [2, 2]
# nnU-Net 2.2.1, ExperimentPlanner, 8 GB, on ABDOMEN_CT_FINGERPRINT (50 CT cases of 2.5-5 x 0.7-0.88 mm)
ABDOMEN_CT_PLANS_2_2 = _plans("Dataset999_Fingerprint", [2.5, 0.78, 0.78], [96, 424, 512], [0, 1, 2], {
    "2d": {**_config("2d", 14, [448, 512], [424.0, 512.0], [0.78, 0.78], ["CTNormalization"],
                     **_old_network([K2] * 7, [[1, 1]] + [S2] * 6, 512)), **_RESAMPLING, "batch_dice": True},
    "3d_lowres": {**_config("3d_lowres", 2, [64, 160, 224], [100, 264, 319],
                            [2.5, 1.2516710224970549, 1.2516710224970549], ["CTNormalization"],
                            **_old_network([[3, 3, 3]] * 6, [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]], 320)),
                  **_RESAMPLING, "batch_dice": False, "next_stage": "3d_cascade_fullres"},
    "3d_fullres": {**_config("3d_fullres", 2, [48, 192, 224], [100.0, 424.0, 512.0], [2.5, 0.78, 0.78],
                             ["CTNormalization"],
                             **_old_network([[1, 3, 3]] + [[3, 3, 3]] * 5,
                                            [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 3 + [[1, 2, 2]], 320)),
                   **_RESAMPLING, "batch_dice": True},
    "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
}, _props(88.9, 50.2, -57.0, 250.0))
# nnU-Net 2.8.1, ExperimentPlanner, 8 GB, on write_demo_raw_dataset() (4 cases, NIfTI 64 x 64 x 32, 1 x 1 x 2.5 mm)
DEMO_PLANS_2_8 = _plans("Dataset999_Demo", [2.5, 1.0, 1.0], [32, 64, 64], [0, 1, 2], {
    "2d": {**_config("2d", 6, [64, 64], [64.0, 64.0], [1.0, 1.0], ["CTNormalization"]), **_RESAMPLING,
           **_new_network([K2] * 5, [[1, 1]] + [S2] * 4), "batch_dice": True},
    "3d_fullres": {**_config("3d_fullres", 2, [32, 64, 64], [32.0, 64.0, 64.0], [2.5, 1.0, 1.0],
                             ["CTNormalization"]), **_RESAMPLING,
                   **_new_network([[1, 3, 3]] + [[3, 3, 3]] * 4, [[1, 1, 1], [1, 2, 2]] + [[2, 2, 2]] * 3),
                   "batch_dice": False},
}, _props(64.53787994384766, 25.454105377197266, 22.0, 176.0, median=61.0, min=1.0, max=228.0))
# nnU-Net 2.8.1, ExperimentPlanner, 8 GB, on SAGITTAL_FINGERPRINT: the 4 mm axis is the first NIfTI axis, the last of
# nnU-Net's reader order, so the planner transposes (transpose_forward [2, 0, 1])
SAGITTAL_PLANS_2_8 = _plans("Dataset999_Fingerprint", [4.0, 0.8, 0.8], [40, 256, 224], [2, 0, 1], {
    "2d": {**_config("2d", 20, [256, 224], [256.0, 224.0], [0.8, 0.8], ["ZScoreNormalization"]), **_RESAMPLING,
           **_new_network([K2] * 6, [[1, 1]] + [S2] * 5), "batch_dice": True},
    "3d_fullres": {**_config("3d_fullres", 2, [40, 224, 192], [40.0, 256.0, 224.0], [4.0, 0.8, 0.8],
                             ["ZScoreNormalization"]), **_RESAMPLING,
                   **_new_network([[1, 3, 3]] * 2 + [[3, 3, 3]] * 4, [[1, 1, 1]] + [[1, 2, 2]] * 2 + [[2, 2, 2]] * 3),
                   "batch_dice": False},
}, _props(300.0, 150.0, 20.0, 1100.0, min=0.0, max=1200.0))

# the fingerprints (nnU-Net's reader order: NIfTI axes reversed) and dataset.json of the plans above
_CT_CASES = [(2.5, 0.78, 100), (2.5, 0.7, 110), (5.0, 0.82, 50), (2.5, 0.88, 96), (3.0, 0.74, 83)]
ABDOMEN_CT_FINGERPRINT = {
    "spacings": [[z, xy, xy] for _ in range(10) for z, xy, _n in _CT_CASES],
    "shapes_after_crop": [[n, 420 + 4 * (i % 4), 512] for i in range(10) for _z, _xy, n in _CT_CASES],
    "foreground_intensity_properties_per_channel": {"0": _props(88.9, 50.2, -57.0, 250.0)},
    "median_relative_size_after_cropping": 0.88,
}
ABDOMEN_CT_DATASET = {"channel_names": {"0": "CT"}, "numTraining": 50, "file_ending": ".nii.gz",
                      "labels": {"background": 0, "liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4}}
SAGITTAL_FINGERPRINT = {
    "spacings": [[0.8, 0.8, 4.0]] * 8 + [[0.9, 0.9, 4.4]] * 2,
    "shapes_after_crop": [[256, 224, 40]] * 10,
    "foreground_intensity_properties_per_channel": {"0": _props(300.0, 150.0, 20.0, 1100.0, min=0.0, max=1200.0)},
    "median_relative_size_after_cropping": 1.0,
}
SAGITTAL_DATASET = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "disc": 1}, "numTraining": 10,
                    "file_ending": ".nii.gz"}


@pytest.fixture
def abdomen_file(tmp_path):
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(ABDOMEN_CT_PLANS_2_2, indent=4))
    return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# reading and summarising


def test_plans_are_read_unchanged(abdomen_file):
    assert read_nnunet_plans(abdomen_file) == ABDOMEN_CT_PLANS_2_2
    assert read_nnunet_plans(DEMO_PLANS_2_8) == DEMO_PLANS_2_8
    assert read_nnunet_plans(SAGITTAL_PLANS_2_8) == SAGITTAL_PLANS_2_8


def test_abdomen_ct_3d_fullres_in_monai_order(abdomen_file):
    s = configuration_summary(abdomen_file, "3d_fullres")
    assert s.spatial_dims == 3 and s.in_channels == 1 and s.batch_size == 2 and s.batch_dice is True
    # transpose_forward [0, 1, 2]: MONAI order is the plan order reversed (NIfTI i, j, k)
    assert s.spacing == (0.78, 0.78, 2.5) and s.plan_spacing == (2.5, 0.78, 0.78)
    assert s.patch_size == (224, 192, 48) and s.plan_patch_size == (48, 192, 224)
    assert s.median_image_size == (512.0, 424.0, 100.0)
    assert s.plan_axes == (2, 1, 0) and s.slice_axis is None and s.transpose_indices == (0, 3, 2, 1)
    assert s.divisible_by == (32, 32, 8)
    assert s.network_kwargs == {
        "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
        "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        "n_blocks_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5, "conv_bias": True,
    }
    assert s.in_monai_order(s.network_kwargs["kernel_sizes"][0]) == (3, 3, 1)
    (ct,) = s.normalization
    assert (ct.scheme, ct.use_mask_for_norm, ct.monai_transform, ct.exact) == (
        "CTNormalization", False, "ScaleIntensityRanged", True)
    assert ct.monai_kwargs == pytest.approx({"a_min": -57.0, "a_max": 250.0, "b_min": (-57.0 - 88.9) / 50.2,
                                             "b_max": (250.0 - 88.9) / 50.2, "clip": True})
    assert json.loads(json.dumps(s.to_dict()))["patch_size"] == [224, 192, 48]


def test_abdomen_ct_2d_and_cascade(abdomen_file):
    s = configuration_summary(abdomen_file, "2d")
    assert s.spatial_dims == 2 and s.batch_size == 14
    assert s.spacing == (0.78, 0.78) and s.patch_size == (512, 448) and s.plan_patch_size == (448, 512)
    assert s.slice_axis == 2 and s.plan_axes == (1, 0) and s.divisible_by == (64, 64)
    assert s.network_kwargs["features_per_stage"] == [32, 64, 128, 256, 512, 512, 512]
    # the volume: resampled in plane only (0 = keep the file's slice spacing), then the slice axis first
    assert s.volume_pixdim == (0.78, 0.78, 0.0) and s.volume_plan_axes == (2, 1, 0)
    assert s.volume_transpose_indices == (0, 3, 2, 1)
    assert configuration_summary(abdomen_file, "3d_fullres").volume_transpose_indices == s.volume_transpose_indices
    cascade = configuration_summary(abdomen_file, "3d_cascade_fullres")
    fullres = configuration_summary(abdomen_file, "3d_fullres")
    assert cascade.previous_stage == "3d_lowres"
    assert {**cascade.to_dict(), "name": "3d_fullres", "previous_stage": None} == fullres.to_dict()
    lowres = configuration_summary(abdomen_file, "3d_lowres")
    assert lowres.spacing == pytest.approx((1.2516710224970549, 1.2516710224970549, 2.5))
    assert lowres.patch_size == (224, 160, 64) and lowres.batch_dice is False


def test_architecture_format_of_nnunet_2_8():
    s = configuration_summary(DEMO_PLANS_2_8, "3d_fullres")
    assert s.network_class_name == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    # the demo's NIfTI files are 64 x 64 x 32 voxels of 1 x 1 x 2.5 mm
    assert s.spacing == (1.0, 1.0, 2.5) and s.patch_size == (64, 64, 32) and s.median_image_size == (64.0, 64.0, 32.0)
    assert s.network_kwargs["features_per_stage"] == [32, 64, 128, 256, 320]
    assert s.network_kwargs["n_blocks_per_stage"] == [2] * 5 and s.divisible_by == (16, 16, 8)
    assert configuration_summary(DEMO_PLANS_2_8, "2d").patch_size == (64, 64)


def test_transposed_plans_map_to_monai_axes():
    # NIfTI volumes of 40 x 224 x 256 voxels, 4 x 0.8 x 0.8 mm (sagittal slices along the first axis)
    s = configuration_summary(SAGITTAL_PLANS_2_8, "3d_fullres")
    assert s.transpose_forward == (2, 0, 1) and s.plan_axes == (0, 2, 1)
    assert s.spacing == (4.0, 0.8, 0.8) and s.median_image_size == (40.0, 224.0, 256.0)
    assert s.patch_size == (40, 192, 224) and s.plan_patch_size == (40, 224, 192)
    assert s.divisible_by == (8, 32, 32)
    monai_image = np.zeros((1, *s.patch_size))
    assert np.transpose(monai_image, s.transpose_indices).shape[1:] == s.plan_patch_size
    assert s.in_plan_order(s.in_monai_order((7, 8, 9))) == (7, 8, 9)
    # 2D: nnU-Net cuts slices across the 4 mm axis; a slice is 224 x 256 in MONAI order
    s2 = configuration_summary(SAGITTAL_PLANS_2_8, "2d")
    assert s2.slice_axis == 0 and s2.median_image_size == (224.0, 256.0) and s2.patch_size == (224, 256)
    assert s2.volume_pixdim == (0.0, 0.8, 0.8) and s2.volume_plan_axes == (0, 2, 1)
    # a MONAI-order volume transposed into plan order: slices along axis 0, each in the slice's plan order
    volume = np.arange(40 * 224 * 256).reshape(1, 40, 224, 256)
    planned = np.transpose(volume, s2.volume_transpose_indices)
    assert planned.shape == (1, 40, 256, 224) and s2.plan_patch_size == (256, 224)
    np.testing.assert_array_equal(planned[0, 5], volume[0, 5].T)
    assert np.transpose(np.zeros((1, *s2.patch_size)), s2.transpose_indices).shape[1:] == (256, 224)
    (z,) = s2.normalization
    assert z.monai_transform == "NormalizeIntensityd" and z.monai_kwargs == {"nonzero": False, "channel_wise": True}


def test_monai_normalization_equals_nnunet():
    from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged

    rng = np.random.default_rng(0)
    image = rng.normal(80.0, 120.0, (1, 8, 9, 10)).astype(np.float32)
    (ct,) = configuration_summary(ABDOMEN_CT_PLANS_2_2, "3d_fullres").normalization
    p = ct.intensity_properties
    expected = (np.clip(image, p["percentile_00_5"], p["percentile_99_5"]) - p["mean"]) / p["std"]  # nnU-Net's
    out = ScaleIntensityRanged(keys="image", **ct.monai_kwargs)({"image": image})["image"]
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
    (z,) = configuration_summary(SAGITTAL_PLANS_2_8, "3d_fullres").normalization
    out = NormalizeIntensityd(keys="image", **z.monai_kwargs)({"image": image})["image"]
    np.testing.assert_allclose(np.asarray(out), (image - image.mean()) / image.std(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "plans, configuration, variant, monai_input",
    [(ABDOMEN_CT_PLANS_2_2, "3d_fullres", "bot", False), (ABDOMEN_CT_PLANS_2_2, "2d", "enc", False),
     (DEMO_PLANS_2_8, "3d_fullres", "enc", True), (SAGITTAL_PLANS_2_8, "2d", "bot", True)],
    ids=["abdomen-3d-bot", "abdomen-2d-enc", "demo-3d-enc-monai-order", "sagittal-2d-bot-monai-order"],
)
def test_umamba_from_plans_runs_the_planned_patch(plans, configuration, variant, monai_input):
    plans = copy.deepcopy(plans)
    config = plans["configurations"][configuration]
    if "architecture" in config:  # few features: fast on the CPU, same topology
        arch = config["architecture"]["arch_kwargs"]
        arch["features_per_stage"] = [min(2 * 2**i, 4) for i in range(arch["n_stages"])]
    else:
        config["UNet_base_num_features"], config["unet_max_num_features"] = 2, 4
    s = configuration_summary(plans, configuration)
    torch.manual_seed(0)
    net = umamba_from_plans(plans, configuration, s.in_channels, 3, variant=variant, deep_supervision=False).eval()
    if monai_input:  # a MONAI-order patch, transposed into plan order for the network and back
        x = torch.randn(1, s.in_channels, *s.patch_size)
        indices = (0, *(i + 1 for i in s.transpose_indices))
        with torch.no_grad():
            y = net(x.permute(*indices)).permute(*np.argsort(indices).tolist())
        assert y.shape == (1, 3, *s.patch_size)
    else:
        with torch.no_grad():
            y = net(torch.randn(1, s.in_channels, *s.plan_patch_size))
        assert y.shape == (1, 3, *s.plan_patch_size)
    assert torch.isfinite(y).all()


# ---------------------------------------------------------------------------------------------------------------------
# errors


def _drop(path):
    def change(plans):
        node = plans
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


def _set(path, value):
    def change(plans):
        node = plans
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


@pytest.mark.parametrize(
    "plans, change, message",
    [
        (ABDOMEN_CT_PLANS_2_2, _drop(["configurations", "3d_fullres", "patch_size"]),
         r"configurations\['3d_fullres'\] lacks the key 'patch_size'"),
        (ABDOMEN_CT_PLANS_2_2, _drop(["configurations", "2d", "conv_kernel_sizes"]),
         r"configurations\['2d'\] lacks the key 'conv_kernel_sizes'"),
        (DEMO_PLANS_2_8, _drop(["configurations", "3d_fullres", "architecture", "arch_kwargs", "strides"]),
         r"configurations\['3d_fullres'\]\['architecture'\]\['arch_kwargs'\] lacks the key 'strides'"),
        (DEMO_PLANS_2_8, _set(["configurations", "3d_fullres", "architecture", "arch_kwargs", "kernel_sizes"],
                              [[3, 3]] * 5), r"\['kernel_sizes'\]\[0\] is \[3, 3\]; expected 3 entries"),
        (ABDOMEN_CT_PLANS_2_2, _drop(["transpose_forward"]), "lacks the key 'transpose_forward'"),
        (ABDOMEN_CT_PLANS_2_2, _set(["transpose_forward"], [0, 1, 1]), "expected a permutation"),
        (SAGITTAL_PLANS_2_8, _set(["transpose_backward"], [2, 0, 1]), r"expected the inverse .* \[1, 2, 0\]"),
        (ABDOMEN_CT_PLANS_2_2, _set(["configurations", "3d_fullres", "batch_size"], 0), "expected a positive"),
        (ABDOMEN_CT_PLANS_2_2, _set(["configurations", "3d_fullres", "patch_size"], [48, 192, 220]),
         r"not divisible .* \[8, 32, 32\]"),
        (ABDOMEN_CT_PLANS_2_2, _set(["configurations", "2d", "use_mask_for_norm"], [False, True]),
         "expected 1 booleans"),
        (ABDOMEN_CT_PLANS_2_2, _drop(["foreground_intensity_properties_per_channel", "0", "percentile_99_5"]),
         r"\['0'\] lacks the number 'percentile_99_5'"),
        (ABDOMEN_CT_PLANS_2_2, _set(["configurations", "3d_fullres", "inherits_from"], "3d_cascade_fullres"),
         "circular 'inherits_from'"),
        (ABDOMEN_CT_PLANS_2_2, _set(["configurations", "3d_cascade_fullres", "inherits_from"], "3d_full"),
         r"\['inherits_from'\] is '3d_full', which is not a configuration"),
        (ABDOMEN_CT_PLANS_2_2, _set(["configurations"], {}), "lacks a non-empty dict 'configurations'"),
    ],
    ids=["no-patch", "no-kernels-2.2", "no-strides-2.8", "kernel-axes", "no-transpose", "bad-transpose",
         "bad-backward", "batch-0", "indivisible-patch", "mask-length", "no-ct-percentile", "circular",
         "missing-parent", "no-configurations"],
)
def test_bad_plans_name_the_file_and_key(tmp_path, plans, change, message):
    plans = copy.deepcopy(plans)
    change(plans)
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans))
    with pytest.raises(PlansError, match=message) as err:
        read_nnunet_plans(path)
    assert str(err.value).startswith(f"{path}: ")


def test_unknown_configuration_lists_the_available_ones(abdomen_file):
    with pytest.raises(PlansError, match=r"nnUNetPlans.json: configurations has no configuration '3d_full'; "
                                         r"available: \['2d', '3d_cascade_fullres', '3d_fullres', '3d_lowres'\]"):
        configuration_summary(abdomen_file, "3d_full")


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nnU-Net plans file .*absent.json does not exist"):
        read_nnunet_plans(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"configurations\": ")
    with pytest.raises(PlansError, match="bad.json: not valid JSON"):
        read_nnunet_plans(bad)


def test_show_prints_a_table(abdomen_file, capsys):
    planning.main(["show", "--plans", abdomen_file, "--configuration", "3d_fullres"])
    out = capsys.readouterr().out
    assert "transpose_forward [0, 1, 2]" in out
    assert "patch size            224 x 192 x 48    (plan order 48 x 192 x 224)" in out
    assert "spacing (mm)          0.78 x 0.78 x 2.5" in out
    assert "CTNormalization (clip -57 .. 250, mean 88.9, std 50.2) -> ScaleIntensityRanged" in out


# ---------------------------------------------------------------------------------------------------------------------
# planning: the checks before nnU-Net runs, and nnU-Net itself where it is installed


def test_demo_dataset_is_in_nnunet_raw_format(tmp_path):
    folder = write_demo_raw_dataset(tmp_path / "Dataset999_Demo", n_cases=2, shape=(16, 12, 8))
    dataset = json.loads((tmp_path / "Dataset999_Demo" / "dataset.json").read_text())
    assert dataset == {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "kidney": 2},
                       "numTraining": 2, "file_ending": ".nii.gz"}
    image = nib.load(os.path.join(folder, "imagesTr", "demo_001_0000.nii.gz"))
    label = nib.load(os.path.join(folder, "labelsTr", "demo_001.nii.gz"))
    assert image.shape == label.shape == (16, 12, 8) and image.header.get_zooms() == (1.0, 1.0, 2.5)
    assert set(np.unique(np.asarray(label.dataobj))) == {0, 1, 2}


def test_dataset_errors_come_before_nnunet(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        plan_nnunet_dataset(tmp_path / "Dataset001_Absent", tmp_path / "plans.json")
    folder = tmp_path / "Dataset001_Bad"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset.json .*Dataset001_Bad.dataset.json does not exist"):
        plan_nnunet_dataset(folder, tmp_path / "plans.json")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0},
                                                     "file_ending": ".nii.gz"}))
    with pytest.raises(ValueError, match=r"Dataset001_Bad.dataset.json: lacks the key 'numTraining'"):
        plan_nnunet_dataset(folder, tmp_path / "plans.json")
    with pytest.raises(ValueError, match="gpu_memory_gb: expected a positive number"):
        plan_nnunet_dataset(folder, tmp_path / "plans.json", gpu_memory_gb=0)
    with pytest.raises(ValueError, match="fingerprint: lacks the key 'median_relative_size_after_cropping'"):
        plan_nnunet_fingerprint({k: v for k, v in SAGITTAL_FINGERPRINT.items()
                                 if k != "median_relative_size_after_cropping"}, SAGITTAL_DATASET, tmp_path / "p.json")
    assert not (tmp_path / "plans.json").exists()


def test_without_nnunetv2_the_error_gives_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv(NNUNET_PYTHON_ENV_VAR, raising=False)
    monkeypatch.setattr(planning, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install \"shared_networks\[planning\]\""):
        plan_nnunet_fingerprint(SAGITTAL_FINGERPRINT, SAGITTAL_DATASET, tmp_path / "plans.json")


@pytest.mark.skipif(planning.find_spec("nnunetv2") is not None, reason="this interpreter has nnunetv2")
def test_an_interpreter_without_nnunetv2_gives_the_install_command(tmp_path):
    with pytest.raises(ImportError, match=f"has no 'nnunetv2'.*{PLANNING_INSTALL_COMMAND.replace('[', '.')}"):
        plan_nnunet_fingerprint(SAGITTAL_FINGERPRINT, SAGITTAL_DATASET, tmp_path / "plans.json",
                                python=sys.executable)
    assert not (tmp_path / "plans.json").exists()


def _nnunet_python():
    """The interpreter with nnunetv2 named by the environment, else this one (skip the test if it lacks it)."""
    python = os.environ.get(NNUNET_PYTHON_ENV_VAR)
    if not python:
        pytest.importorskip("nnunetv2")
    return python


def _without_class_name(summary):
    return {k: v for k, v in summary.to_dict().items() if k != "network_class_name"}


@pytest.mark.parametrize("fingerprint, dataset, expected",
                         [pytest.param(ABDOMEN_CT_FINGERPRINT, ABDOMEN_CT_DATASET, ABDOMEN_CT_PLANS_2_2,
                                       marks=pytest.mark.slow, id="abdomen-ct"),  # ~10 s: nnU-Net's lowres search
                          pytest.param(SAGITTAL_FINGERPRINT, SAGITTAL_DATASET, SAGITTAL_PLANS_2_8, id="sagittal")])
def test_nnunet_plans_the_fingerprints_of_the_fixtures(tmp_path, fingerprint, dataset, expected):
    python = _nnunet_python()
    plans = plan_nnunet_fingerprint(fingerprint, dataset, tmp_path / "plans.json", gpu_memory_gb=8, python=python)
    assert read_nnunet_plans(tmp_path / "plans.json") == plans
    assert sorted(plans["configurations"]) == sorted(expected["configurations"])
    for name in expected["configurations"]:
        assert _without_class_name(configuration_summary(plans, name)) == _without_class_name(
            configuration_summary(expected, name)), name


def test_nnunet_plans_a_raw_dataset(tmp_path):
    python = _nnunet_python()
    # NIfTI 12 x 32 x 40 voxels of 2.5 x 1 x 1 mm: the coarse axis is the first file axis, so nnU-Net transposes
    folder = write_demo_raw_dataset(tmp_path / "Dataset998_Tiny", n_cases=2, shape=(12, 32, 40),
                                    spacing=(2.5, 1.0, 1.0))
    plans = plan_nnunet_dataset(folder, tmp_path / "out" / "nnUNetPlans.json", gpu_memory_gb=8, num_processes=1,
                                verify_dataset_integrity=False, fingerprint_path=tmp_path / "fingerprint.json",
                                python=python)
    assert plans["dataset_name"] == "Dataset998_Tiny" and plans["transpose_forward"] == [2, 0, 1]
    assert json.loads((tmp_path / "out" / "nnUNetPlans.json").read_text()) == plans
    assert json.loads((tmp_path / "fingerprint.json").read_text())["spacings"] == [[1.0, 1.0, 2.5]] * 2
    s = configuration_summary(plans, "3d_fullres")
    image = nib.load(os.path.join(folder, "imagesTr", "demo_000_0000.nii.gz"))  # what MONAI's NibabelReader reads
    assert s.spacing == pytest.approx(image.header.get_zooms())
    assert s.median_image_size == pytest.approx(image.shape)
    assert s.normalization[0].scheme == "CTNormalization"
