"""Scores of predicted against true grades: confusion matrices, accuracy, balanced accuracy, kappa."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

from retinopathy.contract import GRADES


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
           tables: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, quadratic weighted kappa and per-class recall.

    Args:
        actual: True grades.
        predicted: Predicted grades.
        tables: :func:`confusion_tables` of the two.
    """
    counts, normalized = tables
    present = counts.sum(axis=1) > 0
    return {
        "test_accuracy": float((actual == predicted).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(actual, predicted)),
        "quadratic_kappa": quadratic_kappa(actual, predicted),
        "recall": {str(g): (float(normalized[g, g]) if present[g] else None) for g in GRADES},
    }
