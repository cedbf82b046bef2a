"""Patients: the course split's leakage counted (exactly, on the real lists), and `data.split: patients`.

tests/data/lab-split holds a copy of the course's four split lists (names and grades only, no
images): the counts on them are computed here independently of the package, by splitting each
name at its last underscore.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_params
from retinopathy.core.config import load_params
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import EyePairs, PatientCounts
from retinopathy.data.index import split_validation
from retinopathy.data.labels import SPLIT_FILES, Record, read_course_splits
from retinopathy.data.patients import (
    eye_pairs,
    hold_out_patients,
    leakage,
    leakage_warning,
    patient_grades,
    split_by_patient,
)
from retinopathy.data.synthetic import render_fundus
from retinopathy.stages import prepare
from retinopathy.stages.report import write_report
from test_report import write_metrics

LAB = Path(__file__).parent / "data/lab-split"


@pytest.fixture(scope="module")
def lab():
    return read_course_splits(LAB)


def _by_patient(path: Path) -> dict[str, list[str]]:
    """patient -> eyes, straight from an image list (``<patient>_<eye>`` per line)."""
    eyes = defaultdict(list)
    for line in path.read_text().split():
        patient, eye = line.rsplit("_", 1)
        eyes[patient].append(eye)
    return eyes


def test_the_course_lists_put_both_eyes_of_5618_patients_on_both_sides(lab):
    train, test = _by_patient(LAB / "train_img.csv"), _by_patient(LAB / "test_img.csv")
    straddling = set(train) & set(test)
    counts = leakage({"train": lab.train, "val": [], "test": lab.test}, "lists")
    assert (
        counts.count
        == {"train": len(train), "val": 0, "test": len(test)}
        == {"train": 16859, "val": 0, "test": 6322}
    )
    assert counts.test_and_train == len(straddling) == 5618
    assert counts.test_images == sum(len(test[p]) for p in straddling) == 5618
    assert counts.test_share == pytest.approx(5618 / 7026)
    assert counts.val_and_train == 0
    # 11241 patients have both eyes in train; 87.1% of them have one grade in both.
    assert counts.train_pairs.pairs == sum(len(e) == 2 for e in train.values()) == 11241
    assert counts.train_pairs.differences == [9795, 970, 456, 8, 12]
    warning = leakage_warning(counts)
    assert "5618 patients have one eye in test and the other in train/val" in warning
    assert "5618 test images (80.0% of the test split)" in warning
    assert "flattered" in warning and "data.split: patients" in warning


def test_the_validation_split_of_the_lists_is_counted_against_train(lab):
    records = [Record(f"{i}_{eye}", i % 5) for i in range(40) for eye in ("left", "right")]
    train, val = records[:60], records[60:]  # patient 30 (the 61st image) has an eye on each side
    test = [Record("99_left", 0)]
    counts = leakage({"train": train, "val": val, "test": test}, "lists")
    assert (counts.val_and_train, counts.val_images, counts.test_and_train) == (0, 0, 0)
    val = [records[59], *val]  # 29_right joins val; 29_left stays in train
    counts = leakage({"train": records[:59], "val": val, "test": test}, "lists")
    assert (counts.val_and_train, counts.val_images) == (1, 1)
    assert "1 patients have one eye in val and the other in train" in leakage_warning(counts)


@pytest.mark.slow
def test_the_patient_split_of_the_course_lists_leaves_no_patient_on_both_sides(lab):
    train, test = split_by_patient(lab.train, lab.test, seed=0)
    assert sorted(r.image for r in train + test) == sorted(r.image for r in lab.train + lab.test)
    counts = leakage({"train": train, "val": [], "test": test}, "patients")
    assert counts.test_and_train == counts.test_images == 0 and leakage_warning(counts) is None
    # The same test share (7026 of 35126 images), to within a few images.
    assert abs(len(test) - 7026) <= 10
    # Stratified by the patient's grade (the worse eye): each grade's share of patients is kept.
    grades = patient_grades(lab.train + lab.test)
    held = {p: g for p, g in patient_grades(test).items()}
    for grade in range(5):
        members = sum(g == grade for g in grades.values())
        assert abs(sum(g == grade for g in held.values()) - 0.2 * members) <= 1
    # Reproducible with the seed, another with another.
    assert split_by_patient(lab.train, lab.test, seed=0) == (train, test)
    assert split_by_patient(lab.train, lab.test, seed=1) != (train, test)
    # A validation split by patient leaves none on both sides either, and takes the share asked.
    kept, val = hold_out_patients(train, 0.1, seed=0)
    both = leakage({"train": kept, "val": val, "test": test}, "patients")
    assert both.val_and_train == both.test_and_train == 0
    assert abs(len(val) - 0.1 * len(train)) <= 10
    assert hold_out_patients(list(reversed(train)), 0.1, seed=0)[1] == list(reversed(val))


def test_a_patient_is_graded_by_the_worse_eye_and_eye_pairs_count_differences():
    records = [
        Record("1_left", 0),
        Record("1_right", 3),
        Record("2_left", 2),
        Record("2_right", 2),
        Record("3_left", 4),
        Record("x", 1),
    ]
    assert patient_grades(records) == {"1": 3, "2": 2, "3": 4, "x": 1}
    pairs = eye_pairs(records)
    assert pairs == EyePairs(pairs=2, same_grade=0.5, differences=[1, 0, 0, 1, 0])


# ------------------------------------------------------- prepare, end to end, on a tiny course layout


def _course(root: Path, train: list[tuple[str, int]], test: list[tuple[str, int]]) -> Path:
    """A course layout with a 32 px picture (the smallest prepare accepts) per name."""
    root.mkdir(parents=True)
    for split, records in (("train", train), ("test", test)):
        images, labels = SPLIT_FILES[split]
        (root / images).write_text("".join(f"{name}\n" for name, _ in records))
        (root / labels).write_text("".join(f"{grade}\n" for _, grade in records))
    for seed, (name, grade) in enumerate(train + test):
        eye = "left" if name.endswith("_left") else "right"
        picture = render_fundus(grade, np.random.default_rng(seed), 32, eye=eye)
        Image.fromarray(picture).save(root / f"{name}.jpeg", quality=90)
    return root


# 15 patients with both eyes in train; patients 15-19 with the left eye in train and the right in
# test (4 straddle, 19 does not: its left eye is absent); 5 patients with both eyes in test.
TRAIN = [(f"{p}_{eye}", p % 5) for p in range(15) for eye in ("left", "right")] + [
    (f"{p}_left", p % 5) for p in range(15, 19)
]
TEST = [(f"{p}_right", p % 5) for p in range(15, 20)] + [
    (f"{p}_{eye}", p % 5) for p in range(20, 25) for eye in ("left", "right")
]


@pytest.fixture()
def course(tmp_path, monkeypatch) -> Path:
    _course(tmp_path / "course", TRAIN, TEST)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_prepare_counts_and_warns_about_patients_on_both_sides(course, capsys):
    write_params(course, data={"root": "course"})
    assert prepare.main(["--out", "data/prepared"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads((course / "data/prepared/summary.json").read_text())
    counts = summary["patients"]
    assert counts["split"] == "lists" and counts["count"] == {"train": 19, "val": 0, "test": 10}
    assert (counts["test_and_train"], counts["test_images"]) == (4, 4)
    assert counts["train_pairs"] == {"pairs": 15, "same_grade": 1.0, "differences": [15, 0, 0, 0, 0]}
    assert "patients: train 19, val 0, test 10 (data.split: lists)" in out
    assert (
        "warning: 4 patients have one eye in test and the other in train/val, so 4 test images "
        "(26.7% of the test split)" in err
    )
    assert "flattered" in err and "data.split: patients" in err


def _split_patients(index: Path) -> dict[str, set[str]]:
    """Each split's patients in a prepared index.csv (the name before its last underscore)."""
    patients: dict[str, set[str]] = defaultdict(set)
    for line in index.read_text().split()[1:]:
        split, image, _ = line.split(",")
        patients[split].add(image.rsplit("_", 1)[0])
    return patients


def test_the_listed_split_draws_validation_by_patient_when_names_give_patients(course, capsys):
    # data.split: lists keeps the lists' train and test, but the validation split takes whole
    # patients out of train: fuse's blend chooses its epoch on patients with both eyes there.
    write_params(course, data={"root": "course", "val_fraction": 0.5})
    assert prepare.main(["--out", "data/prepared"]) == 0
    summary = json.loads((course / "data/prepared/summary.json").read_text())
    patients = _split_patients(course / "data/prepared/index.csv")
    assert patients["val"] and not patients["val"] & patients["train"]
    assert summary["patients"]["val_and_train"] == 0
    assert "one eye in val and the other in train" not in capsys.readouterr().err
    val = [line.split(",")[1] for line in (course / "data/prepared/index.csv").read_text().split()[1:]]
    val = [image for image in val if image.rsplit("_", 1)[0] in patients["val"]]
    listed_train = {name for name, _ in TRAIN}
    two_eyed = {p for p in patients["val"] if f"{p}_left" in listed_train and f"{p}_right" in listed_train}
    assert two_eyed and all(f"{p}_left" in val and f"{p}_right" in val for p in two_eyed)
    # The lists' test split is untouched: straddling patients are still counted and warned of.
    assert summary["patients"]["test_and_train"] == 4
    assert summary["splits"]["test"]["count"] == len(TEST)


def test_names_without_patients_keep_the_validation_split_per_image(tmp_path, monkeypatch):
    _course(
        tmp_path / "course",
        [(f"img{i}", i % 5) for i in range(20)],
        [(f"img{i}", i % 5) for i in range(20, 25)],
    )
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, data={"root": "course", "val_fraction": 0.25})
    assert prepare.main(["--out", "data/prepared"]) == 0
    rows = [line.split(",") for line in (tmp_path / "data/prepared/index.csv").read_text().split()[1:]]
    train = [Record(image, int(label)) for split, image, label in rows if split in ("train", "val")]
    expected = split_validation(sorted(train, key=lambda r: int(r.image[3:])), 0.25, seed=0)[1]
    assert sorted(image for split, image, _ in rows if split == "val") == sorted(r.image for r in expected)


def test_prepare_split_by_patients_leaves_none_on_both_sides(course, capsys):
    write_params(course, data={"root": "course", "split": "patients", "val_fraction": 0.3})
    assert prepare.main(["--out", "data/prepared"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads((course / "data/prepared/summary.json").read_text())
    counts = summary["patients"]
    assert counts["split"] == "patients"
    assert counts["test_and_train"] == counts["val_and_train"] == 0 and "warning" not in err
    sizes = {name: split["count"] for name, split in summary["splits"].items()}
    assert sum(sizes.values()) == len(TRAIN) + len(TEST)
    assert abs(sizes["test"] / sum(sizes.values()) - len(TEST) / (len(TRAIN) + len(TEST))) < 0.1
    assert sizes["val"] > 0 and "data.split: patients" in out
    first = (course / "data/prepared/index.csv").read_bytes()
    assert prepare.main(["--out", "data/prepared"]) == 0
    assert (course / "data/prepared/index.csv").read_bytes() == first  # seeded by data.seed


def test_split_by_patients_on_names_without_eyes_is_an_error_naming_the_key(tmp_path, monkeypatch):
    _course(
        tmp_path / "course",
        [(f"img{i}_x", i % 5) for i in range(10)],
        [(f"img{i}_x", i % 5) for i in range(10, 15)],
    )
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, data={"root": "course", "split": "patients"})
    with pytest.raises(
        RetinopathyError,
        match=r"`data.split` is patients, but no listed image is named "
        r"<patient>_left or <patient>_right .*set data.split: lists",
    ):
        prepare.prepare(load_params("params.yaml"), tmp_path / "data/prepared")
    assert not (tmp_path / "data/prepared").exists()


# ------------------------------------------------------------------------------------------ report


def _report_with(tmp_path: Path, counts: PatientCounts | None) -> str:
    metrics = write_metrics(tmp_path)
    for arm in ("scratch", "pretrained"):
        path = metrics / f"{arm}.info.json"
        info = json.loads(path.read_text())
        if counts is None:
            info.pop("patients", None)  # an info.json written before patients were counted
        elif info["status"] == "trained":
            info["patients"] = dataclasses.asdict(counts)
        path.write_text(json.dumps(info))
    write_report(metrics, tmp_path / "plots")
    return (tmp_path / "plots/report.md").read_text()


@pytest.mark.slow
def test_the_report_names_the_leakage_of_the_course_lists(tmp_path, lab):
    counts = leakage({"train": lab.train, "val": [], "test": lab.test}, "lists")
    report = _report_with(tmp_path, counts)
    assert (
        "Patients (`data.split: lists`): train 16859, test 6322; 87.1% of the 11241 training patients "
        "with both eyes listed have one grade in both." in report
    )
    assert (
        "> **WARNING: patients on both sides of the split.** 5618 patients have one eye in test and "
        "the other in train/val" in report
    )
    assert "flattered" in report


@pytest.mark.slow
def test_the_report_of_a_split_by_patient_has_no_warning(tmp_path, lab):
    train, test = split_by_patient(lab.train, lab.test, seed=0)
    report = _report_with(tmp_path, leakage({"train": train, "val": [], "test": test}, "patients"))
    assert "Patients (`data.split: patients`): train 14050, test 3513;" in report
    assert "WARNING: patients" not in report


def test_a_report_of_metrics_from_before_the_count_is_refused_with_the_rerun(tmp_path):
    # The typed record is read whole or not at all: no report without the count, and the fix.
    with pytest.raises(
        RetinopathyError,
        match=r"scratch.info.json: the key 'patients' is missing.*"
        r"dvc repro -f evaluate@scratch",
    ):
        _report_with(tmp_path, None)
