"""The `evaluate` stage: score one arm's best checkpoint on the test split.

Writes ``metrics/<arm>.json``, numbers only under the short keys of
``contract.METRIC_KEYS`` (accuracy, balanced accuracy, quadratic weighted
kappa, per-grade recall, the majority baseline, the selected epoch, ...), so
``dvc metrics show`` reads at a glance; ``metrics/<arm>.info.json``, the words
(status, weights, data, which rule picked the epoch); the confusion matrix
twice (``metrics/confusion/<arm>_counts.csv`` and ``<arm>_normalized.csv``:
rows = true grade, columns = predicted grade, each row of the normalised one
summing to 1 as the lab defines it); ``metrics/predictions/<arm>.csv``
(per test image: ``image,patient,actual,predicted``, the head's scores and the
referable score, :func:`contract.prediction_header`; ``actual,predicted`` is
the long format DVC's ``confusion`` plot template reads) and
``<arm>.val.csv``, the same for the validation split (header only without
one); and the screening files (``retinopathy.evaluation.screening_files``):
``metrics/<arm>.screening.json`` (referable and vision-threatening AUC,
sensitivity and specificity at the model's grade and at the operating points
chosen on validation, per image and per patient, with bootstrap intervals over
patients; the calibration error), the ROC curves ``metrics/roc/<arm>_image.csv``
and ``<arm>_patient.csv``, and ``metrics/reliability/<arm>.csv``.

A skipped arm gets ``{}`` as metrics (a row of dashes), the reason and the fix
in its info, and header-only CSVs, so the report and `dvc metrics show` show the gap.

All these files change together or not at all (``files.write_together``), and
outputs that are NaN or infinite stop the stage before anything is written.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retinopathy.core import portable
from retinopathy.core.config import Params, load_params
from retinopathy.core.contract import (
    ARMS,
    CONFUSION_COLUMNS,
    GRADES,
    METRIC_DECIMALS,
    METRIC_KEYS,
    ArmFiles,
    Layout,
    prediction_header,
)
from retinopathy.core.errors import RetinopathyError, warn
from retinopathy.core.files import csv_text, json_text, write_together
from retinopathy.core.records import EvaluationInfo, Skipped, info_text, read_status, read_summary
from retinopathy.data.index import read_index
from retinopathy.data.labels import Record, patient_of
from retinopathy.engine import checkpoint, loops
from retinopathy.engine.batches import eval_batches, open_sources
from retinopathy.engine.runtime import from_params
from retinopathy.evaluation.scoring import confusion_tables, scores
from retinopathy.evaluation.screening import Scored, record, scored
from retinopathy.evaluation.screening_files import screening_contents
from retinopathy.models.head import require_finite
from retinopathy.pipeline.paramkeys import restrict

# The params keys this stage reads (retinopathy.pipeline.paramkeys: reading any other is an error);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = (
    "data.root",
    "data.on_device",
    "train.device",
    "train.precision",
    "train.channels_last",
    "train.portable",
    "train.batch_size",
    "evaluate",
)


def selection_rule(split: str, metric: str) -> str:
    """The rule that picked the evaluated epoch, in words."""
    if split == "test":
        lab = " (the lab's rule; optimistic)" if metric == "accuracy" else " (optimistic)"
        return f"epoch with the highest test {metric}{lab}"
    return f"epoch with the highest validation {metric} (test split unseen when choosing)"


def prediction_rows(
    records: list[Record], predicted: np.ndarray, outputs: np.ndarray, rows: Scored
) -> list[list]:
    """The predictions CSV's rows (:func:`contract.prediction_header`): one per image, in index order."""
    scores = outputs.reshape(len(records), -1)
    return [
        [r.image, patient, r.label, int(p), *(f"{v:.6f}" for v in s), f"{referable:.6f}"]
        for r, patient, p, s, referable in zip(
            records, rows.patients, predicted, scores, rows.referable, strict=True
        )
    ]


def table_contents(
    files: ArmFiles,
    tables: tuple[np.ndarray, np.ndarray] | None,
    header: tuple[str, ...],
    rows: list[list],
    val_rows: list[list],
) -> dict[Path, str]:
    """The texts of the confusion tables and the predictions (header only where there are none), by file.

    Args:
        files: The arm's files.
        tables: :func:`confusion_tables` of the test grades; None for a skipped arm (no predictions).
        header: The predictions' columns (:func:`contract.prediction_header`).
        rows: The test split's predictions (:func:`prediction_rows`).
        val_rows: The validation split's (none without one).
    """
    confusion = list(CONFUSION_COLUMNS)
    if tables is not None:
        counts, normalized = tables
        count_rows = [[g, *counts[g].tolist()] for g in GRADES]
        norm_rows = [[g, *(f"{v:.6f}" for v in normalized[g])] for g in GRADES]
    else:
        count_rows, norm_rows = [], []
    return {
        files.confusion_counts: csv_text(confusion, count_rows),
        files.confusion_normalized: csv_text(confusion, norm_rows),
        files.predictions: csv_text(list(header), rows),
        files.val_predictions: csv_text(list(header), val_rows),
    }


@dataclass(frozen=True)
class Evaluation:
    """What evaluate writes for one arm: numbers (``metrics/<arm>.json``) and words (``.info.json``)."""

    metrics: dict[str, float]
    info: EvaluationInfo | Skipped
    screening: dict[str, Any] | None = None  # retinopathy.evaluation.screening.record; None for a skipped arm


def write_evaluation(files: ArmFiles, evaluation: Evaluation, others: dict[Path, str]) -> None:
    """Write the metrics and the info with ``others`` (the tables and screening files): all, or none."""
    write_together(
        {
            **others,
            files.metrics: json_text(files.metrics, evaluation.metrics),
            files.info: info_text(files.info, evaluation.info),
        }
    )


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
        write_evaluation(
            files,
            evaluation,
            {
                **table_contents(files, None, prediction_header(regression=False), [], []),
                **screening_contents(files.screening_files, None, None, probabilities=False),
            },
        )
        return evaluation

    trained = checkpoint.load_trained(
        files.best,
        fix=(
            f"restore it with `dvc checkout {files.model_dir}` (DVC keeps every finished run's checkpoints), "
            f"or move {files.model_dir} away and run `dvc repro` to train the arm again"
        ),
    )
    best, spec = trained.state, trained.spec
    history = status.history
    if (
        best["fingerprint"] != status.fingerprint
        or best["epoch"] != status.best_epoch
        or not 1 <= best["epoch"] <= len(history)
    ):
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
    index = read_index(layout.index)
    # The validation split (data.val_fraction > 0) picks the screening operating points.
    records = {"test": index["test"], "val": index["val"]}
    sources, decoder = open_sources(params, runtime, records, spec.image_size, status.resident)
    tta = params.evaluate.tta == "flips"
    lower = (
        f"train.batch_size in params.yaml (now {train.batch_size}; evaluation batches are twice it)"
        f"{', or set evaluate.tta to none' if tta else ''}"
    )
    head = spec.head()
    graded: dict[str, tuple[np.ndarray, np.ndarray, Scored]] = {}
    for split in sources:
        batches = eval_batches(sources[split], train.batch_size, runtime)
        outputs, predicted, actual = loops.predict(
            grader, batches, runtime, head, f"evaluating {arm} ({split})", tta=tta, lower=lower
        )
        if actual.tolist() != [r.label for r in records[split]]:  # each row must name its own image
            raise RetinopathyError(
                f"{layout.index}: the {split} split's grades came back in another order "
                "than listed (a bug in the batching: please report it)"
            )
        require_finite(
            outputs,
            files.best,
            "its weights are finite, but the network overflows on these "
            f"images; train the arm again (`dvc repro -f train@{arm}`)",
            [r.image for r in records[split]],
        )
        rows = scored(
            [patient_of(r.image) for r in records[split]],
            actual.numpy(),
            predicted.numpy(),
            outputs.numpy(),
            head.regression,
        )
        graded[split] = (predicted.numpy(), outputs.numpy(), rows)
    actual_np, predicted_np = graded["test"][2].actual, graded["test"][0]
    tables = confusion_tables(actual_np, predicted_np)
    settings = params.evaluate
    screening = record(
        graded["test"][2],
        graded["val"][2] if "val" in graded else None,
        settings.operating_points,
        settings.bootstrap,
        settings.seed,
        probabilities=not head.regression,
    )

    numbers: dict[str, float] = {
        **scores(actual_np, predicted_np, tables),
        "epoch": best["epoch"],
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
        numerics=portable.state(),  # train.portable (retinopathy.core.portable)
        patients=summary.patients,  # prepare's count of patients per split and across splits
    )
    evaluation = Evaluation(metrics, info, screening)
    csv_rows = {split: prediction_rows(records[split], *graded[split]) for split in graded}
    write_evaluation(
        files,
        evaluation,
        {
            **table_contents(
                files, tables, prediction_header(head.regression), csv_rows["test"], csv_rows.get("val", [])
            ),
            **screening_contents(
                files.screening_files, screening, graded["test"][2], probabilities=not head.regression
            ),
        },
    )
    return evaluation


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy evaluate --init scratch|pretrained [--params params.yaml]``."""
    parser = argparse.ArgumentParser(prog="retinopathy evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--init", choices=ARMS, required=True, help="The arm to evaluate.")
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="The parameters file (default: params.yaml)."
    )
    args = parser.parse_args(argv)
    evaluation = evaluate_arm(restrict(load_params(args.params), PARAMS, __name__), args.init)
    info, metrics = evaluation.info, evaluation.metrics
    if isinstance(info, Skipped):
        warn(f"{args.init} arm skipped: {info.reason}\n  fix: {info.fix}")
    else:
        print(
            f"{args.init}: test accuracy {metrics['acc']:.1%} (epoch {metrics['epoch']}, "
            f"{info.selection_rule}), kappa {metrics['kappa']:.3f}, "
            f"always-grade-0 baseline {metrics['base']:.1%}"
        )
        auc = (evaluation.screening or {}).get("patient", {}).get("auc_referable", {}).get("value")
        print(
            f"{args.init}: referable DR AUC per patient "
            f"{'undefined (one class only)' if auc is None else f'{auc:.3f}'}; "
            f"see {Layout().arm(args.init).screening_files.screening}"
        )
    return 0
