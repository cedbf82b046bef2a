"""The `evaluate` stage: score one arm's best checkpoint on the test split.

Writes ``metrics/<arm>.json``, numbers only under the short keys of
``contract.METRIC_KEYS`` (accuracy, balanced accuracy, quadratic weighted
kappa, per-grade recall, the majority baseline, the selected epoch, ...), so
``dvc metrics show`` reads at a glance; ``metrics/<arm>.info.json``, the words
(status, weights, data, which rule picked the epoch); the confusion matrix
twice (``metrics/confusion/<arm>_counts.csv`` and ``<arm>_normalized.csv``:
rows = true grade, columns = predicted grade, each row of the normalised one
summing to 1 as the lab defines it); and ``metrics/predictions/<arm>.csv``
(``actual,predicted`` per test image, the long format DVC's ``confusion``
plot template reads).

A skipped arm gets ``{}`` as metrics (a row of dashes), the reason and the fix
in its info, and header-only CSVs, so the report and `dvc metrics show` show the gap.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from retinopathy import checkpoint, portable
from retinopathy.config import Params, load_params
from retinopathy.contract import (
    ARMS,
    CONFUSION_COLUMNS,
    GRADES,
    METRIC_DECIMALS,
    METRIC_KEYS,
    PREDICTION_COLUMNS,
    ArmFiles,
    Layout,
)
from retinopathy.data.index import read_index
from retinopathy.engine import loops
from retinopathy.engine.batches import eval_batches, open_sources
from retinopathy.engine.runtime import from_params
from retinopathy.errors import RetinopathyError, warn
from retinopathy.files import write_csv_atomic, write_json_atomic
from retinopathy.records import EvaluationInfo, Skipped, read_status, read_summary, write_info
from retinopathy.scoring import confusion_tables, scores


def selection_rule(split: str, metric: str) -> str:
    """The rule that picked the evaluated epoch, in words."""
    if split == "test":
        lab = " (the lab's rule; optimistic)" if metric == "accuracy" else " (optimistic)"
        return f"epoch with the highest test {metric}{lab}"
    return f"epoch with the highest validation {metric} (test split unseen when choosing)"


def write_tables(files: ArmFiles, actual: np.ndarray, predicted: np.ndarray,
                 tables: tuple[np.ndarray, np.ndarray] | None) -> None:
    """Write the confusion tables and the predictions (header only where there are none).

    Args:
        files: The arm's files.
        actual: True grades.
        predicted: Predicted grades.
        tables: :func:`confusion_tables` of the two; None for a skipped arm (no predictions).
    """
    header = list(CONFUSION_COLUMNS)
    if tables is not None:
        counts, normalized = tables
        count_rows = [[g, *counts[g].tolist()] for g in GRADES]
        norm_rows = [[g, *(f"{v:.6f}" for v in normalized[g])] for g in GRADES]
    else:
        count_rows, norm_rows = [], []
    write_csv_atomic(files.confusion_counts, header, count_rows)
    write_csv_atomic(files.confusion_normalized, header, norm_rows)
    write_csv_atomic(files.predictions, list(PREDICTION_COLUMNS),
                     [[int(a), int(p)] for a, p in zip(actual, predicted, strict=True)])


@dataclass(frozen=True)
class Evaluation:
    """What evaluate writes for one arm: numbers (``metrics/<arm>.json``) and words (``.info.json``)."""

    metrics: dict[str, float]
    info: EvaluationInfo | Skipped


def write_evaluation(files: ArmFiles, evaluation: Evaluation) -> None:
    write_json_atomic(files.metrics, evaluation.metrics)
    write_info(files.info, evaluation.info)


def evaluate_arm(params: Params, arm: str, layout: Layout | None = None) -> Evaluation:
    """Evaluate the arm's ``best.pt`` on the test split and write the metrics, info and tables.

    A skipped arm gets no numbers (``{}``: a row of dashes in `dvc metrics show`),
    its reason and fix in the info, and header-only tables.
    """
    layout = layout or Layout()
    files = layout.arm(arm)
    status = read_status(files.status, arm)
    summary = read_summary(layout.summary)
    if isinstance(status, Skipped):
        evaluation = Evaluation({}, status)
        write_tables(files, np.array([], dtype=int), np.array([], dtype=int), None)
        write_evaluation(files, evaluation)
        return evaluation

    trained = checkpoint.load_trained(files.best, fix=(
        f"restore it with `dvc checkout {files.model_dir}` (DVC keeps every finished run's checkpoints), "
        f"or move {files.model_dir} away and run `dvc repro` to train the arm again"))
    best, spec = trained.state, trained.spec
    history = status.history
    if best["fingerprint"] != status.fingerprint or best["epoch"] != status.best_epoch \
            or not 1 <= best["epoch"] <= len(history):
        # A kill (or a full disk) between training's writes, or files put together by hand.
        raise RetinopathyError(
            f"{files.best}: holds epoch {best['epoch']} of run {best['fingerprint']}, but {files.status} "
            f"says the best epoch of run {status.fingerprint} is {status.best_epoch}: they are from "
            f"different or interrupted training runs; run `dvc repro train@{arm}` (or `retinopathy train "
            f"--init {arm}`) to finish training, which writes both again"
        )
    best_row = history[best["epoch"] - 1]

    train = params.train
    runtime = from_params(params)
    runtime.configure_backends()  # the numerics training evaluated with
    grader = runtime.place(trained.grader)
    records = {"test": read_index(layout.index)["test"]}
    sources, decoder = open_sources(params, runtime, records, spec.image_size, status.resident)
    batches = eval_batches(sources["test"], train.batch_size, runtime)
    tta = params.evaluate.tta == "flips"
    lower = (f"train.batch_size in params.yaml (now {train.batch_size}; evaluation batches are twice it)"
             f"{', or set evaluate.tta to none' if tta else ''}")
    _, predicted, actual = loops.predict(grader, batches, runtime, spec.head(), f"evaluating {arm}", tta=tta,
                                         lower=lower)
    actual_np, predicted_np = actual.numpy(), predicted.numpy()
    tables = confusion_tables(actual_np, predicted_np)

    numbers: dict[str, float] = {
        **scores(actual_np, predicted_np, tables),
        "epoch": best["epoch"],
        "final": history[-1]["test_accuracy"],
        "train": best_row["train_accuracy"],  # running accuracy over the epoch, as the lab reports it
        "base": summary.majority_baseline.test_accuracy,
    }
    if "val_accuracy" in best_row:
        numbers["val"] = best_row["val_accuracy"]
    metrics = {key: round(numbers[key], METRIC_DECIMALS) for key in METRIC_KEYS if key in numbers}
    info = EvaluationInfo(
        model=spec.model,
        init=arm,
        weights=status.weights,
        data=params.data.root,
        synthetic=summary.synthetic,
        selection=status.selection,
        select_by=status.select_by,
        selection_rule=selection_rule(status.selection, status.select_by),
        tta=params.evaluate.tta,
        epochs=status.epochs,
        test_size=int(len(actual_np)),
        decoder=decoder,
        trained_with_decoder=status.decoder,
        fingerprint=best["fingerprint"],  # the checkpoint these numbers are of (export's card checks it)
        numerics=portable.state(),  # train.portable (retinopathy.portable)
    )
    evaluation = Evaluation(metrics, info)
    write_tables(files, actual_np, predicted_np, tables)
    write_evaluation(files, evaluation)
    return evaluation


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy evaluate --init scratch|pretrained [--params params.yaml]``."""
    parser = argparse.ArgumentParser(prog="retinopathy evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--init", choices=ARMS, required=True, help="The arm to evaluate.")
    parser.add_argument("--params", default="params.yaml", metavar="FILE",
                        help="The parameters file (default: params.yaml).")
    args = parser.parse_args(argv)
    evaluation = evaluate_arm(load_params(args.params), args.init)
    info, metrics = evaluation.info, evaluation.metrics
    if isinstance(info, Skipped):
        warn(f"{args.init} arm skipped: {info.reason}\n  fix: {info.fix}")
    else:
        print(f"{args.init}: test accuracy {metrics['acc']:.1%} (epoch {metrics['epoch']}, "
              f"{info.selection_rule}), kappa {metrics['kappa']:.3f}, "
              f"always-grade-0 baseline {metrics['base']:.1%}")
    return 0
