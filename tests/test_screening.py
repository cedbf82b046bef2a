"""The screening figures (retinopathy.evaluation.screening) against scikit-learn, on small arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from conftest import write_params
from retinopathy.core.config import load_params
from retinopathy.core.contract import QUALITY_COLUMNS
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import screening_data
from retinopathy.data.labels import patient_of
from retinopathy.evaluation import screening


def synthetic(patients: int, seed: int = 0, two_eyes: bool = True) -> screening.Scored:
    """Patients with one or two eyes; grades 0-4, scores that track the grade with noise."""
    rng = np.random.default_rng(seed)
    names, actual = [], []
    for patient in range(patients):
        base = rng.choice(5, p=[0.5, 0.15, 0.2, 0.1, 0.05])
        for eye in range(2 if two_eyes and patient % 3 else 1):
            names.append(f"{patient}_{'left' if eye == 0 else 'right'}")
            actual.append(int(np.clip(base + rng.integers(-1, 2) * eye, 0, 4)))
    actual = np.array(actual)
    logits = rng.normal(size=(len(actual), 5)) + 2.0 * np.eye(5)[actual]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return screening.scored(
        [patient_of(n) for n in names], actual, probabilities.argmax(1), probabilities, regression=False
    )


def patient_table(images: screening.Scored) -> dict[str, tuple[int, int, float, float]]:
    """Per patient, by brute force: worst true grade, worst predicted grade, highest scores."""
    out: dict[str, tuple[int, int, float, float]] = {}
    for p, a, g, r, t in zip(
        images.patients, images.actual, images.predicted, images.referable, images.threatening, strict=True
    ):
        old = out.get(p, (-1, -1, -np.inf, -np.inf))
        out[p] = (max(old[0], a), max(old[1], g), max(old[2], r), max(old[3], t))
    return out


def test_scores_are_the_probabilities_of_grade_2_or_worse_and_3_or_worse():
    probabilities = np.array([[0.1, 0.2, 0.3, 0.25, 0.15]])
    referable, threatening = screening.scores_of(probabilities, regression=False)
    assert referable[0] == pytest.approx(0.7) and threatening[0] == pytest.approx(0.4)
    values = np.array([0.3, 2.7])
    assert np.array_equal(screening.scores_of(values, regression=True)[0], values)


def test_a_patient_is_the_worse_eye_and_the_higher_score():
    images = screening.scored(
        ["a", "a", "b", "c", "c"],
        np.array([0, 2, 1, 3, 0]),
        np.array([1, 0, 1, 0, 4]),
        np.array(
            [
                [0.9, 0.05, 0.05, 0, 0],
                [0.2, 0.2, 0.2, 0.2, 0.2],
                [0, 1, 0, 0, 0],
                [0, 0, 0, 0.5, 0.5],
                [0.1, 0.1, 0.1, 0.1, 0.6],
            ]
        ),
        regression=False,
    )
    patients = screening.per_patient(images)
    assert list(patients.patients) == ["a", "b", "c"]
    assert list(patients.actual) == [2, 1, 3] and list(patients.predicted) == [1, 1, 4]
    assert patients.referable == pytest.approx([0.6, 0.0, 1.0])
    assert patients.threatening == pytest.approx([0.4, 0.0, 1.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_figure_matches_scikit_learn_per_image_and_per_patient(seed):
    images = synthetic(60, seed)
    table = patient_table(images)
    brute = np.array(list(table.values()), dtype=np.float64)
    for level, rows, (actual, predicted, referable, threatening) in (
        ("image", images, (images.actual, images.predicted, images.referable, images.threatening)),
        ("patient", screening.per_patient(images), brute.T),
    ):
        assert len(rows) == len(actual), level
        got = screening.figures(rows, {"high_sensitivity": 0.3})
        truth = actual >= 2
        assert got["accuracy"] == pytest.approx(accuracy_score(actual, predicted))
        assert got["kappa"] == pytest.approx(cohen_kappa_score(actual, predicted, weights="quadratic"))
        assert got["auc_referable"] == pytest.approx(roc_auc_score(truth, referable))
        assert got["auc_vision_threatening"] == pytest.approx(roc_auc_score(actual >= 3, threatening))
        assert got["sensitivity"] == pytest.approx(recall_score(truth, predicted >= 2))
        assert got["specificity"] == pytest.approx(recall_score(~truth, predicted < 2))
        assert got["high_sensitivity_sensitivity"] == pytest.approx(recall_score(truth, referable >= 0.3))
        assert got["high_sensitivity_specificity"] == pytest.approx(recall_score(~truth, referable < 0.3))


def test_auc_counts_ties_as_scikit_learn_does_and_is_undefined_with_one_class():
    truth = np.array([0, 1, 0, 1, 1, 0, 0])
    score = np.array([0.5, 0.5, 0.2, 0.9, 0.5, 0.9, 0.1])
    assert screening.auc(truth, score) == pytest.approx(roc_auc_score(truth, score))
    assert screening.auc(np.zeros(4), np.arange(4)) is None
    assert screening.sensitivity_specificity(np.zeros(3), np.ones(3)) == (None, 0.0)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_operating_points_meet_their_target_and_are_the_best_such(target):
    images = synthetic(80, 3)
    truth, score = images.actual >= 2, images.referable
    high = screening.operating_threshold(truth, score, "high_sensitivity", target)
    sensitivity, specificity = screening.sensitivity_specificity(truth, score >= high)
    assert sensitivity >= target
    higher = score[score > high]  # any higher threshold misses the target
    if len(higher):
        assert screening.sensitivity_specificity(truth, score >= higher.min())[0] < target
    low = screening.operating_threshold(truth, score, "high_specificity", target)
    assert screening.sensitivity_specificity(truth, score >= low)[1] >= target
    lower = score[score < low]
    if len(lower):
        assert screening.sensitivity_specificity(truth, score >= lower.max())[1] < target
    assert screening.operating_threshold(np.ones(3), np.arange(3), "high_sensitivity", 0.9) is None


def test_calibration_error_is_the_weighted_gap_of_its_bins():
    truth = np.array([0, 0, 1, 1, 1, 0])
    probability = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.55])
    ece, bins = screening.calibration(truth, probability, bins=10)
    assert [b.count for b in bins] == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]
    expected = (1 * 0.05 + 2 * abs(0.135 - 0.5) + 1 * 0.55 + 2 * abs(0.975 - 1)) / 6
    assert ece == pytest.approx(expected)
    assert bins[2].mean_probability is None and bins[2].observed is None


def test_roc_points_are_scikit_learns():
    images = synthetic(40, 4)
    truth = images.actual >= 2
    points = np.array(screening.roc_points(truth, images.referable))
    fpr, tpr, _ = roc_curve(truth, images.referable)
    assert np.allclose(points[:, 0], fpr) and np.allclose(points[:, 1], tpr)
    assert np.isfinite(points[:, 2]).all()
    assert screening.roc_points(np.zeros(3, dtype=bool), np.arange(3)) == []


def test_intervals_contain_the_estimate_and_narrow_as_the_test_set_grows():
    widths = []
    for patients in (40, 640):
        images = synthetic(patients, 5)
        result = screening_data(screening.record(images, None, {}, resamples=200, seed=0, probabilities=True))
        for level in ("image", "patient"):
            for key in screening.FIGURES:
                entry = result[level][key]
                assert entry["low"] <= entry["value"] <= entry["high"], (patients, level, key)
        widths.append(
            [
                result[level][key]["high"] - result[level][key]["low"]
                for level in ("image", "patient")
                for key in screening.FIGURES
            ]
        )
    assert all(big < small for small, big in zip(*widths, strict=True))
    again = screening.record(synthetic(40, 5), None, {}, resamples=200, seed=0, probabilities=True)
    assert again == screening.record(synthetic(40, 5), None, {}, resamples=200, seed=0, probabilities=True)


def test_resampling_keeps_a_patients_eyes_together():
    images = synthetic(30, 6)
    # Both eyes of every two-eyed patient agree exactly: then per image and per patient
    # accuracy are identical in every resample only if eyes are drawn together.
    pairs = screening.Scored(
        images.patients, images.actual, images.actual.copy(), images.referable, images.threatening
    )
    intervals = screening.bootstrap(pairs, {}, 50, seed=1)
    assert intervals["image"]["accuracy"].low == intervals["image"]["accuracy"].high == 1.0


def test_one_class_only_gives_undefined_figures_and_notes_never_a_number():
    images = synthetic(20, 7)
    healthy = screening.Scored(
        images.patients, np.zeros_like(images.actual), images.predicted, images.referable, images.threatening
    )
    val = screening.Scored(
        images.patients, np.zeros_like(images.actual), images.predicted, images.referable, images.threatening
    )
    result = screening_data(
        screening.record(healthy, val, {"high_sensitivity": 0.9, "high_specificity": 0.9}, 20, 0, True)
    )
    for level in ("image", "patient"):
        assert result[level]["auc_referable"] == {"value": None, "low": None, "high": None, "undefined": 20}
        assert result[level]["sensitivity"]["value"] is None
        assert result[level]["specificity"]["value"] is not None
    assert result["operating_points"]["high_sensitivity"]["threshold"] is None
    assert any("image auc_referable: undefined" in note for note in result["notes"])
    assert any("high_sensitivity: the validation split has only one class" in n for n in result["notes"])


def test_rare_class_in_resamples_is_counted_not_faked():
    images = synthetic(30, 8, two_eyes=False)
    actual = np.zeros_like(images.actual)
    actual[0] = 4  # one vision-threatening patient: absent from about a third of the resamples
    rare = screening.Scored(images.patients, actual, images.predicted, images.referable, images.threatening)
    result = screening_data(screening.record(rare, None, {}, 100, 0, True))
    undefined = result["patient"]["auc_vision_threatening"]["undefined"]
    assert 10 < undefined < 60
    assert any(f"undefined in {undefined} of 100 resamples" in note for note in result["notes"])


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"operating_points": {"high_sensitivity": 90, "high_specificity": 0.9}},
            r"`evaluate.operating_points.high_sensitivity` must be a target in \(0, 1\]",
        ),
        (
            {"operating_points": {"high_sensitivity": 0.9, "high_specificity": 0}},
            r"`evaluate.operating_points.high_specificity` must be a target",
        ),
        (
            {"operating_points": {"high_sensitivity": 0.9}},
            r"`evaluate.operating_points` must be a mapping of exactly",
        ),
        ({"bootstrap": -1}, r"`evaluate.bootstrap` must be an integer >= 0"),
        ({"seed": "x"}, r"`evaluate.seed` must be an integer seed"),
    ],
)
def test_bad_screening_settings_name_their_key(tmp_path, section, message):
    write_params(tmp_path, evaluate=section)
    with pytest.raises(RetinopathyError, match=message):
        load_params(tmp_path / "params.yaml")


def test_the_default_screening_settings_load(tmp_path):
    write_params(tmp_path)
    settings = load_params(tmp_path / "params.yaml").evaluate
    assert settings.operating_points == {"high_sensitivity": 0.9, "high_specificity": 0.9}
    assert settings.bootstrap == 1000


@pytest.mark.slow
def test_every_screening_figure_is_recomputed_from_the_predictions_csv(tmp_path, monkeypatch):
    """One tiny run: the figures evaluate wrote are scikit-learn's of its predictions CSVs."""
    import json

    import pandas as pd

    from conftest import make_tiny_project
    from retinopathy.stages import evaluate, train

    monkeypatch.chdir(tmp_path)
    make_tiny_project(
        tmp_path,
        data={"val_fraction": 0.3},
        demo={"test_size": 30},
        train={"epochs": 1},
        evaluate={"bootstrap": 30},
    )
    params = load_params("params.yaml")
    train.train_arm(params, "scratch")
    evaluate.evaluate_arm(params, "scratch")
    record = json.loads(Path("metrics/scratch.screening.json").read_text())
    test = pd.read_csv("metrics/predictions/scratch.csv")
    val = pd.read_csv("metrics/predictions/scratch.val.csv")
    assert list(test.columns) == [
        "image",
        "patient",
        "actual",
        "predicted",
        "p0",
        "p1",
        "p2",
        "p3",
        "p4",
        "referable_score",
        *QUALITY_COLUMNS,
    ]
    assert len(test) == 30 and len(val) > 0 and record["bootstrap"]["resamples"] == 30
    assert test["referable_score"].to_numpy() == pytest.approx(test[["p2", "p3", "p4"]].sum(axis=1), abs=2e-6)
    assert list(test["patient"]) == [patient_of(name) for name in test["image"]]
    thresholds = {}
    val_truth = val["actual"] >= 2
    for point, target in params.evaluate.operating_points.items():
        chosen = record["operating_points"][point]["threshold"]
        if val_truth.all() or not val_truth.any():
            assert chosen is None
            continue
        fpr, tpr, cuts = roc_curve(val_truth, val["referable_score"], drop_intermediate=False)
        meets = tpr >= target if point == "high_sensitivity" else 1 - fpr >= target
        expected = cuts[meets].max() if point == "high_sensitivity" else cuts[meets].min()
        if not np.isfinite(expected):  # refers nobody: written as the highest score plus one
            expected = val["referable_score"].max() + 1
        assert chosen == pytest.approx(expected, abs=1e-4)
        thresholds[point] = expected
    patients = (
        test.assign(threatening=test["p3"] + test["p4"])
        .groupby("patient")
        .agg(
            actual=("actual", "max"),
            predicted=("predicted", "max"),
            referable_score=("referable_score", "max"),
            threatening=("threatening", "max"),
        )
    )
    for level, rows, threatening in (
        ("image", test, test["p3"] + test["p4"]),
        ("patient", patients, patients["threatening"]),
    ):
        got = record[level]
        truth = rows["actual"] >= 2
        assert got["n"] == len(rows)

        def same(key, expected, got=got, level=level):
            value = got[key]["value"]
            assert (value is None) == (expected is None), (level, key)
            if value is not None:
                assert value == pytest.approx(expected, abs=1e-4), (level, key)
                assert got[key]["low"] - 1e-4 <= value <= got[key]["high"] + 1e-4, (level, key)

        def auc_or_none(positive, score):
            return roc_auc_score(positive, score) if 0 < positive.sum() < len(positive) else None

        def recall_or_none(positive, called):
            return recall_score(positive, called) if positive.any() else None

        same("accuracy", accuracy_score(rows["actual"], rows["predicted"]))
        same("kappa", cohen_kappa_score(rows["actual"], rows["predicted"], weights="quadratic"))
        same("auc_referable", auc_or_none(truth, rows["referable_score"]))
        same("auc_vision_threatening", auc_or_none(rows["actual"] >= 3, threatening))
        same("sensitivity", recall_or_none(truth, rows["predicted"] >= 2))
        same("specificity", recall_or_none(~truth, rows["predicted"] < 2))
        for point, threshold in thresholds.items():
            same(f"{point}_sensitivity", recall_or_none(truth, rows["referable_score"] >= threshold))
            same(f"{point}_specificity", recall_or_none(~truth, rows["referable_score"] < threshold))
    bins = pd.read_csv("metrics/reliability/scratch.csv")
    ece = (bins["count"] * (bins["mean_probability"] - bins["observed"]).abs()).sum() / bins["count"].sum()
    assert record["calibration"]["ece"] == pytest.approx(ece, abs=1e-4)
    roc = pd.read_csv("metrics/roc/scratch_image.csv")
    if truth.sum() > 0:
        fpr, tpr, _ = roc_curve(test["actual"] >= 2, test["referable_score"])
        assert roc["fpr"].to_numpy() == pytest.approx(fpr, abs=1e-5)
