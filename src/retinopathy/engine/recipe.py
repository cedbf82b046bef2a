"""The training recipe: params.yaml's ``train`` and ``augment`` knobs turned into the engine's parts.

The lab's recipe is every knob off: cross-entropy, natural class frequencies,
no augmentation, a constant learning rate, the epoch with the best accuracy.
The field's (Huang et al. 2023, the Kaggle 2015 winners) turns them on:
a regression head, augmentation, a cosine schedule with Nesterov momentum,
the epoch with the best kappa, thresholds tuned on validation. This module
builds each part and evaluates an epoch's splits the way the recipe says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from torch import nn

from retinopathy.core.config import AugmentParams
from retinopathy.core.contract import NUM_GRADES
from retinopathy.engine import loops
from retinopathy.engine.augment import Augment
from retinopathy.engine.distributed import BalancedSampler, EpochShuffleSampler, Process
from retinopathy.engine.runtime import Runtime
from retinopathy.evaluation.scoring import grades_of_values, kappa_of_confusion, tune_thresholds
from retinopathy.models.head import Head, class_weights


def make_head(loss: str, class_balance: str, train_labels: list[int]) -> Head:
    """The head of ``train.loss``, with inverse-frequency class weights for ``weighted_loss``.

    Args:
        loss: ``train.loss``: ``cross_entropy`` or ``regression``.
        class_balance: ``train.class_balance``: ``none``, ``weighted_loss`` or ``sampler``.
        train_labels: The grade of every training image.
    """
    weights = None
    if class_balance == "weighted_loss":
        weights = class_weights(np.bincount(train_labels, minlength=NUM_GRADES).tolist())
    return Head(loss, class_weights=weights)


def make_sampler(
    class_balance: str, seed: int, train_labels: list[int], process: Process
) -> EpochShuffleSampler:
    """The training order: a seeded shuffle, or class-balanced draws for ``class_balance: sampler``."""
    if class_balance == "sampler":
        return BalancedSampler(train_labels, seed, process)
    return EpochShuffleSampler(len(train_labels), seed, process)


def make_augment(settings: AugmentParams, seed: int, process: Process) -> Augment | None:
    """The training-batch augmentation of the ``augment`` section; None when every knob is off."""
    return Augment(settings, seed, process.rank) if settings.active else None


def _row(name: str, result: loops.EpochResult) -> dict[str, float]:
    return {
        f"{name}_loss": result.loss,
        f"{name}_accuracy": result.accuracy,
        f"{name}_kappa": kappa_of_confusion(result.confusion),
    }


def evaluate_splits(
    net: nn.Module, splits: Mapping[str, Iterable], runtime: Runtime, head: Head, tune: bool
) -> dict[str, float]:
    """Loss, accuracy and kappa of each split (``val`` first); with ``tune``, thresholds first.

    With ``tune`` (regression and a validation split), the thresholds are tuned
    on this epoch's validation outputs to maximise kappa and set on ``head``,
    so the validation figures and the test split are graded with them.
    """
    row: dict[str, float] = {}
    for name, batches in splits.items():
        keep = tune and name == "val"
        result = loops.evaluate_epoch(net, batches, runtime, head, name, keep_outputs=keep)
        if keep:
            assert result.outputs is not None and result.labels is not None  # keep_outputs=True kept them
            values, actual = head.scores(result.outputs).numpy(), result.labels.numpy()
            head.thresholds = tuple(tune_thresholds(values, actual))
            pairs = actual * NUM_GRADES + grades_of_values(values, head.thresholds)
            result.confusion = np.bincount(pairs, minlength=NUM_GRADES**2).reshape(NUM_GRADES, NUM_GRADES)
            result.accuracy = float(np.trace(result.confusion)) / result.count
        row.update(_row(name, result))
    return row


def train_row(result: loops.EpochResult) -> dict[str, float]:
    """The training figures of an epoch's history row."""
    return _row("train", result)
