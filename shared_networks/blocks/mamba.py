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
from typing import List, Optional, Tuple

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
from shared_networks.ssm.cpu_inference import inference_kernels_apply, mamba_directions_inference
from shared_networks.ssm.scripted import causal_conv1d_silu_scripted, selective_scan_scripted
from shared_networks.utils import look_up_argument

__all__ = ["Mamba", "ScanOrder"]

# A scan order is a pair (permutation, inverse permutation) of sequence positions, or None for the identity order.
ScanOrder = Optional[Tuple[torch.Tensor, torch.Tensor]]
# conv1d weight, conv1d bias, x_proj weight, dt_proj weight, dt_proj bias, A_log, D of one direction
DirectionParameters = Tuple[
    torch.Tensor, Optional[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]


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
            ``conv1d{s}``, ``x_proj{s}``, ``dt_proj{s}``, ``A{s}_log`` and ``D{s}``. ``torch.jit.script`` compiles
            the layer for the suffixes ``""``, ``"_b"`` and ``"_s"``.
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

    def _direction_parameters(self, suffix: str) -> DirectionParameters:
        """The parameters of the direction with name suffix ``suffix``."""
        if torch.jit.is_scripting():
            # TorchScript cannot look an attribute up by a computed name, so the layouts of the papers are spelled out
            # (mamba-ssm's plain layer, Vision Mamba's "_b", SegMamba's "_b" and "_s"); each hasattr branch is
            # compiled only where the attribute exists. Eager mode takes any suffixes.
            if suffix == "_b":
                if hasattr(self, "conv1d_b"):
                    return (self.conv1d_b.weight, self.conv1d_b.bias, self.x_proj_b.weight, self.dt_proj_b.weight,
                            self.dt_proj_b.bias, self.A_b_log, self.D_b)
            if suffix == "_s":
                if hasattr(self, "conv1d_s"):
                    return (self.conv1d_s.weight, self.conv1d_s.bias, self.x_proj_s.weight, self.dt_proj_s.weight,
                            self.dt_proj_s.bias, self.A_s_log, self.D_s)
            if suffix != "":
                raise RuntimeError(f"direction suffix '{suffix}' cannot be scripted; use one of '', '_b', '_s'.")
            return (self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias,
                    self.A_log, self.D)
        conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        return (conv.weight, conv.bias, getattr(self, f"x_proj{suffix}").weight, dt_proj.weight, dt_proj.bias,
                getattr(self, f"A{suffix}_log"), getattr(self, f"D{suffix}"))

    def _scan_direction(self, x: torch.Tensor, z: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction on (batch, d_inner, L) inputs already in that direction's order; returns the gated y."""
        conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_proj_bias, a_log, d = self._direction_parameters(
            suffix
        )
        a = -torch.exp(a_log.float())
        if torch.jit.is_scripting():
            x = causal_conv1d_silu_scripted(x, conv_weight.squeeze(1), conv_bias)
        else:
            x = causal_conv1d(x, conv_weight.squeeze(1), conv_bias, activation="silu")
        x_dbl = F.linear(x.transpose(1, 2), x_proj_weight)  # (batch, L, dt_rank + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj_weight).transpose(1, 2)  # bias is added inside the scan, in fp32
        if torch.jit.is_scripting():
            return selective_scan_scripted(
                x, delta, a, b.transpose(1, 2), c.transpose(1, 2), d.float(), z, dt_proj_bias.float(), True
            )
        return selective_scan(
            x, delta, a, b.transpose(1, 2), c.transpose(1, 2), D=d.float(), z=z,
            delta_bias=dt_proj_bias.float(), delta_softplus=True,
        )

    def forward(
        self, hidden_states: torch.Tensor, scan_orders: Optional[List[ScanOrder]] = None
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: (batch, L, d_model).
            scan_orders: one order per direction (see ``ScanOrder``); None means every direction in natural order,
                which is only meaningful for a single direction.
        """
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.d_model:
            raise ValueError(
                f"hidden_states must be (batch, L, d_model={self.d_model}), got {list(hidden_states.shape)}."
            )
        n_directions = len(self.direction_suffixes)
        if scan_orders is not None and len(scan_orders) != n_directions:
            raise ValueError(
                f"scan_orders must give one order per direction ({n_directions}), got {len(scan_orders)}."
            )
        if not torch.jit.is_scripting():
            if inference_kernels_apply(hidden_states, *self.parameters()):
                return self._forward_inference(hidden_states, scan_orders)
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (batch, 2 * d_inner, L)
        x, z = xz.chunk(2, dim=1)
        y: Optional[torch.Tensor] = None
        index = 0
        for suffix in self.direction_suffixes:
            order: ScanOrder = None if scan_orders is None else scan_orders[index]
            if order is None:
                y_dir = self._scan_direction(x, z, suffix)
            else:
                permutation, inverse = order
                y_dir = self._scan_direction(x.index_select(2, permutation), z.index_select(2, permutation), suffix)
                y_dir = y_dir.index_select(2, inverse)
            # Directions are summed without averaging before the shared out_proj (as in SegMamba's release).
            y = y_dir if y is None else y + y_dir
            index += 1
        if y is None:  # unreachable (the constructor requires a direction); refines the type for TorchScript
            raise RuntimeError("the Mamba layer has no scan direction.")
        return self.out_proj(y.transpose(1, 2))

    @torch.jit.unused
    def _forward_inference(self, hidden_states: torch.Tensor, scan_orders: Optional[List[ScanOrder]]) -> torch.Tensor:
        """The same values as the differentiable path, computed by the forward-only CPU kernels on token-major rows
        (``shared_networks.ssm.cpu_inference``): each direction reads the tokens in its order and adds its output in
        natural order, without permuted copies."""
        directions = []
        for index, suffix in enumerate(self.direction_suffixes):
            order = None if scan_orders is None or scan_orders[index] is None else scan_orders[index][0]
            directions.append(self._direction_parameters(suffix) + (order,))
        y = mamba_directions_inference(self.in_proj(hidden_states), directions, self.dt_rank, self.d_state)
        return self.out_proj(y)
