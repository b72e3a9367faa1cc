# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""U-Mamba (January-2024 release, github.com/bowang-lab/U-Mamba): the published parameter counts and their breakdown,
the release's state-dict layout written out by hand, the U-Mamba layer against an explicit token loop, float32 under
autocast, nnU-Net's initialisation, networks built from nnU-Net v2 plans files, the input checks, and (when
``dynamic_network_architectures`` is installed) the encoder and decoder blocks against nnU-Net's own."""

import itertools
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_networks.blocks.umamba_blocks import UMambaBasicBlockD, UMambaLayer
from shared_networks.nets import UMambaBot, UMambaEnc, umamba_from_plans

# the stock nnU-Net v2 2D plans of the paper's datasets (research notes: Table 2 of the paper and nnU-Net's planner)
ABDOMEN_MR_2D = {"spatial_dims": 2, "in_channels": 1, "out_channels": 14,
                 "features_per_stage": (32, 64, 128, 256, 512, 512, 512), "kernel_sizes": 3,
                 "strides": ((1, 1),) + ((2, 2),) * 6, "n_blocks_per_stage": 2, "n_conv_per_stage_decoder": 2}
ENDOSCOPY_2D = {**ABDOMEN_MR_2D, "in_channels": 3, "out_channels": 8}
MICROSCOPY_2D = {**ABDOMEN_MR_2D, "in_channels": 3, "out_channels": 3,
                 "features_per_stage": (32, 64, 128, 256, 512, 512, 512, 512), "strides": ((1, 1),) + ((2, 2),) * 7}
SMALL_2D = {"spatial_dims": 2, "in_channels": 3, "out_channels": 4, "features_per_stage": (8, 16, 32),
            "strides": (1, 2, 2), "n_blocks_per_stage": (1, 2, 2), "n_conv_per_stage_decoder": 1}
SMALL_3D = {"spatial_dims": 3, "in_channels": 2, "out_channels": 3, "features_per_stage": (4, 8, 16),
            "kernel_sizes": ((1, 3, 3), 3, 3), "strides": (1, (1, 2, 2), 2), "n_blocks_per_stage": 1,
            "n_conv_per_stage_decoder": (2, 1)}


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def on_meta(network, **kwargs):
    with torch.device("meta"):
        return network(**kwargs)


@pytest.fixture(scope="module")
def abdomen_mr():
    return {"bot": on_meta(UMambaBot, deep_supervision=True, **ABDOMEN_MR_2D),
            "enc": on_meta(UMambaEnc, deep_supervision=True, **ABDOMEN_MR_2D)}


# ------------------------------------------------------------------------------------------------------------------
# parameter counts (Swin-UMamba papers' comparison tables: 63 M / 67 M AbdomenMR and Endoscopy, 86 M / 92 M
# Microscopy; exact values of the January-2024 release in the research notes, section 6.1)


@pytest.mark.parametrize(
    "network, plan, expected",
    [
        (UMambaBot, ABDOMEN_MR_2D, 63_344_180),
        (UMambaEnc, ABDOMEN_MR_2D, 67_333_428),
        (UMambaBot, ENDOSCOPY_2D, 63_335_696),
        (UMambaEnc, ENDOSCOPY_2D, 67_324_944),
        (UMambaBot, MICROSCOPY_2D, 86_150_037),
        (UMambaEnc, MICROSCOPY_2D, 91_835_029),
    ],
    ids=["bot-abdomen-mr", "enc-abdomen-mr", "bot-endoscopy", "enc-endoscopy", "bot-microscopy", "enc-microscopy"],
)
def test_parameter_counts_equal_the_published_ones(network, plan, expected):
    # every segmentation head is built, with or without deep supervision, so the count does not depend on it
    assert n_params(on_meta(network, **plan)) == expected
    assert n_params(on_meta(network, deep_supervision=True, **plan)) == expected


def test_defaults_are_the_abdomen_mr_2d_plan():
    assert n_params(on_meta(UMambaBot)) == 63_344_180


def test_parameter_breakdown_of_the_abdomen_mr_plan(abdomen_mr):
    bot, enc = abdomen_mr["bot"], abdomen_mr["enc"]
    assert n_params(bot.encoder) == 30_078_848
    assert n_params(bot.encoder.stem) == 384
    assert [n_params(s) for s in bot.encoder.stages] == [
        37_248, 131_968, 526_080, 2_100_736, 8_395_776, 9_443_328, 9_443_328
    ]
    assert n_params(bot.ln) == 1_024
    assert n_params(bot.mamba) == 1_694_720
    decoder = bot.decoder
    assert [n_params(t) for t in decoder.transpconvs] == [1_049_088, 1_049_088, 524_544, 131_200, 32_832, 8_224]
    assert [n_params(s) for s in decoder.stages] == [12_327_936, 12_327_936, 3_083_776, 771_840, 193_408, 48_576]
    assert n_params(decoder.seg_layers) == 21_140
    decoder_only = n_params(decoder.transpconvs) + n_params(decoder.stages) + n_params(decoder.seg_layers)
    assert decoder_only == 31_569_588
    assert n_params(decoder) == decoder_only + n_params(bot.encoder)  # the decoder's encoder is the same module
    assert [n_params(m) for m in enc.encoder.mamba_layers] == [9_984, 32_768, 116_736, 438_272] + [1_695_744] * 3
    assert n_params(enc.encoder) == 30_078_848 + 5_684_992


# ------------------------------------------------------------------------------------------------------------------
# the January-2024 release's state-dict layout, by hand (DNA's blocks: conv-norm blocks listed under their own names
# and under all_modules; the decoder's copy of the encoder)


def conv_norm(prefix, cin, cout, kernel, bias=True):
    keys = {}
    for conv, norm in (("conv", "norm"), ("all_modules.0", "all_modules.1")):
        keys[f"{prefix}{conv}.weight"] = (cout, cin, *kernel)
        if bias:
            keys[f"{prefix}{conv}.bias"] = (cout,)
        keys[f"{prefix}{norm}.weight"] = keys[f"{prefix}{norm}.bias"] = (cout,)
    return keys


def basic_block_d(prefix, cin, cout, kernel, stride):
    keys = conv_norm(f"{prefix}conv1.", cin, cout, kernel) | conv_norm(f"{prefix}conv2.", cout, cout, kernel)
    if cin != cout:  # the projection follows the average pooling when the block is strided
        index = 1 if any(s != 1 for s in stride) else 0
        keys |= conv_norm(f"{prefix}skip.{index}.", cin, cout, (1,) * len(kernel), bias=False)
    return keys


def mamba_keys(prefix, d, n=16, d_conv=4, expand=2):
    e, r = expand * d, math.ceil(d / 16)
    return {f"{prefix}{k}": v for k, v in {
        "in_proj.weight": (2 * e, d), "conv1d.weight": (e, 1, d_conv), "conv1d.bias": (e,),
        "x_proj.weight": (r + 2 * n, e), "dt_proj.weight": (e, r), "dt_proj.bias": (e,), "A_log": (e, n), "D": (e,),
        "out_proj.weight": (d, e),
    }.items()}


def release_layout(variant, cin, cout, features, kernels, strides, blocks, decoder_blocks):
    dims = len(kernels[0])
    encoder = conv_norm("encoder.stem.convs.0.", cin, features[0], kernels[0])
    previous = features[0]
    for s, f in enumerate(features):
        for b in range(blocks[s]):
            encoder |= basic_block_d(f"encoder.stages.{s}.blocks.{b}.", previous if b == 0 else f, f, kernels[s],
                                     strides[s] if b == 0 else (1,) * dims)
        previous = f
        if variant == "enc":
            encoder |= {f"encoder.mamba_layers.{s}.norm.weight": (f,), f"encoder.mamba_layers.{s}.norm.bias": (f,)}
            encoder |= mamba_keys(f"encoder.mamba_layers.{s}.mamba.", f)
    keys = dict(encoder)
    if variant == "bot":
        keys |= {"ln.weight": (features[-1],), "ln.bias": (features[-1],)} | mamba_keys("mamba.", features[-1])
    keys |= {"decoder." + key: shape for key, shape in encoder.items()}
    for s in range(1, len(features)):
        below, skip, stride = features[-s], features[-(s + 1)], strides[-s]
        keys[f"decoder.transpconvs.{s - 1}.weight"] = (below, skip, *stride)
        keys[f"decoder.transpconvs.{s - 1}.bias"] = (skip,)
        for b in range(decoder_blocks[s - 1]):
            keys |= basic_block_d(f"decoder.stages.{s - 1}.blocks.{b}.", 2 * skip if b == 0 else skip, skip,
                                  kernels[-(s + 1)], (1,) * dims)
        keys[f"decoder.seg_layers.{s - 1}.weight"] = (cout, skip, *(1,) * dims)
        keys[f"decoder.seg_layers.{s - 1}.bias"] = (cout,)
    return keys


def shapes(state_dict):
    return {key: tuple(value.shape) for key, value in state_dict.items()}


@pytest.mark.parametrize("variant", ["bot", "enc"])
def test_state_dict_layout_equals_the_release_abdomen_mr(abdomen_mr, variant):
    strides = [(1, 1)] + [(2, 2)] * 6
    expected = release_layout(variant, 1, 14, ABDOMEN_MR_2D["features_per_stage"], [(3, 3)] * 7, strides, [2] * 7,
                              [2] * 6)
    assert shapes(abdomen_mr[variant].state_dict()) == expected


@pytest.mark.parametrize("network, variant", [(UMambaBot, "bot"), (UMambaEnc, "enc")])
def test_state_dict_layout_equals_the_release_3d_anisotropic(network, variant):
    kernels = [(1, 3, 3), (3, 3, 3), (3, 3, 3)]
    strides = [(1, 1, 1), (1, 2, 2), (2, 2, 2)]
    expected = release_layout(variant, 2, 3, (4, 8, 16), kernels, strides, [1, 1, 1], [2, 1])
    assert shapes(network(**SMALL_3D).state_dict()) == expected


def test_state_dict_lists_aliases_of_the_same_tensors():
    net = UMambaBot(**SMALL_2D)
    state = net.state_dict()
    block = "encoder.stages.1.blocks.0."
    for own, alias in (("conv1.conv.weight", "conv1.all_modules.0.weight"),
                       ("conv1.norm.bias", "conv1.all_modules.1.bias"),
                       ("skip.1.conv.weight", "skip.1.all_modules.0.weight")):
        assert state[block + own].data_ptr() == state[block + alias].data_ptr()
    assert "encoder.stages.1.blocks.0.skip.1.conv.bias" not in state  # the projection has no bias
    assert "encoder.stages.0.blocks.0.skip.0.conv.weight" not in state  # same shape: identity skip
    # the decoder's encoder is the encoder itself: same tensors, counted once by parameters()
    encoder_keys = [key for key in state if key.startswith("encoder.")]
    assert encoder_keys and all(state[key].data_ptr() == state["decoder." + key].data_ptr() for key in encoder_keys)
    assert len(state) > 2 * len(list(net.parameters())) > 0
    assert {"ln.weight", "ln.bias", "mamba.A_log", "mamba.in_proj.weight"} <= set(state)
    assert not any(key.startswith("encoder.mamba_layers") for key in state)
    enc_state = UMambaEnc(**SMALL_2D).state_dict()
    assert "ln.weight" not in enc_state and "mamba.A_log" not in enc_state
    assert {"encoder.mamba_layers.0.norm.weight", "encoder.mamba_layers.2.mamba.out_proj.weight",
            "decoder.encoder.mamba_layers.2.mamba.D"} <= set(enc_state)


# ------------------------------------------------------------------------------------------------------------------
# forward, backward, deep supervision


@pytest.mark.parametrize("network", [UMambaBot, UMambaEnc])
@pytest.mark.parametrize("config, spatial", [(SMALL_2D, (16, 12)), (SMALL_3D, (4, 8, 12))], ids=["2d", "3d"])
def test_forward_backward(network, config, spatial):
    torch.manual_seed(0)
    net = network(deep_supervision=True, **config).train()
    x = torch.randn(2, config["in_channels"], *spatial)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == len(config["features_per_stage"]) - 1
    assert outputs[0].shape == (2, config["out_channels"], *spatial)
    sum(o.square().mean() for o in outputs).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, config["out_channels"], *spatial)


def test_deep_supervision_outputs_at_the_planned_scales():
    config = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features_per_stage": (4, 8, 8, 8),
              "strides": ((1, 1), (2, 2), (2, 1), (2, 2)), "n_blocks_per_stage": 1, "n_conv_per_stage_decoder": 1}
    torch.manual_seed(0)
    net = UMambaBot(deep_supervision=True, **config).train()
    x = torch.randn(1, 1, 32, 16)
    outputs = net(x)
    # full resolution first, then the resolutions of encoder stages 1 and 2 (cumulative strides (2, 2), (4, 2))
    assert [tuple(o.shape[2:]) for o in outputs] == [(32, 16), (16, 8), (8, 8)]
    net.deep_supervision = False
    assert net.decoder.deep_supervision is False
    single = net(x)
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, outputs[0], rtol=0, atol=0)  # the same head at full resolution


# ------------------------------------------------------------------------------------------------------------------
# the U-Mamba layer


def explicit_mamba_layer(layer, x):
    """LayerNorm and Mamba on the tokens of a loop over the positions in row-major order, written back by position."""
    positions = list(itertools.product(*(range(n) for n in x.shape[2:])))
    tokens = torch.stack([x[(slice(None), slice(None), *p)] for p in positions], dim=1)  # (batch, L, C)
    mean = tokens.mean(-1, keepdim=True)
    var = tokens.var(-1, unbiased=False, keepdim=True)
    normed = (tokens - mean) / torch.sqrt(var + layer.norm.eps) * layer.norm.weight + layer.norm.bias
    mixed = layer.mamba(normed)
    out = torch.empty_like(x)
    for index, p in enumerate(positions):
        out[(slice(None), slice(None), *p)] = mixed[:, index]
    return out


@pytest.mark.parametrize("spatial", [(3, 5), (2, 3, 4)], ids=["2d", "3d"])
def test_mamba_layer_equals_an_explicit_computation(spatial):
    torch.manual_seed(0)
    layer = UMambaLayer(6)
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.uniform_(-0.5, 0.5)
        x = torch.randn(2, 6, *spatial)
        torch.testing.assert_close(layer(x), explicit_mamba_layer(layer, x), rtol=1e-5, atol=1e-6)


def test_mamba_layer_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    layer = UMambaLayer(8)
    x = torch.randn(2, 8, 4, 6).bfloat16()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        expected = layer(x.float())  # no autocast: float32 all the way
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("network, mamba", [(UMambaBot, "mamba"), (UMambaEnc, "encoder.mamba_layers.2")])
def test_network_mamba_runs_in_float32_under_autocast(network, mamba):
    torch.manual_seed(0)
    net = network(**SMALL_2D).eval()
    seen = []
    net.get_submodule(mamba).register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(1, 3, 8, 8))
    assert seen == [torch.float32]
    assert torch.isfinite(out.float()).all()


# ------------------------------------------------------------------------------------------------------------------
# initialisation: nnU-Net's InitWeights_He(1e-2); Enc also zeroes the last norm of every residual block


def test_he_initialisation():
    torch.manual_seed(0)
    net = UMambaBot(spatial_dims=2, in_channels=1, out_channels=2, features_per_stage=(64, 128),
                    strides=(1, 2), n_blocks_per_stage=1, n_conv_per_stage_decoder=1)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs and all(m.bias is None or not m.bias.any() for m in convs)
    for weight in (net.decoder.stages[0].blocks[0].conv2.conv.weight, net.decoder.transpconvs[0].weight):
        fan_in = weight.shape[1] * math.prod(weight.shape[2:])
        expected = math.sqrt(2 / (1 + 1e-2**2) / fan_in)
        assert abs(weight.std().item() / expected - 1) < 0.03
    assert net.mamba.conv1d.bias.any()  # the Mamba's Conv1d keeps its own (PyTorch default) initialisation
    assert torch.all(net.decoder.stages[0].blocks[0].conv2.norm.weight == 1)  # Bot: no zero init


def test_enc_zero_initialises_the_last_norm_of_every_residual_block():
    net = UMambaEnc(**SMALL_2D)
    blocks = [m for m in net.modules() if isinstance(m, UMambaBasicBlockD)]
    assert len(blocks) == 5 + 2  # encoder 1 + 2 + 2, decoder 1 + 1
    for block in blocks:
        assert not block.conv2.norm.weight.any() and not block.conv2.norm.bias.any()
        assert torch.all(block.conv1.norm.weight == 1)
    assert all(torch.all(m.norm.weight == 1) for m in net.encoder.mamba_layers)


# ------------------------------------------------------------------------------------------------------------------
# networks from nnU-Net v2 plans files


def plans_file(tmp_path):
    """A plans file as nnU-Net v2.1-2.4's default planner writes it for an AbdomenMR-like dataset (2d, 3d_fullres,
    3d_lowres and the cascade inheriting from 3d_fullres), read back through JSON."""
    common = {"preprocessor_name": "DefaultPreprocessor", "normalization_schemes": ["ZScoreNormalization"],
              "use_mask_for_norm": [False], "UNet_class_name": "PlainConvUNet", "UNet_base_num_features": 32,
              "resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                     "force_separate_z": None}}
    full_res = {**common, "data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2,
                "patch_size": [48, 160, 224], "median_image_size_in_voxels": [72.0, 320.0, 320.0],
                "spacing": [4.4, 1.19, 1.19], "n_conv_per_stage_encoder": [2] * 6, "n_conv_per_stage_decoder": [2] * 5,
                "num_pool_per_axis": [3, 5, 5],
                "pool_op_kernel_sizes": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
                "conv_kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                "unet_max_num_features": 320, "batch_dice": False}
    plans = {
        "dataset_name": "Dataset702_AbdomenMR", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [4.4, 1.19, 1.19],
        "original_median_shape_after_transp": [72, 320, 320], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {
            "2d": {**common, "data_identifier": "nnUNetPlans_2d", "batch_size": 30, "patch_size": [320, 320],
                   "median_image_size_in_voxels": [320.0, 320.0], "spacing": [1.19, 1.19],
                   "n_conv_per_stage_encoder": [2] * 7, "n_conv_per_stage_decoder": [2] * 6,
                   "num_pool_per_axis": [6, 6], "pool_op_kernel_sizes": [[1, 1]] + [[2, 2]] * 6,
                   "conv_kernel_sizes": [[3, 3]] * 7, "unet_max_num_features": 512, "batch_dice": True},
            "3d_fullres": full_res,
            "3d_lowres": {**full_res, "data_identifier": "nnUNetPlans_3d_lowres", "spacing": [4.4, 1.9, 1.9],
                          "next_stage": "3d_cascade_fullres"},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {"mean": 300.0, "median": 280.0, "std": 150.0}},
    }
    path = tmp_path / "nnUNetPlans.json"
    path.write_text(json.dumps(plans, indent=2))
    return json.loads(path.read_text())


def as_new_format(config):
    """The same configuration as nnU-Net >= 2.5 writes it (``architecture`` with DNA's constructor arguments)."""
    n_stages = len(config["conv_kernel_sizes"])
    new = {k: v for k, v in config.items() if k not in (
        "UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
        "num_pool_per_axis", "pool_op_kernel_sizes", "conv_kernel_sizes", "unet_max_num_features")}
    new["architecture"] = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": n_stages,
            "features_per_stage": [min(32 * 2**i, config["unet_max_num_features"]) for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{len(config['patch_size'])}d",
            "kernel_sizes": config["conv_kernel_sizes"], "strides": config["pool_op_kernel_sizes"],
            "n_conv_per_stage": config["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"], "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    return new


def from_plans_on_meta(*args, **kwargs):
    with torch.device("meta"):
        return umamba_from_plans(*args, **kwargs)


@pytest.mark.parametrize("variant, network, expected", [("bot", UMambaBot, 63_344_180), ("enc", UMambaEnc, 67_333_428)])
def test_from_plans_2d_gives_the_published_counts(tmp_path, variant, network, expected):
    net = from_plans_on_meta(plans_file(tmp_path), "2d", in_channels=1, out_channels=14, variant=variant)
    assert type(net) is network and net.deep_supervision is True
    assert n_params(net) == expected
    assert shapes(net.state_dict()) == shapes(on_meta(network, **ABDOMEN_MR_2D).state_dict())


@pytest.mark.parametrize("variant, network", [("bot", UMambaBot), ("enc", UMambaEnc)])
def test_from_plans_3d_equals_the_explicit_constructor(tmp_path, variant, network):
    plans = plans_file(tmp_path)
    net = from_plans_on_meta(plans, "3d_fullres", in_channels=1, out_channels=14, variant=variant,
                             deep_supervision=False)
    config = plans["configurations"]["3d_fullres"]
    explicit = on_meta(network, spatial_dims=3, in_channels=1, out_channels=14,
                       features_per_stage=(32, 64, 128, 256, 320, 320), kernel_sizes=config["conv_kernel_sizes"],
                       strides=config["pool_op_kernel_sizes"], n_blocks_per_stage=2, n_conv_per_stage_decoder=2)
    assert net.deep_supervision is False and net.spatial_dims == 3
    assert shapes(net.state_dict()) == shapes(explicit.state_dict())
    assert n_params(net) == n_params(explicit)
    assert net.divisors == (8, 32, 32)
    assert all(size % d == 0 for size, d in zip(config["patch_size"], net.divisors))
    # nnU-Net >= 2.5's format and the cascade's inherited configuration give the same network
    plans["configurations"]["3d_new"] = as_new_format(config)
    new = from_plans_on_meta(plans, "3d_new", in_channels=1, out_channels=14, variant=variant)
    assert shapes(new.state_dict()) == shapes(explicit.state_dict())
    cascade = from_plans_on_meta(plans, "3d_cascade_fullres", in_channels=15, out_channels=14, variant=variant)
    assert n_params(cascade) == n_params(explicit) + 32 * 14 * 3 * 3


def test_from_plans_refuses_what_it_cannot_read(tmp_path):
    plans = plans_file(tmp_path)
    with pytest.raises(ValueError, match="configuration '3d_highres' is not in the plans; available: .*'2d'"):
        umamba_from_plans(plans, "3d_highres", in_channels=1, out_channels=14)
    with pytest.raises(ValueError, match="variant"):
        umamba_from_plans(plans, "2d", in_channels=1, out_channels=14, variant="head")
    del plans["configurations"]["2d"]["conv_kernel_sizes"]
    with pytest.raises(ValueError, match="lacks the key 'conv_kernel_sizes'"):
        umamba_from_plans(plans, "2d", in_channels=1, out_channels=14)
    plans["configurations"]["3d_fullres"]["inherits_from"] = "3d_cascade_fullres"
    with pytest.raises(ValueError, match="circular"):
        umamba_from_plans(plans, "3d_cascade_fullres", in_channels=1, out_channels=14)
    with pytest.raises(ValueError, match="configurations"):
        umamba_from_plans({"plans_name": "x"}, "2d", in_channels=1, out_channels=14)


# ------------------------------------------------------------------------------------------------------------------
# input and argument checks


@pytest.mark.parametrize("network", [UMambaBot, UMambaEnc])
def test_input_checks(network):
    net = network(**SMALL_3D)
    assert net.divisors == (2, 4, 4)
    with pytest.raises(ValueError, match=r"divisible by \(2, 4, 4\).*got \[5, 8, 10\]"):
        net(torch.randn(1, 2, 5, 8, 10))
    with pytest.raises(ValueError, match=r"expects a \(batch, 2, D, H, W\) input"):
        net(torch.randn(1, 3, 4, 8, 8))
    with pytest.raises(ValueError, match=r"expects a \(batch, 2, D, H, W\) input"):
        net(torch.randn(1, 2, 8, 8))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"strides": (1, 2)}, "strides needs 3 entries"),
        ({"kernel_sizes": (3, 3)}, "kernel_sizes needs 3 entries"),
        ({"n_blocks_per_stage": (1, 1)}, "n_blocks_per_stage needs 3 entries"),
        ({"n_conv_per_stage_decoder": (1, 1, 1)}, "n_conv_per_stage_decoder needs 2 entries"),
        ({"strides": (1, (2, 2, 2), 2)}, r"strides\[1\] needs one entry per spatial axis \(2\)"),
        ({"kernel_sizes": (3, (3, 3, 3), 3)}, r"kernel_sizes\[1\] needs one entry per spatial axis \(2\)"),
        ({"features_per_stage": (8,), "strides": (1,)}, "at least 2 stages"),
        ({"n_blocks_per_stage": 0}, "at least one block"),
    ],
    ids=["spatial-dims", "strides", "kernels", "blocks", "decoder-blocks", "stride-axes", "kernel-axes", "one-stage",
         "no-blocks"],
)
def test_bad_arguments_raise_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        UMambaBot(**{**SMALL_2D, **change})


# ------------------------------------------------------------------------------------------------------------------
# against nnU-Net's own blocks (dynamic_network_architectures, the package the release builds on), when installed


def dna_modules(spatial_dims):
    return {"conv_op": {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims],
            "norm_op": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[spatial_dims],
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": nn.LeakyReLU,
            "nonlin_kwargs": {"inplace": True}}


def test_blocks_equal_dynamic_network_architectures():
    residual = pytest.importorskip("dynamic_network_architectures.building_blocks.residual")
    encoders = pytest.importorskip("dynamic_network_architectures.building_blocks.residual_encoders")
    torch.manual_seed(0)
    net = UMambaBot(**SMALL_3D).eval()
    ops = dna_modules(3)
    reference = encoders.ResidualEncoder(
        2, 3, (4, 8, 16), ops["conv_op"], SMALL_3D["kernel_sizes"], SMALL_3D["strides"], 1, conv_bias=True,
        norm_op=ops["norm_op"], norm_op_kwargs=ops["norm_op_kwargs"], nonlin=ops["nonlin"],
        nonlin_kwargs=ops["nonlin_kwargs"], return_skips=True,
    ).eval()
    assert shapes(reference.state_dict()) == shapes(net.encoder.state_dict())
    reference.load_state_dict(net.encoder.state_dict(), strict=True)
    stages = [
        residual.StackedResidualBlocks(blocks, ops["conv_op"], 2 * f, f, kernel, 1, True, ops["norm_op"],
                                       ops["norm_op_kwargs"], None, None, ops["nonlin"], ops["nonlin_kwargs"]).eval()
        for blocks, f, kernel in zip((2, 1), (8, 4), ((3, 3, 3), (1, 3, 3)))
    ]
    for stage, ours in zip(stages, net.decoder.stages):
        assert shapes(stage.state_dict()) == shapes(ours.state_dict())
        stage.load_state_dict(ours.state_dict(), strict=True)

    x = torch.randn(2, 2, 4, 8, 12)
    with torch.no_grad():
        skips = reference(x)
        for skip, ours in zip(skips, net.encoder(x)):
            torch.testing.assert_close(ours, skip, rtol=1e-5, atol=1e-6)
        # the release's forward (UMambaBot.forward, UNetResDecoder.forward) on the reference blocks
        b, c, *spatial = skips[-1].shape
        bottleneck = net.mamba(F.layer_norm(skips[-1].reshape(b, c, -1).transpose(1, 2), (c,), net.ln.weight,
                                            net.ln.bias))
        y = bottleneck.transpose(1, 2).reshape(b, c, *spatial)
        for s, stage in enumerate(stages):
            up = net.decoder.transpconvs[s]
            y = stage(torch.cat((F.conv_transpose3d(y, up.weight, up.bias, stride=up.stride), skips[-(s + 2)]), 1))
        head = net.decoder.seg_layers[-1]
        expected = F.conv3d(y, head.weight, head.bias)
        torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-6)
