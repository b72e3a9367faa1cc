# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Inferers for bundle configs, beside MONAI's (``monai.inferers``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import ensure_tuple_rep

from shared_networks.ssm.cpu_inference import cpu_buffer_pool

__all__ = ["DivisiblePadInferer", "PooledSlidingWindowInferer"]


class DivisiblePadInferer(Inferer):
    """Whole-volume inference in one forward pass: the input is padded (with ``value``, symmetrically, as MONAI's
    ``DivisiblePad``) up to a multiple of ``k`` along every spatial axis, and the output cropped back to the input's
    size. For networks that accept any size divisible by their total stride (SegMamba: 16), in place of a
    ``SlidingWindowInferer`` whose overlapping windows cover several times the volume's own voxels.

    Args:
        k: the multiple, one for all spatial axes or one per axis.
        value: the padding value (``SlidingWindowInferer`` pads with 0 too).
    """

    def __init__(self, k: int | Sequence[int] = 16, value: float = 0.0) -> None:
        super().__init__()
        self.k = k
        self.value = value

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        spatial = tuple(inputs.shape[2:])
        ks = ensure_tuple_rep(self.k, len(spatial))
        if any(int(k) < 1 for k in ks):
            raise ValueError(f"k must be positive, got {self.k}.")
        extra = [(-size) % int(k) for size, k in zip(spatial, ks)]
        before = [e // 2 for e in extra]
        pad: list[int] = []
        for e, b in zip(reversed(extra), reversed(before)):  # F.pad lists the last axis first
            pad += [b, e - b]
        outputs = network(F.pad(inputs, pad, value=self.value) if any(extra) else inputs, *args, **kwargs)
        if not isinstance(outputs, torch.Tensor):
            raise TypeError(f"DivisiblePadInferer needs a network that returns one tensor, got {type(outputs)}.")
        crop = tuple(slice(b, b + size) for b, size in zip(before, spatial))
        return outputs[(..., *crop)]


class PooledSlidingWindowInferer(SlidingWindowInferer):
    """MONAI's ``SlidingWindowInferer`` (same arguments, same output) that runs a CPU inference inside
    :func:`shared_networks.ssm.cpu_inference.cpu_buffer_pool`: the windows after the first reuse the memory of the
    ones before instead of page-faulting fresh memory, and the pool is given back when the call returns. Windows run
    on another device (``sw_device``, or inputs not on the CPU) go straight to MONAI's inferer.
    """

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        window_device = self.sw_device if self.sw_device is not None else inputs.device
        if inputs.device.type != "cpu" or torch.device(window_device).type != "cpu":
            return super().__call__(inputs, network, *args, **kwargs)
        with cpu_buffer_pool():
            return super().__call__(inputs, network, *args, **kwargs)
