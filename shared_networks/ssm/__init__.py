# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""
Selective-scan core of the Mamba layers: the S6 scan and the causal depthwise conv1d, each dispatched to mamba-ssm /
causal-conv1d CUDA kernels, a compiled C++ CPU kernel or pure PyTorch (see :mod:`shared_networks.ssm.backends`).
"""

# importing cpp_scan and scripted registers torch.ops.shared_networks.* (no compilation), which scripted, traced and
# exported models call
from shared_networks.ssm import cpp_scan as _cpp_scan  # noqa: F401
from shared_networks.ssm import scripted as _scripted  # noqa: F401
from shared_networks.ssm.backends import available_backends, causal_conv1d_backend, selective_scan_backend
from shared_networks.ssm.causal_conv1d import causal_conv1d
from shared_networks.ssm.selective_scan import selective_scan

__all__ = [
    "selective_scan",
    "causal_conv1d",
    "selective_scan_backend",
    "causal_conv1d_backend",
    "available_backends",
]
