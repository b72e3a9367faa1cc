# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Task transforms: BraTS 2023 regions, colour overlays of 2D label maps on their RGB frames, and the random cell
masks of masked image modelling."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.transforms.utils_pytorch_numpy_unification import unique
from monai.utils import TransformBackends, convert_to_dst_type

from shared_networks.data.brats import BRATS_LABELS, BRATS_REGIONS

__all__ = ["ConvertToBratsRegions", "ConvertToBratsRegionsd", "LABEL_PALETTE", "LabelOverlayd", "RandMaskCellsd"]

#: RGB colours of labels 1, 2, ... in overlays (label 0, background, is left uncoloured); repeats after 12.
LABEL_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)


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


class LabelOverlayd(MapTransform):
    """
    Blend a label map onto its RGB frame for viewing: each non-zero label's pixels take ``alpha`` of the label's
    colour (:data:`LABEL_PALETTE`) and ``1 - alpha`` of the frame; background pixels keep the frame. The frame is
    rescaled to 0..255 from its own range if it is not 8-bit already. The result, a uint8 (3, *spatial) tensor with the
    frame's meta data (so ``SaveImaged`` names it after the frame), is stored under ``output_key``.

    Args:
        keys: the label map key (one key; a 1-channel, channel-first map of integer labels).
        image_key: the RGB frame, channel-first (3, *spatial), of the label's spatial size.
        output_key: where the overlay goes.
        alpha: opacity of the label colours.
        allow_missing_keys: do nothing when the label or the frame is missing (e.g. MONAI Label serves the label
            map only, without the file name of the frame).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str,
        output_key: str = "overlay",
        alpha: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"LabelOverlayd overlays one label key, got {self.keys}.")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
        self.image_key, self.output_key, self.alpha = image_key, output_key, float(alpha)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.allow_missing_keys and (self.keys[0] not in d or self.image_key not in d):
            return d
        label = torch.as_tensor(d[self.keys[0]]).long()
        image = torch.as_tensor(d[self.image_key]).float()
        if image.shape[0] != 3 or label.shape[0] != 1 or image.shape[1:] != label.shape[1:]:
            raise ValueError(
                f"LabelOverlayd needs an RGB '{self.image_key}' (3, *spatial) and a 1-channel '{self.keys[0]}' of the "
                f"same size, got {tuple(image.shape)} and {tuple(label.shape)}."
            )
        low, high = float(image.min()), float(image.max())
        if low < 0 or high > 255:
            image = (image - low) / max(high - low, 1e-8) * 255
        palette = torch.tensor((0, 0, 0) + tuple(c for colour in LABEL_PALETTE for c in colour), dtype=torch.float32)
        palette = palette.reshape(-1, 3)
        index = torch.where(label[0] > 0, (label[0] - 1) % len(LABEL_PALETTE) + 1, 0)
        colour = palette[index].movedim(-1, 0)
        blended = torch.where(label > 0, self.alpha * colour + (1 - self.alpha) * image, image)
        overlay = blended.round().clamp(0, 255).to(torch.uint8)
        source = d[self.image_key]
        d[self.output_key] = MetaTensor(overlay, meta=dict(source.meta)) if isinstance(source, MetaTensor) else overlay
        return d


class RandMaskCellsd(RandomizableTransform, MapTransform):
    """
    A random mask of square cells for masked image modelling (SimMIM; Swin-UMamba†, TMI Sec. III-F): the image is
    tiled into ``cell_size`` x ``cell_size`` cells, and ``ceil(mask_ratio * cells)`` of them, drawn uniformly, are
    masked (for 192 x 192 images, 32-pixel cells and ratio 0.6: 22 of 36 cells). The mask, float (1, *spatial),
    1 = masked, is stored under ``output_key`` with the image's meta data.

    Args:
        keys: the image key (one key; channel-first, spatial sizes divisible by ``cell_size``).
        output_key: where the mask goes.
        cell_size: side of a cell in pixels (a multiple of the network's token size).
        mask_ratio: fraction of cells masked, in (0, 1].
    """

    def __init__(self, keys: KeysCollection, output_key: str = "mask", cell_size: int = 32,
                 mask_ratio: float = 0.6) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandMaskCellsd masks one image key, got {self.keys}.")
        if not 0 < mask_ratio <= 1:
            raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio!r}.")
        if cell_size < 1:
            raise ValueError(f"cell_size must be a positive number of pixels, got {cell_size!r}.")
        self.output_key, self.cell_size, self.mask_ratio = output_key, int(cell_size), float(mask_ratio)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        image = d[self.keys[0]]
        spatial = tuple(image.shape[1:])
        if any(size % self.cell_size for size in spatial):
            raise ValueError(
                f"RandMaskCellsd: the image is {spatial} pixels, not divisible by cell_size {self.cell_size}; crop or "
                "resize it to a multiple first."
            )
        grid = tuple(size // self.cell_size for size in spatial)
        cells = int(np.prod(grid))
        chosen = self.R.permutation(cells)[: int(np.ceil(self.mask_ratio * cells))]
        mask = np.zeros(cells, np.float32)
        mask[chosen] = 1
        mask = mask.reshape(grid)
        for axis in range(len(grid)):
            mask = mask.repeat(self.cell_size, axis=axis)
        mask = torch.as_tensor(mask[None])
        d[self.output_key] = MetaTensor(mask, meta=dict(image.meta)) if isinstance(image, MetaTensor) else mask
        return d
