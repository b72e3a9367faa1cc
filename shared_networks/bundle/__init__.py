# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Handlers referenced from the MONAI bundle configs (``bundles/*/configs``); dataset- and network-agnostic."""

from .checkpoints import (
    CheckpointError,
    NonFiniteError,
    SafeCheckpointLoader,
    check_finite,
    find_non_finite,
    load_checkpoint_into,
    load_network_weights,
    load_state_dict_checked,
    read_checkpoint,
)
from .classification import (
    SubjectProbabilities,
    binary_classification_metrics,
    class_balanced_weights,
    write_classification_report,
    write_records_csv,
    youden_threshold,
)
from .cli import check_command_line
from .distributed import shutdown_process_group
from .handlers import (
    AtomicCheckpointSaver,
    EncoderFreezing,
    GradientClipping,
    MetricsSummarySaver,
    NonFiniteGuard,
    TrainingCheckpoint,
    clean_checkpoint_folder,
)
from .inferers import DivisiblePadInferer, PooledSlidingWindowInferer
from .landmarks import (
    DecodeLandmarksd,
    LandmarkLabelMapd,
    LandmarksFromLabelMapd,
    LandmarkWriter,
    MeanRadialError,
    RadialErrorMetric,
    decode_heatmaps,
    landmark_label_map,
    landmarks_from_label_map,
    voxel_to_world,
)
from .metrics import (
    ABDOMEN_ORGAN_TOLERANCES_MM,
    ABDOMEN_Z_RANGE_ORGANS,
    NanAwareHausdorffDistance,
    NanAwareMeanDice,
    OrganDice,
    OrganDiceNSDMetric,
    OrganNSD,
    PresentLabelDice,
    PresentLabelDiceMetric,
    organ_tolerances_mm,
    z_range_channels,
)
from .writers import AtomicNibabelWriter, AtomicPILWriter, pending_items
