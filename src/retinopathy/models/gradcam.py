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

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import matplotlib
import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from retinopathy.core.files import PNG_SOFTWARE
from retinopathy.core.registry import architecture
from retinopathy.models.grader import Grader
from retinopathy.reporting.escape import plain_text

matplotlib.use("Agg")  # before pyplot: DVC stages and CI have no display
from matplotlib import colormaps  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

MIN_CELLS = 8
HEAT_ALPHA = 0.45


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


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The photograph [H, W, 3] uint8 with the heat map drawn over it in the 'jet' colours."""
    coloured = colormaps["jet"](heat)[..., :3]
    weight = HEAT_ALPHA * heat[..., None] ** 0.5  # cold regions stay close to the photograph
    mixed = image.astype(np.float32) / 255 * (1 - weight) + coloured * weight
    return (np.clip(mixed, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_explanation(target: Path | IO[bytes], image: np.ndarray, heat: np.ndarray, title: str) -> None:
    """One PNG: the photograph and its heat map side by side, the grade in the title (drawn as given)."""
    with plain_text():  # the title holds the photograph's file name: never mathtext
        fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4.4), layout="constrained")
        left.imshow(image)
        left.set_title("photograph (as the network saw it)", fontsize=10)
        right.imshow(overlay(image, heat))
        right.set_title("Grad-CAM of the predicted grade", fontsize=10)
        for ax in (left, right):
            ax.axis("off")
        fig.suptitle(title, fontsize=12)
        # PNG_SOFTWARE: predict recognises its own heat maps by it.
        fig.savefig(target, format="png", dpi=110, metadata={"Software": PNG_SOFTWARE})
        plt.close(fig)


def save_grid(
    target: Path | IO[bytes],
    tiles: Sequence[tuple[np.ndarray, np.ndarray, str, bool] | None],
    columns: int,
    row_labels: Sequence[str],
    title: str,
) -> None:
    """A grid of heat maps: ``tiles`` row by row (None: an empty cell), correct titles green, wrong red.

    Args:
        tiles: (image, heat, caption, correct) per cell.
        columns: Cells per row.
        row_labels: One label per row (the true grade).
    """
    rows = len(row_labels)
    with plain_text():  # the captions hold image names: never mathtext
        fig, axes = plt.subplots(
            rows, columns, figsize=(3.1 * columns + 1.2, 3.2 * rows), layout="constrained", squeeze=False
        )
        for index, ax in enumerate(axes.flat):
            ax.axis("off")
            tile = tiles[index] if index < len(tiles) else None
            if tile is None:
                ax.text(
                    0.5,
                    0.5,
                    "no such test image",
                    ha="center",
                    va="center",
                    color="grey",
                    transform=ax.transAxes,
                )
                continue
            image, heat, caption, correct = tile
            ax.imshow(overlay(image, heat))
            ax.set_title(textwrap.fill(caption, 34), fontsize=9, color="darkgreen" if correct else "darkred")
        for row, label in enumerate(row_labels):
            axes[row, 0].text(
                -0.08,
                0.5,
                label,
                rotation=90,
                ha="right",
                va="center",
                fontsize=11,
                transform=axes[row, 0].transAxes,
            )
        fig.suptitle(title, fontsize=13)
        fig.savefig(target, format="png", dpi=90, metadata={"Software": None})
        plt.close(fig)


def save_message(target: Path | IO[bytes], title: str, text: str) -> None:
    """A small PNG that says why there is nothing to show (a skipped arm)."""
    with plain_text():  # the reason may hold a user's path: never mathtext
        fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.7, title, ha="center", va="center", fontsize=15, weight="bold", transform=ax.transAxes)
        ax.text(
            0.5, 0.35, textwrap.fill(text, 80), ha="center", va="center", fontsize=9, transform=ax.transAxes
        )
        fig.savefig(target, format="png", dpi=90, metadata={"Software": None})
        plt.close(fig)
