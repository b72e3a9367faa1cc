# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
nnU-Net v2 plans for the bundles: read a ``plans.json`` that ``nnUNetv2_plan_and_preprocess`` (or
``nnUNetv2_plan_experiment``) wrote, unchanged; summarise one configuration in MONAI terms (spacing and patch size in
the axis order of the image file as MONAI loads it, batch size, network arguments, per-channel normalisation); and
plan a new dataset by calling nnU-Net v2's **own** fingerprint extraction and experiment planner (the ``nnunetv2``
package, optional extra ``planning``: ``pip install "shared_networks[planning]"``). No planning rule of nnU-Net is
re-implemented here.

Isensee et al.: "nnU-Net: a self-configuring method for deep learning-based biomedical image segmentation", Nature
Methods 18, 203-211 (2021); code https://github.com/MIC-DKFZ/nnUNet.

Two plans formats are read:

- nnU-Net 2.1-2.2: the network is described by keys of each configuration (``UNet_class_name``,
  ``UNet_base_num_features``, ``unet_max_num_features``, ``conv_kernel_sizes``, ``pool_op_kernel_sizes``,
  ``n_conv_per_stage_encoder``, ``n_conv_per_stage_decoder``, ``num_pool_per_axis``);
- nnU-Net >= 2.3: ``architecture: {network_class_name, arch_kwargs: {n_stages, features_per_stage, kernel_sizes,
  strides, n_conv_per_stage | n_blocks_per_stage, n_conv_per_stage_decoder, conv_bias, ...}, _kw_requires_import}``.

Both have ``patch_size``, ``spacing``, ``batch_size``, ``normalization_schemes``, ``use_mask_for_norm``,
``data_identifier`` ... per configuration, ``inherits_from`` (``3d_cascade_fullres``), and at the top level
``transpose_forward`` / ``transpose_backward``, ``foreground_intensity_properties_per_channel`` (older files:
``..._by_modality``), ``original_median_spacing_after_transp``, ``image_reader_writer``.

Axis order. nnU-Net's readers (``SimpleITKIO``, ``NibabelIO``, ``NibabelIOWithReorient``, ``NaturalImage2DIO``)
return the voxel axes of a file **reversed** (SimpleITK's numpy order: a NIfTI of shape (i, j, k) becomes (k, j, i),
spacing likewise), and the planner then permutes those axes with ``transpose_forward`` (the axis with the largest
target spacing first). Every per-axis value of a configuration (``spacing``, ``patch_size``, kernel sizes, strides)
is in that **plan order**. MONAI's ``LoadImage`` (``NibabelReader``, ``ITKReader``, ``PILReader``) keeps the file's
voxel order (i, j, k) (for a PNG (width, height)), so with ``t = transpose_forward``:

- 3D configuration: plan axis ``a`` is MONAI spatial axis ``2 - t[a]``;
- 2D configuration: nnU-Net cuts slices across MONAI axis ``s = 2 - t[0]``; plan axis ``a`` (0 or 1) is MONAI axis
  ``m = 2 - t[a + 1]`` of the volume, i.e. axis ``m - (m > s)`` of the 2D slice.

For the usual ``t = [0, 1, 2]`` the MONAI order is simply the plan order reversed. ``NibabelIOWithReorient`` first
reorients to RAS (MONAI: ``Orientationd(axcodes="RAS")``); ``SimpleITKIO`` / ``NibabelIO`` do not reorient, so a
MONAI pipeline that adds an ``Orientationd`` matches them only for images whose voxel axes already run along the
RAS axes (up to flips; true of most axial CT / MR, not of sagittal or oblique acquisitions).

The networks (:func:`shared_networks.nets.umamba_from_plans`) take kernel sizes and strides in plan order, as nnU-Net
trains them; the flattening order of a Mamba layer's tokens depends on the axis order too, so to reproduce nnU-Net /
U-Mamba exactly, transpose a MONAI-order image into plan order before the network (``transpose_indices`` of the
summary, for MONAI's ``Transposed``) and back after it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any

import numpy as np

from shared_networks.io import nifti_gz_bytes, write_bytes_atomically, write_text_atomically

__all__ = [
    "NNUNET_PYTHON_ENV_VAR",
    "PLANNING_INSTALL_COMMAND",
    "PlansError",
    "ChannelNormalization",
    "NNUNetConfiguration",
    "read_nnunet_plans",
    "configuration_summary",
    "format_configuration",
    "plan_nnunet_dataset",
    "plan_nnunet_fingerprint",
    "write_demo_raw_dataset",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a Python interpreter that has ``nnunetv2`` (e.g. of a separate virtual environment);
#: used by :func:`plan_nnunet_dataset` / :func:`plan_nnunet_fingerprint` when their ``python`` argument is not given.
NNUNET_PYTHON_ENV_VAR = "SHARED_NETWORKS_NNUNET_PYTHON"
#: How to install what planning needs.
PLANNING_INSTALL_COMMAND = 'pip install "shared_networks[planning]"'

_DATASET_NAME = re.compile(r"^Dataset\d{3}_[A-Za-z0-9_.\-]+$")
# readers whose array / spacing order is SimpleITK's (file voxel axes reversed); others are assumed to be too
_REVERSING_READERS = {"SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient",
                      "NaturalImage2DIO"}
_NEW_FORMAT_KEYS = ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage_decoder")
_OLD_FORMAT_KEYS = ("conv_kernel_sizes", "pool_op_kernel_sizes", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
                    "UNet_base_num_features", "unet_max_num_features")
_CT_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")
_EVENT_PREFIX = "@@shared_networks "


class PlansError(ValueError):
    """An nnU-Net plans file (or dict) that lacks a key or has a value of the wrong kind; the message names the file,
    the key and what was expected."""


# ---------------------------------------------------------------------------------------------------------------------
# reading and checking plans


def _fail(source: str, where: str, problem: str) -> PlansError:
    return PlansError(f"{source}: {where} {problem}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_list(value: Any, source: str, where: str, length: int | None = None, minimum: int = 1) -> list[int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or not all(_is_int(v) for v in value):
        raise _fail(source, where, f"is {value!r}; expected a list of integers.")
    if length is not None and len(value) != length:
        raise _fail(source, where, f"is {list(value)}; expected {length} entries.")
    if any(v < minimum for v in value):
        raise _fail(source, where, f"is {list(value)}; expected integers >= {minimum}.")
    return list(value)


def _per_stage_axes(value: Any, source: str, where: str, n_stages: int, dims: int) -> list[list[int]]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != n_stages:
        raise _fail(source, where, f"is {value!r}; expected a list of {n_stages} entries (one per stage), each a "
                                   f"list of {dims} integers (one per axis).")
    return [_int_list(v, source, f"{where}[{i}]", dims) for i, v in enumerate(value)]


def _resolve(plans: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    """The configuration ``name`` with nnU-Net's ``inherits_from`` chain applied (a child's keys override)."""
    configurations = plans["configurations"]
    chain: list[str] = []
    current = name
    while True:
        if current not in configurations:
            if not chain:
                raise _fail(source, "configurations", f"has no configuration {name!r}; available: "
                                                      f"{sorted(configurations)}.")
            raise _fail(source, f"configurations[{chain[-1]!r}]['inherits_from']",
                        f"is {current!r}, which is not a configuration; available: {sorted(configurations)}.")
        if current in chain:
            raise _fail(source, f"configurations[{name!r}]", f"has a circular 'inherits_from' chain: "
                                                             f"{' -> '.join([*chain, current])}.")
        if not isinstance(configurations[current], Mapping):
            raise _fail(source, f"configurations[{current!r}]", "is not a dict.")
        chain.append(current)
        current = configurations[current].get("inherits_from")
        if current is None:
            break
    resolved: dict[str, Any] = {}
    for link in reversed(chain):
        resolved.update(deepcopy(dict(configurations[link])))
    resolved.pop("inherits_from", None)
    return resolved


def _intensity_properties(plans: Mapping[str, Any]) -> Mapping[str, Any] | None:
    properties = plans.get("foreground_intensity_properties_per_channel")
    if properties is None:  # nnU-Net's own fallback for early v2 files
        properties = plans.get("foreground_intensity_properties_by_modality")
    return properties


def _architecture(config: Mapping[str, Any], name: str, source: str, dims: int) -> tuple[str, dict[str, Any]]:
    """The network class name and the arguments of :func:`shared_networks.nets.umamba_from_plans`' networks, from
    either plans format, checked (per-stage lengths, per-axis lengths)."""
    where = f"configurations[{name!r}]"
    if "architecture" in config:
        arch = config["architecture"]
        if not isinstance(arch, Mapping) or not isinstance(arch.get("arch_kwargs"), Mapping):
            raise _fail(source, f"{where}['architecture']", "lacks the dict 'arch_kwargs' (nnU-Net >= 2.3 format: "
                                                            "{network_class_name, arch_kwargs: {...}}).")
        class_name = arch.get("network_class_name")
        if not isinstance(class_name, str):
            raise _fail(source, f"{where}['architecture']", "lacks the string 'network_class_name'.")
        kwargs = arch["arch_kwargs"]
        where = f"{where}['architecture']['arch_kwargs']"
        for key in _NEW_FORMAT_KEYS:
            if key not in kwargs:
                raise _fail(source, where, f"lacks the key {key!r}.")
        blocks_key = "n_blocks_per_stage" if "n_blocks_per_stage" in kwargs else "n_conv_per_stage"
        if blocks_key not in kwargs:
            raise _fail(source, where, "lacks the key 'n_conv_per_stage' (or 'n_blocks_per_stage' for residual "
                                       "encoders).")
        features = _int_list(kwargs["features_per_stage"], source, f"{where}['features_per_stage']")
        n_stages = len(features)
        if "n_stages" in kwargs and kwargs["n_stages"] != n_stages:
            raise _fail(source, f"{where}['n_stages']", f"is {kwargs['n_stages']!r}; expected {n_stages}, the "
                                                        "number of entries of 'features_per_stage'.")
        kernels, strides = kwargs["kernel_sizes"], kwargs["strides"]
        kernel_key, stride_key, blocks, decoder = "kernel_sizes", "strides", kwargs[blocks_key], kwargs[
            "n_conv_per_stage_decoder"]
        conv_bias = kwargs.get("conv_bias", True)
        if not isinstance(conv_bias, bool):
            raise _fail(source, f"{where}['conv_bias']", f"is {conv_bias!r}; expected true or false.")
    else:
        missing = [key for key in _OLD_FORMAT_KEYS if key not in config]
        if missing:
            raise _fail(source, where, f"lacks the key {missing[0]!r} (and has no 'architecture' dict): expected "
                                       f"either the nnU-Net 2.1-2.2 keys {list(_OLD_FORMAT_KEYS)} or the nnU-Net >= "
                                       "2.3 'architecture' dict.")
        class_name = str(config.get("UNet_class_name", "PlainConvUNet"))
        base = _int_list([config["UNet_base_num_features"]], source, f"{where}['UNet_base_num_features']")[0]
        most = _int_list([config["unet_max_num_features"]], source, f"{where}['unet_max_num_features']")[0]
        kernels, strides = config["conv_kernel_sizes"], config["pool_op_kernel_sizes"]
        if not isinstance(kernels, Sequence) or isinstance(kernels, str):
            raise _fail(source, f"{where}['conv_kernel_sizes']", f"is {kernels!r}; expected one list per stage.")
        n_stages = len(kernels)
        features = [min(base * 2**i, most) for i in range(n_stages)]
        kernel_key, stride_key = "conv_kernel_sizes", "pool_op_kernel_sizes"
        blocks_key, blocks, decoder = "n_conv_per_stage_encoder", config["n_conv_per_stage_encoder"], config[
            "n_conv_per_stage_decoder"]
        conv_bias = True
    if n_stages < 2:
        raise _fail(source, where, f"describes {n_stages} stage(s); expected at least 2.")
    kernels = _per_stage_axes(kernels, source, f"{where}[{kernel_key!r}]", n_stages, dims)
    strides = _per_stage_axes(strides, source, f"{where}[{stride_key!r}]", n_stages, dims)
    blocks = _int_list(blocks, source, f"{where}[{blocks_key!r}]", n_stages)
    decoder = _int_list(decoder, source, f"{where}['n_conv_per_stage_decoder']", n_stages - 1)
    return class_name, {
        "n_stages": n_stages,
        "features_per_stage": features,
        "kernel_sizes": kernels,
        "strides": strides,
        "n_blocks_per_stage": blocks,
        "n_conv_per_stage_decoder": decoder,
        "conv_bias": conv_bias,
    }


def _check_configuration(plans: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    config = _resolve(plans, name, source)
    where = f"configurations[{name!r}]"
    for key in ("patch_size", "spacing", "batch_size", "normalization_schemes", "use_mask_for_norm"):
        if key not in config:
            raise _fail(source, where, f"lacks the key {key!r}.")
    patch = _int_list(config["patch_size"], source, f"{where}['patch_size']")
    dims = len(patch)
    if dims not in (2, 3):
        raise _fail(source, f"{where}['patch_size']", f"is {patch}; expected 2 (2D) or 3 (3D) sizes.")
    spacing = config["spacing"]
    if (not isinstance(spacing, Sequence) or isinstance(spacing, str) or len(spacing) != dims
            or not all(_is_number(s) and s > 0 for s in spacing)):
        raise _fail(source, f"{where}['spacing']", f"is {spacing!r}; expected {dims} positive numbers (mm), like "
                                                   "'patch_size'.")
    if not _is_int(config["batch_size"]) or config["batch_size"] < 1:
        raise _fail(source, f"{where}['batch_size']", f"is {config['batch_size']!r}; expected a positive integer.")
    schemes, masks = config["normalization_schemes"], config["use_mask_for_norm"]
    if not isinstance(schemes, Sequence) or isinstance(schemes, str) or not schemes or not all(
            isinstance(s, str) for s in schemes):
        raise _fail(source, f"{where}['normalization_schemes']", f"is {schemes!r}; expected one scheme name per "
                                                                 "input channel (e.g. ['CTNormalization']).")
    if not isinstance(masks, Sequence) or len(masks) != len(schemes) or not all(isinstance(m, bool) for m in masks):
        raise _fail(source, f"{where}['use_mask_for_norm']", f"is {masks!r}; expected {len(schemes)} booleans, one "
                                                             "per entry of 'normalization_schemes'.")
    for key in ("data_identifier", "previous_stage"):
        if key in config and not isinstance(config[key], str):
            raise _fail(source, f"{where}[{key!r}]", f"is {config[key]!r}; expected a string.")
    _, arch = _architecture(config, name, source, dims)
    divisors = [math.prod(axis) for axis in zip(*arch["strides"])]
    if any(p % d for p, d in zip(patch, divisors)):
        raise _fail(source, f"{where}['patch_size']", f"is {patch}, not divisible by the products of the strides per "
                                                      f"axis {divisors}.")
    properties = _intensity_properties(plans)
    for channel, scheme in enumerate(schemes):
        if scheme != "CTNormalization":
            continue
        entry = properties.get(str(channel)) if isinstance(properties, Mapping) else None
        if not isinstance(entry, Mapping):
            raise _fail(source, "foreground_intensity_properties_per_channel", f"lacks channel '{channel}', which "
                                                                               f"{where} normalises with "
                                                                               "CTNormalization.")
        for key in _CT_KEYS:
            if not _is_number(entry.get(key)):
                raise _fail(source, f"foreground_intensity_properties_per_channel['{channel}']",
                            f"lacks the number {key!r} (CTNormalization clips to percentile_00_5 .. percentile_99_5 "
                            "and subtracts mean, divides by std).")
    return config


def read_nnunet_plans(plans: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """
    Read and check an nnU-Net v2 plans file (``nnUNetPlans.json``, ``nnUNetResEncUNetMPlans.json``, ...) as nnU-Net
    2.1-2.8 writes it (both formats, see the module docstring). Every configuration is checked after resolving
    ``inherits_from``: ``patch_size`` / ``spacing`` of 2 or 3 axes, a positive ``batch_size``, one normalisation
    scheme and mask flag per channel, the network description (per-stage lists of the right lengths, per-axis kernel
    sizes and strides, the patch divisible by the strides), and the intensity properties of CT-normalised channels;
    at the top level ``transpose_forward`` (a permutation of 0, 1, 2) and ``transpose_backward`` (its inverse).

    Args:
        plans: path of the JSON file, or its already loaded dict.

    Returns:
        a deep copy of the plans dict, unchanged (nnU-Net's keys and format).

    Raises:
        FileNotFoundError: the file does not exist.
        PlansError: (a ValueError) the JSON is invalid or a key is missing or malformed; the message names the file,
            the key and what was expected.
    """
    if isinstance(plans, Mapping):
        source, data = "plans dict", plans
    else:
        source = os.fspath(plans)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"nnU-Net plans file {source} does not exist.")
        with open(source, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise PlansError(f"{source}: not valid JSON ({err}).") from err
        if not isinstance(data, Mapping):
            raise PlansError(f"{source}: expected a JSON object (nnU-Net plans), got {type(data).__name__}.")
    configurations = data.get("configurations")
    if not isinstance(configurations, Mapping) or not configurations:
        raise _fail(source, "the top level", "lacks a non-empty dict 'configurations': not an nnU-Net v2 plans file.")
    forward = data.get("transpose_forward")
    if forward is None:
        raise _fail(source, "the top level", "lacks the key 'transpose_forward'.")
    if sorted(_int_list(forward, source, "transpose_forward", 3, minimum=0)) != [0, 1, 2]:
        raise _fail(source, "transpose_forward", f"is {forward}; expected a permutation of [0, 1, 2].")
    backward = data.get("transpose_backward")
    if backward is not None and (not isinstance(backward, Sequence)
                                 or list(backward) != [list(forward).index(i) for i in range(3)]):
        raise _fail(source, "transpose_backward", f"is {backward!r}; expected the inverse of transpose_forward "
                                                  f"{list(forward)}: {[list(forward).index(i) for i in range(3)]}.")
    median = data.get("original_median_spacing_after_transp")
    if median is not None and (not isinstance(median, Sequence) or not all(_is_number(s) for s in median)):
        raise _fail(source, "original_median_spacing_after_transp", f"is {median!r}; expected a list of numbers.")
    properties = _intensity_properties(data)
    if properties is not None and not isinstance(properties, Mapping):
        raise _fail(source, "foreground_intensity_properties_per_channel", f"is {properties!r}; expected a dict "
                                                                           "with one entry per channel ('0', ...).")
    for name in configurations:
        _check_configuration(data, name, source)
    return deepcopy(dict(data))


# ---------------------------------------------------------------------------------------------------------------------
# one configuration in MONAI terms


@dataclass(frozen=True)
class ChannelNormalization:
    """
    nnU-Net's normalisation of one input channel, and the MONAI transform that does the same.

    Attributes:
        channel: the channel index (nnU-Net's ``_0000``, ``_0001`` ... files).
        scheme: nnU-Net's class name: ``CTNormalization`` (clip to the dataset's foreground 0.5 / 99.5 percentiles,
            subtract the foreground mean, divide by the foreground std), ``ZScoreNormalization`` (per image; within
            the nonzero mask when ``use_mask_for_norm``), ``RescaleTo01Normalization``, ``RGBTo01Normalization``,
            ``NoNormalization``, or a custom name.
        use_mask_for_norm: nnU-Net's flag (the planner sets it when cropping to the nonzero region shrank the median
            image below 3/4 and the scheme is ZScore).
        intensity_properties: the dataset fingerprint's ``mean``, ``std``, ``percentile_00_5``, ``percentile_99_5``
            (and ``median``, ``min``, ``max`` where recorded) of the channel's foreground voxels, or None.
        monai_transform: the name of the dictionary transform of ``monai.transforms`` doing the same, or None for
            ``NoNormalization`` (nothing to do) and for unknown schemes.
        monai_kwargs: its arguments (besides ``keys``).
        exact: whether the MONAI transform reproduces nnU-Net exactly. ``ZScoreNormalization`` with the mask is
            approximate: nnU-Net's mask is the nonzero region of all channels with holes filled, set by its cropping
            step; MONAI's ``nonzero`` uses each channel's own nonzero voxels.
    """

    channel: int
    scheme: str
    use_mask_for_norm: bool
    intensity_properties: Mapping[str, float] | None = None
    monai_transform: str | None = None
    monai_kwargs: Mapping[str, Any] = field(default_factory=dict)
    exact: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel, "scheme": self.scheme, "use_mask_for_norm": self.use_mask_for_norm,
            "intensity_properties": None if self.intensity_properties is None else dict(self.intensity_properties),
            "monai_transform": self.monai_transform, "monai_kwargs": dict(self.monai_kwargs), "exact": self.exact,
        }


def _channel_normalization(channel: int, scheme: str, use_mask: bool,
                           properties: Mapping[str, Any] | None) -> ChannelNormalization:
    entry = dict(properties.get(str(channel))) if isinstance(properties, Mapping) and isinstance(
        properties.get(str(channel)), Mapping) else None
    if scheme == "CTNormalization":
        lower, upper = float(entry["percentile_00_5"]), float(entry["percentile_99_5"])
        mean, std = float(entry["mean"]), max(float(entry["std"]), 1e-8)
        # clip to [lower, upper] then (x - mean) / std == the linear map [lower, upper] -> [(lower - mean) / std,
        # (upper - mean) / std] with the output clipped
        kwargs = {"a_min": lower, "a_max": upper, "b_min": (lower - mean) / std, "b_max": (upper - mean) / std,
                  "clip": True}
        return ChannelNormalization(channel, scheme, use_mask, entry, "ScaleIntensityRanged", kwargs)
    if scheme == "ZScoreNormalization":
        return ChannelNormalization(channel, scheme, use_mask, entry, "NormalizeIntensityd",
                                    {"nonzero": use_mask, "channel_wise": True}, exact=not use_mask)
    if scheme == "RescaleTo01Normalization":
        return ChannelNormalization(channel, scheme, use_mask, entry, "ScaleIntensityd",
                                    {"minv": 0.0, "maxv": 1.0, "channel_wise": True})
    if scheme == "RGBTo01Normalization":
        return ChannelNormalization(channel, scheme, use_mask, entry, "ScaleIntensityRanged",
                                    {"a_min": 0.0, "a_max": 255.0, "b_min": 0.0, "b_max": 1.0, "clip": False})
    if scheme == "NoNormalization":
        return ChannelNormalization(channel, scheme, use_mask, entry)
    logger.warning("channel %d: normalisation scheme %r is not one of nnU-Net's defaults; no MONAI equivalent given.",
                   channel, scheme)
    return ChannelNormalization(channel, scheme, use_mask, entry, exact=False)


@dataclass(frozen=True)
class NNUNetConfiguration:
    """
    One configuration of an nnU-Net v2 plans file in MONAI terms (made by :func:`configuration_summary`). Per-axis
    values are in **MONAI order** (the voxel axes of the image file as ``LoadImage`` returns them) unless named
    ``plan_*``; see the module docstring for the mapping.

    Attributes:
        name: the configuration (``2d``, ``3d_fullres``, ``3d_lowres``, ``3d_cascade_fullres``, ...).
        spatial_dims: 2 or 3.
        spacing: target spacing (mm), MONAI order: ``Spacingd(pixdim=spacing)``.
        patch_size: training patch, MONAI order (``RandCropByPosNegLabeld(spatial_size=...)``, sliding-window
            ``roi_size``).
        batch_size: patches per training step.
        plan_spacing: ``spacing`` as stored (plan order).
        plan_patch_size: ``patch_size`` as stored (plan order).
        plan_axes: for each plan axis, its MONAI spatial axis (of the 2D slice for a 2D configuration).
        slice_axis: 2D configurations: the MONAI spatial axis of the volume across which nnU-Net cuts its slices (the
            axis of ``transpose_forward[0]``); None in 3D.
        median_image_size: the planner's median image size after resampling (voxels, MONAI order), or None.
        network_class_name: nnU-Net's network class (``...PlainConvUNet``, ``...ResidualEncoderUNet``).
        network_kwargs: ``n_stages``, ``features_per_stage``, ``kernel_sizes``, ``strides``, ``n_blocks_per_stage``,
            ``n_conv_per_stage_decoder``, ``conv_bias``, as :func:`shared_networks.nets.umamba_from_plans` uses them
            (kernel sizes and strides in plan order).
        normalization: one :class:`ChannelNormalization` per input channel.
        batch_dice: nnU-Net's Dice over the whole batch (True) or per sample, or None if not recorded.
        data_identifier: nnU-Net's name of the preprocessed data, or None.
        previous_stage: the cascade's previous configuration, or None.
        transpose_forward: the plans' ``transpose_forward``.
        image_reader_writer: the plans' ``image_reader_writer``, or None.
    """

    name: str
    spatial_dims: int
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    plan_spacing: tuple[float, ...]
    plan_patch_size: tuple[int, ...]
    plan_axes: tuple[int, ...]
    slice_axis: int | None
    median_image_size: tuple[float, ...] | None
    network_class_name: str
    network_kwargs: Mapping[str, Any]
    normalization: tuple[ChannelNormalization, ...]
    batch_dice: bool | None
    data_identifier: str | None
    previous_stage: str | None
    transpose_forward: tuple[int, int, int]
    image_reader_writer: str | None

    @property
    def in_channels(self) -> int:
        """Input channels (one normalisation scheme each)."""
        return len(self.normalization)

    @property
    def divisible_by(self) -> tuple[int, ...]:
        """Product of the strides per axis, MONAI order: every network input size must be a multiple."""
        return self.in_monai_order([math.prod(axis) for axis in zip(*self.network_kwargs["strides"])])

    @property
    def transpose_indices(self) -> tuple[int, ...]:
        """``indices`` of MONAI's ``Transposed`` turning a channel-first MONAI-order image into plan order (the order
        of the network in nnU-Net); for a batch use ``(0, *(i + 1 for i in transpose_indices))``."""
        return (0, *(1 + axis for axis in self.plan_axes))

    @property
    def volume_plan_axes(self) -> tuple[int, int, int]:
        """The MONAI spatial axis of each plan axis of the volume, ``2 - transpose_forward[a]``: in 3D
        :attr:`plan_axes`; in 2D the slice axis first, then the slice's two axes (in MONAI's volume order)."""
        return tuple(2 - t for t in self.transpose_forward)  # type: ignore[return-value]

    @property
    def volume_transpose_indices(self) -> tuple[int, ...]:
        """``indices`` of MONAI's ``Transposed`` turning a channel-first MONAI-order volume into plan order, as nnU-Net
        stores its preprocessed cases: in 3D :attr:`transpose_indices`; in 2D the slice axis becomes spatial axis 0
        (slices are then ``image[:, i]``, already in the slice's plan order)."""
        return (0, *(1 + axis for axis in self.volume_plan_axes))

    @property
    def volume_pixdim(self) -> tuple[float, ...]:
        """``pixdim`` of MONAI's ``Spacingd`` for the volume, MONAI order: in 3D :attr:`spacing`; in 2D the slice's
        spacing with 0 across the slices, which ``Spacingd`` reads as "keep the file's spacing" (nnU-Net resamples a
        2D configuration in plane only)."""
        if self.slice_axis is None:
            return self.spacing
        in_plane = list(self.spacing)
        return tuple([*in_plane[: self.slice_axis], 0.0, *in_plane[self.slice_axis :]])

    def in_monai_order(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """Reorder per-axis ``values`` given in plan order (a patch size, a stride, a kernel size) into MONAI order."""
        if len(values) != len(self.plan_axes):
            raise ValueError(f"expected {len(self.plan_axes)} per-axis values (plan order), got {list(values)}.")
        out: list[Any] = [None] * len(values)
        for plan_axis, monai_axis in enumerate(self.plan_axes):
            out[monai_axis] = values[plan_axis]
        return tuple(out)

    def in_plan_order(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """Reorder per-axis ``values`` given in MONAI order into plan order (the inverse of :meth:`in_monai_order`)."""
        if len(values) != len(self.plan_axes):
            raise ValueError(f"expected {len(self.plan_axes)} per-axis values (MONAI order), got {list(values)}.")
        return tuple(values[monai_axis] for monai_axis in self.plan_axes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (lists for tuples), e.g. for a bundle's config."""
        return {
            "name": self.name, "spatial_dims": self.spatial_dims, "spacing": list(self.spacing),
            "patch_size": list(self.patch_size), "batch_size": self.batch_size, "plan_spacing": list(self.plan_spacing),
            "plan_patch_size": list(self.plan_patch_size), "plan_axes": list(self.plan_axes),
            "slice_axis": self.slice_axis, "divisible_by": list(self.divisible_by),
            "transpose_indices": list(self.transpose_indices), "volume_plan_axes": list(self.volume_plan_axes),
            "volume_transpose_indices": list(self.volume_transpose_indices),
            "volume_pixdim": list(self.volume_pixdim),
            "median_image_size": None if self.median_image_size is None else list(self.median_image_size),
            "network_class_name": self.network_class_name, "network_kwargs": deepcopy(dict(self.network_kwargs)),
            "normalization": [n.to_dict() for n in self.normalization], "batch_dice": self.batch_dice,
            "data_identifier": self.data_identifier, "previous_stage": self.previous_stage,
            "transpose_forward": list(self.transpose_forward), "image_reader_writer": self.image_reader_writer,
        }


def _plan_axes(transpose_forward: Sequence[int], spatial_dims: int) -> tuple[tuple[int, ...], int | None]:
    """MONAI axis of each plan axis, and the slice axis of a 2D configuration (module docstring)."""
    monai_axes = [2 - t for t in transpose_forward]
    if spatial_dims == 3:
        return tuple(monai_axes), None
    slice_axis = monai_axes[0]
    return tuple(m - (m > slice_axis) for m in monai_axes[1:]), slice_axis


def configuration_summary(plans: str | os.PathLike | Mapping[str, Any], configuration: str) -> NNUNetConfiguration:
    """
    What a bundle needs from one configuration of an nnU-Net v2 plans file, in MONAI terms: target spacing and patch
    size in MONAI axis order, batch size, the network arguments, and the per-channel normalisation with its MONAI
    transform. The plans are checked first (:func:`read_nnunet_plans`).

    Args:
        plans: path of the plans JSON or its dict.
        configuration: e.g. ``"3d_fullres"``, ``"2d"``; ``inherits_from`` is resolved.

    Raises:
        PlansError: the configuration is not in the plans (the message lists those that are), or the plans are
            malformed.

    Example::

        summary = configuration_summary("nnUNetPlans.json", "3d_fullres")
        Spacingd(keys=["image", "label"], pixdim=summary.spacing, mode=("bilinear", "nearest"))
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=summary.patch_size)
    """
    source = "plans dict" if isinstance(plans, Mapping) else os.fspath(plans)
    data = read_nnunet_plans(plans)
    if configuration not in data["configurations"]:
        raise _fail(source, "configurations", f"has no configuration {configuration!r}; available: "
                                              f"{sorted(data['configurations'])}.")
    config = _resolve(data, configuration, source)
    plan_patch = tuple(int(p) for p in config["patch_size"])
    dims = len(plan_patch)
    class_name, kwargs = _architecture(config, configuration, source, dims)
    reader = data.get("image_reader_writer")
    if reader is not None and reader not in _REVERSING_READERS:
        logger.warning("%s: image_reader_writer %r: assuming it orders axes as SimpleITK does (file axes reversed), "
                       "like nnU-Net's default readers.", source, reader)
    forward = tuple(int(t) for t in data["transpose_forward"])
    plan_axes, slice_axis = _plan_axes(forward, dims)

    def monai(values: Sequence[Any]) -> tuple[Any, ...]:
        out: list[Any] = [None] * dims
        for plan_axis, monai_axis in enumerate(plan_axes):
            out[monai_axis] = values[plan_axis]
        return tuple(out)

    median = config.get("median_image_size_in_voxels")
    properties = _intensity_properties(data)
    normalization = tuple(
        _channel_normalization(c, scheme, bool(mask), properties)
        for c, (scheme, mask) in enumerate(zip(config["normalization_schemes"], config["use_mask_for_norm"]))
    )
    batch_dice = config.get("batch_dice")
    return NNUNetConfiguration(
        name=configuration,
        spatial_dims=dims,
        spacing=monai([float(s) for s in config["spacing"]]),
        patch_size=monai(plan_patch),
        batch_size=int(config["batch_size"]),
        plan_spacing=tuple(float(s) for s in config["spacing"]),
        plan_patch_size=plan_patch,
        plan_axes=plan_axes,
        slice_axis=slice_axis,
        median_image_size=monai([float(m) for m in median]) if isinstance(median, Sequence) and len(
            median) == dims else None,
        network_class_name=class_name,
        network_kwargs=kwargs,
        normalization=normalization,
        batch_dice=batch_dice if isinstance(batch_dice, bool) else None,
        data_identifier=config.get("data_identifier"),
        previous_stage=config.get("previous_stage"),
        transpose_forward=forward,  # type: ignore[arg-type]
        image_reader_writer=reader,
    )


def _axes(values: Sequence[Any]) -> str:
    return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def format_configuration(summary: NNUNetConfiguration) -> str:
    """A short plain-text table of a configuration (what ``show`` prints)."""
    kwargs = summary.network_kwargs
    axis_names = "MONAI order = file voxel axes" + (
        f" of the slice; slices across volume axis {summary.slice_axis}" if summary.slice_axis is not None else "")
    rows = [
        ("configuration", f"{summary.name} ({summary.spatial_dims}D; {axis_names})"),
        ("spacing (mm)", f"{_axes(summary.spacing)}    (plan order {_axes(summary.plan_spacing)})"),
        ("patch size", f"{_axes(summary.patch_size)}    (plan order {_axes(summary.plan_patch_size)})"),
        ("batch size", str(summary.batch_size)),
        ("median image size", "-" if summary.median_image_size is None else _axes(
            [round(m, 1) for m in summary.median_image_size])),
        ("network", f"{summary.network_class_name.rsplit('.', 1)[-1]}, {kwargs['n_stages']} stages"),
        ("features per stage", ", ".join(str(f) for f in kwargs["features_per_stage"])),
        ("strides (plan order)", " ".join("x".join(str(v) for v in s) for s in kwargs["strides"])),
        ("kernels (plan order)", " ".join("x".join(str(v) for v in k) for k in kwargs["kernel_sizes"])),
        ("blocks enc / dec", f"{kwargs['n_blocks_per_stage']} / {kwargs['n_conv_per_stage_decoder']}"),
        ("divisible by", _axes(summary.divisible_by)),
    ]
    for norm in summary.normalization:
        text = f"{norm.scheme}" + (", mask" if norm.use_mask_for_norm else "")
        if norm.scheme == "CTNormalization" and norm.intensity_properties:
            p = norm.intensity_properties
            text += (f" (clip {p['percentile_00_5']:g} .. {p['percentile_99_5']:g}, mean {p['mean']:.4g}, "
                     f"std {p['std']:.4g})")
        if norm.monai_transform:
            text += f" -> {norm.monai_transform}" + ("" if norm.exact else " (approximate)")
        rows.append((f"channel {norm.channel}", text))
    if summary.batch_dice is not None:
        rows.append(("batch dice", str(summary.batch_dice)))
    if summary.previous_stage:
        rows.append(("previous stage", summary.previous_stage))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


# ---------------------------------------------------------------------------------------------------------------------
# planning with nnU-Net's own code

# Runs in a child interpreter (this one, or the one named by `python`), which needs only nnunetv2: nnU-Net up to 2.7
# reads its nnUNet_raw / nnUNet_preprocessed variables when its modules are first imported, and its fingerprint
# extraction starts "spawn" worker processes, which need a guarded main module; a fresh `python -c` has both right.
_CHILD = r"""
import json, os, sys, time
def say(event, **kw):
    print("@@shared_networks " + json.dumps(dict(event=event, **kw)), flush=True)
def main():
    args = json.loads(sys.argv[1])
    t0 = time.time()
    from importlib.metadata import version
    import nnunetv2
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    name = args["dataset_name"]
    say("started", nnunetv2=version("nnunetv2"), import_s=round(time.time() - t0, 2))
    if args["extract_fingerprint"]:
        if args["verify_dataset_integrity"]:
            from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
            t = time.time()
            verify_dataset_integrity(join(os.environ["nnUNet_raw"], name), args["num_processes"])
            say("verified", seconds=round(time.time() - t, 2))
        from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
        t = time.time()
        extractor = DatasetFingerprintExtractor(name, args["num_processes"], verbose=False)
        extractor.show_progress_bar = False
        extractor.run(overwrite_existing=True)
        say("fingerprint", seconds=round(time.time() - t, 2))
    planner_class = recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), args["planner"],
                                                current_module="nnunetv2.experiment_planning")
    if planner_class is None:
        say("no_planner", planner=args["planner"])
        sys.exit(3)
    t = time.time()
    planner = planner_class(name, gpu_memory_target_in_gb=args["gpu_memory_gb"])
    planner.plan_experiment()
    plans_file = join(os.environ["nnUNet_preprocessed"], name, planner.plans_identifier + ".json")
    say("planned", seconds=round(time.time() - t, 2), plans_file=plans_file)
if __name__ == "__main__":
    main()
"""


def _nnunet_python(python: str | None) -> str:
    """The interpreter to run nnU-Net with; ImportError with the install command if none has it."""
    python = python or os.environ.get(NNUNET_PYTHON_ENV_VAR) or None
    if python is not None:
        return python
    if find_spec("nnunetv2") is None:
        raise ImportError(
            "planning calls nnU-Net v2's own fingerprint extraction and experiment planner, but the package "
            f"'nnunetv2' is not installed in {sys.executable}. Install it with: {PLANNING_INSTALL_COMMAND} (pins in "
            f"docs/planning.md), or name an interpreter that has it with `python=` / ${NNUNET_PYTHON_ENV_VAR}."
        )
    return sys.executable


def _run_nnunet(python: str, args: dict[str, Any], env_dirs: Mapping[str, str], what: str) -> dict[str, Any]:
    """Run :data:`_CHILD` with ``args``; log its output (events at INFO, nnU-Net's own prints at DEBUG); return the
    events by name. Raises ImportError when the interpreter lacks nnunetv2, RuntimeError when nnU-Net fails."""
    env = dict(os.environ)
    env.update(env_dirs)
    env["PYTHONUNBUFFERED"] = "1"
    env["nnUNet_def_n_proc"] = str(args["num_processes"])
    events: dict[str, Any] = {}
    tail: list[str] = []
    start = time.time()
    try:
        # started in the temporary folder, so that no package folder of the caller's directory shadows nnU-Net's
        process = subprocess.Popen([python, "-c", _CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env,
                                   cwd=os.path.dirname(env_dirs["nnUNet_raw"]))
    except OSError as err:
        raise FileNotFoundError(f"cannot run the Python interpreter {python!r} for nnU-Net: {err}.") from err
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            line = line.rstrip("\n")
            if line.startswith(_EVENT_PREFIX):
                event = json.loads(line[len(_EVENT_PREFIX):])
                events[event["event"]] = event
                logger.info("nnU-Net %s: %s (%s)", what, event["event"],
                            ", ".join(f"{k} {v}" for k, v in event.items() if k != "event"))
            else:
                logger.debug("nnU-Net: %s", line)
                tail = (tail + [line])[-40:]
    if process.returncode != 0:
        text = "\n".join(tail)
        if "No module named 'nnunetv2'" in text or "No module named nnunetv2" in text:
            raise ImportError(f"the interpreter {python} has no 'nnunetv2'; install it there with: "
                              f"{PLANNING_INSTALL_COMMAND}.")
        if "no_planner" in events:
            raise ValueError(f"planner: nnU-Net {events.get('started', {}).get('nnunetv2', '')} has no experiment "
                             f"planner class {args['planner']!r} (e.g. ExperimentPlanner; nnU-Net >= 2.4 also "
                             "nnUNetPlannerResEncM / L / XL).")
        raise RuntimeError(f"nnU-Net's {what} failed (exit code {process.returncode}, {time.time() - start:.1f} s); "
                           f"its last output lines:\n{text}")
    if "planned" not in events:
        raise RuntimeError(f"nnU-Net's {what} ended without writing plans; its last output lines:\n" + "\n".join(tail))
    return events


def _load_json(path: str | os.PathLike, what: str) -> Any:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist.")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}).") from err


def _check_dataset_json(dataset_json: Any, source: str) -> None:
    if not isinstance(dataset_json, Mapping):
        raise ValueError(f"{source}: expected a JSON object (nnU-Net dataset.json).")
    if "channel_names" not in dataset_json and "modality" not in dataset_json:
        raise ValueError(f"{source}: lacks the key 'channel_names' (e.g. {{\"0\": \"CT\"}}; the name selects the "
                         "normalisation: 'CT' -> CTNormalization, others z-score).")
    for key, expected in (("labels", "e.g. {\"background\": 0, \"liver\": 1}"),
                          ("numTraining", "the number of training cases"), ("file_ending", "e.g. \".nii.gz\"")):
        if key not in dataset_json:
            raise ValueError(f"{source}: lacks the key {key!r} ({expected}).")
    if not _is_int(dataset_json["numTraining"]) or dataset_json["numTraining"] < 1:
        raise ValueError(f"{source}: 'numTraining' is {dataset_json['numTraining']!r}; expected a positive integer.")
    if not isinstance(dataset_json["labels"], Mapping) or "background" not in dataset_json["labels"]:
        raise ValueError(f"{source}: 'labels' is {dataset_json['labels']!r}; expected a dict with 'background': 0.")


def _dataset_name(folder: str) -> str:
    name = os.path.basename(os.path.normpath(folder))
    if _DATASET_NAME.match(name):
        return name
    renamed = "Dataset999_" + (re.sub(r"[^A-Za-z0-9_.\-]", "_", name) or "Dataset")
    logger.info("%s is not named DatasetXXX_Name as nnU-Net expects; planning it as %s.", folder, renamed)
    return renamed


def _default_processes(num_processes: int | None) -> int:
    if num_processes is None:
        return max(1, min(8, os.cpu_count() or 1))
    if not _is_int(num_processes) or num_processes < 1:
        raise ValueError(f"num_processes: expected a positive integer, got {num_processes!r}.")
    return num_processes


def _check_gpu_memory(gpu_memory_gb: float) -> float:
    if not _is_number(gpu_memory_gb) or gpu_memory_gb <= 0:
        raise ValueError(f"gpu_memory_gb: expected a positive number (GB of GPU memory to plan for), got "
                         f"{gpu_memory_gb!r}.")
    return float(gpu_memory_gb)


def plan_nnunet_dataset(
    raw_dataset_dir: str | os.PathLike,
    output_path: str | os.PathLike,
    gpu_memory_gb: float = 8.0,
    planner: str = "ExperimentPlanner",
    num_processes: int | None = None,
    verify_dataset_integrity: bool = True,
    fingerprint_path: str | os.PathLike | None = None,
    python: str | None = None,
) -> dict[str, Any]:
    """
    Plan a dataset in nnU-Net raw format with nnU-Net v2's own code: its dataset integrity check, its
    ``DatasetFingerprintExtractor`` and its experiment planner, exactly what ``nnUNetv2_plan_and_preprocess -d ID
    -gpu_memory_target GB -pl PLANNER --verify_dataset_integrity --no_pp`` does, without the preprocessing step.
    ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` are set to temporary folders for nnU-Net (the
    dataset is linked there, never written to) and the plans file nnU-Net writes is copied unchanged to
    ``output_path`` (atomically). Runs on the CPU: the planner estimates memory from the feature-map sizes of the
    network it plans, no GPU needed.

    Args:
        raw_dataset_dir: the dataset folder (``DatasetXXX_Name`` with ``dataset.json``, ``imagesTr/`` ``<case>_0000``
            files, ``labelsTr/``); another folder name is planned as ``Dataset999_<name>``.
        output_path: where to write the plans JSON (e.g. ``.../nnUNetPlans.json``).
        gpu_memory_gb: nnU-Net's ``gpu_memory_target_in_gb``: the GPU memory the patch and batch size are planned
            for (8 is nnU-Net's default; its ResEnc presets are meant for 8 (M), 24 (L), 40 (XL)).
        planner: the class name of an nnU-Net experiment planner: ``ExperimentPlanner`` (default U-Net plans), in
            nnU-Net >= 2.4 also ``nnUNetPlannerResEncM`` / ``nnUNetPlannerResEncL`` / ``nnUNetPlannerResEncXL``.
        num_processes: worker processes of the fingerprint extraction (default: CPU count, at most 8).
        verify_dataset_integrity: run nnU-Net's dataset check first (recommended by nnU-Net).
        fingerprint_path: also write nnU-Net's ``dataset_fingerprint.json`` there.
        python: the Python interpreter to run nnU-Net with (one of a separate environment with ``nnunetv2``);
            default ``$SHARED_NETWORKS_NNUNET_PYTHON`` or this interpreter.

    Returns:
        the plans dict.

    Raises:
        ImportError: ``nnunetv2`` is not installed (the message gives the install command).
        FileNotFoundError / ValueError: the dataset folder, its ``dataset.json`` or a key of it is missing.
        RuntimeError: nnU-Net failed (the message ends with its last output lines).
    """
    gpu_memory_gb = _check_gpu_memory(gpu_memory_gb)
    num_processes = _default_processes(num_processes)
    raw_dataset_dir = os.path.abspath(os.fspath(raw_dataset_dir))
    if not os.path.isdir(raw_dataset_dir):
        raise FileNotFoundError(f"raw_dataset_dir {raw_dataset_dir} is not a folder (expected an nnU-Net raw dataset "
                                "folder DatasetXXX_Name with dataset.json, imagesTr/, labelsTr/).")
    json_path = os.path.join(raw_dataset_dir, "dataset.json")
    dataset_json = _load_json(json_path, "nnU-Net dataset.json")
    _check_dataset_json(dataset_json, json_path)
    if "dataset" not in dataset_json:
        for sub in ("imagesTr", "labelsTr"):
            if not os.path.isdir(os.path.join(raw_dataset_dir, sub)):
                raise FileNotFoundError(f"{raw_dataset_dir} has no {sub}/ folder (nnU-Net raw format).")
    python = _nnunet_python(python)
    name = _dataset_name(raw_dataset_dir)
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="nnunet_plan_") as tmp:
        dirs = {key: os.path.join(tmp, key) for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        for folder in dirs.values():
            os.makedirs(folder)
        os.symlink(raw_dataset_dir, os.path.join(dirs["nnUNet_raw"], name), target_is_directory=True)
        logger.info("planning %s (%d training cases) with nnU-Net's %s for %g GB of GPU memory, %d processes",
                    raw_dataset_dir, dataset_json["numTraining"], planner, gpu_memory_gb, num_processes)
        args = {"dataset_name": name, "extract_fingerprint": True, "verify_dataset_integrity": verify_dataset_integrity,
                "num_processes": num_processes, "planner": planner, "gpu_memory_gb": gpu_memory_gb}
        events = _run_nnunet(python, args, dirs, "planning")
        plans = _copy_results(events, dirs, name, output_path, fingerprint_path)
    logger.info("wrote %s (nnU-Net %s, %.1f s)", os.fspath(output_path), events["started"]["nnunetv2"],
                time.time() - start)
    return plans


def _copy_results(events: Mapping[str, Any], dirs: Mapping[str, str], name: str, output_path: str | os.PathLike,
                  fingerprint_path: str | os.PathLike | None) -> dict[str, Any]:
    plans_file = events["planned"]["plans_file"]
    with open(plans_file, "rb") as f:
        raw = f.read()
    plans = read_nnunet_plans(json.loads(raw))
    write_bytes_atomically(raw, output_path)
    if fingerprint_path is not None:
        with open(os.path.join(dirs["nnUNet_preprocessed"], name, "dataset_fingerprint.json"), "rb") as f:
            write_bytes_atomically(f.read(), fingerprint_path)
    return plans


def _check_fingerprint(fingerprint: Any, source: str) -> None:
    if not isinstance(fingerprint, Mapping):
        raise ValueError(f"{source}: expected a JSON object (nnU-Net dataset_fingerprint.json).")
    for key, expected in (("spacings", "one spacing per case, in nnU-Net's (SimpleITK) axis order"),
                          ("shapes_after_crop", "one shape per case, same order"),
                          ("foreground_intensity_properties_per_channel", "{'0': {mean, std, ...}}"),
                          ("median_relative_size_after_cropping", "a number in (0, 1]")):
        if key not in fingerprint:
            raise ValueError(f"{source}: lacks the key {key!r} ({expected}).")
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    if not isinstance(spacings, Sequence) or not spacings or not isinstance(shapes, Sequence) or len(shapes) != len(
            spacings):
        raise ValueError(f"{source}: 'spacings' and 'shapes_after_crop' must be lists with one entry per case.")
    for i, (spacing, shape) in enumerate(zip(spacings, shapes)):
        if len(spacing) != 3 or len(shape) != 3:
            raise ValueError(f"{source}: case {i}: expected 3 spacings and 3 sizes (nnU-Net records 2D images with a "
                             f"first axis of size 1), got {spacing} and {shape}.")


def plan_nnunet_fingerprint(
    fingerprint: str | os.PathLike | Mapping[str, Any],
    dataset_json: str | os.PathLike | Mapping[str, Any],
    output_path: str | os.PathLike,
    gpu_memory_gb: float = 8.0,
    planner: str = "ExperimentPlanner",
    python: str | None = None,
) -> dict[str, Any]:
    """
    Run nnU-Net v2's own experiment planner on a given dataset fingerprint (nnU-Net's ``dataset_fingerprint.json``:
    per-case ``spacings`` and ``shapes_after_crop`` in nnU-Net's axis order, the channels' foreground intensity
    properties, ``median_relative_size_after_cropping``) instead of images, e.g. to see the plans of a dataset that is
    not at hand. nnU-Net's planner needs a raw dataset folder only to choose its image reader: one 2 x 2 x 2
    placeholder case is written to a temporary one beside ``dataset.json``.

    Args:
        fingerprint: the fingerprint dict or the path of its JSON.
        dataset_json: nnU-Net's ``dataset.json`` content (``channel_names``, ``labels``, ``numTraining``, which
            caps the batch size at 5 % of the dataset's voxels, ``file_ending`` ``.nii.gz`` or ``.nii``) or its path.
        output_path, gpu_memory_gb, planner, python: as in :func:`plan_nnunet_dataset`.

    Returns:
        the plans dict (also written to ``output_path``).
    """
    gpu_memory_gb = _check_gpu_memory(gpu_memory_gb)
    fp_source = "fingerprint" if isinstance(fingerprint, Mapping) else os.fspath(fingerprint)
    fingerprint = fingerprint if isinstance(fingerprint, Mapping) else _load_json(fingerprint, "nnU-Net fingerprint")
    _check_fingerprint(fingerprint, fp_source)
    ds_source = "dataset_json" if isinstance(dataset_json, Mapping) else os.fspath(dataset_json)
    dataset_json = dataset_json if isinstance(dataset_json, Mapping) else _load_json(dataset_json,
                                                                                     "nnU-Net dataset.json")
    _check_dataset_json(dataset_json, ds_source)
    ending = dataset_json["file_ending"]
    if ending not in (".nii.gz", ".nii"):
        raise ValueError(f"{ds_source}: 'file_ending' is {ending!r}; planning from a fingerprint supports '.nii.gz' "
                         "and '.nii' (the placeholder image is a NIfTI).")
    python = _nnunet_python(python)
    name = "Dataset999_Fingerprint"
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    with tempfile.TemporaryDirectory(prefix="nnunet_plan_") as tmp:
        dirs = {key: os.path.join(tmp, key) for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
        raw, pre = os.path.join(dirs["nnUNet_raw"], name), os.path.join(dirs["nnUNet_preprocessed"], name)
        os.makedirs(dirs["nnUNet_results"])
        dataset = {k: v for k, v in dataset_json.items() if k != "dataset"}
        write_text_atomically(json.dumps(dataset, indent=4), os.path.join(raw, "dataset.json"))
        write_text_atomically(json.dumps(fingerprint, indent=4), os.path.join(pre, "dataset_fingerprint.json"))
        _write_placeholder_case(raw, len(channels), ending)
        logger.info("planning a fingerprint of %d cases with nnU-Net's %s for %g GB of GPU memory",
                    len(fingerprint["spacings"]), planner, gpu_memory_gb)
        args = {"dataset_name": name, "extract_fingerprint": False, "verify_dataset_integrity": False,
                "num_processes": 1, "planner": planner, "gpu_memory_gb": gpu_memory_gb}
        events = _run_nnunet(python, args, dirs, "planning")
        plans = _copy_results(events, dirs, name, output_path, None)
    logger.info("wrote %s (nnU-Net %s)", os.fspath(output_path), events["started"]["nnunetv2"])
    return plans


def _write_placeholder_case(raw_dir: str, n_channels: int, ending: str) -> None:
    import gzip

    affine = np.eye(4)
    image = nifti_gz_bytes(np.zeros((2, 2, 2), np.float32), affine)
    label = nifti_gz_bytes(np.zeros((2, 2, 2), np.uint8), affine)
    if ending == ".nii":
        image, label = gzip.decompress(image), gzip.decompress(label)
    for channel in range(n_channels):
        write_bytes_atomically(image, os.path.join(raw_dir, "imagesTr", f"placeholder_{channel:04d}{ending}"))
    write_bytes_atomically(label, os.path.join(raw_dir, "labelsTr", f"placeholder{ending}"))


# ---------------------------------------------------------------------------------------------------------------------
# demo data


def write_demo_raw_dataset(
    dataset_dir: str | os.PathLike,
    n_cases: int = 4,
    shape: Sequence[int] = (64, 64, 32),
    spacing: Sequence[float] = (1.0, 1.0, 2.5),
    seed: int = 0,
) -> str:
    """
    Write a small synthetic CT-like dataset in nnU-Net raw format (the demo of ``docs/planning.md``):
    ``dataset.json`` (channel ``CT``, labels background 0, liver 1, kidney 2), ``imagesTr/demo_XXX_0000.nii.gz``
    (int16 Hounsfield-like values: air -900, body 0, liver 60, kidney 150, Gaussian noise) and
    ``labelsTr/demo_XXX.nii.gz``; ellipsoids that move a little from case to case.

    Args:
        dataset_dir: the folder to write, e.g. ``.../nnUNet_raw/Dataset999_Demo``.
        n_cases: training cases.
        shape: voxels per NIfTI axis (i, j, k).
        spacing: mm per NIfTI axis (the affine's diagonal).
        seed: of the noise.

    Returns:
        the folder.
    """
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"shape and spacing need 3 entries each, got {list(shape)} and {list(spacing)}.")
    dataset_dir = os.fspath(dataset_dir)
    rng = np.random.default_rng(seed)
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    sx, sy, sz = (float(s) for s in spacing)
    i, j, k = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")  # mm
    centre = [n * s / 2 for n, s in zip(shape, spacing)]
    radius = min(n * s for n, s in zip(shape[:2], spacing[:2])) / 2
    for case in range(n_cases):
        shift = (case - n_cases / 2) * sx
        liver = (((i - centre[0] - shift) ** 2 + (j - centre[1] + shift) ** 2) / (0.55 * radius) ** 2
                 + (k - centre[2]) ** 2 / (0.4 * shape[2] * sz) ** 2) < 1
        kidney = (((i - 0.4 * centre[0]) ** 2 + (j - 1.3 * centre[1]) ** 2) / (0.2 * radius) ** 2
                  + (k - centre[2]) ** 2 / (0.2 * shape[2] * sz) ** 2) < 1
        label = np.zeros(tuple(shape), np.uint8)
        label[liver] = 1
        label[kidney & ~liver] = 2
        body = ((i - centre[0]) ** 2 + (j - centre[1]) ** 2) < (0.95 * radius) ** 2
        image = rng.normal(-900.0, 30.0, tuple(shape))
        image[body] = rng.normal(0.0, 20.0, int(body.sum()))
        for value, noise, mask in ((60.0, 15.0, label == 1), (150.0, 20.0, label == 2)):
            image[mask] = rng.normal(value, noise, int(mask.sum()))
        case_id = f"demo_{case:03d}"
        write_bytes_atomically(nifti_gz_bytes(image.astype(np.int16), affine),
                               os.path.join(dataset_dir, "imagesTr", f"{case_id}_0000.nii.gz"))
        write_bytes_atomically(nifti_gz_bytes(label, affine), os.path.join(dataset_dir, "labelsTr",
                                                                           f"{case_id}.nii.gz"))
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "kidney": 2},
                    "numTraining": n_cases, "file_ending": ".nii.gz"}
    write_text_atomically(json.dumps(dataset_json, indent=4), os.path.join(dataset_dir, "dataset.json"))
    return dataset_dir


# ---------------------------------------------------------------------------------------------------------------------
# command line


def _show(plans: str, configuration: str | None = None) -> str:
    """Print a short table of one configuration (all when none is given) of an nnU-Net v2 plans file, spacing and
    patch size in MONAI order and as stored."""
    data = read_nnunet_plans(plans)
    names = [configuration] if configuration else list(data["configurations"])
    header = f"{plans}: {data.get('dataset_name', '?')}, {data.get('plans_name', '?')}, planner " \
             f"{data.get('experiment_planner_used', '?')}, transpose_forward {data['transpose_forward']}"
    return "\n\n".join([header] + [format_configuration(configuration_summary(data, n)) for n in names])


def _plan(raw_dataset_dir: str, output: str, gpu_memory_gb: float = 8.0, planner: str = "ExperimentPlanner",
          num_processes: int | None = None, verify_dataset_integrity: bool = True, fingerprint: str | None = None,
          python: str | None = None) -> str:
    """Plan an nnU-Net raw dataset folder with nnU-Net's own fingerprint extraction and planner (see
    plan_nnunet_dataset) and write the plans JSON to ``output``."""
    plan_nnunet_dataset(raw_dataset_dir, output, float(gpu_memory_gb), planner, num_processes,
                        verify_dataset_integrity, fingerprint, python)
    return _show(output)


def _plan_fingerprint(fingerprint: str, dataset_json: str, output: str, gpu_memory_gb: float = 8.0,
                      planner: str = "ExperimentPlanner", python: str | None = None) -> str:
    """Run nnU-Net's planner on a dataset_fingerprint.json and a dataset.json (see plan_nnunet_fingerprint)."""
    plan_nnunet_fingerprint(fingerprint, dataset_json, output, float(gpu_memory_gb), planner, python)
    return _show(output)


def _demo(output_dir: str, n_cases: int = 4) -> str:
    """Write the synthetic CT demo dataset in nnU-Net raw format (see write_demo_raw_dataset)."""
    return write_demo_raw_dataset(output_dir, n_cases=n_cases)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m shared_networks.planning.nnunet plan|plan_fingerprint|show|demo ...`` (``--help`` lists the
    arguments)."""
    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    fire.Fire({"plan": _plan, "plan_fingerprint": _plan_fingerprint, "show": _show, "demo": _demo},
              command=None if argv is None else list(argv), name="shared_networks.planning.nnunet")


if __name__ == "__main__":
    main()
