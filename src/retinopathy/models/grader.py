"""The grader: uint8 pixels in, one score per grade out, as one module.

A :class:`Grader` is a network (any architecture of the registry) with the input transform that every caller
needs in front of it (scaling to [0, 1] and the normalisation the network was
trained with). Training, evaluation, prediction and export all run this one
module, so they cannot disagree about preprocessing, and an exported graph
takes raw uint8 images. Its :class:`GraderSpec` (architecture, image size,
normalisation) is stored in every checkpoint, so a trained model is used with
the settings it was trained with, never guessed from the current params.yaml.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from retinopathy.core.contract import MAX_IMAGE_SIZE as MAX_SPEC_IMAGE_SIZE
from retinopathy.core.contract import NORMALIZATIONS, PREPROCESSES
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.registry import MODELS, architecture
from retinopathy.models.build import new_model
from retinopathy.models.head import Head

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class GraderSpec:
    """What a trained network needs to be used again, stored in its checkpoints.

    Attributes:
        model: Architecture, one of ``registry.MODELS``.
        image_size: Side the images are resized to before the network (None: as stored).
        normalize: ``imagenet`` (ImageNet mean/std after scaling to [0, 1]) or ``none``.
        preprocess: ``none`` or ``graham`` (local average colour subtracted; see :func:`graham`).
        loss: The head: ``cross_entropy`` (5 outputs) or ``regression`` (1 output).
        thresholds: Regression: the four grade thresholds (None for cross_entropy).
    """

    model: str
    image_size: int | None
    normalize: str
    preprocess: str
    loss: str
    thresholds: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def head(self) -> Head:
        """The head that turns this network's outputs into scores and grades."""
        return Head(self.loss, self.thresholds)

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> GraderSpec:
        """Read a spec back from a checkpoint, checking every field.

        Raises:
            RetinopathyError: naming ``source`` if the spec is missing or malformed.
        """
        fields = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) != fields:
            raise RetinopathyError(
                f"{source}: has no valid grader spec (expected the keys "
                f"{', '.join(sorted(fields))}); it was not written by this version "
                "of `retinopathy train` - train again"
            )
        spec = cls(**raw)
        size = spec.image_size
        if size is not None and not (
            isinstance(size, int) and not isinstance(size, bool) and 0 < size <= MAX_SPEC_IMAGE_SIZE
        ):
            raise RetinopathyError(
                f"{source}: grader spec image_size {size!r} is not a side of 1..{MAX_SPEC_IMAGE_SIZE} px "
                "(a network fed larger images would not fit in memory); the checkpoint is damaged or "
                "was not written by `retinopathy train` - train again, or use another checkpoint"
            )
        try:
            spec.head()
            head_ok = True
        except (ValueError, TypeError):
            head_ok = False
        if (
            spec.model not in MODELS
            or spec.normalize not in NORMALIZATIONS
            or spec.preprocess not in PREPROCESSES
            or not head_ok
        ):
            raise RetinopathyError(f"{source}: grader spec {raw} is not one this version can use")
        return spec


def graham(images: Tensor) -> Tensor:
    """Ben Graham's preprocessing (Kaggle 2015): subtract the local average colour, grey the rim.

    ``4 * image - 4 * GaussianBlur(image, sigma=r/30) + 128`` with the fundus
    radius ``r`` taken as half the side (the course layout's images are square
    crops of the fundus), then everything outside 90% of the radius set to 128.
    Pixel values (0-255, float) in, pixel values out; computed in float32 even
    under autocast, whose bf16 would round 0-255 to steps of 1-2.

    Args:
        images: float [B, 3, H, W] in 0-255.
    """
    height, width = images.shape[-2:]
    radius = min(height, width) / 2
    sigma = radius / 30
    half = max(1, math.ceil(3 * sigma))
    with torch.autocast(device_type=images.device.type, enabled=False):
        images = images.float()
        taps = torch.arange(-half, half + 1, dtype=torch.float32, device=images.device)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
        # Separable: along the rows, then along the columns; reflected borders, as OpenCV does.
        blurred = nn.functional.conv2d(
            nn.functional.pad(images, (half, half, 0, 0), mode="reflect"), kernel, groups=3
        )
        blurred = nn.functional.conv2d(
            nn.functional.pad(blurred, (0, 0, half, half), mode="reflect"), kernel.transpose(2, 3), groups=3
        )
        out = (4 * images - 4 * blurred + 128).clamp(0, 255)
        ys = torch.arange(height, dtype=torch.float32, device=images.device) - (height - 1) / 2
        xs = torch.arange(width, dtype=torch.float32, device=images.device) - (width - 1) / 2
        inside = (ys.view(-1, 1) ** 2 + xs.view(1, -1) ** 2) <= (0.9 * radius) ** 2
        return torch.where(inside, out, torch.full_like(out, 128.0))


class InputTransform(nn.Module):
    """uint8 [B,3,H,W] -> (optional preprocessing) -> float in [0,1] -> optional ImageNet normalisation."""

    scale: Tensor  # buffers (registered below): 1 / (255 std) and -mean / std, [1, 3, 1, 1]
    shift: Tensor

    def __init__(self, normalize: str, preprocess: str = "none") -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS or preprocess not in PREPROCESSES:
            raise ValueError(
                f"normalize must be one of {NORMALIZATIONS} and preprocess one of "
                f"{PREPROCESSES}, got {normalize!r} and {preprocess!r}"
            )
        self.preprocess = preprocess
        mean = torch.tensor(IMAGENET_MEAN if normalize == "imagenet" else (0.0, 0.0, 0.0))
        std = torch.tensor(IMAGENET_STD if normalize == "imagenet" else (1.0, 1.0, 1.0))
        # Fold the /255 into the affine map: x * (1/(255 std)) - mean/std, one fused op.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        # Lay the batch out while it is still uint8 (4x fewer bytes than float).
        images = images.contiguous(memory_format=memory_format)
        # uint8 from the fast loader; float [0,1] (the Dataset's default contract) is
        # brought back to 0-255 because the /255 is folded into `scale`.
        images = images.float() if images.dtype == torch.uint8 else images * 255.0
        if self.preprocess == "graham":
            images = graham(images)
        return torch.addcmul(self.shift, images, self.scale).contiguous(memory_format=memory_format)


class Grader(nn.Module):
    """The input transform and a network: images [B,3,H,W] (uint8, or float in [0,1]) -> outputs.

    Outputs are the head's (``spec.head()``): 5 logits, or 1 regression value.

    The input is laid out like the first convolution's weights (channels_last
    when the runtime placed the network so), while it is still uint8.
    """

    def __init__(self, net: nn.Module, spec: GraderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.transform = InputTransform(spec.normalize, spec.preprocess)
        self.net = net
        self.first_conv = architecture(spec.model).first_conv  # a submodule path of `net`

    def input_format(self) -> torch.memory_format:
        weight = cast(Tensor, self.net.get_submodule(self.first_conv).weight)
        if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
            return torch.channels_last
        return torch.contiguous_format

    def forward(self, images: Tensor) -> Tensor:
        return self.net(self.transform(images, self.input_format()))


def load_grader(spec: GraderSpec, state: dict[str, Tensor], source: str) -> Grader:
    """A grader of ``spec`` with the network weights ``state`` (a checkpoint's ``model``).

    Raises:
        RetinopathyError: naming ``source`` if the weights do not fit the spec's architecture.
    """
    net = new_model(spec.model, num_classes=spec.head().num_outputs)
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RetinopathyError(
            f"{source}: its weights do not fit a {spec.model} ({first}); "
            "the file is damaged or from another model - train again"
        ) from None
    return Grader(net, spec)
