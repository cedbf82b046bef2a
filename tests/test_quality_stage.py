"""The `quality` stage (retinopathy.quality.survey, stages/quality.py): the test split's imageability per
image and per patient, the agreement with EyeQ labels, recomputed by hand from tiny verdicts; the
photos CSV read back as evaluate reads it; and the stage end to end on a tiny demo project."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import faulted_demo, make_tiny_project, subprocess_env
from retinopathy.core.contract import QUALITY_LEVELS, Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import read_quality_survey
from retinopathy.quality.labels import QualityLabels
from retinopathy.quality.learned import read_assessor
from retinopathy.quality.measures import Measures
from retinopathy.quality.survey import (
    METRIC_KEYS,
    Surveyed,
    learn,
    photos_text,
    share_intervals,
    summarise,
)
from retinopathy.quality.table import read_verdicts
from retinopathy.quality.verdict import BLUR, DARK, Thresholds, Verdict

SHARP = Measures(0.7, 0.95, 90.0, 0.01, 0.0, 0.5, 0.0)


def photo(image: str, split: str, reasons: tuple[str, ...] = (), label: int | None = None) -> Surveyed:
    return Surveyed(image, split, image.split("_")[0], Verdict(reasons, SHARP), label)


# Test split: patient a both gradable, b one eye blurred, c dark (one photo), d both gradable.
# Labels: a Good, Good; b Usable, Reject; c Reject; d Good, Reject (a Reject the assessor missed).
PHOTOS = [
    photo("t0_left", "train", (BLUR,), 2),
    photo("a_left", "test", (), 0),
    photo("a_right", "test", (), 0),
    photo("b_left", "test", (), 1),
    photo("b_right", "test", (BLUR,), 2),
    photo("c_left", "test", (DARK, BLUR), 2),
    photo("d_left", "test", (), 0),
    photo("d_right", "test", (), 2),
]
LABELS = QualityLabels(
    path=__import__("pathlib").Path("q.csv"),
    levels={p.image: p.label for p in PHOTOS if p.label is not None},
    rows=9,
    unmatched=1,
    unmatched_examples=("zz_left.jpeg",),
    unlabelled=0,
)


def test_imageability_and_agreement_are_the_shares_counted_by_hand():
    metrics, record = summarise(PHOTOS, Thresholds(), LABELS, "q.csv", resamples=200, seed=0)
    assert metrics["n"] == 7
    assert metrics["img"] == round(5 / 7, 3)  # the train photo is not counted
    assert metrics["pat"] == 0.5  # a and d: every photograph gradable; b and c not
    assert metrics["blur"] == round(2 / 7, 3) and metrics["dark"] == round(1 / 7, 3)
    assert metrics["no_fundus"] == 0
    assert metrics["sens"] == round(2 / 3, 3)  # Reject: b_right, c_left found; d_right missed
    assert metrics["spec"] == 1.0  # Good and Usable: a, a, b_left, d_left all kept
    for key in ("img", "pat", "sens", "spec"):
        assert metrics[f"{key}_lo"] <= metrics[key] <= metrics[f"{key}_hi"]
    assert set(metrics) <= {k for key in METRIC_KEYS for k in (key, f"{key}_lo", f"{key}_hi")}
    assert {level: (c.gradable, c.ungradable) for level, c in record.confusion.items()} == {
        "Good": (3, 0),
        "Usable": (1, 0),
        "Reject": (1, 2),
    }
    assert record.photos == {"train": 1, "val": 0, "test": 7}
    assert record.ungradable == {"train": 1, "val": 0, "test": 2}
    assert (record.test_patients, record.labelled, record.unmatched) == (4, 7, 1)
    assert record.reasons[BLUR] == 2 and record.reasons[DARK] == 1
    assert any("zz_left.jpeg" in note for note in record.notes)


def test_without_labels_there_is_no_agreement_and_the_record_says_why():
    metrics, record = summarise(PHOTOS, Thresholds(), None, None, resamples=0, seed=0)
    assert "sens" not in metrics and "spec" not in metrics and "img_lo" not in metrics
    assert record.confusion == {} and record.labels is None
    assert any("quality.labels is null" in note for note in record.notes)
    assert any("no intervals" in note for note in record.notes)


def test_the_share_intervals_resample_whole_patients():
    # Two patients: one with 3 gradable photographs, one with 1 ungradable. Every resample holds
    # 0, 1 or 2 copies of each, so the share is 0, 3/4 or 1, never 1/2 (a resample of images).
    patients = ["p", "p", "p", "q"]
    ok = np.array([1.0, 1.0, 1.0, 0.0])
    low, high = share_intervals(patients, {"img": (ok, np.ones(4))}, 500, 0)["img"]
    drawn = share_intervals(patients, {"img": (ok, np.ones(4))}, 500, 0)
    assert drawn["img"] == (low, high)  # seeded
    assert low == 0.0 and high == 1.0
    assert share_intervals(patients, {"x": (ok, np.zeros(4))}, 50, 0)["x"] == (None, None)


def test_the_photos_csv_reads_back_as_evaluate_reads_it(tmp_path):
    path = tmp_path / "photos.csv"
    path.write_text(photos_text(PHOTOS, extra={"learned_reject": [f"{i / 10:.1f}" for i in range(8)]}))
    header = path.read_text().splitlines()[0].split(",")
    assert header[:5] == ["image", "split", "patient", "gradable", "quality"]
    assert header[-2:] == ["label", "learned_reject"]
    verdicts = read_verdicts(path, "test")
    assert list(verdicts) == [p.image for p in PHOTOS if p.split == "test"]
    assert verdicts["c_left"].gradable is False and verdicts["c_left"].quality == "dark; blur"
    assert verdicts["a_left"].gradable is True and verdicts["a_left"].quality == ""
    rows = path.read_text().splitlines()
    assert rows[2].endswith(",Good,0.1") and rows[5].startswith("b_right,test,b,false,blur,")


@pytest.mark.parametrize(
    ("line", "wording"),
    [
        ("a_left,test,a,yes,", ":2: 'a_left,test,a,yes,' is no verdict"),
        ("a_left,test,a,false,", ":2: 'a_left,test,a,false,' is no verdict"),
        ("a_left,test,a,true,blur", ":2: 'a_left,test,a,true,blur' is no verdict"),
        ("a_left,test,a,false,smudge", ":2: 'a_left,test,a,false,smudge' is no verdict"),
        ("a_left,exam,a,true,", ":2: 'a_left,exam,a,true,' is no verdict"),
        ("a_left,test,a,true", ":2: 4 fields where 5 belong"),
    ],
)
def test_a_damaged_photos_csv_names_the_line_and_the_stage_to_rerun(tmp_path, line, wording):
    path = tmp_path / "photos.csv"
    path.write_text(f"image,split,patient,gradable,quality\n{line}\n")
    with pytest.raises(RetinopathyError) as raised:
        read_verdicts(path, "test")
    assert f"{path}{wording}" in str(raised.value) and "dvc repro quality" in str(raised.value)


def test_a_missing_photos_csv_says_to_run_the_stage(tmp_path):
    with pytest.raises(RetinopathyError, match="not found; run `dvc repro quality` first"):
        read_verdicts(tmp_path / "photos.csv", "test")
    (tmp_path / "photos.csv").write_text(
        "image,split,patient,gradable,quality\na,test,a,true,\na,test,a,true,\n"
    )
    with pytest.raises(RetinopathyError, match=":3: a is listed twice"):
        read_verdicts(tmp_path / "photos.csv", "test")


@pytest.mark.slow
def test_the_stage_judges_every_photo_of_the_index_and_finds_the_demos_rejects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_tiny_project(tmp_path)
    # The same photographs (names, grades), a quarter of them spoilt by a camera fault, a tenth mildly.
    faulted_demo(tmp_path, test_size=12, usable=0.1)
    layout = Layout()
    done = subprocess.run(
        [sys.executable, "-m", "retinopathy", "quality"], capture_output=True, text=True, env=subprocess_env()
    )
    assert done.returncode == 0, done.stderr
    assert "imageability" in done.stdout
    rows = layout.quality_photos.read_text().splitlines()
    assert len(rows) == 1 + 40 + 12  # every photograph of the index, train and test
    metrics = json.loads(layout.quality_metrics.read_text())
    survey = read_quality_survey(layout.quality_info)
    labelled = (tmp_path / "data/demo/quality.csv").read_text().splitlines()[1:]
    assert survey.labels == "data/demo/quality.csv" and survey.unmatched == 0
    rejects = sum(line.split(",")[2] == "2" for line in labelled)
    photos = list(csv.DictReader(rows))
    assert rejects == sum(photo["label"] == "Reject" for photo in photos) > 0
    # 40 train photographs hold too few Reject ones for the learned assessor: the stage says so, its
    # column is there and empty, and the survey's notes say why.
    assert "learned assessor not fitted" in done.stderr
    assert {photo["learned_reject"] for photo in photos} == {""}
    assert any("learned assessor not fitted" in note and "at least 20" in note for note in survey.notes)
    # The assessor's file is written all the same, and says why predict --quality-model cannot use it.
    with pytest.raises(RetinopathyError, match="holds no learned assessor: .*at least 20.*; fix"):
        read_assessor(layout.quality_assessor, "fix")
    assert f"{layout.quality_assessor} (no learned assessor: it says why)" in done.stdout
    reject = survey.confusion[QUALITY_LEVELS[2]]
    assert (
        reject.ungradable == metrics["n"] - round(metrics["img"] * metrics["n"]) > 0
    )  # all found, none else
    assert metrics["sens"] == 1.0 and metrics["spec"] == 1.0

    # A file of that name that the stage did not write is never replaced; nothing is written then.
    layout.quality_info.write_text('{"mine": 1}\n')
    before = layout.quality_photos.read_text()
    done = subprocess.run(
        [sys.executable, "-m", "retinopathy", "quality"], capture_output=True, text=True, env=subprocess_env()
    )
    assert done.returncode != 0 and "was not written by `retinopathy quality`" in done.stderr
    assert "Traceback" not in done.stderr and layout.quality_photos.read_text() == before
    # Nor is a JSON of one's own where the learned assessor goes, though it has a version.
    layout.quality_info.unlink()
    layout.quality_assessor.write_text('{"version": 1, "mine": true}\n')
    done = subprocess.run(
        [sys.executable, "-m", "retinopathy", "quality"], capture_output=True, text=True, env=subprocess_env()
    )
    assert done.returncode != 0 and f"{layout.quality_assessor}: exists and was not written" in done.stderr
    assert layout.quality_assessor.read_text() == '{"version": 1, "mine": true}\n'
    assert not layout.quality_info.exists() and layout.quality_photos.read_text() == before


def _learned_photos(train_rejects: int) -> list[Surveyed]:
    """200 train photographs (``train_rejects`` of them blurred and labelled Reject) and a test split
    of 20 sharp Good and 10 blurred Reject ones; measures scattered so the model has work to do."""
    rng = np.random.default_rng(0)

    def one(image: str, split: str, blurred: bool) -> Surveyed:
        focus = (0.12 if blurred else 0.45) + 0.04 * rng.standard_normal()
        measures = dataclasses.replace(
            SHARP, focus=max(0.0, focus), brightness=90 + 8 * rng.standard_normal()
        )
        return Surveyed(
            image,
            split,
            image.split("_")[0],
            Verdict((BLUR,) if blurred else (), measures),
            2 if blurred else 0,
        )

    train = [one(f"t{n}_left", "train", n < train_rejects) for n in range(200)]
    test = [one(f"s{n}_left", "test", n < 10) for n in range(30)]
    return train + test


def test_the_learned_assessor_fits_on_the_train_labels_and_scores_every_photo():
    learned = learn(_learned_photos(40), "labels.csv")
    assert learned.assessor is not None and learned.why is None
    assert learned.assessor.photos == 200 and learned.assessor.rejects == 40  # the train split only
    assert len(learned.column) == 230 and all(0 <= float(value) <= 1 for value in learned.column)
    # blurred test photographs score above sharp ones: the AUC, sensitivity and specificity say so
    assert learned.metrics == {"l_auc": 1.0, "l_sens": 1.0, "l_spec": 1.0}
    assert float(learned.column[200]) > float(learned.column[229])  # s0 blurred, s29 sharp


def test_too_few_labelled_rejects_leave_the_learned_assessor_out_and_say_why():
    learned = learn(_learned_photos(5), "labels.csv")
    assert learned.assessor is None and learned.metrics == {} and set(learned.column) == {""}
    assert learned.why is not None and "5 Reject" in learned.why and "at least 20" in learned.why


def test_quality_params_do_not_change_what_training_fingerprints():
    """Training never reads `quality`: a threshold changed mid-run leaves the run resumable."""
    from conftest import tiny_params
    from retinopathy.engine.checkpoint import training_params

    params = tiny_params()
    before = training_params(params)
    params["quality"].update(labels=None, ungradable="withhold")
    params["quality"]["thresholds"] = {"focus": 0.5}
    assert training_params(params) == before and "quality" not in before
