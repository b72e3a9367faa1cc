# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Losses that MONAI does not have, in the form of ``monai.losses`` (``forward(input, target)``), and the weights of
nnU-Net's deep supervision for MONAI's ``DeepSupervisionLoss``."""

from __future__ import annotations

import torch
from torch.nn.modules.loss import _Loss

__all__ = ["MaskedL1Loss", "nnunet_deep_supervision_weights"]


def nnunet_deep_supervision_weights(num_outputs: int) -> list[float]:
    """
    nnU-Net v2's weights of ``num_outputs`` deep-supervision outputs, full resolution first: 1 / 2**i, the last
    (lowest resolution) set to 0, normalised to sum 1 (U-Mamba trains with them; 5 outputs give 8/15, 4/15, 2/15,
    1/15, 0). For ``monai.losses.DeepSupervisionLoss(weights=...)``; one output gets weight 1.
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive integer, got {num_outputs!r}.")
    if num_outputs == 1:
        return [1.0]
    weights = [0.5**i for i in range(num_outputs - 1)] + [0.0]
    total = sum(weights)
    return [w / total for w in weights]


class MaskedL1Loss(_Loss):
    """
    The L1 reconstruction loss of masked image modelling (SimMIM; Swin-UMamba†, TMI Sec. III-F): the mean absolute
    error over the masked pixels and all channels; pixels outside the mask do not count at all.

    The target carries the mask as its last channel, so that MONAI's engines can pass it as the label
    (e.g. ``ConcatItemsd(keys=["image", "mask"], name="label")``):
    ``loss = sum(|input - image| * mask) / (sum(mask) + eps) / channels``.

    Args:
        eps: added to the number of masked pixels (an all-unmasked batch gives 0, not NaN).
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: the reconstruction, (batch, C, *spatial).
            target: the image and the mask (1 = masked), (batch, C + 1, *spatial).
        """
        if target.ndim != input.ndim or target.shape[1] != input.shape[1] + 1 or target.shape[2:] != input.shape[2:]:
            raise ValueError(
                f"target must be the image plus the mask as a last channel, (batch, {input.shape[1] + 1}, "
                f"{', '.join(map(str, input.shape[2:]))}) for this input, got {tuple(target.shape)}."
            )
        image, mask = target[:, :-1], target[:, -1:]
        error = (input - image).abs() * mask
        return error.sum() / (mask.sum() + self.eps) / input.shape[1]
