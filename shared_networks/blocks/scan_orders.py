# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Scan orders for multi-directional Mamba layers: which token each position of a direction's sequence reads.

A volume (D, H, W) is flattened in C order, so token index = d * H * W + h * W + w. Each order is returned as a pair
(permutation, inverse): ``sequence[..., permutation]`` reorders the tokens and ``result[..., inverse]`` puts a
direction's output back in the natural order. Orders are derived from the real spatial shape of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import List, Optional, Tuple

import numpy as np
import torch

__all__ = ["reversed_order", "inter_slice_order", "tri_orientated_orders", "tri_orientated_orders_scripted"]


def _build(kind: str, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # numpy, not torch ops: a trace or torch.export records the orders as constants, not as index arithmetic
    length = int(np.prod(shape))
    if kind == "reversed":
        permutation = np.arange(length - 1, -1, -1)
        inverse = permutation
    elif kind == "inter_slice":
        # Slice index (first spatial axis) fastest: position p * D + d holds token d * (H * W) + p.
        permutation = np.arange(length).reshape(shape[0], -1).T.reshape(-1)
        inverse = np.argsort(permutation)
    else:
        raise ValueError(f"unknown scan order kind {kind!r}.")
    return torch.as_tensor(permutation, device=device), torch.as_tensor(inverse, device=device)


_build_cached = lru_cache(maxsize=64)(_build)


def _cached(kind: str, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if torch.jit.is_tracing():
        # torch.jit.trace checks itself by tracing twice and comparing the graphs; a tensor from the cache would be
        # recorded differently from one built during the trace
        return _build(kind, shape, device)
    return _build_cached(kind, shape, device)


def reversed_order(length: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The flattened sequence read backwards (its own inverse)."""
    return _cached("reversed", (int(length),), torch.device(device))


def inter_slice_order(
    spatial_shape: Sequence[int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """SegMamba's inter-slice scan: for each in-plane position, all slices along the first spatial axis in turn.

    For a (D, H, W) volume this is the token order of the volume permuted to (H, W, D). It equals the release's
    chunk-and-interleave with ``nslices = D``, the value the release hard-codes for 128^3 patches.
    """
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) < 2:
        raise ValueError(f"spatial_shape needs at least 2 dimensions, got {shape}.")
    return _cached("inter_slice", shape, torch.device(device))


def tri_orientated_orders(spatial_shape: Sequence[int], device: torch.device | str = "cpu") -> list:
    """Forward (natural), reversed and inter-slice orders of SegMamba's tri-orientated Mamba (ToM)."""
    length = 1
    for size in spatial_shape:
        length *= int(size)
    return [None, reversed_order(length, device), inter_slice_order(spatial_shape, device)]


def tri_orientated_orders_scripted(
    spatial_shape: List[int], device: torch.device
) -> List[Optional[Tuple[torch.Tensor, torch.Tensor]]]:
    """:func:`tri_orientated_orders` from torch operations, the form TorchScript compiles (a scripted network builds its
    orders at every call; the eager network caches them)."""
    length = 1
    for size in spatial_shape:
        length *= size
    reverse = torch.arange(length - 1, -1, -1, device=device)
    tokens = torch.arange(length, device=device)
    slices = spatial_shape[0]
    # the inter-slice order transposes (D, H*W) to (H*W, D); its inverse transposes back
    inter_slice = tokens.reshape(slices, length // slices).t().reshape(-1)
    inter_slice_inverse = tokens.reshape(length // slices, slices).t().reshape(-1)
    return [None, (reverse, reverse), (inter_slice, inter_slice_inverse)]
