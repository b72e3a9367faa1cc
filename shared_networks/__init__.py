# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Mamba-based medical image segmentation networks and a portable selective-scan core for MONAI bundles."""

__version__ = "0.1.0"

# registers the scan kernel's operators (torch.ops.shared_networks.*, no compilation), which TorchScript and
# torch.export models of these networks call: `import shared_networks` is all a user needs before torch.jit.load
from shared_networks import ssm as _ssm  # noqa: E402,F401
