"""One arm's evaluation: its trained grader on the test and validation splits, scored, as evaluate's files.

:func:`open_grader` loads the arm's ``best.pt`` (checked to be of the run that
``status.json`` records) and opens the splits on the runtime params.yaml asks for;
:func:`grade` runs the grader over each split in order and checks what comes back;
:func:`evaluation` scores the test split (the headline numbers, the confusion tables,
the screening record with the operating points chosen on validation) and gives the text
of every file evaluate writes; :func:`skipped` does the same for an arm that was not
trained. The `fuse` stage opens the grader the same way; a command that grades a split
can call :func:`grade` and :func:`prediction_rows`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retinopathy.core import portable
from retinopathy.core.config import EvaluateParams
from retinopathy.core.contract import (
    CONFUSION_COLUMNS,
    GRADABLE_CELLS,
    GRADES,
    METRIC_DECIMALS,
    METRIC_KEYS,
    QUALITY_REASON_SEPARATOR,
    ArmFiles,
    prediction_header,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import csv_text, json_text
from retinopathy.core.records import (
    EvaluationInfo,
    PreparedSummary,
    ScreeningRecord,
    Skipped,
    TrainingStatus,
    info_text,
)
from retinopathy.data.labels import Record, patient_of
from retinopathy.engine import checkpoint, loops
from retinopathy.engine.batches import Source, eval_batches, open_sources
from retinopathy.engine.runtime import Runtime, Switches, runtime_of
from retinopathy.evaluation.scoring import confusion_tables, scores
from retinopathy.evaluation.screening import Scored, record, scored
from retinopathy.evaluation.screening_files import screening_contents
from retinopathy.models.head import Head, require_finite


@dataclass(frozen=True)
class Judged:
    """The `quality` stage's verdicts, as evaluate reads them (plain values: fuse and external, which
    import this module, then depend on no quality code).

    Attributes:
        source: The file they were read from (``metrics/quality/photos.csv``), for messages.
        verdicts: Split -> image name -> (gradable, the reasons joined by
            ``contract.QUALITY_REASON_SEPARATOR``, empty when gradable).
        reasons: Every reason a verdict can give, in its order (``quality.verdict.REASONS``).
    """

    source: Path
    verdicts: Mapping[str, Mapping[str, tuple[bool, str]]]
    reasons: tuple[str, ...]


def selection_rule(split: str, metric: str) -> str:
    """The rule that picked the evaluated epoch, in words."""
    if split == "test":
        lab = " (the lab's rule; optimistic)" if metric == "accuracy" else " (optimistic)"
        return f"epoch with the highest test {metric}{lab}"
    return f"epoch with the highest validation {metric} (test split unseen when choosing)"


def overflow_fix(arm: str) -> str:
    """What to do when the arm's finite weights give NaN or infinite outputs on some images."""
    return (
        "its weights are finite, but the network overflows on these images; train the arm "
        f"again (`dvc repro -f train@{arm}`)"
    )


@dataclass(frozen=True)
class Opened:
    """An arm's trained grader on its runtime, and the splits to grade.

    Attributes:
        trained: The checked ``best.pt`` (state, spec, and the network on the CPU).
        grader: The network placed on the runtime's device.
        runtime: The device and numerics of params.yaml, configured as training evaluated with.
        sources: Each non-empty split of ``records``, opened at the checkpoint's image size.
        decoder: The decoder that makes the pixels, in words.
    """

    trained: checkpoint.Trained
    grader: Any
    runtime: Runtime
    sources: dict[str, Source]
    decoder: str

    @property
    def head(self) -> Head:
        return self.trained.spec.head()


def open_grader(
    switches: Switches,
    data_root: str,
    cache_dir: str | None,
    trained: checkpoint.Trained,
    status: TrainingStatus,
    records: dict[str, list[Record]],
) -> Opened:
    """Place ``trained``'s grader on the runtime of ``switches`` and open the splits of ``records``.

    Args:
        switches: The device and numerics (params.yaml's ``train`` switches, ``data.num_workers``).
        data_root: ``data.root``, the folder of the photographs.
        cache_dir: ``data.cache_dir``, the decoded-pixel cache (None: none).
        trained: The checked ``best.pt``.
        status: What training recorded (whether it decoded the splits into the device's memory).
        records: The splits to open.
    """
    runtime = runtime_of(switches)
    runtime.configure_backends()  # the numerics training evaluated with
    grader = runtime.place(trained.grader)
    sources, decoder = open_sources(
        data_root, records, trained.spec.image_size, status.resident, runtime, cache_dir
    )
    return Opened(trained, grader, runtime, sources, decoder)


def load_best(files: ArmFiles, status: TrainingStatus) -> checkpoint.Trained:
    """The arm's ``best.pt``, checked to hold the best epoch of the run ``status`` records.

    Raises:
        RetinopathyError: a missing or damaged checkpoint, or one of another (or an interrupted) run.
    """
    arm = files.arm
    trained = checkpoint.load_trained(
        files.best,
        fix=(
            f"restore it with `dvc checkout {files.model_dir}` (DVC keeps every finished run's checkpoints), "
            f"or move {files.model_dir} away and run `dvc repro` to train the arm again"
        ),
    )
    best = trained.state
    if (
        best.fingerprint != status.fingerprint
        or best.epoch != status.best_epoch
        or not 1 <= best.epoch <= len(status.history)
    ):
        # A kill (or a full disk) between training's writes, or files put together by hand.
        raise RetinopathyError(
            f"{files.best}: holds epoch {best.epoch} of run {best.fingerprint}, but {files.status} "
            f"says the best epoch of run {status.fingerprint} is {status.best_epoch}: they are from "
            f"different or interrupted training runs; run `dvc repro train@{arm}` (or `retinopathy train "
            f"--init {arm}`) to finish training, which writes both again"
        )
    return trained


@dataclass(frozen=True)
class Graded:
    """One split graded by the network alone: its grades, the head's outputs, and what the figures need."""

    predicted: np.ndarray
    outputs: np.ndarray
    rows: Scored


def grade(
    opened: Opened,
    records: Mapping[str, list[Record]],
    batch_size: int,
    tta: bool,
    files: ArmFiles,
    index: Path,
) -> dict[str, Graded]:
    """Grade every opened split, each image once and in the order of ``records``.

    Args:
        opened: :func:`open_grader`'s grader and splits.
        records: Each split's records, as the index lists them.
        batch_size: ``train.batch_size`` (evaluation batches are twice it).
        tta: Average the scores over the four flips of each image (``evaluate.tta: flips``).
        files: The arm's files (for messages: the checkpoint).
        index: The prepared index (for messages).

    Raises:
        RetinopathyError: the grades came back in another order, or an output is NaN or infinite.
    """
    arm, runtime, head = files.arm, opened.runtime, opened.head
    lower = (
        f"train.batch_size in params.yaml (now {batch_size}; evaluation batches are twice it)"
        f"{', or set evaluate.tta to none' if tta else ''}"
    )
    graded: dict[str, Graded] = {}
    for split, source in opened.sources.items():
        batches = eval_batches(source, batch_size, runtime)
        outputs, predicted, actual = loops.predict(
            opened.grader, batches, runtime, head, f"evaluating {arm} ({split})", tta=tta, lower=lower
        )
        if actual.tolist() != [r.label for r in records[split]]:  # each row must name its own image
            raise RetinopathyError(
                f"{index}: the {split} split's grades came back in another order "
                "than listed (a bug in the batching: please report it)"
            )
        require_finite(outputs, files.best, overflow_fix(arm), [r.image for r in records[split]])
        rows = scored(
            [patient_of(r.image) for r in records[split]],
            actual.numpy(),
            predicted.numpy(),
            outputs.numpy(),
            head.regression,
        )
        graded[split] = Graded(predicted.numpy(), outputs.numpy(), rows)
    return graded


def prediction_rows(
    records: list[Record], graded: Graded, judged: list[tuple[bool, str]] | None = None
) -> list[list]:
    """The predictions CSV's rows (:func:`contract.prediction_header`): one per image, in index order.

    Args:
        records: The split's records, as graded.
        graded: Their grades and scores.
        judged: Each image's quality verdict (:func:`verdicts_of`); None: not judged (the
            ``contract.QUALITY_COLUMNS`` left empty, as the external sets' until they are judged).
    """
    scores = graded.outputs.reshape(len(records), -1)
    return [
        [r.image, patient, r.label, int(p), *(f"{v:.6f}" for v in s), f"{referable:.6f}", *cells]
        for r, patient, p, s, referable, cells in zip(
            records,
            graded.rows.patients,
            graded.predicted,
            scores,
            graded.rows.referable,
            quality_cells(judged, len(records)),
            strict=True,
        )
    ]


def verdicts_of(records: list[Record], quality: Judged, split: str) -> list[tuple[bool, str]]:
    """The quality verdict of each of ``records`` (of ``split``), in their order.

    Raises:
        RetinopathyError: an image has no verdict (the index changed since the `quality` stage ran),
            naming the file, the image and the fix.
    """
    verdicts = quality.verdicts.get(split, {})
    missing = [r.image for r in records if r.image not in verdicts]
    if missing:
        raise RetinopathyError(
            f"{quality.source}: has no quality verdict for {len(missing)} of the {split} split's "
            f"{len(records)} images (e.g. {', '.join(missing[:3])}): it was written for another index; "
            "run `dvc repro quality` (or `retinopathy quality`) again"
        )
    return [verdicts[r.image] for r in records]


def quality_cells(judged: list[tuple[bool, str]] | None, count: int) -> list[list[str]]:
    """The predictions' ``contract.QUALITY_COLUMNS`` of ``count`` images (empty: not judged)."""
    if judged is None:
        return [["", ""]] * count
    return [[GRADABLE_CELLS[gradable], reasons] for gradable, reasons in judged]


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
    """What evaluate writes for one arm: numbers (``metrics/<arm>.json``) and words (``.info.json``).

    Attributes:
        metrics: The headline numbers (``contract.METRIC_KEYS``; empty for a skipped arm).
        info: The words about the run, or why the arm was skipped.
        screening: :func:`retinopathy.evaluation.screening.record`; None for a skipped arm.
        outputs: The text of every file evaluate writes, by file: they change together.
    """

    metrics: dict[str, float]
    info: EvaluationInfo | Skipped
    screening: ScreeningRecord | None = None
    outputs: dict[Path, str] = field(default_factory=dict, repr=False)


def _with_records(files: ArmFiles, evaluation: Evaluation, others: dict[Path, str]) -> Evaluation:
    """``evaluation`` with its outputs: ``others`` (the tables and screening files), the metrics, the info."""
    outputs = {
        **others,
        files.metrics: json_text(files.metrics, evaluation.metrics),
        files.info: info_text(files.info, evaluation.info),
    }
    return Evaluation(evaluation.metrics, evaluation.info, evaluation.screening, outputs)


def skipped(files: ArmFiles, status: Skipped) -> Evaluation:
    """A skipped arm: no numbers (``{}``: a row of dashes in `dvc metrics show`), its reason and fix in
    the info, header-only tables and screening files."""
    others = {
        **table_contents(files, None, prediction_header(regression=False), [], []),
        **screening_contents(files.screening_files, None, None, probabilities=False),
    }
    return _with_records(files, Evaluation({}, status), others)


def evaluation(
    files: ArmFiles,
    opened: Opened,
    status: TrainingStatus,
    summary: PreparedSummary,
    records: Mapping[str, list[Record]],
    graded: dict[str, Graded],
    settings: EvaluateParams,
    data_root: str,
    quality: Judged | None = None,
) -> Evaluation:
    """Score the graded test split and give the text of every file evaluate writes.

    Args:
        files: The arm's files.
        opened: The grader that graded the splits (:func:`open_grader`).
        status: What training recorded (the best epoch's row of the history, the selection rule).
        summary: prepare's summary (the majority baseline, the patients, synthetic or not).
        records: Each split's records, as graded.
        graded: :func:`grade`'s splits: ``test``, and ``val`` when there is a validation split, which
            picks the screening operating points.
        settings: params.yaml's ``evaluate`` section.
        data_root: ``data.root`` (recorded in the info).
        quality: The `quality` stage's verdicts on each split's images: the predictions say whether each
            image is gradable, and the screening record gains its ``gradability`` part. None: not judged
            (the columns left empty, no such part).
    """
    best, spec, head = opened.trained.state, opened.trained.spec, opened.head
    best_row = status.history[best.epoch - 1]
    test = graded["test"]
    actual, predicted = test.rows.actual, test.predicted
    tables = confusion_tables(actual, predicted)
    judged = {split: verdicts_of(list(records[split]), quality, split) for split in graded} if quality else {}
    test_rows, reasons = test.rows, None
    if quality is not None:
        gradable = np.array([ok for ok, _ in judged["test"]], dtype=bool)
        test_rows = dataclasses.replace(test.rows, gradable=gradable)
        said = [text.split(QUALITY_REASON_SEPARATOR) for _, text in judged["test"]]
        reasons = {reason: sum(reason in words for words in said) for reason in quality.reasons}
    screening = record(
        test_rows,
        graded["val"].rows if "val" in graded else None,
        settings.operating_points,
        settings.bootstrap,
        settings.seed,
        probabilities=not head.regression,
        reasons=reasons,
    )
    numbers: dict[str, float] = {
        **scores(actual, predicted, tables),
        "epoch": best.epoch,
        "train": best_row["train_accuracy"],  # running accuracy over the epoch, as the lab reports it
        "base": summary.majority_baseline.test_accuracy,
    }
    if "val_accuracy" in best_row:
        numbers["val"] = best_row["val_accuracy"]
    metrics = {key: round(numbers[key], METRIC_DECIMALS) for key in METRIC_KEYS if key in numbers}
    info = EvaluationInfo(
        model=spec.model,
        init=files.arm,
        weights=status.weights,
        data=data_root,
        synthetic=summary.synthetic,
        selection=status.selection,
        select_by=status.select_by,
        selection_rule=selection_rule(status.selection, status.select_by),
        tta=settings.tta,
        epochs=status.epochs,
        test_size=int(len(actual)),
        decoder=opened.decoder,
        trained_with_decoder=status.decoder,
        fingerprint=best.fingerprint,  # the checkpoint these numbers are of (export's card checks it)
        numerics=portable.state(),  # train.portable (retinopathy.core.portable)
        patients=summary.patients,  # prepare's count of patients per split and across splits
    )
    rows = {split: prediction_rows(records[split], graded[split], judged.get(split)) for split in graded}
    others = {
        **table_contents(
            files, tables, prediction_header(head.regression), rows["test"], rows.get("val", [])
        ),
        **screening_contents(files.screening_files, screening, test.rows, probabilities=not head.regression),
    }
    return _with_records(files, Evaluation(metrics, info, screening), others)
