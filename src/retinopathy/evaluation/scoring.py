"""Scores of predicted against true grades: confusion matrices, accuracy, balanced accuracy, kappa."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

from retinopathy.core.contract import GRADES, ROUNDING_THRESHOLDS, recall_key


def confusion_tables(actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and the per-true-class normalised matrix (a grade with no images: a zero row)."""
    counts = confusion_matrix(actual, predicted, labels=list(GRADES))
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return counts, normalized


def quadratic_kappa(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Quadratic weighted kappa, Kaggle 2015's metric; 0 when both sides are constant."""
    return float(
        np.nan_to_num(cohen_kappa_score(actual, predicted, labels=list(GRADES), weights="quadratic"))
    )


def scores(
    actual: np.ndarray, predicted: np.ndarray, tables: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    """Accuracy, balanced accuracy, quadratic weighted kappa and per-grade recall, by metrics key.

    A grade with no test images has no recall (its key is left out).

    Args:
        actual: True grades.
        predicted: Predicted grades.
        tables: :func:`confusion_tables` of the two.
    """
    counts, normalized = tables
    present = counts.sum(axis=1) > 0
    return {
        "acc": float((actual == predicted).mean()),
        "bacc": float(balanced_accuracy_score(actual, predicted)),
        "kappa": quadratic_kappa(actual, predicted),
        **{recall_key(g): float(normalized[g, g]) for g in GRADES if present[g]},
    }


def kappa_of_confusion(matrix: np.ndarray) -> float:
    """Quadratic weighted kappa from a confusion matrix (rows = true grade); 0 when undefined.

    The same number as :func:`quadratic_kappa` of the pairs the matrix counts.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    total = matrix.sum()
    if total == 0:
        return 0.0
    grades = np.arange(len(matrix))
    weights = (grades[:, None] - grades[None, :]) ** 2
    expected = np.outer(matrix.sum(1), matrix.sum(0)) / total
    denominator = (weights * expected).sum()
    return 0.0 if denominator == 0 else float(1 - (weights * matrix).sum() / denominator)


def grades_of_values(values: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Regression values -> grades: how many thresholds lie below each value (as ``torch.bucketize``)."""
    return np.searchsorted(
        np.asarray(thresholds, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left"
    )


def tune_thresholds(
    values: np.ndarray,
    actual: np.ndarray,
    start: Sequence[float] = ROUNDING_THRESHOLDS,
    passes: int = 3,
    candidates: int = 41,
) -> list[float]:
    """Thresholds between grades that maximise quadratic kappa on (values, actual): coordinate ascent.

    Each threshold in turn is moved to the best of ``candidates`` evenly spaced
    positions between its neighbours (the Kaggle 2015 winners' approach, on a
    validation split), ``passes`` times over all four. Ties keep the current
    position, so rounding stays where it is as good as anything else.
    """
    values, actual = np.asarray(values, dtype=np.float64), np.asarray(actual, dtype=np.int64)
    size = len(GRADES)

    def kappa(trial: list[float]) -> float:
        pairs = actual * size + grades_of_values(values, trial)
        return kappa_of_confusion(np.bincount(pairs, minlength=size * size).reshape(size, size))

    thresholds = [float(t) for t in start]
    best = kappa(thresholds)
    low_end, high_end = min(values.min(), thresholds[0]) - 1.0, max(values.max(), thresholds[-1]) + 1.0
    for _ in range(passes):
        for i in range(len(thresholds)):
            low = thresholds[i - 1] if i > 0 else low_end
            high = thresholds[i + 1] if i + 1 < len(thresholds) else high_end
            for candidate in np.linspace(low, high, candidates + 2)[1:-1]:
                trial = thresholds[:i] + [float(candidate)] + thresholds[i + 1 :]
                score = kappa(trial)
                if score > best + 1e-12:
                    best, thresholds = score, trial
    return thresholds
