# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""BraTS 2023 label transforms."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.transforms.utils_pytorch_numpy_unification import unique
from monai.utils import TransformBackends, convert_to_dst_type

from shared_networks.data.brats import BRATS_LABELS, BRATS_REGIONS

__all__ = ["ConvertToBratsRegions", "ConvertToBratsRegionsd"]


def _equals_any(data: NdarrayOrTensor, values: tuple[int, ...]) -> NdarrayOrTensor:
    """Boolean mask of the elements of ``data`` equal to one of ``values``."""
    mask = data == values[0]
    for value in values[1:]:
        mask = mask | (data == value)
    return mask


class ConvertToBratsRegions(Transform):
    """
    Convert a BraTS 2023 label map into the three nested binary regions evaluated by the challenge, in the channel
    order ``[TC, WT, ET]``: tumour core TC = {1, 3}, whole tumour WT = {1, 2, 3}, enhancing tumour ET = {3}, with the
    BraTS 2023 labels 1 NCR, 2 SNFH (edema), 3 ET. SegMamba (Xing et al., MICCAI 2024,
    https://arxiv.org/abs/2401.13560) trains on the exclusive labels and derives these regions after the argmax.

    The input is a channel-first, 1-channel label map (e.g. the output of ``AsDiscrete(argmax=True)``), as a numpy
    array, a tensor or a MetaTensor. The output has 3 channels, the same type, dtype and device as the input, and for
    a MetaTensor the same meta data.

    Raises:
        ValueError: when the input does not have exactly 1 channel, or holds values outside {0, 1, 2, 3}.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        if label.ndim < 2 or label.shape[0] != 1:
            raise ValueError(
                "ConvertToBratsRegions expects a channel-first label map with 1 channel, got shape "
                f"{tuple(label.shape)}; for logits or one-hot input apply AsDiscrete(argmax=True) first."
            )
        data = label.as_tensor() if isinstance(label, MetaTensor) else label
        if not isinstance(data, torch.Tensor):
            data = np.asarray(data)
        # equality tests are exact for labels stored as floats and much faster than torch.isin on large volumes
        unknown = ~_equals_any(data, tuple(BRATS_LABELS))
        if unknown.any():
            raise ValueError(
                f"ConvertToBratsRegions expects BraTS 2023 labels {list(BRATS_LABELS)}, got other values "
                f"{unique(data[unknown]).tolist()[:10]} (BraTS 2018-2022 used 4 for ET: map it to 3)."
            )
        regions = [_equals_any(data, values) for values in BRATS_REGIONS.values()]
        regions = torch.cat(regions, dim=0) if isinstance(data, torch.Tensor) else np.concatenate(regions, axis=0)
        converted, *_ = convert_to_dst_type(regions, dst=label)
        return converted


class ConvertToBratsRegionsd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`ConvertToBratsRegions`.

    Args:
        keys: keys of the label maps to convert.
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = ConvertToBratsRegions.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = ConvertToBratsRegions()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
