"""Every photograph of a project judged for quality: the `quality` stage's library, and its verdicts' reader.

:func:`survey` measures and judges each photograph of the prepared index (``verdict.assess``)
and matches it to its quality label, where ``quality.labels`` gives them. :func:`photos_text`
writes one row per photograph (``contract.QUALITY_PHOTO_COLUMNS``, the measures, the label,
and any other assessor's columns); :func:`summarise` gives the test split's numbers (imageability
per image and per patient, the share of each reason, and, with labels, how many Reject photographs
the assessor found ungradable and how many Good or Usable ones it kept), with intervals from a
bootstrap over patients, and the words (``core.records.QualitySurvey``); ``quality.table`` reads
the verdicts back for evaluate. Torch-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retinopathy.core.contract import (
    GRADABLE_CELLS,
    QUALITY_LABEL_COLUMN,
    QUALITY_LEVELS,
    QUALITY_PHOTO_COLUMNS,
    QUALITY_REASON_SEPARATOR,
    SPLITS,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import csv_text
from retinopathy.core.records import Bootstrap, QualitySurvey, VerdictCounts
from retinopathy.data.labels import Record, image_path, patient_of
from retinopathy.quality.labels import QualityLabels
from retinopathy.quality.learned import LearnedAssessor, fit, is_reject
from retinopathy.quality.measures import Measures
from retinopathy.quality.photos import assess_files
from retinopathy.quality.verdict import REASONS, Thresholds, Verdict

MEASURE_COLUMNS = tuple(field.name for field in dataclasses.fields(Measures))
REJECT = QUALITY_LEVELS.index("Reject")
CONFIDENCE = 0.95  # of the intervals, as the screening figures' (percentile bootstrap over patients)
DECIMALS = 3  # of metrics/quality.json, as the headline metrics' (contract.METRIC_DECIMALS)


def reason_key(reason: str) -> str:
    """The key of a reason: ``no fundus`` -> ``no_fundus``, ``off-field`` -> ``off_field``."""
    return reason.replace(" ", "_").replace("-", "_")


# metrics/quality.json: numbers only, of the test split, under short keys (one row of `dvc metrics show`).
# `_lo`/`_hi`: the 95% interval; the agreement keys only with labels that hold both kinds of photograph.
METRIC_KEYS: dict[str, str] = {
    "n": "test photographs judged",
    "img": "imageability per image: the share of test photographs found gradable",
    "pat": "imageability per patient: the share of test patients whose every photograph is gradable",
    **{reason_key(reason): f"share of test photographs ungradable for {reason}" for reason in REASONS},
    "sens": "of the test photographs labelled Reject, the share found ungradable",
    "spec": "of the test photographs labelled Good or Usable, the share found gradable",
    # the learned assessor's (quality/learned.py), where quality.labels could fit it: see learn()
    "l_auc": "learned assessor: AUC of EyeQ Reject on the labelled test photographs",
    "l_sens": "learned assessor: share of the Reject test photographs at or above its threshold",
    "l_spec": "learned assessor: share of the Good or Usable test photographs below its threshold",
}
_BOUNDED = ("img", "pat", "sens", "spec")  # the keys that get an interval


@dataclass(frozen=True)
class Surveyed:
    """One photograph judged: where it is, the verdict, and its label.

    Attributes:
        image: Its name, as the index lists it.
        split: Its split (``contract.SPLITS``).
        patient: Its patient (``data.labels.patient_of``).
        verdict: The assessor's verdict (reasons and measures).
        label: Its EyeQ quality 0-2 (``contract.QUALITY_LEVELS``); None without a label.
    """

    image: str
    split: str
    patient: str
    verdict: Verdict
    label: int | None


def survey(
    root: str | Path,
    index: Mapping[str, Sequence[Record]],
    thresholds: Thresholds,
    labels: QualityLabels | None = None,
    workers: int = 0,
) -> list[Surveyed]:
    """Measure and judge every photograph of ``index`` (``<root>/<name>.jpeg``), split by split.

    Args:
        root: ``data.root``, the folder of the photographs.
        index: The prepared index's records per split (``data.index.read_index``).
        thresholds: ``quality.thresholds``.
        labels: The quality labels matched to the index's names; None: no labels.
        workers: Processes to judge them in (``quality.photos.assess_files``); 0: this one.

    Raises:
        RetinopathyError: a photograph is missing or cannot be decoded (naming it).
    """
    records = [(split, record) for split in SPLITS for record in index.get(split, ())]
    verdicts = assess_files([image_path(root, record.image) for _, record in records], thresholds, workers)
    return [
        Surveyed(
            record.image,
            split,
            patient_of(record.image),
            verdict,
            None if labels is None else labels.levels.get(record.image),
        )
        for (split, record), verdict in zip(records, verdicts, strict=True)
    ]


def photos_text(photos: Sequence[Surveyed], extra: Mapping[str, Sequence[str]] | None = None) -> str:
    """The text of ``metrics/quality/photos.csv``: one row per photograph, in :func:`survey`'s order.

    Args:
        photos: :func:`survey`'s photographs.
        extra: Columns another assessor adds after the contract's (e.g. a learned assessor's
            ``learned_reject``): name -> one value per photograph, in the same order.

    Raises:
        ValueError: an extra column has another length or repeats a column's name.
    """
    extra = dict(extra or {})
    header = [*QUALITY_PHOTO_COLUMNS, *MEASURE_COLUMNS, QUALITY_LABEL_COLUMN, *extra]
    if len(set(header)) != len(header) or any(len(values) != len(photos) for values in extra.values()):
        raise ValueError("an extra column repeats a column's name or has another length than the photographs")
    rows = []
    for number, photo in enumerate(photos):
        measures = photo.verdict.measures.as_dict()
        rows.append(
            [
                photo.image,
                photo.split,
                photo.patient,
                GRADABLE_CELLS[photo.verdict.gradable],
                QUALITY_REASON_SEPARATOR.join(photo.verdict.reasons),
                *("" if measures[name] is None else f"{measures[name]:.4f}" for name in MEASURE_COLUMNS),
                "" if photo.label is None else QUALITY_LEVELS[photo.label],
                *(values[number] for values in extra.values()),
            ]
        )
    return csv_text(header, rows)


def share_intervals(
    patients: Sequence[str],
    ratios: Mapping[str, tuple[np.ndarray, np.ndarray]],
    resamples: int,
    seed: int,
) -> dict[str, tuple[float | None, float | None]]:
    """Percentile intervals of shares, resampling patients with replacement (their photographs together).

    Args:
        patients: Each photograph's patient.
        ratios: name -> (numerator, denominator) per photograph; a share is the sum of the
            numerators over the sum of the denominators of the photographs drawn.
        resamples: Resamples (0: no intervals, every bound None).
        seed: Seeds the draws.

    Returns:
        name -> (low, high); None where no resample had a denominator.
    """
    names, row = np.unique(np.asarray(patients, dtype=object), return_inverse=True)
    if not resamples or not len(names):
        return {key: (None, None) for key in ratios}
    drawn = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
    tail = 100 * (1 - CONFIDENCE) / 2
    out: dict[str, tuple[float | None, float | None]] = {}
    for key, (numerator, denominator) in ratios.items():
        top = np.bincount(row, weights=numerator, minlength=len(names))[drawn].sum(1)
        bottom = np.bincount(row, weights=denominator, minlength=len(names))[drawn].sum(1)
        defined = bottom > 0
        if not defined.any():
            out[key] = (None, None)
            continue
        low, high = np.percentile(top[defined] / bottom[defined], [tail, 100 - tail])
        out[key] = (float(low), float(high))
    return out


def summarise(
    photos: Sequence[Surveyed],
    thresholds: Thresholds,
    labels: QualityLabels | None,
    labels_path: str | None,
    resamples: int,
    seed: int,
) -> tuple[dict[str, float], QualitySurvey]:
    """The test split's numbers (``metrics/quality.json``, :data:`METRIC_KEYS`) and the survey's words.

    Args:
        photos: :func:`survey`'s photographs (every split).
        thresholds: ``quality.thresholds`` (recorded).
        labels: The labels matched to the photographs; None: no labels.
        labels_path: ``quality.labels`` as params.yaml gives it (recorded).
        resamples: ``evaluate.bootstrap``: resamples of test patients for the intervals (0: none).
        seed: ``evaluate.seed``.
    """
    test = [photo for photo in photos if photo.split == "test"]
    patients = [photo.patient for photo in test]
    gradable = np.array([photo.verdict.gradable for photo in test], dtype=np.float64)
    ones = np.ones(len(test))
    # A patient is imageable when every photograph of theirs is gradable: their last photograph carries it.
    last = {patient: number for number, patient in enumerate(patients)}
    imageable = {patient for patient in last if all(p.verdict.gradable for p in test if p.patient == patient)}
    is_last = np.array([last[patient] == number for number, patient in enumerate(patients)], dtype=np.float64)
    patient_ok = np.array([patient in imageable for patient in patients], dtype=np.float64) * is_last
    # Without labels (quality.labels null) no photograph has one, whatever `photos` carry.
    levels = np.array([-1 if photo.label is None or labels is None else photo.label for photo in test])
    reject, kept = (
        (levels == REJECT).astype(np.float64),
        ((levels >= 0) & (levels != REJECT)).astype(np.float64),
    )
    ratios = {
        "img": (gradable, ones),
        "pat": (patient_ok, is_last),
        "sens": (reject * (1 - gradable), reject),
        "spec": (kept * gradable, kept),
    }
    numbers: dict[str, float] = {"n": len(test)}
    intervals = share_intervals(patients, ratios, resamples, seed)
    reasons = {reason: sum(reason in photo.verdict.reasons for photo in test) for reason in REASONS}
    for key, (numerator, denominator) in ratios.items():
        if denominator.sum() == 0:
            continue  # no such photographs (no labels, or no Reject among them): no figure, not a made-up one
        numbers[key] = float(numerator.sum() / denominator.sum())
        low, high = intervals[key]
        if key in ("img", "pat"):
            numbers.update({reason_key(reason): count / len(test) for reason, count in reasons.items()})
        if low is not None and high is not None:
            numbers[f"{key}_lo"], numbers[f"{key}_hi"] = low, high
    metrics = {key: round(value, DECIMALS) for key, value in _ordered(numbers).items()}
    return metrics, _survey_record(photos, test, reasons, thresholds, labels, labels_path, resamples, seed)


def _ordered(numbers: Mapping[str, float]) -> dict[str, float]:
    """``numbers`` in :data:`METRIC_KEYS`' order, each bounded figure followed by its interval."""
    order = [part for key in METRIC_KEYS for part in (key, f"{key}_lo", f"{key}_hi")]
    return {key: numbers[key] for key in order if key in numbers}


@dataclass(frozen=True)
class Learned:
    """The learned assessor (:mod:`retinopathy.quality.learned`) fitted on the train split's labels.

    Attributes:
        assessor: The fitted model, or None where it could not be fitted (``why`` says why).
        column: ``learned_reject`` of ``metrics/quality/photos.csv``: each photograph's probability of
            EyeQ Reject (empty where not fitted).
        metrics: Its figures on the labelled test photographs (``metrics/quality.json``'s ``l_*`` keys).
        why: Why it was not fitted (None when it was).
    """

    assessor: LearnedAssessor | None
    column: list[str]
    metrics: dict[str, float]
    why: str | None


def learn(photos: Sequence[Surveyed], source: str) -> Learned:
    """Fit the learned assessor on the train split's labelled photographs and apply it to every one.

    A photograph's probability of Reject is what the model says; it does not change the verdict
    (the transparent thresholds give the reasons a person can check). Too few labelled photographs
    (:data:`retinopathy.quality.learned.MIN_PER_CLASS` of each kind) are not an error here: the
    labels still give the confusion matrix, and the survey's notes and the stage say why there
    is no learned figure.

    Args:
        photos: :func:`survey`'s photographs, with their labels.
        source: The labels' file (``quality.labels``), for the messages.
    """
    from sklearn.metrics import roc_auc_score

    train = [photo for photo in photos if photo.split == "train" and photo.label is not None]
    try:
        assessor = fit(
            [photo.verdict.measures for photo in train],
            is_reject([p.label or 0 for p in train], source),
            source,
        )
    except RetinopathyError as error:
        return Learned(None, [""] * len(photos), {}, str(error))
    probability = assessor.probability([photo.verdict.measures for photo in photos])
    flagged = assessor.ungradable([photo.verdict.measures for photo in photos])
    test = [n for n, photo in enumerate(photos) if photo.split == "test" and photo.label is not None]
    reject = np.array([photos[n].label == REJECT for n in test], dtype=bool)
    metrics: dict[str, float] = {}
    if reject.any() and (~reject).any():
        metrics["l_auc"] = round(float(roc_auc_score(reject, probability[test])), DECIMALS)
    if reject.any():
        metrics["l_sens"] = round(float(flagged[test][reject].mean()), DECIMALS)
    if (~reject).any():
        metrics["l_spec"] = round(float(1 - flagged[test][~reject].mean()), DECIMALS)
    return Learned(assessor, [f"{value:.4f}" for value in probability], metrics, None)


def _survey_record(
    photos: Sequence[Surveyed],
    test: Sequence[Surveyed],
    reasons: Mapping[str, int],
    thresholds: Thresholds,
    labels: QualityLabels | None,
    labels_path: str | None,
    resamples: int,
    seed: int,
) -> QualitySurvey:
    confusion: dict[str, VerdictCounts] = {}
    notes = [
        f"intervals: {CONFIDENCE:.0%} percentile bootstrap over the test split's patients "
        f"({resamples} resamples, evaluate.bootstrap; seed {seed})"
        if resamples
        else "evaluate.bootstrap = 0: no intervals"
    ]
    if labels is not None:
        for number, level in enumerate(QUALITY_LEVELS):
            judged = [photo.verdict.gradable for photo in test if photo.label == number]
            confusion[level] = VerdictCounts(gradable=sum(judged), ungradable=len(judged) - sum(judged))
        if labels.unmatched:
            notes.append(
                f"{labels.unmatched} of {labels.rows} rows of {labels.path} name no photograph of the "
                f"prepared index (e.g. {', '.join(labels.unmatched_examples)})"
            )
        if not any(photo.label == REJECT for photo in test):
            notes.append("no test photograph is labelled Reject: no sensitivity (sens) to give")
    else:
        notes.append("quality.labels is null: no agreement with labels (sens, spec) and no confusion matrix")
    return QualitySurvey(
        thresholds=thresholds,
        labels=labels_path,
        photos={split: sum(photo.split == split for photo in photos) for split in SPLITS},
        ungradable={
            split: sum(photo.split == split and not photo.verdict.gradable for photo in photos)
            for split in SPLITS
        },
        test_patients=len({photo.patient for photo in test}),
        reasons=dict(reasons),
        labelled=0 if labels is None else sum(photo.label is not None for photo in test),
        unmatched=0 if labels is None else labels.unmatched,
        unmatched_examples=[] if labels is None else list(labels.unmatched_examples),
        unlabelled=0 if labels is None else labels.unlabelled,
        confusion=confusion,
        bootstrap=Bootstrap(resamples, seed, CONFIDENCE, "patient", "percentile"),
        notes=notes,
    )
