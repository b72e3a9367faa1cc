# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The shared SSM initialisation against Mamba's definition (Gu & Dao 2023, Sec. 3.6), for the plain layout of the
``Mamba`` layer and for a stacked (directions, d_inner, rank) layout such as VMamba's ``dt_projs_weight``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shared_networks.blocks import Mamba
from shared_networks.blocks.ssm_init import init_dt_projection_, s4d_real_a_log, ssm_skip


@pytest.mark.parametrize("shape", [(96, 6), (4, 96, 6)], ids=["plain", "stacked"])
def test_dt_projection_ranges(shape):
    weight, bias = torch.empty(shape), torch.empty(shape[:-1])
    torch.manual_seed(0)
    init_dt_projection_(weight, bias, dt_scale=2.0, dt_min=0.002, dt_max=0.05, dt_init_floor=1e-4)
    bound = 2.0 / math.sqrt(shape[-1])
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound  # uniform over the whole range
    dt = F.softplus(bias.double())  # the bias is softplus^-1 of the initial step
    assert dt.min() >= 0.002 - 1e-9 and dt.max() <= 0.05 + 1e-9
    # log-uniform: the median step is near the geometric mean of the bounds
    assert abs(math.log(float(dt.median())) - 0.5 * (math.log(0.002) + math.log(0.05))) < 0.5
    assert bias._no_reinit


def test_dt_projection_constant_and_floor():
    weight, bias = torch.empty(8, 4), torch.empty(8)
    init_dt_projection_(weight, bias, dt_init="constant", dt_min=1e-6, dt_max=1e-5, dt_init_floor=1e-3)
    torch.testing.assert_close(weight, torch.full((8, 4), 0.5))
    torch.testing.assert_close(F.softplus(bias), torch.full((8,), 1e-3))
    with pytest.raises(ValueError, match="dt_init"):
        init_dt_projection_(weight, bias, dt_init="uniform")


def test_a_log_and_skip():
    a_log, d = s4d_real_a_log(3, 4), ssm_skip(3)
    torch.testing.assert_close(-torch.exp(a_log), -torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 3))
    assert a_log.dtype == torch.float32 and a_log._no_weight_decay
    torch.testing.assert_close(d, torch.ones(3))
    assert d._no_weight_decay


def test_mamba_layer_draws_the_same_values_as_the_helper():
    """The Mamba layer's dt_proj is the helper's output for the same random stream (the order of mamba-ssm:
    PyTorch's default init of the Linear, then weight, then bias)."""
    torch.manual_seed(7)
    layer = Mamba(d_model=32, d_state=8)
    torch.manual_seed(7)
    torch.nn.Linear(32, 128, bias=False)  # in_proj
    torch.nn.Conv1d(64, 64, kernel_size=4, groups=64, padding=3)
    torch.nn.Linear(64, layer.dt_rank + 16, bias=False)  # x_proj
    dt_proj = torch.nn.Linear(layer.dt_rank, 64)
    init_dt_projection_(dt_proj.weight, dt_proj.bias)
    torch.testing.assert_close(layer.dt_proj.weight, dt_proj.weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.dt_proj.bias, dt_proj.bias, rtol=0, atol=0)
