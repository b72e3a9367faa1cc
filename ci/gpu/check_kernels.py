# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Smoke check of freshly built mamba-ssm / causal-conv1d CUDA kernels against the pure-PyTorch references that ship
with those packages (``selective_scan_ref``, ``causal_conv1d_ref``), fp32 forward and backward, on small random inputs.
Exits non-zero when an import fails or a relative error exceeds ``--tolerance``.

Usage (on the GPU machine, after ``ci/gpu/build_kernels.py``)::

    PYTHONPATH=/tmp/site python3 ci/gpu/check_kernels.py
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Dict, List, Sequence

import torch

logger = logging.getLogger("check_kernels")


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64."""
    expected = expected.double()
    return float((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30))


def _compare(fn, ref, inputs: Sequence[torch.Tensor], kwargs: Dict) -> Dict[str, float]:
    """Relative errors of ``fn`` vs ``ref`` on the output and the gradients of every input."""
    leaves_fn = [t.detach().clone().requires_grad_(True) for t in inputs]
    leaves_ref = [t.detach().clone().requires_grad_(True) for t in inputs]
    out_fn = fn(*leaves_fn, **kwargs)
    out_ref = ref(*leaves_ref, **kwargs)
    grad_out = torch.randn_like(out_ref)
    out_fn.backward(grad_out)
    out_ref.backward(grad_out)
    errors = {"out": _relative_error(out_fn, out_ref)}
    for index, (a, b) in enumerate(zip(leaves_fn, leaves_ref)):
        errors[f"grad{index}"] = _relative_error(a.grad, b.grad)
    return errors


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest relative error accepted")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
    if not torch.cuda.is_available():
        raise RuntimeError("check_kernels.py needs a CUDA device.")

    from causal_conv1d import causal_conv1d_fn
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref

    torch.manual_seed(0)
    device = torch.device("cuda")
    batch, dim, dstate, length = 2, 64, 16, 1000
    u = torch.randn(batch, dim, length, device=device)
    delta = 0.5 * torch.randn(batch, dim, length, device=device)
    A = -torch.rand(dim, dstate, device=device) - 0.5
    B = torch.randn(batch, dstate, length, device=device)
    C = torch.randn(batch, dstate, length, device=device)
    D = torch.randn(dim, device=device)
    z = torch.randn(batch, dim, length, device=device)
    delta_bias = 0.1 * torch.randn(dim, device=device)

    def scan(u, delta, A, B, C, D, z, delta_bias, **kwargs):
        return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, **kwargs)

    def scan_ref(u, delta, A, B, C, D, z, delta_bias, **kwargs):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, **kwargs)

    results = {
        "selective_scan_fn": _compare(scan, scan_ref, [u, delta, A, B, C, D, z, delta_bias], {"delta_softplus": True}),
    }
    x = torch.randn(batch, dim, length, device=device)
    weight = torch.randn(dim, 4, device=device)
    bias = torch.randn(dim, device=device)
    results["causal_conv1d_fn"] = _compare(
        causal_conv1d_fn, causal_conv1d_ref, [x, weight, bias], {"activation": "silu"}
    )

    failed = False
    for name, errors in results.items():
        worst = max(errors.values())
        failed |= not worst <= args.tolerance
        logger.info("%s vs upstream reference: max rel. error %.2e %s", name, worst, errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
