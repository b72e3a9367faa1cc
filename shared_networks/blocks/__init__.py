from .mamba import Mamba, ScanOrder
from .scan_orders import inter_slice_order, reversed_order, tri_orientated_orders
from .segmamba_blocks import (
    ChannelMlp,
    FeatureUncertaintyEstimation,
    GatedSpatialConvolution,
    SegMambaEncoder,
    TriOrientatedMambaLayer,
    TSMambaBlock,
)
