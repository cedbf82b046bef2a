"""The grader as `export` writes it: a photograph of any size in, the grade scores out, in one graph.

:class:`PhotoGrader` puts in front of the :class:`~retinopathy.models.grader.Grader`
the one step that callers outside this project would otherwise have to copy
exactly: bringing the image to the network's size. It resizes a uint8 batch
[N, 3, H, W] of any H and W to the spec's image size with bilinear
interpolation, anti-aliased when shrinking (``torch.nn.functional.interpolate``
with ``antialias=True``, half-pixel centres; ONNX ``Resize`` with
``mode=linear, antialias=1``; the same triangle filter, widened by the
shrink factor, that Pillow's ``BILINEAR`` uses), and then runs the grader
(scaling, preprocessing and normalisation inside) and its head's scores. The
resized pixels stay float: rounding them to whole levels, as Pillow does,
would let ONNX Runtime's and PyTorch's last-bit differences flip a level. At
the network's own size the resize is the identity, so a batch decoded
exactly as the project decodes gives exactly the project's scores.

The project's own decoder differs slightly from a plain full decode: for
JPEGs it lets libjpeg-turbo decode at a reduced DCT scale (the smallest n/8
of the stored size that is still at least the network's size), then Pillow's
bilinear filter makes the size exact. The `export` command measures what
that difference does to the scores and writes it into the model card.

The graph does not judge whether a photograph can be graded: the quality verdict
(:func:`retinopathy.quality.verdict.assess`) is NumPy/SciPy code on the photograph
at its own size, outside the graph, and the model card says how to compute it.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional

from retinopathy.models.grader import Grader
from retinopathy.models.head import Head

DEFAULT_SIZE = 512  # a checkpoint without an image size was trained on the course's 512x512 images


class PhotoGrader(nn.Module):
    """uint8 images [N, 3, H, W] of any size -> the head's scores: probabilities [N, 5] or values [N]."""

    def __init__(self, grader: Grader, head: Head) -> None:
        super().__init__()
        self.grader, self.regression = grader, head.regression
        self.spec = grader.spec
        self.size = grader.spec.image_size or DEFAULT_SIZE

    def resized_outputs(self, images: Tensor) -> Tensor:
        """The grader's raw outputs (float32) of ``images`` brought to the network's size."""
        resized = functional.interpolate(
            images.float(), size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        # The grader takes uint8, or float in [0, 1] (its transform folds the /255 back in).
        return self.grader(resized.clamp(0, 255) / 255.0).float()

    def forward(self, images: Tensor) -> Tensor:
        outputs = self.resized_outputs(images)
        return outputs.squeeze(1) if self.regression else outputs.softmax(1)
