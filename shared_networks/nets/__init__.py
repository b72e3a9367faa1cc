# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The networks of the papers, one module per paper. Every network class in ``__all__`` passes the network contract
test (``tests/nets/test_network_contract.py``)."""

from .nnmamba import nnMambaClassifier, nnMambaSeg
from .segmamba import SegMamba
from .swin_umamba import SwinUMamba, SwinUMambaD, VMambaLoadReport, load_vmamba_pretrained, save_vmamba_encoder
from .umamba import UMambaBot, UMambaEnc, umamba_from_plans

__all__ = [
    "nnMambaClassifier",
    "nnMambaSeg",
    "SegMamba",
    "SwinUMamba",
    "SwinUMambaD",
    "VMambaLoadReport",
    "load_vmamba_pretrained",
    "save_vmamba_encoder",
    "UMambaBot",
    "UMambaEnc",
    "umamba_from_plans",
]
