"""The head: how a network's outputs become a loss, scores and grades 0-4.

``cross_entropy`` (the lab's): five logits, softmax probabilities as scores,
the grade of the largest logit. ``regression`` (Huang et al. 2023, and the
Kaggle 2015 winners): one output trained with MSE towards the grade; the grade
is the number of thresholds the output exceeds, rounding by default
(0.5 / 1.5 / 2.5 / 3.5), or thresholds tuned on a validation split to
maximise quadratic kappa. Everything downstream sees grades 0-4 either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from retinopathy.core.contract import LOSSES, NUM_GRADES, ROUNDING_THRESHOLDS
from retinopathy.core.errors import RetinopathyError


class Head:
    """Loss, scores and grades of one kind of output.

    Args:
        loss: ``cross_entropy`` or ``regression``.
        thresholds: Regression only: four increasing thresholds between grades.
        class_weights: Per-grade weights of the training loss (``train.class_balance:
            weighted_loss``); evaluation losses are never weighted.
    """

    def __init__(
        self, loss: str, thresholds: Sequence[float] | None = None, class_weights: Tensor | None = None
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.kind = loss
        self.regression = loss == "regression"
        if self.regression:
            thresholds = tuple(float(t) for t in (thresholds or ROUNDING_THRESHOLDS))
            if len(thresholds) != NUM_GRADES - 1 or list(thresholds) != sorted(thresholds):
                raise ValueError(f"thresholds must be {NUM_GRADES - 1} increasing numbers, got {thresholds}")
        elif thresholds is not None:
            raise ValueError("thresholds belong to the regression head")
        self.thresholds = thresholds
        self.class_weights = class_weights

    @property
    def num_outputs(self) -> int:
        """Outputs of the network's final layer."""
        return 1 if self.regression else NUM_GRADES

    def loss(self, outputs: Tensor, labels: Tensor, weighted: bool = True) -> Tensor:
        """Mean training loss of a batch (float32); ``weighted=False`` for evaluation."""
        weights = self.class_weights if weighted else None
        if not self.regression:
            if weights is not None:
                weights = weights.to(outputs.device)
            return nn.functional.cross_entropy(outputs.float(), labels, weight=weights)
        errors = (outputs.float().squeeze(1) - labels.float()) ** 2
        if weights is None:
            return errors.mean()
        per_image = weights.to(outputs.device)[labels]
        return (errors * per_image).sum() / per_image.sum()  # as cross_entropy weighs its mean

    def loss_sum(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """Unweighted summed loss of a batch, for evaluation totals."""
        if not self.regression:
            return nn.functional.cross_entropy(outputs.float(), labels, reduction="sum")
        return ((outputs.float().squeeze(1) - labels.float()) ** 2).sum()

    def scores(self, outputs: Tensor) -> Tensor:
        """Probabilities [B, 5] (cross_entropy) or the regression value [B]."""
        return outputs.float().softmax(1) if not self.regression else outputs.float().squeeze(1)

    def grades(self, outputs: Tensor) -> Tensor:
        """Grades 0-4 (int64) of raw outputs."""
        return outputs.argmax(1) if not self.regression else self.grades_of_scores(outputs.float().squeeze(1))

    def grades_of_scores(self, scores: Tensor) -> Tensor:
        """Grades 0-4 of :meth:`scores` (of averaged scores, for test-time augmentation)."""
        if not self.regression:
            return scores.argmax(1)
        boundaries = torch.tensor(self.thresholds, dtype=scores.dtype, device=scores.device)
        return torch.bucketize(scores, boundaries)  # how many thresholds lie below the value


def require_finite(values: Tensor, source: str | Path, fix: str, names: Sequence[str] | None = None) -> None:
    """Stop unless every row of ``values`` (outputs or scores [N, ...], one row per image) is finite.

    No grade can be read from NaN or infinity, yet one is read without a word: the
    largest of five NaN logits is grade 0, and a NaN value lies below every threshold.
    A network with finite weights can still overflow, so the outputs are checked where
    they become grades, not only the weights where they are loaded.

    Args:
        values: One row per image.
        source: What computed them (a checkpoint, a blend), for the message.
        fix: What to do about it.
        names: The images, in the rows' order, to name the first that failed.

    Raises:
        RetinopathyError: naming ``source``, how many images, the first of them and ``fix``.
    """
    if not values.numel():
        return
    finite = torch.isfinite(values.reshape(len(values), -1)).all(1)
    if bool(finite.all()):
        return
    rows = torch.nonzero(~finite).flatten().tolist()
    first = f" (the first: {names[rows[0]]})" if names is not None else ""
    raise RetinopathyError(
        f"{source}: its outputs are NaN or infinite for {len(rows)} of {len(values)} "
        f"images{first}, so no grade can be read from them; {fix}"
    )


def class_weights(counts: Sequence[int]) -> Tensor:
    """Inverse-frequency weights N / (K * n_k) of the training grades (1 for balanced classes).

    A grade absent from the training split gets weight 0 (it contributes no loss anyway).
    """
    total, kinds = sum(counts), sum(1 for n in counts if n)
    return torch.tensor([total / (kinds * n) if n else 0.0 for n in counts], dtype=torch.float32)
