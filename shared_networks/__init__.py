"""Mamba-based medical image segmentation networks and a portable selective-scan core for MONAI bundles."""

__version__ = "0.1.0"
