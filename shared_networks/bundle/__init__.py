# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Handlers and helpers referenced from the MONAI bundle configs (``bundles/*/configs``)."""

from .handlers import AtomicCheckpointSaver, GradientClipping, MetricsSummarySaver, TrainingCheckpoint
from .utils import brats_case_name_formatter, save_atomically, select_channel_from_engine, write_text_atomically
