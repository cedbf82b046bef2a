"""EfficientNet-B0 (Tan & Le 2019), torchvision's implementation, as the registry builds it.

torchvision's own initialisation (Kaiming normal convolutions, BatchNorm as the
identity, uniform Linear) and its layout, so its ImageNet weights load strictly.
Its record (head ``classifier.1``, Grad-CAM's ``features.N``) is in
:mod:`retinopathy.core.registry`.
"""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn


def efficientnet_b0(num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """EfficientNet-B0; 5,288,548 parameters with 1000 classes.

    Raises:
        ValueError: for ``zero_init_residual`` (its record says it has no such start; params
            validation refuses it first).
    """
    if zero_init_residual:
        raise ValueError("efficientnet_b0 has no zero_init_residual start (see core/registry.py)")
    return tvm.efficientnet_b0(weights=None, num_classes=num_classes)
