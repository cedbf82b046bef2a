"""What ungradable photographs do to the screening figures (issue 30): imageability, the figures on gradable
photographs only, and intention to screen (an ungradable photograph counts as referred), per image and per
patient. Tiny arrays counted by hand; the record read back; and one tiny run whose every figure is
recomputed with scikit-learn from evaluate's predictions CSV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import recall_score

from retinopathy.core.records import check_screening, screening_data
from retinopathy.evaluation.screening import (
    GRADABILITY_RULE,
    Scored,
    gradability_figures,
    per_patient,
    record,
    record_at,
)
from retinopathy.evaluation.screening_files import Screening
from retinopathy.quality.survey import summarise
from retinopathy.quality.verdict import Thresholds
from retinopathy.reporting.gradability import gradability_section
from test_quality_stage import LABELS, PHOTOS

# Patients a (both eyes gradable, one referable and referred), b (the referred eye ungradable, not
# referable), c (one eye, referable but graded 0, ungradable), d (one eye, healthy, gradable).
IMAGES = Scored(
    patients=np.array(["a", "a", "b", "b", "c", "d"], dtype=object),
    actual=np.array([0, 2, 0, 0, 3, 0]),
    predicted=np.array([0, 2, 0, 2, 0, 0]),
    referable=np.array([0.1, 0.8, 0.2, 0.6, 0.3, 0.05]),
    threatening=np.array([0.0, 0.1, 0.0, 0.1, 0.2, 0.0]),
    gradable=np.array([True, True, True, False, False, True]),
)


def test_image_figures_count_an_ungradable_photo_as_referred():
    got = gradability_figures(IMAGES)
    assert got["imageability"] == pytest.approx(4 / 6)
    # referable: images 1 and 4; 4 is graded 0 but ungradable, so it is referred all the same
    assert got["its_sensitivity"] == 1.0
    # healthy: 0, 2, 3, 5; 3 is graded 2 (and ungradable): referred
    assert got["its_specificity"] == pytest.approx(3 / 4)
    # gradable only: images 0, 1, 2, 5, all graded right
    assert got["gradable_sensitivity"] == 1.0 and got["gradable_specificity"] == 1.0
    assert got["gradable_accuracy"] == 1.0


def test_a_patient_is_gradable_only_when_every_photo_is():
    patients = per_patient(IMAGES)
    assert list(patients.patients) == ["a", "b", "c", "d"]
    assert patients.gradable.tolist() == [True, False, False, True]
    got = gradability_figures(patients)
    assert got["imageability"] == 0.5
    assert got["its_sensitivity"] == 1.0  # a referred by its grade, c for being ungradable
    assert got["its_specificity"] == 0.5  # b ungradable (and graded 2): referred; d not
    assert got["gradable_sensitivity"] == 1.0 and got["gradable_specificity"] == 1.0


def test_operating_points_refer_the_ungradable_too():
    got = gradability_figures(IMAGES, {"high_sensitivity": 0.25, "high_specificity": None})
    # called: score >= 0.25 (1, 3, 4) or ungradable (3, 4)
    assert got["its_high_sensitivity_sensitivity"] == 1.0
    assert got["its_high_sensitivity_specificity"] == pytest.approx(3 / 4)
    assert got["its_high_specificity_sensitivity"] is None and got["its_high_specificity_specificity"] is None
    assert got["gradable_high_sensitivity_specificity"] == 1.0  # gradable healthy 0, 2, 5: all below


def test_no_gradable_case_gives_no_figures_not_made_up_ones():
    none = Scored(
        IMAGES.patients,
        IMAGES.actual,
        IMAGES.predicted,
        IMAGES.referable,
        IMAGES.threatening,
        np.zeros(6, bool),
    )
    got = gradability_figures(none)
    assert got["imageability"] == 0.0
    assert got["gradable_accuracy"] is None and got["gradable_kappa"] is None
    assert got["gradable_sensitivity"] is None and got["its_sensitivity"] == 1.0


def test_the_record_holds_the_gradability_part_with_intervals_and_reads_back(tmp_path):
    reasons = {"no fundus": 0, "off-field": 0, "dark": 1, "overexposed": 0, "blur": 1, "flare": 0}
    made = record(IMAGES, None, {}, resamples=40, seed=0, probabilities=True, reasons=reasons)
    part = made.gradability
    assert part is not None and part.rule == GRADABILITY_RULE and part.reasons == reasons
    assert (part.image.n, part.image.gradable, part.patient.n, part.patient.gradable) == (6, 4, 4, 2)
    assert part.image.imageability.value == pytest.approx(4 / 6)
    assert part.image.imageability.low <= part.image.imageability.value <= part.image.imageability.high
    assert part.patient.gradable_only.n == 2 and part.patient.gradable_only.referable == 1
    assert part.patient.specificity.value == 0.5
    data = json.loads(json.dumps(screening_data(made)))
    assert "high_sensitivity_sensitivity" not in data["gradability"]["image"]  # no operating points
    assert check_screening(tmp_path / "s.json", data, "fix") == made


def test_without_verdicts_the_record_and_its_file_are_as_before(tmp_path):
    plain = Scored(IMAGES.patients, IMAGES.actual, IMAGES.predicted, IMAGES.referable, IMAGES.threatening)
    made = record_at(plain, {}, resamples=0, seed=0, probabilities=True)
    data = screening_data(made)
    assert made.gradability is None and "gradability" not in data
    assert check_screening(tmp_path / "old.json", json.loads(json.dumps(data)), "fix").gradability is None


@pytest.mark.slow
def test_every_gradability_figure_is_recomputed_from_the_predictions_csv(tmp_path, monkeypatch):
    """A tiny run with a quarter of the photos spoilt: evaluate's figures are scikit-learn's of its CSV."""
    import pandas as pd

    from conftest import faulted_demo, make_tiny_project
    from retinopathy.core.config import load_params
    from retinopathy.stages import evaluate, quality, train

    monkeypatch.chdir(tmp_path)
    make_tiny_project(tmp_path, demo={"test_size": 30}, train={"epochs": 1}, evaluate={"bootstrap": 30})
    # The same photographs (names, grades; patients demo_<n>, two eyes each), a quarter spoilt by a fault.
    faulted_demo(tmp_path, test_size=30)
    assert quality.main([]) == 0
    params = load_params("params.yaml")
    train.train_arm(params, "scratch")
    evaluate.evaluate_arm(params, "scratch")
    part = json.loads(Path("metrics/scratch.screening.json").read_text())["gradability"]
    test = pd.read_csv("metrics/predictions/scratch.csv", keep_default_na=False, dtype={"gradable": str})
    assert list(test.columns)[-2:] == ["gradable", "quality"]
    assert set(test["gradable"]) == {"true", "false"}, "the spoilt photos should make some ungradable"
    ok = test["gradable"] == "true"
    assert ((test["quality"] == "") == ok).all()
    test = test.assign(ok=ok, called=(test["predicted"] >= 2) | ~ok)
    patients = test.groupby("patient").agg(
        actual=("actual", "max"), predicted=("predicted", "max"), ok=("ok", "min"), called=("called", "max")
    )
    for level, rows in (("image", test), ("patient", patients)):
        got = part[level]
        truth = rows["actual"] >= 2
        assert (got["n"], got["gradable"]) == (len(rows), int(rows["ok"].sum()))

        def same(entry, expected, level=level):
            assert (entry["value"] is None) == (expected is None), level
            if expected is not None:
                assert entry["value"] == pytest.approx(expected, abs=1e-4), level
                assert entry["low"] - 1e-4 <= entry["value"] <= entry["high"] + 1e-4, level

        same(got["imageability"], rows["ok"].mean())
        same(got["sensitivity"], recall_score(truth, rows["called"]) if truth.any() else None)
        same(got["specificity"], recall_score(~truth, ~rows["called"]) if (~truth).any() else None)
        kept = rows[rows["ok"]]
        kept_truth = kept["actual"] >= 2
        assert got["gradable_only"]["n"] == len(kept)
        same(
            got["gradable_only"]["accuracy"],
            (kept["actual"] == kept["predicted"]).mean() if len(kept) else None,
        )
        same(
            got["gradable_only"]["sensitivity"],
            recall_score(kept_truth, kept["predicted"] >= 2) if kept_truth.any() else None,
        )
        same(
            got["gradable_only"]["specificity"],
            recall_score(~kept_truth, kept["predicted"] < 2) if (~kept_truth).any() else None,
        )
    reasons = part["reasons"]
    assert sum(reasons.values()) >= (~ok).sum() > 0


def _screening(made) -> Screening:
    return Screening(json.loads(json.dumps(screening_data(made))), {}, None)


def test_the_report_section_shows_each_arm_and_the_quality_confusion_matrix():

    _, survey = summarise(PHOTOS, Thresholds(), LABELS, "data/demo/quality.csv", resamples=0, seed=0)
    judged = record(IMAGES, None, {}, resamples=40, seed=0, probabilities=True, reasons=survey.reasons)
    plain = Scored(IMAGES.patients, IMAGES.actual, IMAGES.predicted, IMAGES.referable, IMAGES.threatening)
    old = record_at(
        plain, {}, resamples=0, seed=0, probabilities=True
    )  # a file from before the quality stage
    lines = gradability_section(
        ["scratch", "pretrained", "third"],
        {"scratch": _screening(judged), "pretrained": _screening(old)},
        survey,
    )
    text = "\n".join(lines)
    assert lines[0] == "## Gradability" and "counts an ungradable photograph as referred" in text
    assert "IDx-DR's imageability 96.1%" in text
    row = next(line for line in lines if line.startswith("| imageability |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
    image = judged.gradability.image.imageability
    assert cells[0] == f"{image.value:.3f} [{image.low:.3f}-{image.high:.3f}]"
    assert cells[1].startswith("0.500 [") and cells[2:] == ["not judged"] * 2 + ["skipped"] * 2
    assert "| test cases (gradable) | 6 (4) | 4 (2) |" in text
    its = next(line for line in lines if line.startswith("| specificity at its grade, intention to screen |"))
    assert "| 0.750 [" in its and "| 0.500 [" in its
    assert not any("point" in line for line in lines if line.startswith("| ")), "no arm has operating points"
    assert "Ungradable test photographs: 2 of 7; by reason (one may have several):" in text
    assert "blur 2" in text and "dark 1" in text
    assert "| Reject | 1 | 2 |" in text and "| Good | 3 | 0 |" in text
    assert "1 label rows name no photograph of the index (e.g. zz_left.jpeg)" in text


def test_the_report_section_says_what_to_run_without_verdicts_or_labels():

    lines = gradability_section(["scratch"], {}, None)
    assert "run `dvc repro quality`" in "\n".join(lines)
    _, survey = summarise(PHOTOS, Thresholds(), None, None, resamples=0, seed=0)
    text = "\n".join(gradability_section(["scratch"], {}, survey))
    assert "run `dvc repro evaluate`" in text and "(`quality.labels` is null): no confusion matrix" in text


def test_compare_shows_imageability_and_intention_to_screen_per_experiment():
    from retinopathy.reporting.comparison import results_table
    from test_seeds import experiment

    runs = [experiment("a", 0, 0.8), experiment("b", 1, 0.8)]
    made = record(IMAGES, None, {}, resamples=0, seed=0, probabilities=True)
    runs[0].arms["scratch"].gradability = made.gradability  # b: results from before the quality stage
    lines = results_table(runs)
    assert "| imageable patients | sensitivity, intention to screen |" in lines[0]
    assert "| 50.0% | 100.0% |" in next(
        line for line in lines if line.startswith("| a | ResNet18 | scratch |")
    )
    assert "| n/a | n/a |" in next(line for line in lines if line.startswith("| b | ResNet18 | scratch |"))
    pretrained = next(line for line in lines if line.startswith("| a | ResNet18 | pretrained |"))
    assert pretrained.count("skipped") == 11
