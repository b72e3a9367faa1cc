# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Small helpers shared by the blocks and networks of every paper."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from monai.utils import look_up_option

__all__ = ["check_network_input", "look_up_argument"]


def look_up_argument(name: str, value: Any, supported: Collection) -> Any:
    """
    :func:`monai.utils.look_up_option` (with its "did you mean" hint) whose error also names the argument, e.g.
    ``ValueError: mode: By 'papr', did you mean 'paper'? ... Available options are {'paper', 'release'}.``
    """
    try:
        return look_up_option(value, supported)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def check_network_input(network: str, x: torch.Tensor, in_channels: int, axes: str, divisor: int) -> None:
    """
    Refuse an input that is not (batch, ``in_channels``, *spatial) with one spatial size per letter of ``axes``
    (e.g. ``"HW"``, ``"DHW"``) and every spatial size a positive multiple of ``divisor`` (the network's total
    downsampling); the error names each bad axis with the nearest valid sizes.
    """
    if x.ndim != 2 + len(axes) or x.shape[1] != in_channels:
        raise ValueError(
            f"{network} expects a (batch, {in_channels}, {', '.join(axes)}) input, got shape {tuple(x.shape)}."
        )
    bad = [(axis, size) for axis, size in zip(axes, x.shape[2:]) if size % divisor or size == 0]
    if bad:
        def nearest(size: int) -> str:
            lower = size // divisor * divisor
            return f"{lower} or {lower + divisor}" if lower else f"{divisor}"

        details = "; ".join(f"{axis}={size} (nearest valid: {nearest(size)})" for axis, size in bad)
        steps = divisor.bit_length() - 1
        raise ValueError(
            f"{network} needs every spatial size divisible by {divisor} ({steps} stride-2 steps), got {details}. Crop "
            "or pad the input, or use a sliding-window inferer with such a window."
        )
