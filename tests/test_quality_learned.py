"""The learned quality assessor (quality.learned): it learns, round-trips through JSON, refuses bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from retinopathy.core.errors import RetinopathyError
from retinopathy.quality.learned import (
    MIN_PER_CLASS,
    TERMS,
    LearnedAssessor,
    assessor_text,
    choose_threshold,
    fit,
    is_reject,
    read_assessor,
)
from retinopathy.quality.measures import Measures
from retinopathy.quality.verdict import BLUR, DARK, NO_FUNDUS, OVEREXPOSED

# A gradable photograph's measures, about as the demo's (BENCHMARKS.md, "Image quality").
GOOD = Measures(0.66, 0.97, 86.0, 0.04, 0.01, 0.45, 0.01)


def photos(count: int, seed: int, **shift: float) -> list[Measures]:
    """``count`` photographs scattered around GOOD, each measure moved by ``shift`` (by name)."""
    rng = np.random.default_rng(seed)
    centre = dataclasses.replace(GOOD, **{name: getattr(GOOD, name) + step for name, step in shift.items()})
    spread = Measures(0.05, 0.01, 8.0, 0.01, 0.005, 0.05, 0.01)
    return [
        Measures(
            *(
                max(0.0, value + scale * rng.standard_normal())
                for value, scale in zip(dataclasses.astuple(centre), dataclasses.astuple(spread), strict=True)
            )
        )
        for _ in range(count)
    ]


def clusters(seed: int, good: int = 200, blurred: int = 40) -> tuple[list[Measures], np.ndarray]:
    """Gradable photographs and blurred Reject ones (focus 0.45 -> 0.12), and the labels."""
    measures = photos(good, seed) + photos(blurred, seed + 1, focus=-0.33)
    return measures, np.array([False] * good + [True] * blurred)


@pytest.fixture(scope="module")
def assessor() -> LearnedAssessor:
    measures, reject = clusters(seed=0)
    return fit(measures, reject, "labels.csv")


def test_separates_two_clusters_of_measures_on_new_photographs(assessor: LearnedAssessor) -> None:
    measures, reject = clusters(seed=10)  # photographs it never saw
    probability = assessor.probability(measures)
    assert probability[reject].min() > probability[~reject].max()  # ranked apart: an AUC of 1
    flagged = assessor.ungradable(measures)
    # Every blurred one found; a gradable one 3 standard deviations out may cross the threshold.
    assert flagged[reject].all() and flagged[~reject].sum() <= 2
    reasons = assessor.reasons(measures)
    assert [reasons[row] for row in np.flatnonzero(flagged)] == [(BLUR,)] * flagged.sum()
    # On the training photographs the threshold keeps at least the specificity it was chosen for.
    assert assessor.train_sensitivity == 1.0 and assessor.train_specificity >= assessor.specificity == 0.95
    assert (assessor.photos, assessor.rejects, assessor.no_fundus) == (240, 40, 0)
    assert assessor.coefficients["focus"] < 0  # less focus, more likely Reject


def test_threshold_keeps_the_training_specificity_where_the_classes_overlap() -> None:
    good, bad = photos(100, 3), photos(40, 4, focus=-0.08)  # 1.6 standard deviations apart
    reject = np.array([False] * 100 + [True] * 40)
    assessor = fit(good + bad, reject, "labels.csv", specificity=0.9)
    flagged = assessor.ungradable(good + bad)
    assert (~flagged[~reject]).mean() == assessor.train_specificity >= 0.9
    assert flagged[reject].mean() == assessor.train_sensitivity
    assert 0.3 < assessor.train_sensitivity < 1.0  # overlapping: some found, not all


def test_exposure_fails_both_ways_with_the_right_reason() -> None:
    measures = photos(200, 5) + photos(25, 6, brightness=-70.0) + photos(25, 7, brightness=+120.0)
    reject = np.array([False] * 200 + [True] * 50)
    assessor = fit(measures, reject, "labels.csv")
    new = photos(20, 8) + photos(5, 9, brightness=-70.0) + photos(5, 10, brightness=+120.0)
    assert assessor.reasons(new) == [()] * 20 + [(DARK,)] * 5 + [(OVEREXPOSED,)] * 5


def test_a_photograph_without_a_disc_is_decided_by_the_rule(assessor: LearnedAssessor) -> None:
    black = Measures(0.0, None, None, None, None, None, None)
    assert assessor.probability([black, GOOD]).tolist()[0] == 1.0
    assert assessor.ungradable([black, GOOD]).tolist() == [True, False]
    assert assessor.reasons([black, GOOD]) == [(NO_FUNDUS,), ()]
    measures, reject = clusters(seed=0)
    refit = fit([*measures, black, black], np.append(reject, [True, False]), "labels.csv")
    assert (refit.photos, refit.no_fundus) == (240, 2)
    assert refit.coefficients == assessor.coefficients  # left out, not learned from


def test_json_round_trips_to_the_same_probabilities(assessor: LearnedAssessor) -> None:
    text = assessor.to_json()
    raw = json.loads(text)
    assert list(raw)[:2] == ["version", "means"] and list(raw["coefficients"]) == list(TERMS)
    again = LearnedAssessor.from_json(text, "quality.json", "run the quality stage again")
    assert again == assessor
    measures, _ = clusters(seed=20)
    assert np.array_equal(again.probability(measures), assessor.probability(measures))
    assert again.to_json() == text


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda raw: raw.update(version=2), "not a learned quality assessor of format version 1"),
        (lambda raw: raw.pop("threshold"), "'threshold' is missing"),
        (lambda raw: raw["scales"].update(focus=0.0), "'scales.focus' is 0.0, but a scale is positive"),
        (lambda raw: raw["coefficients"].pop("brightness^2"), "'coefficients' lacks 'brightness^2'"),
        (lambda raw: raw.update(intercept="1"), "'intercept'"),
    ],
)
def test_a_damaged_json_is_refused_naming_the_file_and_the_fix(
    assessor: LearnedAssessor, change, words: str
) -> None:
    raw = json.loads(assessor.to_json())
    change(raw)
    with pytest.raises(RetinopathyError, match="run the quality stage again") as error:
        LearnedAssessor.from_json(json.dumps(raw), "models/quality.json", "run the quality stage again")
    assert str(error.value).startswith("models/quality.json: ") and words in str(error.value)


def test_the_stages_file_holds_the_model_or_says_why_there_is_none(
    assessor: LearnedAssessor, tmp_path
) -> None:
    path = tmp_path / "quality.json"
    path.write_text(assessor_text(assessor, None, str(path)))
    assert read_assessor(path, "fix it") == assessor
    why = "7 Reject photographs; at least 20 needed"
    path.write_text(assessor_text(None, why, str(path)))
    assert json.loads(path.read_text()) == {"version": 1, "not_fitted": why}
    with pytest.raises(RetinopathyError) as error:
        read_assessor(path, "run `dvc repro quality`")
    assert str(error.value) == f"{path}: holds no learned assessor: {why}; run `dvc repro quality`"
    for missing, words in ((tmp_path / "none.json", "not found"), (tmp_path, "cannot read it")):
        with pytest.raises(RetinopathyError, match=rf"^{missing}: {words}.*; run it$"):
            read_assessor(missing, "run it")


def test_not_json_and_nan_are_refused(assessor: LearnedAssessor) -> None:
    for text in ("{", assessor.to_json().replace('"intercept": ', '"intercept": NaN, "x": ')):
        with pytest.raises(RetinopathyError, match=r"^q\.json: damaged, not JSON .*; fix it$"):
            LearnedAssessor.from_json(text, "q.json", "fix it")


def test_one_class_or_too_few_rejects_is_refused_with_the_counts_and_the_fix() -> None:
    good = photos(100, 11)
    with pytest.raises(RetinopathyError) as error:
        fit(good, np.zeros(100, dtype=bool), "eyeq.csv")
    message = str(error.value)
    assert message.startswith("eyeq.csv: only one class: 0 Reject and 100 Good or Usable photographs")
    assert f"at least {MIN_PER_CLASS} of each" in message and "quality.labels: null" in message
    few = good + photos(MIN_PER_CLASS - 1, 12, focus=-0.33)
    with pytest.raises(RetinopathyError, match=f"eyeq.csv: {MIN_PER_CLASS - 1} Reject and 100 Good"):
        fit(few, np.array([False] * 100 + [True] * (MIN_PER_CLASS - 1)), "eyeq.csv")


def test_labels_of_the_wrong_kind_and_unmeasured_numbers_are_refused() -> None:
    measures, reject = clusters(seed=13)
    with pytest.raises(RetinopathyError, match="one true/false per photograph .* got a int64 array"):
        fit(measures, reject.astype(np.int64), "eyeq.csv")
    with pytest.raises(RetinopathyError, match=r"shape \(239,\) for 240 photographs"):
        fit(measures, reject[1:], "eyeq.csv")
    broken = [*measures[:-1], dataclasses.replace(GOOD, focus=float("nan"))]
    with pytest.raises(RetinopathyError, match="photograph 239 .* not a finite number"):
        fit(broken, reject, "eyeq.csv")


def test_eyeq_levels_map_to_reject_and_others_are_refused() -> None:
    assert is_reject([0, 1, 2, 2], "eyeq.csv").tolist() == [False, False, True, True]
    with pytest.raises(
        RetinopathyError, match=r"eyeq.csv: quality 3 of photograph 1 .* is not an EyeQ level"
    ):
        is_reject([0, 3], "eyeq.csv")


def test_the_threshold_falls_between_scores_and_never_splits_a_tie() -> None:
    scores, reject = np.array([3.0, 2.0, 2.0, 1.0]), np.array([True, True, False, False])
    # At 95%: flagging the two 2.0s would flag a gradable photo (50%), so only the 3.0.
    assert choose_threshold(scores, reject, 0.95) == (2.5, 0.5, 1.0)
    assert choose_threshold(scores, reject, 0.5) == (1.5, 1.0, 0.5)
    with pytest.raises(RetinopathyError, match="no threshold finds a Reject photo and keeps 95%"):
        choose_threshold(np.array([2.0, 1.0]), np.array([False, True]), 0.95)


def test_the_order_of_a_records_keys_changes_nothing(assessor: LearnedAssessor) -> None:
    reordered = dataclasses.replace(
        assessor,
        means=dict(reversed(assessor.means.items())),
        scales=dict(reversed(assessor.scales.items())),
        coefficients=dict(reversed(assessor.coefficients.items())),
    )
    measures, _ = clusters(seed=30)
    assert np.array_equal(reordered.probability(measures), assessor.probability(measures))
    extremes = [
        dataclasses.replace(assessor, threshold=value).threshold_probability for value in (-1e4, 0, 1e4)
    ]
    assert extremes == [0.0, 0.5, 1.0]
