# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
from .mamba import Mamba, ScanOrder
from .nnmamba_blocks import (
    HierarchicalSequenceMamba,
    MambaInConvolution,
    channel_spatial_siamese_mean,
    nnMambaDoubleConv,
    nnMambaResidualBlock,
    nnMambaResidualStage,
    nnMambaSkipScaling,
)
from .scan_orders import inter_slice_order, reversed_order, tri_orientated_orders
from .segmamba_blocks import (
    ChannelMlp,
    FeatureUncertaintyEstimation,
    GatedSpatialConvolution,
    SegMambaEncoder,
    TriOrientatedMambaLayer,
    TSMambaBlock,
)
