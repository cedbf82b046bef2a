"""What evaluate and train wrote for one arm, read back and checked: for the report and compare.

Everything is checked before anything is drawn, so a missing, malformed or
stale file stops the reader with a message that names it and the fix.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinopathy.core.contract import (
    CONFUSION_COLUMNS,
    FUSED_METRIC_KEYS,
    GRADES,
    HISTORY_COLUMNS,
    METRIC_KEYS,
    NUM_GRADES,
    Layout,
    recall_key,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import (
    EvaluationInfo,
    FusionFacts,
    Gradability,
    ReadText,
    RecordError,
    Skipped,
    UnfusedRecord,
    check_fused_screening,
    check_screening,
    check_unfused_screening,
    read_external_run,
    read_info,
    read_json_object,
    read_status,
    read_working_tree,
)
from retinopathy.core.registry import title
from retinopathy.evaluation.screening_files import FUSE_FIX

# Keys of a trained arm's metrics that the figures need; the table shows "n/a" for others.
REQUIRED_TRAINED = ("acc", "kappa", "base", "epoch")
FRACTIONS = ("acc", "bacc", "base", "train", "val", *(recall_key(g) for g in GRADES))
ROW_SUM_TOLERANCE = 0.01  # normalised rows are written rounded; 0.01 still catches a counts file
EVALUATE_FIX = "run `dvc repro evaluate` first"
EXTERNAL_FIX = "run `dvc repro external`"


@dataclass(frozen=True)
class Fused:
    """The arm's test split graded with both eyes (the `fuse` stage), read back and checked.

    Attributes:
        metrics: ``metrics/fused/<arm>.json``: :data:`contract.FUSED_METRIC_KEYS` (headline keys).
        screening: ``metrics/fused/<arm>.screening.json``: the screening figures per image and per
            patient with their intervals, as evaluate's of the network alone.
        facts: its ``fusion`` entry: how the grades were fused, and how many images were.
    """

    metrics: dict[str, float]
    screening: dict[str, Any]
    facts: FusionFacts

    def figure(self, level: str, key: str) -> float | None:
        """A screening figure's value (``level`` in ``LEVELS``, ``key`` in ``screening.FIGURES``)."""
        value = self.screening[level][key]["value"]
        return None if value is None else float(value)


@dataclass
class Arm:
    """Everything the report shows about one arm; the tables are None for a skipped arm.

    Attributes:
        name: ``scratch`` or ``pretrained``.
        info: The words of ``metrics/<arm>.info.json`` (model, weights, ...; or why it was skipped).
        metrics: The numbers of ``metrics/<arm>.json`` (``contract.METRIC_KEYS``; empty if skipped).
    """

    name: str
    info: EvaluationInfo | Skipped
    metrics: dict[str, float]
    history: pd.DataFrame | None = None
    normalized: np.ndarray | None = None
    counts: np.ndarray | None = None
    fused: Fused | None = None  # None: skipped, or no `fuse` stage has run (results from before it)
    # The `fuse` stage's facts where it skipped the arm's fusion (no two-eyed patient in training).
    unfused: FusionFacts | None = None
    # The `external` stage's sets: name -> referable AUC per image (None: undefined, one class);
    # empty where no set was graded, or the stage has not run (results from before it).
    external: dict[str, float | None] = field(default_factory=dict)
    # The gradability part of the arm's screening record (imageability, intention to screen); None where
    # it has none (the `quality` stage had not run: results from before it).
    gradability: Gradability | None = None

    @property
    def trained(self) -> bool:
        return isinstance(self.info, EvaluationInfo)


def _text(path: Path, read: ReadText, fix: str) -> str:
    try:
        return read(path)
    except FileNotFoundError:
        raise RetinopathyError(f"{path}: file not found: {fix}") from None
    except UnicodeDecodeError as error:
        raise RetinopathyError(f"{path}: not UTF-8 text ({error}): {fix}") from None


def _metric_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is no figure ``key`` of a metrics file (``metrics/<arm>.json``, ``metrics/fused/``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "not a finite number"
    if key == "epoch" and not (isinstance(value, int) and value >= 1):
        return "not an epoch (a whole number from 1)"
    if key == "kappa" and not -1 <= value <= 1:
        return "not a kappa in [-1, 1]"
    if key in FRACTIONS and not 0 <= value <= 1:  # fractions, not percent: 88.5 would draw an axis to 8850%
        return "not a fraction in [0, 1]"
    return None


def _numbers(path: Path, read: ReadText, keys: Collection[str], stage: str, fix: str) -> dict[str, float]:
    """A metrics file of ``stage``: only ``keys``, each a finite number in its range."""
    metrics = read_json_object(path, read, fix, fix)
    for key, value in metrics.items():
        problem = f"not one of the numbers {stage} writes" if key not in keys else _metric_problem(key, value)
        if problem:
            raise RetinopathyError(f"{path}: '{key}' is {value!r}: {problem}; {fix}")
    return metrics


def _read_metrics(path: Path, trained: bool, read: ReadText) -> dict[str, float]:
    metrics = _numbers(path, read, METRIC_KEYS, "evaluate", EVALUATE_FIX)
    if not trained:
        if metrics:
            raise RetinopathyError(f"{path}: has numbers, but the arm was skipped: {EVALUATE_FIX}")
        return metrics
    for key in REQUIRED_TRAINED:
        if key not in metrics:
            raise RetinopathyError(f"{path}: '{key}' is missing: {EVALUATE_FIX}")
    return metrics


def _read_csv(path: Path, columns: Sequence[str], fix: str, read: ReadText) -> pd.DataFrame:
    text = _text(path, read, fix)
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise RetinopathyError(f"{path}: not a readable CSV ({error}): {fix}") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise RetinopathyError(
            f"{path}: column(s) {', '.join(missing)} missing (header: {','.join(frame.columns)}; "
            f"expected {','.join(columns)}): {fix}"
        )
    try:
        frame = frame.astype(float)
    except ValueError:
        raise RetinopathyError(f"{path}: a value is not a number: {fix}") from None
    if not np.isfinite(frame.to_numpy()).all():  # its writers leave no cell empty
        raise RetinopathyError(f"{path}: a value is empty, NaN or infinite: {fix}")
    return frame


def _read_history(path: Path, read: ReadText) -> pd.DataFrame:
    fix = "run `dvc repro train` first"
    frame = _read_csv(path, HISTORY_COLUMNS, fix, read)
    if frame.empty:
        raise RetinopathyError(f"{path}: no epochs, but the arm's JSON says it was trained: {fix}")
    accuracies = [c for c in frame.columns if c.endswith("_accuracy")]
    if not frame[accuracies].stack().between(0, 1).all():
        raise RetinopathyError(f"{path}: accuracies must be fractions in [0, 1]: {fix}")
    kappas = [c for c in frame.columns if c.endswith("_kappa")]
    losses = [c for c in frame.columns if c.endswith("_loss")]
    if not frame[kappas].stack().between(-1, 1).all() or (frame[losses] < 0).any().any():
        raise RetinopathyError(f"{path}: kappas must be in [-1, 1] and losses not negative: {fix}")
    if frame["epoch"].tolist() != list(range(1, len(frame) + 1)):
        raise RetinopathyError(
            f"{path}: the epochs must be 1, 2, ... {len(frame)}, one row each, in order "
            f"(found {', '.join(f'{e:g}' for e in frame['epoch'].head(10))}): {fix}"
        )
    return frame


def _read_confusion(path: Path, normalized: bool, read: ReadText) -> np.ndarray:
    frame = _read_csv(path, CONFUSION_COLUMNS, EVALUATE_FIX, read)
    if sorted(frame["actual"].tolist()) != list(range(NUM_GRADES)):
        raise RetinopathyError(
            f"{path}: expected one row per true grade 0-4 in the column 'actual': {EVALUATE_FIX}"
        )
    matrix = frame.sort_values("actual")[list(CONFUSION_COLUMNS[1:])].to_numpy()
    if (matrix < 0).any():
        raise RetinopathyError(f"{path}: negative entries: {EVALUATE_FIX}")
    if normalized:
        sums = matrix.sum(axis=1)
        # A grade with no test images has an all-zero row; every other row sums to 1.
        bad = [g for g, s in enumerate(sums) if abs(s - 1) > ROW_SUM_TOLERANCE and s != 0]
        if bad:
            rows = ", ".join(f"grade {g} sums to {sums[g]:.3f}" for g in bad)
            raise RetinopathyError(
                f"{path}: rows must sum to 1 (normalised per true grade) but {rows}: {EVALUATE_FIX}"
            )
    elif not np.allclose(matrix, np.round(matrix)):
        raise RetinopathyError(f"{path}: counts must be whole numbers: {EVALUATE_FIX}")
    return matrix


def _read_fused(layout: Layout, name: str, read: ReadText) -> Fused | UnfusedRecord | None:
    """The arm's fused files; None where ``metrics/fused/<arm>.json`` is absent (no `fuse` run yet),
    and the :class:`UnfusedRecord` of an arm whose fusion was skipped (it says why)."""
    path, files = layout.fused_metrics(name), layout.fused(name)
    try:
        read(path)
    except FileNotFoundError:
        return None
    metrics = _numbers(path, read, FUSED_METRIC_KEYS, "fuse", FUSE_FIX)
    if not metrics:  # the arm was skipped, or its fusion was (no two-eyed patient in training): why
        raw = read_json_object(files.screening, read, FUSE_FIX, FUSE_FIX)
        return check_unfused_screening(files.screening, raw, FUSE_FIX) if raw else None
    for key in ("acc", "kappa"):
        if key not in metrics:
            raise RetinopathyError(f"{path}: '{key}' is missing: {FUSE_FIX}")
    raw = read_json_object(files.screening, read, FUSE_FIX, FUSE_FIX)
    facts = check_fused_screening(files.screening, raw, FUSE_FIX).fusion
    return Fused(metrics, raw, facts)


def _read_external(layout: Layout, name: str, read: ReadText) -> dict[str, float | None]:
    """Each external set's referable AUC per image (the `external` stage's files), by set name."""
    files = layout.external(name)
    try:
        read(files.index)
    except FileNotFoundError:
        return {}
    aucs: dict[str, float | None] = {}
    for set_name in read_external_run(files.index, read).sets:
        path = files.screening(set_name).screening
        raw = read_json_object(path, read, EXTERNAL_FIX, EXTERNAL_FIX)
        aucs[set_name] = check_screening(path, raw, EXTERNAL_FIX).image.auc_referable.value
    return aucs


def _read_gradability(layout: Layout, name: str, read: ReadText) -> Gradability | None:
    """The gradability part of the arm's screening record; None where there is none, or no record
    (results from before the screening files)."""
    path = layout.arm(name).screening_files.screening
    try:
        read(path)
    except FileNotFoundError:
        return None
    raw = read_json_object(path, read, EVALUATE_FIX, EVALUATE_FIX)
    return check_screening(path, raw, EVALUATE_FIX).gradability


def load_arm(layout: Layout, name: str, read: ReadText = read_working_tree) -> Arm:
    """Read and check one arm's metrics, info, history and confusion tables (a skipped arm: the JSONs).

    Raises:
        RetinopathyError: a file is missing or malformed (the message names it).
    """
    files = layout.arm(name)
    info = read_info(files.info, name, read)
    arm = Arm(name, info, _read_metrics(files.metrics, isinstance(info, EvaluationInfo), read))
    if not arm.trained:
        return arm
    fused = _read_fused(layout, name, read)
    if isinstance(fused, UnfusedRecord):
        arm.unfused = fused.fusion
    else:
        arm.fused = fused
    arm.external = _read_external(layout, name, read)
    arm.gradability = _read_gradability(layout, name, read)
    arm.history = _read_history(files.history, read)
    arm.normalized = _read_confusion(files.confusion_normalized, normalized=True, read=read)
    arm.counts = _read_confusion(files.confusion_counts, normalized=False, read=read).astype(int)
    # Both files come from the same evaluation; if they disagree one of them is stale.
    totals = arm.counts.sum(axis=1, keepdims=True)
    expected = np.divide(arm.counts, totals, out=np.zeros(arm.normalized.shape), where=totals > 0)
    if not np.allclose(expected, arm.normalized, atol=ROW_SUM_TOLERANCE):
        raise RetinopathyError(
            f"{files.confusion_normalized} does not match {files.confusion_counts} "
            f"(one of them is stale): {EVALUATE_FIX}"
        )
    return arm


def model_name(model: str) -> str:
    """``resnet18`` -> ``ResNet18``, for titles: the registry record's title."""
    return title(model)


def majority_baseline(arms: Sequence[Arm]) -> float | None:
    """The accuracy of always answering the commonest grade (None when no arm was trained)."""
    # Every arm is evaluated on the same test split, so any trained arm's baseline will do.
    return next((arm.metrics["base"] for arm in arms if arm.trained), None)


# "At the majority baseline": the model has learned nothing that always answering the
# commonest grade does not give. Always-grade-0 scores kappa 0 and balanced accuracy
# 1/5 = 0.2 exactly, so either sign is enough: a quadratic kappa of at most 0.05, or
# a test accuracy within half a point of the baseline's together with a balanced
# accuracy of at most 0.25 (a model that answers grade 0 for nearly every image).
BASELINE_KAPPA = 0.05
BASELINE_ACCURACY_MARGIN = 0.005
BASELINE_BALANCED_ACCURACY = 0.25
BASELINE_RULE = (
    f"quadratic kappa <= {BASELINE_KAPPA}, or test accuracy within "
    f"{100 * BASELINE_ACCURACY_MARGIN:g} points of the majority baseline with balanced accuracy "
    f"<= {BASELINE_BALANCED_ACCURACY}"
)


def at_baseline(metrics: dict[str, float]) -> str | None:
    """Why a trained arm's selected epoch is no better than always answering the commonest grade, or None.

    ``metrics`` are those of ``metrics/<arm>.json`` (``acc``, ``kappa``, ``base``,
    ``bacc``); see :data:`BASELINE_RULE`.
    """
    kappa, acc, base, bacc = (metrics.get(key) for key in ("kappa", "acc", "base", "bacc"))
    if kappa is not None and kappa <= BASELINE_KAPPA:
        return f"kappa {kappa:.3f} <= {BASELINE_KAPPA}"
    if acc is None or base is None or bacc is None:
        return None
    if abs(acc - base) <= BASELINE_ACCURACY_MARGIN and bacc <= BASELINE_BALANCED_ACCURACY:
        return (
            f"accuracy {100 * acc:.1f}% within {100 * BASELINE_ACCURACY_MARGIN:g} points of the "
            f"baseline's {100 * base:.1f}%, balanced accuracy {bacc:.3f} <= {BASELINE_BALANCED_ACCURACY}"
        )
    return None


def missing_checkpoint_fix(arm: str, layout: Layout) -> str:
    """What to do when an arm has no ``best.pt``: why it was not trained, if its records say so.

    A skipped arm (the pretrained one offline) is not trained by another ``dvc repro``
    until its cause is fixed, so the message gives the recorded reason and fix.
    """
    files = layout.arm(arm)
    for path, read in ((files.info, read_info), (files.status, read_status)):
        try:
            words = read(path, arm)
        except RecordError:  # none there, or unreadable: this message is about the missing checkpoint
            continue
        if isinstance(words, Skipped):
            return (
                f"the {arm} arm was not trained ({path} says skipped: {words.reason}); "
                f"`dvc repro` will not train it until that is fixed: {words.fix}. "
                "Or pass --checkpoint FILE"
            )
    return f"train the arm first (`dvc repro train@{arm}`), or pass --checkpoint FILE"
