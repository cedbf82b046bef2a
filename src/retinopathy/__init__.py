"""Diabetic retinopathy grading with ResNet18/ResNet50 as a reproducible DVC pipeline."""

__version__ = "0.1.0"
