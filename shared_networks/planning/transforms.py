# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
A plan applied in a MONAI pipeline: :class:`NNUNetNormalized` normalises every input channel as the plan says, with
the MONAI transform :func:`shared_networks.planning.configuration_summary` names for it;
:func:`check_plan_fits_dataset` stops a training whose plan was made for another dataset, and
:func:`check_network_matches_plan` a run whose ``network_def`` is not the plan's network.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import monai.transforms
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from shared_networks.data.nnunet_raw import read_nnunet_dataset
from shared_networks.planning.nnunet import NNUNetConfiguration, read_nnunet_plans

__all__ = ["NNUNetNormalized", "check_network_matches_plan", "check_plan_fits_dataset"]

logger = logging.getLogger(__name__)


def _channel_transform(plan: NNUNetConfiguration, channel: int) -> Transform | None:
    normalization = plan.normalization[channel]
    if normalization.scheme == "NoNormalization":
        return None
    if normalization.monai_transform is None:
        raise ValueError(f"channel {channel} of configuration '{plan.name}': nnU-Net's normalisation "
                         f"'{normalization.scheme}' has no MONAI equivalent here; normalise the images yourself and "
                         "set the scheme to NoNormalization in the plans.")
    # the array transform of the dictionary one the summary names (ScaleIntensityRanged -> ScaleIntensityRange)
    return getattr(monai.transforms, normalization.monai_transform[:-1])(**normalization.monai_kwargs)


class NNUNetNormalized(MapTransform):
    """
    nnU-Net's per-channel normalisation of a plan configuration (``plan``, a
    :class:`shared_networks.planning.NNUNetConfiguration`): channel ``c`` of each of ``keys`` goes through the MONAI
    transform of ``plan.normalization[c]`` (CT: the foreground's 0.5 / 99.5 percentiles clipped and z-scored with its
    mean and standard deviation; ZScore per image, within the nonzero voxels when the plan masks it), as nnU-Net's
    preprocessing does on the plan's grid.
    """

    def __init__(self, keys: KeysCollection, plan: NNUNetConfiguration, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.plan = plan
        self.channel_transforms = [_channel_transform(plan, c) for c in range(plan.in_channels)]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] != len(self.channel_transforms):
                raise ValueError(f"NNUNetNormalized: '{key}' has {image.shape[0]} channels, the plan's configuration "
                                 f"'{self.plan.name}' normalises {len(self.channel_transforms)}.")
            channels = [image[c : c + 1] if t is None else t(image[c : c + 1])
                        for c, t in enumerate(self.channel_transforms)]
            d[key] = channels[0] if len(channels) == 1 else torch.cat([torch.as_tensor(c) for c in channels], dim=0)
        return d


def _flag(name: str, value: bool | str) -> bool:
    """A boolean argument; a command line (``--check_plan_dataset False``) gives it as a string."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def check_plan_fits_dataset(plan: NNUNetConfiguration, plans_path: str | os.PathLike, dataset_dir: str | os.PathLike,
                            same_dataset: bool | str = True, label_names: Sequence[str] | None = None) -> None:
    """
    Stop before training when the plans cannot be this dataset's: the number of input channels differs from
    ``channel_names`` of its ``dataset.json``, its labels are not ``label_names`` (the labels the bundle's network
    predicts, from the dataset.json beside the plans), or (``same_dataset``) the plans' ``dataset_name`` is not the
    dataset folder's name (nnU-Net plans a dataset from its own fingerprint: spacing, patch size and the CT intensity
    statistics of the normalisation all come from it). The message says how to plan the dataset. Without a
    ``dataset.json`` in ``dataset_dir`` the datalist comes from elsewhere (MONAI Label's ``/train``), and there is
    nothing to compare.
    """
    if not os.path.isfile(os.path.join(os.fspath(dataset_dir), "dataset.json")):
        logger.info("No dataset.json in '%s': the plans are not compared with a dataset.", os.fspath(dataset_dir))
        return
    dataset = read_nnunet_dataset(dataset_dir)
    plans_path = os.fspath(plans_path)
    plan_command = (f"plan it with `python -m shared_networks.planning.nnunet plan --raw_dataset_dir {dataset.path} "
                    f"--output {plans_path}` (nnU-Net's planner, extra 'planning'), or pass --plans_path with the "
                    "nnUNetPlans.json that nnUNetv2_plan_and_preprocess wrote for it")
    if plan.in_channels != len(dataset.channel_names):
        raise ValueError(f"plans '{plans_path}' (configuration '{plan.name}') normalise {plan.in_channels} input "
                         f"channel(s), but dataset '{dataset.path}' has {len(dataset.channel_names)} "
                         f"{list(dataset.channel_names)}: {plan_command}.")
    if label_names is not None and list(dataset.label_names) != list(label_names):
        raise ValueError(f"dataset '{dataset.path}' has the labels {dataset.label_names}, but the network predicts "
                         f"{list(label_names)} (the dataset.json beside '{plans_path}'): copy the dataset's "
                         "dataset.json beside its plans.")
    planned_for = read_nnunet_plans(plans_path).get("dataset_name")
    folder = os.path.basename(os.path.normpath(dataset.path))
    if _flag("same_dataset", same_dataset) and planned_for is not None and planned_for != folder:
        raise ValueError(f"plans '{plans_path}' were made for dataset '{planned_for}', not '{folder}' "
                         f"('{dataset.path}'): {plan_command}. (If the folder was only renamed, pass "
                         "--check_plan_dataset False.)")


def _as_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value


def check_network_matches_plan(network: torch.nn.Module, plan: NNUNetConfiguration, plans_path: str | os.PathLike,
                               num_classes: int | None = None) -> None:
    """
    Stop a run whose network (a :class:`shared_networks.nets.UMambaBot` / ``UMambaEnc`` built from a bundle's
    ``network_def``) is not the plan configuration's: spatial dims, input channels, kernel sizes and strides must be
    the plan's (per-stage ints expanded), and the output channels ``num_classes`` when given; other features or blocks
    per stage are logged as a warning. A bundle's ``network_def`` carries these values literally (so that
    ``monai.bundle.load`` builds the network without reading files); the message lists the overrides that make it the
    plan's.
    """
    kwargs = plan.network_kwargs
    n_stages = len(kwargs["features_per_stage"])
    dims = plan.spatial_dims

    def per_stage(value: Any, count: int) -> list:
        return [value] * count if isinstance(value, int) else _as_lists(value)

    def per_axis(values: list) -> list:
        return [[v] * dims if isinstance(v, int) else list(v) for v in values]

    expected = {
        "spatial_dims": dims, "in_channels": plan.in_channels,
        "features_per_stage": list(kwargs["features_per_stage"]),
        "kernel_sizes": per_axis(per_stage(kwargs["kernel_sizes"], n_stages)),
        "strides": per_axis(per_stage(kwargs["strides"], n_stages)),
        "n_blocks_per_stage": per_stage(kwargs["n_blocks_per_stage"], n_stages),
        "n_conv_per_stage_decoder": per_stage(kwargs["n_conv_per_stage_decoder"], n_stages - 1),
    }
    actual = {
        "spatial_dims": getattr(network, "spatial_dims", None), "in_channels": getattr(network, "in_channels", None),
        "features_per_stage": list(network.encoder.output_channels),
        "kernel_sizes": [list(k) for k in network.encoder.kernel_sizes],
        "strides": [list(k) for k in network.encoder.strides],
        "n_blocks_per_stage": [len(s.blocks) for s in network.encoder.stages],
        "n_conv_per_stage_decoder": [len(s.blocks) for s in network.decoder.stages],
    }
    if num_classes is not None:
        expected["out_channels"] = int(num_classes)
        actual["out_channels"] = network.decoder.seg_layers[-1].out_channels
    # the grid the data are cut for (stages, kernels, strides) and the channels must be the plan's; other widths or
    # depths are a deliberate choice (e.g. a smaller network on a CPU) and only reported
    resized = [key for key in ("features_per_stage", "n_blocks_per_stage", "n_conv_per_stage_decoder")
               if expected[key] != actual[key]]
    if resized:
        logger.warning("network_def differs from the network of configuration '%s' of plans '%s' in %s.", plan.name,
                       plans_path, ", ".join(f"{k} ({actual[k]} instead of {expected[k]})" for k in resized))
    wrong = [key for key in expected if key not in resized and expected[key] != actual[key]]
    if wrong:
        overrides = " ".join(f"--network_def#{k} {json.dumps(expected[k], separators=(',', ':'))!r}" for k in wrong)
        raise ValueError(f"network_def is not the network of configuration '{plan.name}' of plans '{plans_path}' "
                         f"({', '.join(f'{k}: {actual[k]} instead of {expected[k]}' for k in wrong)}); run with "
                         f"{overrides}, or edit network_def in the configs.")
