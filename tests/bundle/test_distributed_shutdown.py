# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""``shutdown_process_group``, the ``finalize`` step of every ``multi_gpu_train`` config (the 2-rank runs are in
tests/bundles/test_multi_gpu.py)."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist

from shared_networks.bundle import shutdown_process_group


def test_without_a_process_group_it_does_nothing():
    assert not dist.is_initialized()
    shutdown_process_group()
    assert not dist.is_initialized()


def test_all_ranks_meet_before_the_group_is_destroyed(tmp_path: Path, monkeypatch):
    calls = []
    barrier, destroy = dist.barrier, dist.destroy_process_group
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: calls.append("barrier") or barrier(*a, **k))
    monkeypatch.setattr(dist, "destroy_process_group", lambda *a, **k: calls.append("destroy") or destroy(*a, **k))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        shutdown_process_group()
        assert calls == ["barrier", "destroy"]
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            destroy()
