"""Random changes to training batches, on the device, drawn from (seed, epoch, step, rank) alone.

The field's recipe (Huang et al. 2023): flips, rotation up to 180 degrees, a
random resized crop (area 0.87-1.15), translation, brightness and contrast.
A fundus has no "up", so every one of these is a photograph the camera could
have taken. All geometric changes are one affine map per image, applied to the
whole uint8 batch at once with ``affine_grid`` + ``grid_sample`` (bilinear;
outside the photo is black, as its border is); brightness and contrast are two
fused multiply-adds. The result is rounded back to uint8, the grader's input.

The parameters of each image are drawn on the CPU from a generator seeded by
(seed, epoch, step, rank), never from a running generator, so a resumed run
augments exactly as an uninterrupted one, and a CPU run as a GPU run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from retinopathy.core.config import AugmentParams
from retinopathy.engine.distributed import torch_seed

_PURPOSE = 7  # a SeedSequence key of its own, apart from every other use of the seed
GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma: the grey whose mean contrast changes around


def affine(
    images: Tensor, angle: Tensor, flip_x: Tensor, flip_y: Tensor, area: Tensor, shift: Tensor
) -> Tensor:
    """Rotate, flip, zoom and shift each image of a batch (float [B,C,H,W] -> float).

    Args:
        angle: [B] degrees; positive turns the picture counter-clockwise as displayed.
        flip_x: [B] bool, mirror left-right. flip_y: [B] bool, mirror top-bottom.
        area: [B] share of the picture's area kept, as by a random resized crop
            (< 1 zooms in; > 1 zooms out, showing the black border).
        shift: [B, 2] translation (x, y) as a fraction of the side.
    """
    radians = torch.deg2rad(angle.double())
    cos, sin = torch.cos(radians), torch.sin(radians)
    side = torch.sqrt(area.double())
    sx = torch.where(flip_x, -1.0, 1.0).double()
    sy = torch.where(flip_y, -1.0, 1.0).double()
    # Output pixel (x, y) in [-1, 1] (y down) samples the input at side * R F (x, y) - 2 shift;
    # R = [[cos, -sin], [sin, cos]] turns the picture counter-clockwise (as torch.rot90 does).
    theta = torch.zeros(images.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = side * cos * sx, side * -sin * sy
    theta[:, 1, 0], theta[:, 1, 1] = side * sin * sx, side * cos * sy
    theta[:, :, 2] = -2 * shift.double()
    grid = nn.functional.affine_grid(theta.float().to(images.device), list(images.shape), align_corners=False)
    return nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def colour(images: Tensor, brightness: Tensor, contrast: Tensor) -> Tensor:
    """Scale brightness, then contrast around each image's mean grey (as torchvision's ColorJitter)."""
    images = images * brightness.view(-1, 1, 1, 1).to(images.device)
    grey = torch.tensor(GREY, device=images.device).view(1, 3, 1, 1)
    mean = (images * grey).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    factor = contrast.view(-1, 1, 1, 1).to(images.device)
    return (images - mean) * factor + mean


class Augment:
    """``augment(images, epoch, step)``: the training batch of (epoch, step), changed as ``settings`` say.

    Args:
        settings: params.yaml's ``augment`` section.
        seed: ``train.seed``.
        rank: This process's rank (each process changes its own share of a batch).
    """

    def __init__(self, settings: AugmentParams, seed: int, rank: int = 0) -> None:
        self.settings, self.seed, self.rank = settings, seed, rank

    def draw(self, count: int, epoch: int, step: int) -> dict[str, Tensor]:
        """The random parameters of ``count`` images of (epoch, step), the same on any device."""
        entropy = [torch_seed(self.seed), _PURPOSE, epoch, step, self.rank]
        key = np.random.SeedSequence(entropy).generate_state(2)
        generator = torch.Generator().manual_seed(int(key[0]) << 32 | int(key[1]))
        s = self.settings

        def uniform(low: float, high: float, shape: tuple[int, ...] = (count,)) -> Tensor:
            return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)

        flips = torch.rand((2, count), generator=generator) < 0.5
        low, high = s.scale or (1.0, 1.0)
        return {
            "angle": uniform(-s.rotate, s.rotate),
            "flip_x": flips[0] & s.flip,
            "flip_y": flips[1] & s.flip,
            "area": uniform(low, high),
            "shift": uniform(-s.translate, s.translate, (count, 2)),
            "brightness": uniform(1 - s.brightness, 1 + s.brightness).float(),
            "contrast": uniform(1 - s.contrast, 1 + s.contrast).float(),
        }

    def __call__(self, images: Tensor, epoch: int, step: int) -> Tensor:
        """uint8 [B,3,H,W] on the device -> uint8, changed (the same memory layout)."""
        p = self.draw(images.shape[0], epoch, step)
        s = self.settings
        out = images.float()
        if s.flip or s.rotate or s.scale or s.translate:
            out = affine(out, p["angle"], p["flip_x"], p["flip_y"], p["area"], p["shift"])
        if s.brightness or s.contrast:
            out = colour(out, p["brightness"], p["contrast"])
        return out.round_().clamp_(0, 255).to(torch.uint8)
