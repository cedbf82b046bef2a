"""The `evaluate` stage: score one arm's best checkpoint on the test split.

Writes ``metrics/<arm>.json`` (accuracy, balanced accuracy, quadratic weighted
kappa, per-class recall, the majority baseline, and which rule picked the
epoch), the confusion matrix twice (``metrics/confusion/<arm>_counts.csv`` and
``<arm>_normalized.csv``: rows = true grade, columns = predicted grade, each
row of the normalised one summing to 1 as the lab defines it), and
``metrics/predictions/<arm>.csv`` (``actual,predicted`` per test image, the
long format DVC's ``confusion`` plot template reads).

A skipped arm gets metrics that say ``skipped`` with the reason and the fix,
and header-only CSVs, so the report and `dvc metrics show` show the gap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

from retinopathy import checkpoint, engine
from retinopathy.config import ARMS, Params, load_params
from retinopathy.data import NUM_CLASSES
from retinopathy.errors import RetinopathyError
from retinopathy.files import write_csv_atomic, write_json_atomic
from retinopathy.prepare import read_index
from retinopathy.train import Paths, open_dataset
from retinopathy.weights import new_model

GRADES = list(range(NUM_CLASSES))
SELECTION_RULES = {
    "test": "epoch with the highest test accuracy (the lab's rule; optimistic)",
    "validation": "epoch with the highest validation accuracy (test split unseen when choosing)",
}


def confusion_tables(actual: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts and the per-true-class normalised matrix (a grade with no images: a zero row)."""
    counts = confusion_matrix(actual, predicted, labels=GRADES)
    totals = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    return counts, normalized


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
        # Kaggle 2015's metric; 0 when both sides are constant (no agreement beyond chance).
        "quadratic_kappa": float(np.nan_to_num(
            cohen_kappa_score(actual, predicted, labels=GRADES, weights="quadratic"))),
        "recall": {str(g): (float(normalized[g, g]) if present[g] else None) for g in GRADES},
    }


def write_tables(paths: dict[str, Path], actual: np.ndarray, predicted: np.ndarray,
                 tables: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Write the confusion tables and the predictions (header only where there are none).

    Args:
        paths: From :func:`output_paths`.
        actual: True grades.
        predicted: Predicted grades.
        tables: :func:`confusion_tables` of the two; None for a skipped arm (no predictions).
    """
    header = ["actual"] + [str(g) for g in GRADES]
    if tables is not None:
        counts, normalized = tables
        count_rows = [[g, *counts[g].tolist()] for g in GRADES]
        norm_rows = [[g, *(f"{v:.6f}" for v in normalized[g])] for g in GRADES]
    else:
        count_rows, norm_rows = [], []
    write_csv_atomic(paths["counts"], header, count_rows)
    write_csv_atomic(paths["normalized"], header, norm_rows)
    write_csv_atomic(paths["predictions"], ["actual", "predicted"],
                     [[int(a), int(p)] for a, p in zip(actual, predicted, strict=True)])


def output_paths(metrics: Path, arm: str) -> dict[str, Path]:
    return {
        "metrics": metrics / f"{arm}.json",
        "counts": metrics / "confusion" / f"{arm}_counts.csv",
        "normalized": metrics / "confusion" / f"{arm}_normalized.csv",
        "predictions": metrics / "predictions" / f"{arm}.csv",
    }


def evaluate_arm(params: Params, paths: Paths, metrics: Path = Path("metrics")) -> dict[str, Any]:
    """Evaluate ``paths.best`` on the test split and write the metrics and tables."""
    outputs = output_paths(metrics, paths.init)
    if not paths.status.is_file():
        raise RetinopathyError(f"{paths.status}: not found; run `dvc repro train@{paths.init}` first")
    status = json.loads(paths.status.read_text())
    summary = json.loads((paths.prepared / "summary.json").read_text())
    baseline = summary["majority_baseline"]["test_accuracy"]
    if status["status"] == "skipped":
        result = {key: status[key] for key in ("status", "model", "init", "reason", "fix")}
        result["majority_baseline"] = baseline
        write_tables(outputs, np.array([], dtype=int), np.array([], dtype=int), None)
        write_json_atomic(outputs["metrics"], result)
        return result

    best = checkpoint.load(paths.best)
    if best.get("fingerprint") != status["fingerprint"]:
        raise RetinopathyError(f"{paths.best}: is not from the run in {paths.status}; rerun training")
    history = status["history"]
    best_row = history[best["epoch"] - 1]

    process = engine.Process()
    device = engine.resolve_device(params.train.device)
    fast = engine.fast_path(params.train, device, params.data.num_workers)
    engine.configure_backends(device)  # the numerics training evaluated with
    model = new_model(params.model, num_classes=NUM_CLASSES)
    model.load_state_dict(best["model"])
    model = engine.place_model(model, device, fast)
    records = read_index(paths.prepared / "index.csv")["test"]
    dataset = open_dataset(params, "test", records)
    batches = engine.eval_loader(dataset, params.train.batch_size, process, fast)
    transform = engine.input_transform(params.train.normalize, fast, device)
    predicted, actual = engine.predict(model, batches, transform, device, fast, process)
    actual_np, predicted_np = actual.numpy(), predicted.numpy()
    tables = confusion_tables(actual_np, predicted_np)

    result: dict[str, Any] = {
        "status": "trained",
        "model": params.model,
        "init": paths.init,
        "weights": status["weights"],
        "data": params.data.root,
        "synthetic": summary["synthetic"],
        "selection": status["selection"],
        "selection_rule": SELECTION_RULES[status["selection"]],
        "epochs": status["epochs"],
        "best_epoch": best["epoch"],
        "best_test_accuracy": best_row["test_accuracy"],
        "final_test_accuracy": history[-1]["test_accuracy"],
        # Running accuracy over the training epoch, as the lab reports it.
        "train_accuracy": best_row["train_accuracy"],
        **scores(actual_np, predicted_np, tables),
        "majority_baseline": baseline,
        "test_size": int(len(actual_np)),
    }
    if "val_accuracy" in best_row:
        result["best_val_accuracy"] = best_row["val_accuracy"]
    write_tables(outputs, actual_np, predicted_np, tables)
    write_json_atomic(outputs["metrics"], result)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy evaluate --init scratch|pretrained [--params params.yaml]``."""
    parser = argparse.ArgumentParser(prog="retinopathy evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--init", choices=ARMS, required=True)
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("--metrics", type=Path, default=Path("metrics"))
    args = parser.parse_args(argv)
    result = evaluate_arm(load_params(args.params), Paths(args.init), args.metrics)
    if result["status"] == "skipped":
        print(f"warning: {args.init} arm skipped: {result['reason']}\n  fix: {result['fix']}")
    else:
        print(f"{args.init}: test accuracy {result['test_accuracy']:.2%} (epoch {result['best_epoch']}, "
              f"{result['selection_rule']}), kappa {result['quadratic_kappa']:.3f}, "
              f"always-grade-0 baseline {result['majority_baseline']:.2%}")
    return 0
