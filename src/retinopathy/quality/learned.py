"""A learned quality assessor, where quality labels exist: a small model on the transparent measures.

It reads the seven numbers :func:`retinopathy.quality.measures.measure` takes of a photograph
(:data:`MEASURES`), standardised with the training photos' means and standard deviations, and
the square of the standardised brightness (exposure fails both ways, too dark and too bright,
and a logistic regression is monotone in each input), and returns the probability that EyeQ
would rate the photograph Reject (quality 2) rather than Good or Usable: an L2-regularised
logistic regression (scikit-learn, lbfgs, which is deterministic: no seed). ``fit`` learns it,
``LearnedAssessor.probability`` and ``.ungradable`` apply it with numpy alone, and
``to_json``/``from_json`` keep it as plain JSON (coefficients, means, scales, threshold): no
pickle, so a file of it can be read without running anything in it. The `quality` stage writes
it to ``models/quality.json`` (:func:`assessor_text`: the model, or why there is none), and
``retinopathy predict --quality-model`` reads it (:func:`read_assessor`).

A photograph without a measurable fundus disc (its measures are None: a black frame, a speck
of light) has nothing for the model to read. The rule decides it, as the transparent verdict
does: its probability is 1 and its reason "no fundus"; ``fit`` leaves such training photos out
and counts them (``no_fundus``).

The decision threshold is chosen on the training photos: of the thresholds that keep their
specificity (Good and Usable photos found gradable) at least ``specificity`` (0.95 by
default), the one that finds the most Reject photos, and of those the most specific; it lies
halfway (in log-odds) between the two training photos it separates, so a photograph scored
like a training one is judged as that one was.

Why it can be wrong where the thresholds are not: its inputs are standardised on the training
camera's photographs, so it learns what is unusual for that camera, not a limit in units a
person can check. On another camera (softer lens, another framing) Good photographs can look
unusual to it (BENCHMARKS.md, "Learned image quality").
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

from retinopathy.core.contract import QUALITY_LEVELS
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import json_text
from retinopathy.core.records import parse_json, read_text_file
from retinopathy.core.schema import Between, Invalid, Keys, parse, refuse
from retinopathy.quality.measures import Measures
from retinopathy.quality.verdict import BLUR, DARK, FLARE, NO_FUNDUS, OFF_FIELD, OVEREXPOSED

# The model's inputs: every measure, in the order of Measures.
MEASURES = tuple(field.name for field in dataclasses.fields(Measures))
# Measures that fail both ways also enter squared (standardised first), so one model can find
# a photograph too dark and one too bright.
SQUARED = ("brightness",)
TERMS = MEASURES + tuple(f"{name}^2" for name in SQUARED)
# The reason each measure stands for when it is what moved a photograph's log-odds most
# (brightness: dark below the training photos' mean, overexposed above it). A disc covering
# little of the frame, but some, is one mostly out of it.
MEASURE_REASONS = {
    "coverage": OFF_FIELD,
    "disc_visible": OFF_FIELD,
    "clipped_dark": DARK,
    "clipped_bright": OVEREXPOSED,
    "focus": BLUR,
    "flare": FLARE,
}
REJECT = QUALITY_LEVELS.index("Reject")  # EyeQ's quality 2
SPECIFICITY = 0.95  # the training specificity the threshold keeps, by default
# Fewer photos of a class than this fit noise: 8 coefficients from a handful of Reject photos,
# and a threshold at 95% specificity needs 20 gradable photos for one of them to be 5%.
MIN_PER_CLASS = 20
FORMAT_VERSION = 1  # of the JSON; raise it when a field changes
VERSION_KEY = "version"
# The `quality` stage's file without a model (no labels, or too few to learn from): why, under this key.
NOT_FITTED_KEY = "not_fitted"


@dataclass(frozen=True)
class LearnedAssessor:
    """A logistic regression of EyeQ Reject on the standardised measures, and its threshold.

    The log-odds of Reject are ``intercept + sum(coefficients[t] * x[t])`` over :data:`TERMS`,
    where ``x[m] = (measure m - means[m]) / scales[m]`` and ``x["brightness^2"]`` is the square
    of ``x["brightness"]``.

    Attributes:
        means: Each measure's mean over the training photos with a disc.
        scales: Each measure's standard deviation there (1 for one that did not vary).
        coefficients: The weight of each term of :data:`TERMS`.
        intercept: The log-odds of Reject at the mean photograph.
        threshold: The log-odds from which a photograph is ungradable (``threshold_probability``
            is the same as a probability).
        specificity: The specificity on the training photos the threshold was chosen to keep.
        train_specificity: The specificity it has there.
        train_sensitivity: The share of training Reject photos it finds.
        photos: Training photos the model learned from (those with a disc).
        rejects: Of which Reject.
        no_fundus: Training photos left out because no disc was measured (the rule decides those).
        regularisation: scikit-learn's ``C``, the inverse strength of the L2 penalty.
    """

    means: Annotated[dict[str, float], Keys(MEASURES, ordered=True)]
    scales: Annotated[dict[str, float], Keys(MEASURES, ordered=True)]
    coefficients: Annotated[dict[str, float], Keys(TERMS, ordered=True)]
    intercept: float
    threshold: float
    specificity: Annotated[float, Between(0.0, 1.0)]
    train_specificity: Annotated[float, Between(0.0, 1.0)]
    train_sensitivity: Annotated[float, Between(0.0, 1.0)]
    photos: int
    rejects: int
    no_fundus: int
    regularisation: Annotated[float, Between(0.0, None, open_low=True)]

    def __post_init__(self) -> None:
        for name, scale in self.scales.items():
            if scale <= 0:
                raise refuse(f"scales.{name}", f"is {scale}, but a scale is positive")
        if self.rejects > self.photos:
            raise refuse("rejects", f"is {self.rejects}, more than the {self.photos} photos")

    @property
    def threshold_probability(self) -> float:
        """The threshold as a probability of Reject."""
        odds = math.exp(-abs(self.threshold))  # never overflows, whatever the threshold's sign
        return 1.0 / (1.0 + odds) if self.threshold >= 0 else odds / (1.0 + odds)

    def _weights(self) -> np.ndarray:
        """The coefficients in the order of :data:`TERMS` (a record built by hand may list them otherwise)."""
        return np.array([self.coefficients[term] for term in TERMS])

    def _terms(self, values: np.ndarray) -> np.ndarray:
        """[N, len(TERMS)] inputs of measured photographs' [N, len(MEASURES)] values."""
        means = np.array([self.means[name] for name in MEASURES])
        scales = np.array([self.scales[name] for name in MEASURES])
        standard = (values - means) / scales
        squared = standard[:, [MEASURES.index(name) for name in SQUARED]] ** 2
        return np.hstack([standard, squared])

    def log_odds(self, measures: Sequence[Measures]) -> np.ndarray:
        """The log-odds of Reject per photograph (float64 [N]); +inf where no disc was measured.

        Raises:
            RetinopathyError: a measure that is not a finite number (naming the photograph's position).
        """
        values, measured = _values(measures, "LearnedAssessor.log_odds")
        odds = np.full(len(measures), np.inf)
        if measured.any():
            terms = self._terms(values[measured])
            odds[measured] = self.intercept + terms @ self._weights()
        return odds

    def probability(self, measures: Sequence[Measures]) -> np.ndarray:
        """P(Reject) per photograph (float64 [N]); 1 where no disc was measured (no fundus).

        Raises:
            RetinopathyError: a measure that is not a finite number.
        """
        with np.errstate(over="ignore"):  # exp(-(-1000)) is inf, and 1 / inf the 0 it should be
            return 1.0 / (1.0 + np.exp(-self.log_odds(measures)))

    def ungradable(self, measures: Sequence[Measures]) -> np.ndarray:
        """Whether each photograph is ungradable (bool [N]): its log-odds at or above the threshold.

        Compared in log-odds, not probability, so that two photographs far past the threshold
        stay apart where float64 probabilities would both round to 1.
        """
        return self.log_odds(measures) >= self.threshold

    def reasons(self, measures: Sequence[Measures]) -> list[tuple[str, ...]]:
        """The reason of each ungradable photograph, from the vocabulary of ``verdict.REASONS``.

        An attribution, not a rule: the reason of the measure whose terms raised the log-odds
        most above those of the mean training photograph (where every term is 0). Empty for a
        gradable photograph; "no fundus" where no disc was measured.

        Raises:
            RetinopathyError: a measure that is not a finite number.
        """
        values, measured = _values(measures, "LearnedAssessor.reasons")
        flagged = self.ungradable(measures)
        weights = self._weights()
        found: list[tuple[str, ...]] = []
        for row, is_measured, is_flagged in zip(values, measured, flagged, strict=True):
            if not is_flagged:
                found.append(())
                continue
            if not is_measured:
                found.append((NO_FUNDUS,))
                continue
            terms = self._terms(row[None, :])[0] * weights
            by_measure = terms[: len(MEASURES)].copy()
            for position, name in enumerate(SQUARED):
                by_measure[MEASURES.index(name)] += terms[len(MEASURES) + position]
            name = MEASURES[int(np.argmax(by_measure))]
            if name == "brightness":
                found.append((DARK if row[MEASURES.index(name)] < self.means[name] else OVEREXPOSED,))
            else:
                found.append((MEASURE_REASONS[name],))
        return found

    def to_json(self, path: str = "the learned assessor") -> str:
        """The assessor as indented JSON: ``version`` first, then the fields in order.

        Args:
            path: The file it is for, named if a number is not finite.
        """
        return json_text(path, {VERSION_KEY: FORMAT_VERSION, **dataclasses.asdict(self)})

    @classmethod
    def from_json(cls, text: str, source: str, fix: str) -> LearnedAssessor:
        """Read an assessor back from :meth:`to_json`'s text, every field checked.

        Args:
            text: The JSON text.
            source: Where it came from (a path), for the messages.
            fix: What to do when it is damaged or of another version (the command that writes it).

        Raises:
            RetinopathyError: not JSON, another format version, a missing or unknown key, a value
                of the wrong type or outside its bounds; naming ``source`` and ``fix``.
        """
        try:
            raw = parse_json(text)
        except ValueError as error:
            raise RetinopathyError(f"{source}: damaged, not JSON ({error}); {fix}") from None
        if not isinstance(raw, dict) or raw.get(VERSION_KEY) != FORMAT_VERSION:
            found = raw.get(VERSION_KEY) if isinstance(raw, dict) else None
            raise RetinopathyError(
                f"{source}: not a learned quality assessor of format version {FORMAT_VERSION} "
                f"(its {VERSION_KEY} is {found!r}); {fix}"
            )
        if NOT_FITTED_KEY in raw:
            raise RetinopathyError(f"{source}: holds no learned assessor: {raw[NOT_FITTED_KEY]}; {fix}")
        try:
            return parse(cls, {key: value for key, value in raw.items() if key != VERSION_KEY})
        except Invalid as error:
            raise RetinopathyError(
                f"{source}: {error} (damaged, or written by another version); {fix}"
            ) from None


def assessor_text(assessor: LearnedAssessor | None, why: str | None, path: str) -> str:
    """The text of the `quality` stage's assessor file (``contract.Layout.quality_assessor``).

    The model as :meth:`LearnedAssessor.to_json` writes it or, where none was fitted, why not
    (under :data:`NOT_FITTED_KEY`): the stage always writes the file, and reading one without a
    model says why (:func:`read_assessor`).

    Args:
        assessor: The fitted model, or None.
        why: Why there is none (with ``assessor`` None).
        path: The file it is for, for the messages.
    """
    if assessor is not None:
        return assessor.to_json(path)
    return json_text(path, {VERSION_KEY: FORMAT_VERSION, NOT_FITTED_KEY: why or "not fitted"})


def read_assessor(path: Path, fix: str) -> LearnedAssessor:
    """The learned assessor in ``path`` (:func:`assessor_text`'s file), every field checked.

    Args:
        path: The JSON file.
        fix: What to do when it is missing, damaged or holds no model.

    Raises:
        RetinopathyError: missing, unreadable, damaged, of another version, or written without a
            model (saying why there is none), naming ``path`` and ``fix``.
    """
    return LearnedAssessor.from_json(read_text_file(path, fix, fix), str(path), fix)


def _values(measures: Sequence[Measures], what: str) -> tuple[np.ndarray, np.ndarray]:
    """The measures as float64 [N, len(MEASURES)] (NaN where not measured) and whether each photo
    was measured (a disc found: every measure a number).

    Raises:
        RetinopathyError: a measure that is NaN or infinite, naming the photograph's position.
    """
    values = np.full((len(measures), len(MEASURES)), np.nan)
    measured = np.zeros(len(measures), dtype=bool)
    for row, photo in enumerate(measures):
        numbers = dataclasses.astuple(photo)
        if any(number is None for number in numbers):
            continue  # no disc: only coverage was measured
        if not all(math.isfinite(number) for number in numbers):
            raise RetinopathyError(
                f"{what}: photograph {row} (counting from 0) has a measure that is not a finite number "
                f"({photo.as_dict()}); measure it with retinopathy.quality.measures.measure"
            )
        values[row] = numbers
        measured[row] = True
    return values, measured


def is_reject(quality: Sequence[int], source: str) -> np.ndarray:
    """Whether each EyeQ quality (0 Good, 1 Usable, 2 Reject) is Reject, as ``fit``'s ``reject``.

    Raises:
        RetinopathyError: a level other than 0, 1 or 2, naming ``source`` and its position.
    """
    levels = list(quality)
    levels_text = ", ".join(f"{level} {name}" for level, name in enumerate(QUALITY_LEVELS))
    for position, level in enumerate(levels):
        if isinstance(level, bool) or not isinstance(level, int | np.integer) or not 0 <= level <= REJECT:
            raise RetinopathyError(
                f"{source}: quality {level!r} of photograph {position} (counting from 0) is not an EyeQ "
                f"level ({levels_text}); correct the labels"
            )
    return np.array([level == REJECT for level in levels], dtype=bool)


def choose_threshold(
    scores: np.ndarray, reject: np.ndarray, specificity: float
) -> tuple[float, float, float]:
    """The threshold on training scores, and its sensitivity and specificity there.

    Of the cuts that keep specificity >= ``specificity``, the most sensitive, then the most
    specific; halfway between the lowest score it flags and the highest one it does not. A
    photograph scoring at or above the threshold is ungradable.

    Args:
        scores: Any score that rises with the odds of Reject (float [N]; here the log-odds).
        reject: Bool [N], with both classes.
        specificity: The share of the other photographs that must stay below the threshold.

    Raises:
        RetinopathyError: no cut keeps that specificity and finds a Reject photograph.
    """
    order = np.argsort(-scores, kind="stable")
    ranked, positive = scores[order], reject[order]
    # A cut may fall only between two different scores: the last of each run of equal ones.
    ends = np.flatnonzero(np.append(ranked[1:] != ranked[:-1], True))
    flagged_rejects = np.cumsum(positive)[ends]
    flagged_others = np.cumsum(~positive)[ends]
    sensitivity = flagged_rejects / positive.sum()
    kept = 1.0 - flagged_others / (~positive).sum()
    feasible = np.flatnonzero((kept >= specificity) & (sensitivity > 0))
    if feasible.size == 0:
        raise RetinopathyError(
            f"no threshold finds a Reject photo and keeps {specificity:.0%} of the others gradable on the "
            "training photos: their measures do not tell them apart"
        )
    best = feasible[np.lexsort((kept[feasible], sensitivity[feasible]))[-1]]
    lowest_flagged = ranked[ends[best]]
    below = ranked[ends[best] + 1] if ends[best] + 1 < len(ranked) else lowest_flagged - 1.0
    return float((lowest_flagged + below) / 2), float(sensitivity[best]), float(kept[best])


def fit(
    measures: Sequence[Measures],
    reject: np.ndarray,
    source: str,
    specificity: float = SPECIFICITY,
    regularisation: float = 1.0,
) -> LearnedAssessor:
    """Learn the assessor from photographs' measures and whether EyeQ rejects each.

    Args:
        measures: Each training photograph's measures (:func:`~retinopathy.quality.measures.measure`).
        reject: Bool [N]: whether each is Reject (EyeQ quality 2; :func:`is_reject` makes it).
        source: Where the labels come from (the EyeQ CSV), for the messages.
        specificity: The specificity on the training photos the threshold keeps (0.5-1).
        regularisation: scikit-learn's ``C`` (> 0; smaller: a stronger L2 penalty).

    Returns:
        The :class:`LearnedAssessor`; photographs without a disc are left out and counted.

    Raises:
        RetinopathyError: ``reject`` is not one bool per photograph, a measure is not finite,
            fewer than :data:`MIN_PER_CLASS` Reject or other photographs with a disc (one class
            only among them), or no threshold finds a Reject photo at that specificity; each
            naming ``source``, the counts and the fix.
    """
    labels = np.asarray(reject)
    if labels.dtype != np.bool_ or labels.shape != (len(measures),):
        raise RetinopathyError(
            f"{source}: fit needs one true/false per photograph (true: EyeQ Reject), got a {labels.dtype} "
            f"array of shape {labels.shape} for {len(measures)} photographs; make it with "
            "retinopathy.quality.learned.is_reject"
        )
    if not 0.5 <= specificity <= 1.0 or not regularisation > 0:
        raise RetinopathyError(
            f"fit: specificity must be in [0.5, 1] (got {specificity}) and regularisation > 0 "
            f"(got {regularisation})"
        )
    values, measured = _values(measures, f"{source}: fit")
    x, y = values[measured], labels[measured]
    rejects, others = int(y.sum()), int((~y).sum())
    if min(rejects, others) < MIN_PER_CLASS:
        one_class = "only one class: " if min(rejects, others) == 0 else ""
        raise RetinopathyError(
            f"{source}: {one_class}{rejects} Reject and {others} Good or Usable photographs with a fundus "
            f"disc ({int((~measured).sum())} more without one); the learned assessor needs at least "
            f"{MIN_PER_CLASS} of each to learn from. Label more photographs (EyeQ quality 2 for Reject), "
            "or set quality.labels: null in params.yaml to judge with the transparent thresholds alone"
        )
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    means = x.mean(axis=0)
    spread = x.std(axis=0)
    # A measure that did not vary (every training photo unclipped) gets scale 1: its standardised
    # value is then its distance from that constant, which was 0 for every training photo.
    scales = np.where(spread > 1e-12, spread, 1.0)
    draft = LearnedAssessor(
        means=dict(zip(MEASURES, means.tolist(), strict=True)),
        scales=dict(zip(MEASURES, scales.tolist(), strict=True)),
        coefficients=dict.fromkeys(TERMS, 0.0),
        intercept=0.0,
        threshold=0.0,
        specificity=specificity,
        train_specificity=1.0,
        train_sensitivity=1.0,
        photos=len(y),
        rejects=rejects,
        no_fundus=int((~measured).sum()),
        regularisation=regularisation,
    )
    terms = draft._terms(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # never keep a model that did not converge
        try:
            model = LogisticRegression(C=regularisation, max_iter=1000).fit(terms, y)
        except ConvergenceWarning:
            raise RetinopathyError(
                f"{source}: the logistic regression did not converge in 1,000 iterations; "
                "use a smaller regularisation (a stronger penalty)"
            ) from None
    intercept = float(model.intercept_[0])
    coefficients = model.coef_[0]
    try:
        threshold, sensitivity, kept = choose_threshold(intercept + terms @ coefficients, y, specificity)
    except RetinopathyError as error:
        raise RetinopathyError(f"{source}: {error}; label more photographs, or check the labels") from None
    return dataclasses.replace(
        draft,
        coefficients=dict(zip(TERMS, coefficients.tolist(), strict=True)),
        intercept=intercept,
        threshold=threshold,
        train_specificity=kept,
        train_sensitivity=sensitivity,
    )
