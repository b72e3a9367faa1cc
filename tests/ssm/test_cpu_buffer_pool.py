# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The CPU buffer pool (csrc/cpu_buffer_pool.cpp): freed memory of tensors of 1 MB and more stays mapped in 2 MB
units and serves later tensors (best-fitting idle run, or idle units moved together with mremap plus fresh memory
for the rest), smaller tensors are left to PyTorch's allocator, nothing computed changes, and leaving the last
context gives the idle memory back and restores PyTorch's allocator."""

from __future__ import annotations

import sys
import threading

import pytest
import torch

from shared_networks.ssm.backends import BACKEND_ENV_VAR
from shared_networks.ssm.cpp_scan import load_extension
from shared_networks.ssm.cpu_inference import cpu_buffer_pool, cpu_buffer_pool_stats

pytestmark = [
    pytest.mark.skipif(load_extension() is None, reason="the C++ extension could not be built here"),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pool needs Linux's mremap"),
]

MB = 1 << 20


def floats(nbytes: int, value: float | None = None) -> torch.Tensor:
    return torch.empty(nbytes // 4) if value is None else torch.full((nbytes // 4,), value)


def test_a_request_takes_the_smallest_idle_run_that_fits_and_the_rest_of_a_longer_run_stays_idle():
    with cpu_buffer_pool() as pooled:
        assert pooled
        before = cpu_buffer_pool_stats()
        big, small = floats(64 * MB), floats(4 * MB)
        big_address, small_address = big.data_ptr(), small.data_ptr()
        del big, small
        stats = cpu_buffer_pool_stats()
        assert stats["idle_bytes"] == before["idle_bytes"] + 68 * MB
        assert stats["fresh_bytes"] - before["fresh_bytes"] == 68 * MB
        three, ten = floats(3 * MB), floats(10 * MB)  # 2 and 5 units of 2 MB
        assert three.data_ptr() == small_address  # the 4 MB run fits best
        assert ten.data_ptr() == big_address  # the head of the 64 MB run
        stats = cpu_buffer_pool_stats()
        assert stats["idle_bytes"] == before["idle_bytes"] + (64 - 10) * MB
        assert stats["reused_bytes"] - before["reused_bytes"] == 14 * MB
        assert stats["fresh_bytes"] - before["fresh_bytes"] == 68 * MB
        del three, ten


def test_when_no_idle_run_is_long_enough_idle_units_move_with_their_contents_and_fresh_memory_covers_the_rest():
    with cpu_buffer_pool():
        before = cpu_buffer_pool_stats()
        first = floats(54 * MB, 7.0)
        del first
        # 100 MB = 50 units: the 27 idle ones (mremap moves the pages, not copies or zeroes) and 23 fresh (zero) ones
        second = floats(100 * MB)
        stats = cpu_buffer_pool_stats()
        assert stats["reused_bytes"] - before["reused_bytes"] == 54 * MB
        assert stats["fresh_bytes"] - before["fresh_bytes"] == (54 + 46) * MB
        assert stats["idle_bytes"] == before["idle_bytes"]
        assert bool((second[: 54 * MB // 4] == 7).all())
        assert bool((second[54 * MB // 4 :] == 0).all())
        del second


def test_small_tensors_stay_with_pytorchs_allocator():
    with cpu_buffer_pool():
        before = cpu_buffer_pool_stats()
        tensors = [floats(MB - 4) for _ in range(3)] + [torch.ones(10)]
        assert cpu_buffer_pool_stats() == before
        del tensors


def test_values_computed_in_the_pool_equal_those_outside():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 40, 40, 40, generator=gen)
    conv = torch.nn.Conv3d(8, 16, 3, padding=1)
    norm = torch.nn.InstanceNorm3d(16, affine=True)

    def network(v: torch.Tensor) -> torch.Tensor:
        return torch.relu(norm(conv(v))) * 2 + v.mean()

    with torch.inference_mode():
        expected = network(x)
        with cpu_buffer_pool():
            before = cpu_buffer_pool_stats()
            first = network(x)
            second = network(x)  # on the memory the first call freed
            stats = cpu_buffer_pool_stats()
    assert stats["reused_bytes"] > before["reused_bytes"]
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)


def test_leaving_gives_the_idle_memory_back_and_restores_pytorchs_allocator():
    with cpu_buffer_pool():
        survivor = torch.arange(2 * MB // 4, dtype=torch.float32)  # outlives the context
        floats(8 * MB, 1.0)  # freed at once, kept
        assert cpu_buffer_pool_stats()["idle_bytes"] >= 8 * MB
    left = cpu_buffer_pool_stats()
    assert left["users"] == 0 and left["idle_bytes"] == 0
    assert left["lent_bytes"] >= 2 * MB
    # the survivor's memory is still its own, and later tensors come from PyTorch's allocator, not the pool
    torch.testing.assert_close(survivor, torch.arange(2 * MB // 4, dtype=torch.float32), rtol=0, atol=0)
    outside = floats(8 * MB)
    assert cpu_buffer_pool_stats() == left
    del outside, survivor
    # the survivor's units were unmapped, not kept idle
    assert cpu_buffer_pool_stats()["lent_bytes"] == left["lent_bytes"] - 2 * MB
    assert cpu_buffer_pool_stats()["idle_bytes"] == 0


def test_nested_and_concurrent_contexts_share_one_pool_until_the_last_leaves():
    with cpu_buffer_pool():
        with cpu_buffer_pool():
            assert cpu_buffer_pool_stats()["users"] == 2
            floats(4 * MB, 0.0)
        # the inner context left: the memory is still kept for the outer one
        assert cpu_buffer_pool_stats()["users"] == 1
        assert cpu_buffer_pool_stats()["idle_bytes"] >= 4 * MB
    assert cpu_buffer_pool_stats()["idle_bytes"] == 0

    errors = []

    def work(seed: int) -> None:
        try:
            gen = torch.Generator().manual_seed(seed)
            with cpu_buffer_pool():
                for step in range(6):
                    a = torch.randn((3 + step) * MB // 4, generator=gen)
                    b = a * 2
                    assert torch.equal(b / 2, a)
        except Exception as exc:  # reported below: pytest does not see failures in threads
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert cpu_buffer_pool_stats()["users"] == 0 and cpu_buffer_pool_stats()["idle_bytes"] == 0


def test_an_error_inside_the_context_still_leaves_the_pool():
    with pytest.raises(RuntimeError, match="inside"):
        with cpu_buffer_pool():
            floats(4 * MB)
            raise RuntimeError("inside")
    assert cpu_buffer_pool_stats()["users"] == 0 and cpu_buffer_pool_stats()["idle_bytes"] == 0


def test_the_pool_stays_off_where_the_kernels_do(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, "torch")
    with cpu_buffer_pool() as pooled:
        assert not pooled
        assert cpu_buffer_pool_stats()["users"] == 0
