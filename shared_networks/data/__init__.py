# Copyright (c) the shared_networks contributors.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in compliance with
# the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Dataset readers, datalists and synthetic data generators."""

from .adni import (
    ADNI_SPACING,
    ADNI_SPATIAL_SIZE,
    ADNI_TASKS,
    adni_task_classes,
    find_adni_scans,
    generate_adni_phantoms,
    list_adni_volumes,
    make_adni_datalist,
    split_adni_subjects,
)
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
from .endovis import (
    ENDOVIS17_LABELS,
    find_endovis_cases,
    generate_endovis_phantoms,
    instrument_class,
    make_endovis_datalist,
    merge_instrument_masks,
    validate_endovis_cases,
)
from .transforms import LABEL_PALETTE, ConvertToBratsRegions, ConvertToBratsRegionsd, LabelOverlayd, RandMaskCellsd
from .validation import (
    ImageFileSummary,
    ValidationCache,
    check_image_file,
    check_png_file,
    check_same_grid,
    read_datalist,
    run_checks,
    validation_sidecar_path,
)

__all__ = [
    "ADNI_SPACING",
    "ADNI_SPATIAL_SIZE",
    "ADNI_TASKS",
    "adni_task_classes",
    "find_adni_scans",
    "generate_adni_phantoms",
    "list_adni_volumes",
    "make_adni_datalist",
    "split_adni_subjects",
    "brats_case_name_formatter",
    "BRATS_LABELS",
    "BRATS_MODALITIES",
    "BRATS_REGIONS",
    "check_image_file",
    "check_png_file",
    "check_same_grid",
    "ConvertToBratsRegions",
    "ConvertToBratsRegionsd",
    "ENDOVIS17_LABELS",
    "find_brats_cases",
    "find_endovis_cases",
    "generate_brats_phantoms",
    "generate_endovis_phantoms",
    "ImageFileSummary",
    "instrument_class",
    "LABEL_PALETTE",
    "LabelOverlayd",
    "make_brats_datalist",
    "make_endovis_datalist",
    "merge_instrument_masks",
    "RandMaskCellsd",
    "read_datalist",
    "run_checks",
    "split_case_names",
    "validate_brats_cases",
    "validate_endovis_cases",
    "validation_sidecar_path",
    "ValidationCache",
]
