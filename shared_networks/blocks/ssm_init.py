# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Initialisation of the selective-SSM parameters (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", 2023, Sec. 3.6 and App. E), shared by every layer that owns them, whatever its parameter layout: the plain
``Mamba`` layer (one ``dt_proj`` Linear, ``A_log`` (d_inner, N), ``D`` (d_inner,)) and layers that stack several scan
directions into one tensor (VMamba's SS2D: ``dt_projs_weight`` (K, d_inner, rank), ``A_logs`` (K * d_inner, N)).

- ``dt`` projection: weight uniform in ``±rank**-0.5 * dt_scale`` (or that constant), bias = softplus^-1(dt) with
  ``dt`` log-uniform in ``[dt_min, dt_max]`` and floored at ``dt_init_floor``, so ``softplus(bias)`` starts there;
- ``A``: the S4D-real matrix ``A[d, n] = -(n + 1)``, stored as ``A_log = log(n + 1)`` in float32;
- ``D``: ones.

``A_log`` and ``D`` are excluded from weight decay (``_no_weight_decay``) and the dt bias from re-initialisation
(``_no_reinit``), as mamba-ssm marks them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from shared_networks.utils import look_up_argument

__all__ = ["DT_INIT_MODES", "init_dt_projection_", "s4d_real_a_log", "ssm_skip"]

DT_INIT_MODES = ("random", "constant")


@torch.no_grad()
def init_dt_projection_(
    weight: torch.Tensor,
    bias: torch.Tensor,
    dt_init: str = "random",
    dt_scale: float = 1.0,
    dt_min: float = 0.001,
    dt_max: float = 0.1,
    dt_init_floor: float = 1e-4,
) -> None:
    """
    Initialise a dt projection in place: ``weight`` (..., d_inner, rank) and ``bias`` (..., d_inner), where the
    leading dimensions, if any, stack several directions. The weight is drawn before the bias (the random-number
    order of mamba-ssm, so a seeded network gets the same values).
    """
    dt_init = look_up_argument("dt_init", dt_init, DT_INIT_MODES)
    std = weight.shape[-1] ** -0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(weight, std)
    else:
        nn.init.uniform_(weight, -std, std)
    dt = torch.exp(
        torch.rand(bias.shape, device=bias.device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    ).clamp(min=dt_init_floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # the inverse of softplus
    bias._no_reinit = True


def s4d_real_a_log(rows: int, d_state: int, device: torch.device | None = None) -> nn.Parameter:
    """``A_log`` (rows, d_state) in float32 with ``-exp(A_log) = -(1..d_state)`` on every row (S4D-real)."""
    a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(rows, 1)
    a_log = nn.Parameter(torch.log(a))
    a_log._no_weight_decay = True
    return a_log


def ssm_skip(rows: int, device: torch.device | None = None) -> nn.Parameter:
    """The skip ``D`` (rows,), ones in float32."""
    d = nn.Parameter(torch.ones(rows, device=device))
    d._no_weight_decay = True
    return d
