# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Dataset readers, datalists and synthetic data generators."""

from .brats import (
    BRATS_LABELS,
    BRATS_MODALITIES,
    BRATS_REGIONS,
    brats_case_name_formatter,
    find_brats_cases,
    generate_brats_phantoms,
    make_brats_datalist,
    split_case_names,
    validate_brats_cases,
)
from .transforms import ConvertToBratsRegions, ConvertToBratsRegionsd
from .validation import (
    ImageFileSummary,
    ValidationCache,
    check_image_file,
    check_same_grid,
    run_checks,
    validation_sidecar_path,
)

__all__ = [
    "BRATS_LABELS",
    "BRATS_MODALITIES",
    "BRATS_REGIONS",
    "ConvertToBratsRegions",
    "brats_case_name_formatter",
    "ConvertToBratsRegionsd",
    "ImageFileSummary",
    "ValidationCache",
    "check_image_file",
    "check_same_grid",
    "find_brats_cases",
    "generate_brats_phantoms",
    "make_brats_datalist",
    "run_checks",
    "split_case_names",
    "validate_brats_cases",
    "validation_sidecar_path",
]
