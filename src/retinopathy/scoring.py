"""Scores of predicted against true grades: confusion matrices, accuracy, balanced accuracy, kappa."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

from retinopathy.contract import GRADES, recall_key


def confusion_tables(actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and the per-true-class normalised matrix (a grade with no images: a zero row)."""
    counts = confusion_matrix(actual, predicted, labels=list(GRADES))
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return counts, normalized


def quadratic_kappa(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Quadratic weighted kappa, Kaggle 2015's metric; 0 when both sides are constant."""
    return float(np.nan_to_num(cohen_kappa_score(actual, predicted, labels=list(GRADES),
                                                 weights="quadratic")))


def scores(actual: np.ndarray, predicted: np.ndarray,
           tables: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
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
