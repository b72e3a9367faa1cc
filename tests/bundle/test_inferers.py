# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``DivisiblePadInferer``: one forward over the whole input padded to a multiple of k, cropped back;
``PooledSlidingWindowInferer``: MONAI's sliding windows on reused CPU memory."""

from __future__ import annotations

import sys

import pytest
import torch

from shared_networks.bundle import DivisiblePadInferer


def test_the_network_sees_a_divisible_size_and_the_crop_returns_the_input_region():
    seen = []

    def network(x):
        seen.append(tuple(x.shape))
        return x * 2

    x = torch.arange(1 * 2 * 13 * 16 * 17, dtype=torch.float32).reshape(1, 2, 13, 16, 17) + 1
    y = DivisiblePadInferer(k=16)(x, network)
    assert seen == [(1, 2, 16, 16, 32)]
    torch.testing.assert_close(y, x * 2, rtol=0, atol=0)  # wrong crop offsets would return padding zeros


def test_padding_is_symmetric_with_the_value_given_and_per_axis_multiples():
    seen = {}

    def network(x):
        seen["x"] = x.clone()
        return x

    x = torch.ones(1, 1, 5, 6)
    DivisiblePadInferer(k=(8, 4), value=-1.0)(x, network)
    padded = seen["x"]
    assert padded.shape == (1, 1, 8, 8)
    # 5 -> 8: 1 row before, 2 after (as MONAI's DivisiblePad, method "symmetric"); 6 -> 8: 1 column each side
    expected = torch.full((8, 8), -1.0)
    expected[1:6, 1:7] = 1.0
    torch.testing.assert_close(padded[0, 0], expected, rtol=0, atol=0)


def test_bad_arguments_and_outputs_are_refused():
    with pytest.raises(ValueError, match="k must be positive"):
        DivisiblePadInferer(k=0)(torch.ones(1, 1, 4, 4), lambda x: x)
    with pytest.raises(TypeError, match="returns one tensor"):
        DivisiblePadInferer(k=4)(torch.ones(1, 1, 4, 4), lambda x: (x, x))


def test_pooled_sliding_window_inferer_equals_monais_and_reuses_the_windows_memory():
    from monai.inferers import SlidingWindowInferer

    from shared_networks.bundle import PooledSlidingWindowInferer
    from shared_networks.ssm.cpp_scan import load_extension
    from shared_networks.ssm.cpu_inference import cpu_buffer_pool_stats

    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(2, 16, 3, padding=1)
    x = torch.randn(1, 2, 60, 56, 40, generator=gen)
    arguments = dict(roi_size=(32, 32, 32), sw_batch_size=1, overlap=0.5, mode="gaussian")
    with torch.inference_mode():
        expected = SlidingWindowInferer(**arguments)(x, conv)
        pooled = PooledSlidingWindowInferer(**arguments)
        before = cpu_buffer_pool_stats()["reused_bytes"] if load_extension() is not None else 0
        actual = pooled(x, conv)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    if load_extension() is not None and sys.platform.startswith("linux"):
        # each window's 2 MB output (16 x 32^3 float32) lands in the memory the window before freed (18 windows)
        assert cpu_buffer_pool_stats()["reused_bytes"] - before >= 17 * 2**21
        assert cpu_buffer_pool_stats()["users"] == 0 and cpu_buffer_pool_stats()["idle_bytes"] == 0
