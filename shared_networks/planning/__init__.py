# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Experiment planning: nnU-Net v2 plans files read as they are, summarised in MONAI terms, and new plans made by
nnU-Net v2's own fingerprint extraction and planner (optional extra ``planning``); see ``docs/planning.md``.

The names are imported from :mod:`shared_networks.planning.nnunet` on first use, so that ``python -m
shared_networks.planning.nnunet`` does not import that module twice."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "NNUNET_PYTHON_ENV_VAR",
    "PLANNING_INSTALL_COMMAND",
    "ChannelNormalization",
    "NNUNetConfiguration",
    "NNUNetNormalized",
    "PlansError",
    "check_network_matches_plan",
    "check_plan_fits_dataset",
    "configuration_summary",
    "format_configuration",
    "plan_nnunet_dataset",
    "plan_nnunet_fingerprint",
    "read_nnunet_plans",
    "write_demo_raw_dataset",
]


_TRANSFORMS = ("NNUNetNormalized", "check_network_matches_plan", "check_plan_fits_dataset")


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = ".transforms" if name in _TRANSFORMS else ".nnunet"
        return getattr(importlib.import_module(module, __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
