# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""nnU-Net's deep-supervision weights against hand-computed values (and the research notes' rounded figures)."""

from __future__ import annotations

import pytest

from shared_networks.losses import nnunet_deep_supervision_weights


def test_weights_by_hand():
    assert nnunet_deep_supervision_weights(5) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15, 0.0])
    # 7 stages -> 6 outputs: 1, 1/2, ... 1/16, 0 over 31/16
    assert nnunet_deep_supervision_weights(6) == pytest.approx([16 / 31, 8 / 31, 4 / 31, 2 / 31, 1 / 31, 0.0])
    assert [round(w, 3) for w in nnunet_deep_supervision_weights(6)] == [0.516, 0.258, 0.129, 0.065, 0.032, 0.0]
    assert nnunet_deep_supervision_weights(1) == [1.0]
    assert nnunet_deep_supervision_weights(2) == [1.0, 0.0]
    with pytest.raises(ValueError, match="positive integer"):
        nnunet_deep_supervision_weights(0)
