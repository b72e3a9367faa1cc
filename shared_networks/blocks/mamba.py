# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Mamba layer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv:2312.00752).

The parameters, their names, shapes and initialisation equal ``mamba_ssm.modules.mamba_simple.Mamba``, so a state
dict moves between the two unchanged. The layer optionally scans the same projected sequence along several orders
("directions"), each with its own (conv1d, x_proj, dt_proj, A_log, D) set under a name suffix, sharing in_proj and
out_proj: the layout of SegMamba's tri-orientated Mamba (suffixes ``""``, ``"_b"``, ``"_s"``) and of Vision Mamba's
bidirectional layer. VMamba's SS2D stacks its four directions into single tensors instead (``x_proj_weight``,
``dt_projs_weight``, ``A_logs``, ...); it is its own layer, sharing only the initialisation of
:mod:`shared_networks.blocks.ssm_init`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_networks.blocks.ssm_init import (
    DT_INIT_MODES,
    init_dt_projection_,
    s4d_real_a_log,
    ssm_skip,
)
from shared_networks.ssm import causal_conv1d, selective_scan
from shared_networks.utils import look_up_argument

__all__ = ["Mamba", "ScanOrder"]

# A scan order is a pair (permutation, inverse permutation) of sequence positions, or None for the identity order.
ScanOrder = tuple[torch.Tensor, torch.Tensor] | None


class Mamba(nn.Module):
    """Selective state-space layer mapping (batch, length, d_model) to the same shape.

    Args:
        d_model: token width.
        d_state: SSM state size N.
        d_conv: width of the causal depthwise convolution.
        expand: inner width factor (d_inner = expand * d_model).
        dt_rank: rank of the delta projection; "auto" = ceil(d_model / 16).
        dt_min: smallest initial step size.
        dt_max: largest initial step size.
        dt_init: "random" or "constant" initialisation of dt_proj.weight.
        dt_scale: scale of the dt_proj.weight initialisation.
        dt_init_floor: lower clamp of the initial step size.
        conv_bias: whether the depthwise convolutions have a bias.
        bias: whether in_proj and out_proj have a bias.
        direction_suffixes: one parameter-name suffix per scan direction; ``("",)`` is the plain Mamba layer,
            ``("", "_b", "_s")`` the tri-orientated layer of SegMamba. A direction with suffix ``s`` owns
            ``conv1d{s}``, ``x_proj{s}``, ``dt_proj{s}``, ``A{s}_log`` and ``D{s}``.
        init_all_directions: apply Mamba's dt initialisation to every direction. SegMamba's release initialises
            only the first direction this way and leaves the others at PyTorch's default (False reproduces it).
        device: device of the parameters.
        dtype: dtype of the parameters.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        direction_suffixes: Sequence[str] = ("",),
        init_all_directions: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        look_up_argument("dt_init", dt_init, DT_INIT_MODES)
        if len(direction_suffixes) == 0 or len(set(direction_suffixes)) != len(direction_suffixes):
            raise ValueError(f"direction_suffixes must be non-empty and unique, got {tuple(direction_suffixes)}.")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.direction_suffixes = tuple(direction_suffixes)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        # Registration order follows mamba-ssm (parameters A_log, D are created after the submodules there too).
        for index, suffix in enumerate(self.direction_suffixes):
            conv = nn.Conv1d(
                self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1,
                bias=conv_bias, **factory,
            )
            x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
            if index == 0 or init_all_directions:
                init_dt_projection_(dt_proj.weight, dt_proj.bias, dt_init, dt_scale, dt_min, dt_max, dt_init_floor)
            setattr(self, f"conv1d{suffix}", conv)
            setattr(self, f"x_proj{suffix}", x_proj)
            setattr(self, f"dt_proj{suffix}", dt_proj)
            setattr(self, f"A{suffix}_log", s4d_real_a_log(self.d_inner, d_state, device=device))
            setattr(self, f"D{suffix}", ssm_skip(self.d_inner, device=device))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _scan_direction(self, x: torch.Tensor, z: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction on (batch, d_inner, L) inputs already in that direction's order; returns the gated y."""
        conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        x_proj: nn.Linear = getattr(self, f"x_proj{suffix}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        a = -torch.exp(getattr(self, f"A{suffix}_log").float())
        d = getattr(self, f"D{suffix}").float()
        x = causal_conv1d(x, conv.weight.squeeze(1), conv.bias, activation="silu")
        x_dbl = x_proj(x.transpose(1, 2))  # (batch, L, dt_rank + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # bias is added inside the scan, in fp32
        return selective_scan(
            x, delta, a, b.transpose(1, 2), c.transpose(1, 2), D=d, z=z,
            delta_bias=dt_proj.bias.float(), delta_softplus=True,
        )

    def forward(self, hidden_states: torch.Tensor, scan_orders: Sequence[ScanOrder] | None = None) -> torch.Tensor:
        """
        Args:
            hidden_states: (batch, L, d_model).
            scan_orders: one order per direction (see ``ScanOrder``); None means every direction in natural order,
                which is only meaningful for a single direction.
        """
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"hidden_states must be (batch, L, d_model={self.d_model}), got {tuple(hidden_states.shape)}."
            )
        if scan_orders is None:
            scan_orders = [None] * len(self.direction_suffixes)
        if len(scan_orders) != len(self.direction_suffixes):
            raise ValueError(
                f"scan_orders must give one order per direction ({len(self.direction_suffixes)}), "
                f"got {len(scan_orders)}."
            )
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2 * d_inner, L)
        x, z = xz.chunk(2, dim=1)
        y = None
        for suffix, order in zip(self.direction_suffixes, scan_orders):
            if order is None:
                y_dir = self._scan_direction(x, z, suffix)
            else:
                permutation, inverse = order
                y_dir = self._scan_direction(x[..., permutation], z[..., permutation], suffix)[..., inverse]
            # Directions are summed without averaging before the shared out_proj (as in SegMamba's release).
            y = y_dir if y is None else y + y_dir
        return self.out_proj(y.transpose(1, 2))
