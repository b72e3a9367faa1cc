# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The end of a ``multi_gpu_train`` run: every rank leaves the process group together, with no collective in flight."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["shutdown_process_group"]


def shutdown_process_group() -> None:
    """Wait for every rank, then destroy the default process group (no-op when none is initialised).

    The ``finalize`` step of each bundle's ``multi_gpu_train`` config. Ranks finish at different times (only rank 0
    runs the validation handlers and writes checkpoints), and gloo completes collectives on its own worker threads.
    A rank that destroys its group and exits while such a thread still holds work (e.g. DDP's unused-parameter
    all-reduce under ``find_unused_parameters``) can abort during interpreter shutdown ("terminate called without an
    active exception", exit code -6, seen once in CI with 2 CPU ranks). A barrier waits for all ranks and, on gloo,
    for all work queued before it, as PyTorch's own distributed tests do before ``destroy_process_group``.
    """
    if not dist.is_available() or not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
