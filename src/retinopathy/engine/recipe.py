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

from retinopathy.core.config import Params
from retinopathy.core.contract import NUM_GRADES
from retinopathy.engine import loops
from retinopathy.engine.augment import Augment
from retinopathy.engine.distributed import BalancedSampler, EpochShuffleSampler, Process
from retinopathy.engine.runtime import Runtime
from retinopathy.evaluation.scoring import grades_of_values, kappa_of_confusion, tune_thresholds
from retinopathy.models.head import Head, class_weights


def make_head(params: Params, train_labels: list[int]) -> Head:
    """The head of ``train.loss``, with inverse-frequency class weights for ``weighted_loss``."""
    weights = None
    if params.train.class_balance == "weighted_loss":
        weights = class_weights(np.bincount(train_labels, minlength=NUM_GRADES).tolist())
    return Head(params.train.loss, class_weights=weights)


def make_sampler(params: Params, train_labels: list[int], process: Process) -> EpochShuffleSampler:
    """The training order: a seeded shuffle, or class-balanced draws for ``class_balance: sampler``."""
    if params.train.class_balance == "sampler":
        return BalancedSampler(train_labels, params.train.seed, process)
    return EpochShuffleSampler(len(train_labels), params.train.seed, process)


def make_augment(params: Params, process: Process) -> Augment | None:
    """The training-batch augmentation of the ``augment`` section; None when every knob is off."""
    return Augment(params.augment, params.train.seed, process.rank) if params.augment.active else None


def selection_column(with_val: bool, select_by: str) -> str:
    """The history column that picks the epoch: validation if held out, else test (the lab's rule)."""
    return f"{'val' if with_val else 'test'}_{'kappa' if select_by == 'kappa' else 'accuracy'}"


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
