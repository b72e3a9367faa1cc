# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Small helpers shared by the blocks and networks of every paper."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from monai.utils import look_up_option

__all__ = ["look_up_argument"]


def look_up_argument(name: str, value: Any, supported: Collection) -> Any:
    """
    :func:`monai.utils.look_up_option` (with its "did you mean" hint) whose error also names the argument, e.g.
    ``ValueError: mode: By 'papr', did you mean 'paper'? ... Available options are {'paper', 'release'}.``
    """
    try:
        return look_up_option(value, supported)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err
