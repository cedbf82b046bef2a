"""ConvNeXt-Tiny (Liu et al. 2022), torchvision's implementation, as the registry builds it.

torchvision's own initialisation (truncated normal, std 0.02; layer scale 1e-6,
so every block starts close to the identity) and its layout, so its ImageNet
weights load strictly. Its record (head ``classifier.2``, Grad-CAM's stages
``features.1/3/5/7``) is in :mod:`retinopathy.core.registry`.
"""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn


def convnext_tiny(num_classes: int = 1000, zero_init_residual: bool = False) -> nn.Module:
    """ConvNeXt-Tiny; 28,589,128 parameters with 1000 classes.

    Raises:
        ValueError: for ``zero_init_residual`` (its record says it has no such start; params
            validation refuses it first).
    """
    if zero_init_residual:
        raise ValueError("convnext_tiny has no zero_init_residual start (see core/registry.py)")
    return tvm.convnext_tiny(weights=None, num_classes=num_classes)
