"""Issue 26, third round: patients and predict's inputs, through the real CLI.

- ``_Left``/``_RIGHT`` are read as eyes everywhere (prepare's split by patient, the leakage counts,
  the blend's pairs, predict), so the split and the counts agree.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import write_params
from retinopathy.cli import main as cli
from retinopathy.data.labels import SPLIT_FILES
from retinopathy.data.synthetic import render_fundus
from retinopathy.fusion.pairs import NO_PARTNER, partners

# --------------------------------------------------------------------------------------- helpers


def photo(path: Path, seed: int, grade: int = 0) -> Path:
    """A distinct colour fundus JPEG (the demo's painter), 64 px."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_fundus(grade, np.random.default_rng(seed), 64)).save(path, "JPEG", quality=92)
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``retinopathy ARGV`` in this process: the exit status, stdout and stderr."""
    capsys.readouterr()
    try:
        status = cli(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ------------------------------------------------------------------- 1. _Left / _RIGHT, everywhere


def course(root: Path, train: list[str], test: list[str]) -> Path:
    """A course layout: the four lists (grade = index % 5) and a distinct JPEG per name."""
    root.mkdir(parents=True)
    for split, names in (("train", train), ("test", test)):
        images, labels = SPLIT_FILES[split]
        (root / images).write_text("".join(f"{name}\n" for name in names))
        (root / labels).write_text("".join(f"{i % 5}\n" for i in range(len(names))))
    for seed, name in enumerate(train + test):
        photo(root / f"{name}.jpeg", seed, grade=seed % 5)
    return root


CASES = ("Left", "RIGHT", "left", "Right", "LEFT", "right")


def patient_and_eye(name: str) -> tuple[str, str]:
    """Independently of the package: the patient and the eye of ``<patient>_<eye>`` in any case."""
    patient, eye = name.rsplit("_", 1)
    return patient, eye.lower()


def test_mixed_case_eyes_are_counted_as_leakage_under_the_course_lists(tmp_path, monkeypatch, capsys):
    # Patient p<i>: one eye in train, the other in test, each written in another case.
    train = [f"p{i}_{CASES[i % 6]}" for i in range(10)]
    test = [f"p{i}_{'right' if CASES[i % 6].lower() == 'left' else 'Left'}" for i in range(6)]
    course(tmp_path / "course", train, test)
    write_params(tmp_path, data={"root": "course", "split": "lists"})
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "prepare")
    assert status == 0, err
    patients = json.loads((tmp_path / "data/prepared/summary.json").read_text())["patients"]
    assert patients["test_and_train"] == 6 and patients["test_images"] == 6  # every test patient
    assert patients["count"] == {"train": 10, "val": 0, "test": 6}
    assert "6 patients have one eye in test and the other in train/val" in " ".join(err.split())


def test_mixed_case_eyes_stay_together_under_the_split_by_patient_and_the_summary_agrees(
        tmp_path, monkeypatch, capsys):
    # 12 patients, each with one eye listed in train and the other in test, in mixed case.
    train = [f"p{i}_{CASES[i % 6]}" for i in range(12)]
    test = [f"p{i}_{'Right' if CASES[i % 6].lower() == 'left' else 'LEFT'}" for i in range(12)]
    course(tmp_path / "course", train, test)
    write_params(tmp_path, data={"root": "course", "split": "patients", "val_fraction": 0.25})
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "prepare")
    assert status == 0, err
    with open(tmp_path / "data/prepared/index.csv", newline="") as stream:
        index = list(csv.DictReader(stream))
    sides: dict[str, set[str]] = {}
    for row in index:
        sides.setdefault(patient_and_eye(row["image"])[0], set()).add(row["split"])
    assert len(sides) == 12 and all(len(split) == 1 for split in sides.values())  # nobody straddles
    patients = json.loads((tmp_path / "data/prepared/summary.json").read_text())["patients"]
    assert patients["test_and_train"] == patients["val_and_train"] == 0
    assert patients["count"] == {split: sum(split in s for s in sides.values())
                                 for split in ("train", "val", "test")}
    assert patients["train_pairs"]["pairs"] == patients["count"]["train"]  # both eyes of each, as one pair


def test_mixed_case_eyes_pair_for_the_blend_of_fuse():
    # What the `fuse` stage pairs a split's names by (training a blend is the slow tests' job).
    assert partners(["7_Left", "7_RIGHT", "8_left", "9_Right"]) == (
        [1, 0, NO_PARTNER, NO_PARTNER], [0.0, 1.0, 0.0, 1.0])
