"""Screening figures of a grader, as diabetic retinopathy screening studies report them.

Per image and per patient (a patient's true grade is the worse eye's, its score
the higher eye score, its predicted grade the worse predicted eye: the
"in at least one eye" rule of the IDx-DR trial, Abramoff et al. 2018):

- the area under the ROC curve of referable DR (grade >= 2; Gulshan et al.
  2016, Voets et al. 2019) and of vision-threatening DR (grade >= 3), scored by
  P(grade >= 2) = p2 + p3 + p4 and P(grade >= 3) = p3 + p4 for the classifier,
  by the regression value for the regression head;
- sensitivity and specificity of referable DR at the grade the model gives
  (predicted grade >= 2), and at operating points (score thresholds) chosen on
  a validation split for a target sensitivity or specificity (Gulshan 2016's
  high-sensitivity and high-specificity points) and applied unchanged to test;
- accuracy and quadratic weighted kappa of the grades (Kaggle 2015);
- the expected calibration error of P(grade >= 2) over :data:`CALIBRATION_BINS`
  equal-width bins (Guo et al. 2017), and the bins themselves (a reliability diagram);
- 95% percentile bootstrap intervals, resampling PATIENTS with replacement (both
  eyes of a patient stay together), seeded;
- where each image's quality verdict is given (:attr:`Scored.gradable`), what ungradable
  photographs do to the figures, as screening trials report it (:func:`gradability_figures`):
  imageability (the gradable share; a patient is imageable when every photograph of theirs
  is, as IDx-DR's protocol needs both eyes), the figures on the gradable cases only, and
  intention-to-screen sensitivity and specificity of referable DR, where an ungradable
  photograph counts as referred (a patient: any photograph referred or ungradable), as a
  screening programme would send the patient on.

A figure that is undefined (an AUC, a sensitivity or a specificity where the set
has only one class) is None, never a made-up number; the bootstrap says in how
many resamples a figure was undefined and leaves those resamples out.
Only numpy, scipy and scikit-learn: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

from retinopathy.core.contract import NUM_GRADES, OPERATING_POINTS, REFERABLE_GRADE, VISION_THREATENING_GRADE
from retinopathy.core.records import (
    Bootstrap,
    Calibration,
    Figure,
    Gradability,
    LevelFigures,
    LevelGradability,
    OperatingPoint,
    OperatingPoints,
    ScreeningRecord,
)
from retinopathy.evaluation.scoring import kappa_of_confusion

CALIBRATION_BINS = 10  # equal-width bins of P(grade >= 2) in [0, 1] for the ECE and the reliability diagram
CONFIDENCE = 0.95  # of the bootstrap intervals (percentile: the 2.5th and 97.5th of the resampled figures)

# The figures of one set of images (or patients), each bootstrapped. Keys of the screening file.
FIGURES = ("accuracy", "kappa", "auc_referable", "auc_vision_threatening", "sensitivity", "specificity")
# gradability_figures' keys: imageability, the intention-to-screen figures (ITS_ + the figure), and
# every figure on the gradable cases only (GRADABLE_ + the figure).
IMAGEABILITY = "imageability"
ITS_ = "its_"
GRADABLE_ = "gradable_"
GRADABILITY_RULE = (
    "an ungradable photograph counts as referred (intention to screen); a patient is gradable, and "
    "imageable, when every photograph of theirs is gradable, and referred when any is referred or ungradable"
)


@dataclass(frozen=True)
class Scored:
    """One split's graded images: everything the figures need.

    Attributes:
        patients: Each image's patient (``labels.patient_of`` of its name).
        actual: True grades 0-4.
        predicted: Predicted grades 0-4.
        referable: The referable score: P(grade >= 2), or the regression value.
        threatening: The vision-threatening score: P(grade >= 3), or the regression value.
        gradable: Whether each image can be graded (the `quality` stage's verdict); None: not judged.
    """

    patients: np.ndarray
    actual: np.ndarray
    predicted: np.ndarray
    referable: np.ndarray
    threatening: np.ndarray
    gradable: np.ndarray | None = None

    def __post_init__(self) -> None:
        sizes = {
            len(self.patients),
            len(self.actual),
            len(self.predicted),
            len(self.referable),
            len(self.threatening),
            *(() if self.gradable is None else (len(self.gradable),)),
        }
        if len(sizes) != 1:
            raise ValueError(f"the arrays of one split differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.actual)


def scores_of(outputs: np.ndarray, regression: bool) -> tuple[np.ndarray, np.ndarray]:
    """The referable and vision-threatening scores from a head's (probabilities [N, 5] or values [N])."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if regression:
        return outputs, outputs
    return outputs[:, REFERABLE_GRADE:].sum(1), outputs[:, VISION_THREATENING_GRADE:].sum(1)


def scored(
    patients: Sequence[str], actual: np.ndarray, predicted: np.ndarray, outputs: np.ndarray, regression: bool
) -> Scored:
    """A :class:`Scored` split from image patients, grades and the head's scores."""
    referable, threatening = scores_of(outputs, regression)
    return Scored(
        np.asarray(patients, dtype=object),
        np.asarray(actual, dtype=np.int64),
        np.asarray(predicted, dtype=np.int64),
        referable,
        threatening,
    )


def per_patient(images: Scored) -> Scored:
    """One row per patient (first appearance order): the worse true and predicted eye, the higher scores."""
    names, first, inverse = np.unique(images.patients, return_index=True, return_inverse=True)
    order = np.argsort(first)  # first appearance, so the result is independent of the names' sorting
    count = len(names)

    def worst(values: np.ndarray) -> np.ndarray:
        out = np.full(count, -np.inf)
        np.maximum.at(out, inverse, values.astype(np.float64))
        return out[order]

    actual, predicted = worst(images.actual).astype(np.int64), worst(images.predicted).astype(np.int64)
    # A patient is gradable when every photograph is: the worst of "ungradable", negated.
    gradable = None if images.gradable is None else ~worst(~images.gradable).astype(bool)
    return Scored(
        names[order], actual, predicted, worst(images.referable), worst(images.threatening), gradable
    )


def auc(truth: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count one half); None with only one class."""
    truth = np.asarray(truth, dtype=bool)
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def sensitivity_specificity(truth: np.ndarray, called: np.ndarray) -> tuple[float | None, float | None]:
    """Share of positives called positive, of negatives called negative (None: no such cases)."""
    truth, called = np.asarray(truth, dtype=bool), np.asarray(called, dtype=bool)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    sensitivity = float((called & truth).sum() / positives) if positives else None
    specificity = float((~called & ~truth).sum() / negatives) if negatives else None
    return sensitivity, specificity


def operating_threshold(truth: np.ndarray, score: np.ndarray, point: str, target: float) -> float | None:
    """The score threshold (call referable when score >= it) that meets ``target`` on this (validation) set.

    ``high_sensitivity``: the highest threshold whose sensitivity is at least
    ``target`` (so the most specific such point); ``high_specificity``: the lowest
    threshold whose specificity is at least ``target`` (the most sensitive such
    point). None where the set lacks positives or negatives. Where only calling
    nobody referable meets the target (a small validation split), scikit-learn's
    threshold is infinite; it is the highest score plus one here, as in
    :func:`roc_points`: the same calls, and a number JSON can hold.
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return None
    fpr, tpr, thresholds = roc_curve(truth, score, drop_intermediate=False)  # every threshold
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.max(score) + 1)
    if point == "high_sensitivity":
        meets = tpr >= target - 1e-12
        return float(thresholds[meets].max())
    if point == "high_specificity":
        meets = 1 - fpr >= target - 1e-12
        return float(thresholds[meets].min())
    raise ValueError(f"unknown operating point {point!r}; expected one of {OPERATING_POINTS}")


def figures(rows: Scored, thresholds: Mapping[str, float | None] | None = None) -> dict[str, float | None]:
    """The :data:`FIGURES` of one set, and sensitivity/specificity at each given threshold.

    Args:
        rows: images, or patients (:func:`per_patient`).
        thresholds: operating point -> score threshold (None: not chosen); keys
            ``<point>_sensitivity`` and ``<point>_specificity`` are added for each.
    """
    truth = rows.actual >= REFERABLE_GRADE
    confusion = np.bincount(rows.actual * NUM_GRADES + rows.predicted, minlength=NUM_GRADES**2).reshape(
        NUM_GRADES, NUM_GRADES
    )
    sensitivity, specificity = sensitivity_specificity(truth, rows.predicted >= REFERABLE_GRADE)
    out: dict[str, float | None] = {
        "accuracy": float((rows.actual == rows.predicted).mean()) if len(rows) else None,
        "kappa": kappa_of_confusion(confusion) if len(rows) else None,  # none of no cases (all ungradable)
        "auc_referable": auc(truth, rows.referable),
        "auc_vision_threatening": auc(rows.actual >= VISION_THREATENING_GRADE, rows.threatening),
        "sensitivity": sensitivity,
        "specificity": specificity,
    }
    for point, threshold in (thresholds or {}).items():
        if threshold is None:
            out[f"{point}_sensitivity"] = out[f"{point}_specificity"] = None
        else:
            out[f"{point}_sensitivity"], out[f"{point}_specificity"] = sensitivity_specificity(
                truth, rows.referable >= threshold
            )
    return out


def gradability_figures(
    rows: Scored, thresholds: Mapping[str, float | None] | None = None
) -> dict[str, float | None]:
    """What ungradable cases do to the figures of one set (``rows.gradable`` must be given).

    Args:
        rows: images, or patients (:func:`per_patient`: gradable when every photograph is).
        thresholds: as :func:`figures`.

    Returns:
        :data:`IMAGEABILITY` (the gradable share; None without cases); ``its_sensitivity`` and
        ``its_specificity`` of referable DR, an ungradable case called referable, at the model's grade
        and ``its_<point>_...`` at each threshold; and ``gradable_<figure>``, :func:`figures` of the
        gradable cases alone.
    """
    if rows.gradable is None:
        raise ValueError("gradability_figures needs each case's verdict (Scored.gradable)")
    gradable = rows.gradable.astype(bool)
    truth = rows.actual >= REFERABLE_GRADE
    out: dict[str, float | None] = {IMAGEABILITY: float(gradable.mean()) if len(rows) else None}
    calls: dict[str, np.ndarray | None] = {"": rows.predicted >= REFERABLE_GRADE}
    for point, threshold in (thresholds or {}).items():
        calls[f"{point}_"] = None if threshold is None else rows.referable >= threshold
    for prefix, called in calls.items():
        if called is None:
            out[f"{ITS_}{prefix}sensitivity"] = out[f"{ITS_}{prefix}specificity"] = None
        else:
            sensitivity, specificity = sensitivity_specificity(truth, called | ~gradable)
            out[f"{ITS_}{prefix}sensitivity"], out[f"{ITS_}{prefix}specificity"] = sensitivity, specificity
    only = figures(_take(rows, np.flatnonzero(gradable)), thresholds)
    out.update({f"{GRADABLE_}{key}": value for key, value in only.items()})
    return out


def _all_figures(rows: Scored, thresholds: Mapping[str, float | None]) -> dict[str, float | None]:
    """:func:`figures`, and :func:`gradability_figures` where the cases' verdicts are given."""
    out = figures(rows, thresholds)
    if rows.gradable is not None:
        out.update(gradability_figures(rows, thresholds))
    return out


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval; ``undefined`` resamples (one class only) are left out of it."""

    low: float | None
    high: float | None
    undefined: int


def bootstrap(
    images: Scored,
    thresholds: Mapping[str, float | None],
    resamples: int,
    seed: int,
) -> dict[str, dict[str, Interval]]:
    """Percentile intervals of every figure per image and per patient, resampling patients.

    Each resample draws as many patients as there are, with replacement, and
    takes all the images of each drawn patient (both eyes stay together).

    Returns:
        ``{"image": {figure: Interval}, "patient": {...}}``.
    """
    patients = per_patient(images)
    _, inverse = np.unique(images.patients, return_inverse=True)
    # Patient rows are in first-appearance order; map each image to its patient's row.
    _, first = np.unique(images.patients, return_index=True)
    row_of_sorted = np.empty(len(first), dtype=np.int64)
    row_of_sorted[np.argsort(first)] = np.arange(len(first))
    row = row_of_sorted[inverse]
    by_patient = np.argsort(row, kind="stable")  # image indices grouped by patient row
    counts = np.bincount(row, minlength=len(patients))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(seed)
    samples: dict[str, dict[str, list[float | None]]] = {"image": {}, "patient": {}}
    for _ in range(resamples):
        drawn = rng.integers(0, len(patients), len(patients))
        lengths = counts[drawn]
        offsets = np.repeat(starts[drawn] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        chosen = by_patient[offsets + np.arange(lengths.sum())]
        for level, rows in (("image", _take(images, chosen)), ("patient", _take(patients, drawn))):
            for key, value in _all_figures(rows, thresholds).items():
                samples[level].setdefault(key, []).append(value)
    tail = 100 * (1 - CONFIDENCE) / 2
    out: dict[str, dict[str, Interval]] = {}
    for level, by_key in samples.items():
        out[level] = {}
        for key, values in by_key.items():
            defined = np.array([v for v in values if v is not None], dtype=np.float64)
            if len(defined):
                low, high = np.percentile(defined, [tail, 100 - tail])
                out[level][key] = Interval(float(low), float(high), len(values) - len(defined))
            else:
                out[level][key] = Interval(None, None, len(values))
    return out


def _take(rows: Scored, index: np.ndarray) -> Scored:
    return Scored(
        rows.patients[index],
        rows.actual[index],
        rows.predicted[index],
        rows.referable[index],
        rows.threatening[index],
        None if rows.gradable is None else rows.gradable[index],
    )


@dataclass(frozen=True)
class CalibrationBin:
    """One bin of the reliability diagram: probabilities in [low, high) (the last bin includes 1)."""

    low: float
    high: float
    count: int
    mean_probability: float | None
    observed: float | None  # share of the bin's images that are truly referable


def calibration(
    truth: np.ndarray,
    probability: np.ndarray,
    bins: int = CALIBRATION_BINS,
) -> tuple[float | None, list[CalibrationBin]]:
    """Expected calibration error and its bins: ECE = sum over bins of (n_b / N) |mean p_b - observed_b|."""
    truth, probability = np.asarray(truth, dtype=np.float64), np.asarray(probability, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.searchsorted(edges, probability, side="right") - 1, 0, bins - 1)
    out, error = [], 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        mean = observed = None
        if count:
            mean, observed = float(probability[members].mean()), float(truth[members].mean())
            error += count / len(truth) * abs(mean - observed)
        out.append(CalibrationBin(float(edges[b]), float(edges[b + 1]), count, mean, observed))
    return (float(error) if len(truth) else None), out


def roc_points(truth: np.ndarray, score: np.ndarray) -> list[tuple[float, float, float]]:
    """(false positive rate, true positive rate, threshold) of the ROC curve; [] with only one class.

    The first point's threshold is infinite in scikit-learn (nothing called
    referable); it is written as the highest score plus one.
    """
    truth = np.asarray(truth, dtype=bool)
    if truth.all() or not truth.any():
        return []
    fpr, tpr, thresholds = roc_curve(truth, score, drop_intermediate=True)
    finite = np.where(np.isfinite(thresholds), thresholds, np.max(score) + 1)
    return [(float(f), float(t), float(h)) for f, t, h in zip(fpr, tpr, finite, strict=True)]


def record(
    test: Scored,
    val: Scored | None,
    targets: Mapping[str, float],
    resamples: int,
    seed: int,
    probabilities: bool,
    reasons: Mapping[str, int] | None = None,
) -> ScreeningRecord:
    """Every screening figure of a test split (the screening JSON file's record).

    Args:
        test: The test split's images.
        val: The validation split's images, where there is one: it picks the operating
            points' thresholds (per image, on the referable score); None: no operating points.
        targets: Operating point -> target (``evaluate.operating_points``).
        resamples: Bootstrap resamples of patients (0: no intervals).
        seed: Seeds the bootstrap.
        probabilities: Whether the referable score is a probability (the classifier): only then
            is its calibration measured.
        reasons: Where ``test.gradable`` is given: the test images per reason they are ungradable for.

    Returns:
        The bootstrap, the operating points, the calibration, the figures per image and per
        patient (each :class:`~retinopathy.core.records.Figure` a value and its interval, with
        ``undefined``: the resamples where it had no value) and notes.
    """
    points, notes = chosen_points(val, targets)
    return record_at(test, points, resamples, seed, probabilities, notes, reasons)


def chosen_points(
    val: Scored | None, targets: Mapping[str, float]
) -> tuple[OperatingPoints | dict[str, OperatingPoint], list[str]]:
    """The operating points chosen on ``val`` for ``targets`` ({} without a validation split), and notes."""
    notes: list[str] = []
    points: OperatingPoints | dict[str, OperatingPoint] = {}
    if val is not None and len(val):
        val_truth = val.actual >= REFERABLE_GRADE
        chosen: dict[str, OperatingPoint] = {}
        for point in OPERATING_POINTS:
            threshold = operating_threshold(val_truth, val.referable, point, targets[point])
            sensitivity, specificity = (
                sensitivity_specificity(val_truth, val.referable >= threshold)
                if threshold is not None
                else (None, None)
            )
            chosen[point] = OperatingPoint(targets[point], threshold, sensitivity, specificity)
            if threshold is None:
                notes.append(
                    f"{point}: the validation split has only one class of referable DR, so no "
                    "threshold can be chosen on it"
                )
        points = OperatingPoints(**chosen, val_images=len(val))
    else:
        notes.append(
            "no validation split (data.val_fraction = 0): no operating points; set "
            "data.val_fraction > 0 to choose them on validation"
        )
    return points, notes


def thresholds_of(points: OperatingPoints | Mapping[str, OperatingPoint]) -> dict[str, float | None]:
    """Each operating point's score threshold (None: not chosen); {} without operating points."""
    if not isinstance(points, OperatingPoints):
        return {}
    return {point: getattr(points, point).threshold for point in OPERATING_POINTS}


def record_at(
    test: Scored,
    points: OperatingPoints | dict[str, OperatingPoint],
    resamples: int,
    seed: int,
    probabilities: bool,
    notes: Sequence[str] = (),
    reasons: Mapping[str, int] | None = None,
) -> ScreeningRecord:
    """Every screening figure of ``test`` at operating points chosen before (:func:`record`'s second half).

    External validation passes the points an arm chose on its internal validation split, so that they
    are applied unchanged, never chosen again on the set they are measured on.

    Args:
        test: The images to score.
        points: The operating points and their thresholds ({}: none).
        resamples: Bootstrap resamples of patients (0: no intervals).
        seed: Seeds the bootstrap.
        probabilities: Whether the referable score is a probability (only then is calibration measured).
        notes: Notes so far (how the points were chosen), kept first.
        reasons: As :func:`record`'s; the ``gradability`` part is there when ``test.gradable`` is given.
    """
    notes = list(notes)
    thresholds = thresholds_of(points)
    levels = {"image": test, "patient": per_patient(test)}
    intervals = bootstrap(test, thresholds, resamples, seed) if resamples and len(test) else None
    if probabilities:
        ece, _ = calibration(test.actual >= REFERABLE_GRADE, test.referable)
    else:
        ece = None
        notes.append("calibration: the regression value is no probability, so it has no calibration error")
    at: dict[str, LevelFigures] = {}
    graded: dict[str, LevelGradability] = {}
    for level, rows in levels.items():
        values = _all_figures(rows, thresholds)

        def figure(key: str, level: str = level, values: dict[str, float | None] = values) -> Figure:
            interval = intervals[level][key] if intervals else Interval(None, None, 0)
            if values[key] is None:
                notes.append(f"{level} {key}: undefined, the test split has only one class (or no such case)")
            elif intervals and interval.undefined:
                notes.append(
                    f"{level} {key}: undefined in {interval.undefined} of {resamples} resamples "
                    "(one class only), left out of its interval"
                )
            return Figure(values[key], interval.low, interval.high, interval.undefined)

        keys = list(figures(rows, thresholds))
        at[level] = _level_figures(rows, {key: figure(key) for key in keys})
        if rows.gradable is not None:
            only = _take(rows, np.flatnonzero(rows.gradable))
            graded[level] = LevelGradability(
                n=len(rows),
                gradable=len(only),
                imageability=figure(IMAGEABILITY),
                gradable_only=_level_figures(only, {key: figure(GRADABLE_ + key) for key in keys}),
                **{key: figure(ITS_ + key) for key in keys if key.endswith(("sensitivity", "specificity"))},
            )
    if not resamples:
        notes.append("evaluate.bootstrap = 0: no intervals")
    gradability = (
        Gradability(GRADABILITY_RULE, dict(reasons or {}), graded["image"], graded["patient"])
        if graded
        else None
    )
    return ScreeningRecord(
        bootstrap=Bootstrap(resamples, seed, CONFIDENCE, "patient", "percentile"),
        operating_points=points,
        calibration=Calibration(ece, CALIBRATION_BINS, "image"),
        image=at["image"],
        patient=at["patient"],
        notes=notes,
        gradability=gradability,
    )


def _level_figures(rows: Scored, figures_of: Mapping[str, Figure]) -> LevelFigures:
    """The :class:`LevelFigures` of ``rows``: their counts, and ``figures_of`` by key."""
    return LevelFigures(
        n=len(rows),
        referable=int((rows.actual >= REFERABLE_GRADE).sum()),
        vision_threatening=int((rows.actual >= VISION_THREATENING_GRADE).sum()),
        **figures_of,
    )
