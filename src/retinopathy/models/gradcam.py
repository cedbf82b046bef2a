"""Where the grader looked: Grad-CAM heat maps (Captum's ``LayerGradCam``) over the photograph.

Grad-CAM (Selvaraju et al. 2017) weighs a convolutional layer's feature maps
by the gradient of one output, here the predicted grade's logit (or the
regression value), and keeps the positive part: where evidence for that grade
was found. It runs on the eager fp32 grader (hooks are ignored under
``torch.compile``; NumPy has no bf16), on the images as the network saw them.

The layer is the deepest of the architecture's Grad-CAM candidates (its
registry record's ``cam_layers``) whose map still has at least
:data:`MIN_CELLS` cells a side: for a ResNet ``layer4`` at 512 px (16 x 16),
but ``layer3`` at the demo's 128 px, where ``layer4`` would be a 4 x 4 blur.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from retinopathy.core.registry import architecture
from retinopathy.models.grader import Grader

MIN_CELLS = 8


def target_layer(grader: Grader, side: int) -> tuple[str, nn.Module]:
    """The deepest of the record's ``cam_layers`` whose feature map has at least ``MIN_CELLS`` cells a side.

    The shallowest candidate when none has (a tiny image).
    """
    layers = architecture(grader.spec.model).cam_layers
    name = next((path for path, stride in layers if side // stride >= MIN_CELLS), layers[-1][0])
    return name, grader.net.get_submodule(name)


def grad_cam(grader: Grader, images: Tensor, targets: Sequence[int]) -> np.ndarray:
    """Heat maps [B, H, W] in [0, 1] of ``targets`` (one output index per image).

    Args:
        grader: The eager fp32 grader (eval mode is set here).
        images: uint8 [B, 3, H, W] on the grader's device, as the network takes them.
        targets: The output to explain per image: a grade for 5 logits, 0 for the regression value.
    """
    grader.eval()
    _, layer = target_layer(grader, images.shape[-1])
    cam = LayerGradCam(grader, layer)
    # Captum asks for gradients of the input; the grader takes floats in [0, 1] as well as uint8.
    inputs = images.float().div(255).requires_grad_()
    with torch.autocast(device_type=images.device.type, enabled=False):
        attribution = cam.attribute(inputs, target=list(targets), relu_attributions=True)
    heat = LayerAttribution.interpolate(attribution, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    heat = heat.detach().squeeze(1).clamp_min(0).cpu().numpy()
    peak = heat.reshape(len(heat), -1).max(1).reshape(-1, 1, 1)
    return np.divide(heat, peak, out=np.zeros_like(heat), where=peak > 0)
