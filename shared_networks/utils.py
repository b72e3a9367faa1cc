# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Small helpers shared by the blocks and networks of every paper."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, List

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
    # written in the subset of Python that TorchScript compiles: scripted networks check their input too
    if x.dim() != 2 + len(axes) or x.shape[1] != in_channels:
        raise ValueError(
            f"{network} expects a (batch, {in_channels}, {', '.join([axis for axis in axes])}) input, got shape "
            f"{list(x.shape)}."
        )
    bad: List[str] = []
    for index, axis in enumerate(axes):
        size = x.shape[2 + index]
        if size % divisor != 0 or size == 0:
            lower = size // divisor * divisor
            nearest = f"{lower} or {lower + divisor}" if lower > 0 else f"{divisor}"
            bad.append(f"{axis}={size} (nearest valid: {nearest})")
    if len(bad) > 0:
        details = "; ".join(bad)
        steps = 0
        while 2**steps < divisor:
            steps += 1
        raise ValueError(
            f"{network} needs every spatial size divisible by {divisor} ({steps} stride-2 steps), got {details}. Crop "
            "or pad the input, or use a sliding-window inferer with such a window."
        )
