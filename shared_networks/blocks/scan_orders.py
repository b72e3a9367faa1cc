"""Scan orders for multi-directional Mamba layers: which token each position of a direction's sequence reads.

A volume (D, H, W) is flattened in C order, so token index = d * H * W + h * W + w. Each order is returned as a pair
(permutation, inverse): ``sequence[..., permutation]`` reorders the tokens and ``result[..., inverse]`` puts a
direction's output back in the natural order. Orders are derived from the real spatial shape of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

__all__ = ["reversed_order", "inter_slice_order", "tri_orientated_orders"]


@lru_cache(maxsize=64)
def _cached(kind: str, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = 1
    for size in shape:
        length *= size
    if kind == "reversed":
        permutation = torch.arange(length - 1, -1, -1, device=device)
        return permutation, permutation
    if kind == "inter_slice":
        # Slice index (first spatial axis) fastest: position p * D + d holds token d * (H * W) + p.
        permutation = torch.arange(length, device=device).reshape(shape[0], -1).t().reshape(-1)
        return permutation, torch.argsort(permutation)
    raise ValueError(f"unknown scan order kind {kind!r}.")


def reversed_order(length: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The flattened sequence read backwards (its own inverse)."""
    return _cached("reversed", (int(length),), torch.device(device))


def inter_slice_order(spatial_shape: Sequence[int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
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
