"""Both eyes in one graph, as `export --fused` writes it: two photographs and a side in, one eye's scores out.

:class:`BothEyes` runs the exported single-eye graph's steps on each photograph
(:class:`~retinopathy.models.photo_graph.PhotoGrader`: resize to the network's
size, scaling, preprocessing, normalisation) up to the network's features,
then the arm's blend over [this eye, the other eye, side]. Its scores are the
`fuse` stage's and `predict`'s fused grades for the same pair.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from retinopathy.fusion.blend import BlendRecord
from retinopathy.fusion.features import split_last_linear
from retinopathy.models.photo_graph import PhotoGrader


class BothEyes(nn.Module):
    """uint8 ``images`` and ``others`` [N, 3, H, W] (this eye, the other eye), ``side`` [N] -> scores.

    ``side`` is 0 when ``images`` are left eyes, 1 when right. The scores are the
    five grade probabilities [N, 5], or the regression value [N] (graded by the
    blend's thresholds).
    """

    def __init__(self, photo: PhotoGrader, record: BlendRecord) -> None:
        super().__init__()
        trunk, self.linear = split_last_linear(photo.grader)
        self.photo = copy.copy(photo)  # its resize, with the network cut before the last linear layer
        self.photo.grader = trunk  # type: ignore[assignment]  # the grader without its last linear layer
        self.inputs, self.regression = record.inputs, record.head().regression
        self.blend = record.model()

    def eye(self, images: Tensor) -> Tensor:
        """What the blend reads of one eye: the features, or the head's scores."""
        features = self.photo.resized_outputs(images)
        if self.inputs == "features":
            return features
        outputs = self.linear(features)
        return outputs if self.regression else outputs.softmax(1)

    def forward(self, images: Tensor, others: Tensor, side: Tensor) -> Tensor:
        outputs = self.blend(self.eye(images), self.eye(others), side.float())
        return outputs.squeeze(1) if self.regression else outputs.softmax(1)
