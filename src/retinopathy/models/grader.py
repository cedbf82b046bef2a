"""The grader: uint8 pixels in, one score per grade out, as one module.

A :class:`Grader` is a ResNet with the input transform that every caller
needs in front of it (scaling to [0, 1] and the normalisation the network was
trained with). Training, evaluation, prediction and export all run this one
module, so they cannot disagree about preprocessing, and an exported graph
takes raw uint8 images. Its :class:`GraderSpec` (architecture, image size,
normalisation) is stored in every checkpoint, so a trained model is used with
the settings it was trained with, never guessed from the current params.yaml.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from retinopathy.contract import MODELS, NORMALIZATIONS, NUM_GRADES
from retinopathy.errors import RetinopathyError
from retinopathy.models.build import new_model
from retinopathy.models.resnet import ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class GraderSpec:
    """What a trained network needs to be used again, stored in its checkpoints.

    Attributes:
        model: Architecture, one of ``contract.MODELS``.
        image_size: Side the images are resized to before the network (None: as stored).
        normalize: ``imagenet`` (ImageNet mean/std after scaling to [0, 1]) or ``none``.
    """

    model: str
    image_size: int | None
    normalize: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> GraderSpec:
        """Read a spec back from a checkpoint, checking every field.

        Raises:
            RetinopathyError: naming ``source`` if the spec is missing or malformed.
        """
        fields = {"model", "image_size", "normalize"}
        if not isinstance(raw, dict) or set(raw) != fields:
            raise RetinopathyError(f"{source}: has no valid grader spec (expected the keys "
                                   f"{', '.join(sorted(fields))}); it was not written by this version "
                                   "of `retinopathy train` - train again")
        spec = cls(**raw)
        size_ok = spec.image_size is None or (isinstance(spec.image_size, int) and spec.image_size > 0)
        if spec.model not in MODELS or spec.normalize not in NORMALIZATIONS or not size_ok:
            raise RetinopathyError(f"{source}: grader spec {raw} is not one this version can use")
        return spec


class InputTransform(nn.Module):
    """uint8 [B,3,H,W] -> float in [0,1] -> optional ImageNet normalisation, in one fused op."""

    def __init__(self, normalize: str) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        mean = torch.tensor(IMAGENET_MEAN if normalize == "imagenet" else (0.0, 0.0, 0.0))
        std = torch.tensor(IMAGENET_STD if normalize == "imagenet" else (1.0, 1.0, 1.0))
        # Fold the /255 into the affine map: x * (1/(255 std)) - mean/std, one fused op.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, memory_format: torch.memory_format = torch.contiguous_format
                ) -> Tensor:
        # Lay the batch out while it is still uint8 (4x fewer bytes than float).
        images = images.contiguous(memory_format=memory_format)
        # uint8 from the fast loader; float [0,1] (the Dataset's default contract) is
        # brought back to 0-255 because the /255 is folded into `scale`.
        images = images.float() if images.dtype == torch.uint8 else images * 255.0
        return torch.addcmul(self.shift, images, self.scale).contiguous(memory_format=memory_format)


class Grader(nn.Module):
    """The input transform and a ResNet: images [B,3,H,W] (uint8, or float in [0,1]) -> scores [B,5].

    The input is laid out like the first convolution's weights (channels_last
    when the runtime placed the network so), while it is still uint8.
    """

    def __init__(self, net: ResNet, spec: GraderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.transform = InputTransform(spec.normalize)
        self.net = net

    def input_format(self) -> torch.memory_format:
        weight = self.net.conv1.weight
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
    net = new_model(spec.model, num_classes=NUM_GRADES)
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise RetinopathyError(f"{source}: its weights do not fit a {spec.model} ({first}); "
                               "the file is damaged or from another model - train again") from None
    return Grader(net, spec)
