"""Issue 26, third round: patients and predict's inputs, through the real CLI.

- ``_Left``/``_RIGHT`` are read as eyes everywhere (prepare's split by patient, the leakage counts,
  the blend's pairs, predict), so the split and the counts agree.
- Two photographs are one patient's only when they are in one folder (or given as ``--pair``):
  the patient column, the patient call and the blend all follow that one rule.
- ``--pair`` refuses swapped sides, one photograph as both eyes and names without an eye, and
  is never ignored (without a blend it still makes the patient call).
- predict reads a ``.csv`` list as prepare reads it (header row, ``.jpeg`` on every name), and
  a folder's pipes, folders and dangling links named like photographs are rows with their reason,
  never opened.

No test trains: predict runs with a checkpoint of random weights and a blend written here, both
in the layouts the project writes them in.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, subprocess_env, write_params
from retinopathy.cli import main as cli
from retinopathy.data.labels import SPLIT_FILES
from retinopathy.data.synthetic import render_fundus
from retinopathy.fusion.blend import Blend, BlendRecord
from retinopathy.fusion.pairs import NO_PARTNER, partners
from retinopathy.models.build import new_model
from retinopathy.models.grader import GraderSpec

FINGERPRINT = "hardening-patients"

# --------------------------------------------------------------------------------------- helpers


def photo(path: Path, seed: int, grade: int = 0) -> Path:
    """A distinct colour fundus JPEG (the demo's painter), 64 px."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_fundus(grade, np.random.default_rng(seed), 64)).save(path, "JPEG", quality=92)
    return path


def checkpoint(path: Path) -> Path:
    """A best.pt as training writes it, with random weights: enough for `predict`."""
    torch.manual_seed(0)
    spec = GraderSpec(
        model="resnet18",
        image_size=32,
        normalize="imagenet",
        preprocess="none",
        loss="cross_entropy",
        thresholds=None,
    )
    torch.save(
        {
            "model": new_model("resnet18", num_classes=5).state_dict(),
            "spec": spec.to_dict(),
            "epoch": 1,
            "fingerprint": FINGERPRINT,
        },
        path,
    )
    return path


def blend(path: Path) -> Path:
    """A blend of that checkpoint's scores, as `fuse` saves one: this eye's grade is the other eye's."""
    model = Blend(5, 0, 5, torch.zeros(5), torch.ones(5))
    with torch.no_grad():
        weight = torch.zeros(5, 11)
        weight[:, 5:10] = 20 * torch.eye(5)  # [this eye, other eye, side] -> the other eye's scores
        model.layers[0].weight.copy_(weight)
        model.layers[0].bias.zero_()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    BlendRecord(
        "blend", "scores", "cross_entropy", None, 5, 0, FINGERPRINT, 1, "written by the test", 2, 0, state
    ).save(path)
    return path


@pytest.fixture()
def grader(tmp_path, monkeypatch) -> Path:
    """A folder (the working directory) with params.yaml, best.pt and fuse.pt."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, train={"batch_size": 2})
    checkpoint(tmp_path / "best.pt")
    blend(tmp_path / "fuse.pt")
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``retinopathy ARGV`` in this process: the exit status, stdout and stderr."""
    capsys.readouterr()
    try:
        status = cli(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def predict(capsys, *argv: str, blended: bool = True) -> tuple[int, str, list[dict[str, str]]]:
    """`retinopathy predict ARGV --checkpoint best.pt [--blend fuse.pt] --out out.csv`: status, stderr,
    rows."""
    out = Path("out.csv")
    out.unlink(missing_ok=True)
    status, _, err = run(
        capsys,
        "predict",
        *argv,
        "--checkpoint",
        "best.pt",
        *(["--blend", "fuse.pt"] if blended else []),
        "--out",
        str(out),
    )
    rows = []
    if out.exists():
        with open(out, newline="") as stream:
            rows = list(csv.DictReader(stream))
    return status, err, rows


def probabilities(row: dict[str, str]) -> list[float]:
    return [float(row[f"probability_{grade}"]) for grade in range(5)]


def by_image(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {row["image"]: row for row in rows}


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


@pytest.mark.slow
def test_mixed_case_eyes_stay_together_under_the_split_by_patient_and_the_summary_agrees(
    tmp_path, monkeypatch, capsys
):
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
    assert patients["count"] == {
        split: sum(split in s for s in sides.values()) for split in ("train", "val", "test")
    }
    assert patients["train_pairs"]["pairs"] == patients["count"]["train"]  # both eyes of each, as one pair


def test_mixed_case_eyes_pair_for_the_blend_of_fuse():
    # What the `fuse` stage pairs a split's names by (training a blend is the slow tests' job).
    assert partners(["7_Left", "7_RIGHT", "8_left", "9_Right"]) == (
        [1, 0, NO_PARTNER, NO_PARTNER],
        [0.0, 1.0, 0.0, 1.0],
    )


# ------------------------------------------------------------- 2. one patient: one folder, or --pair


@pytest.mark.slow
def test_the_same_number_in_two_folders_is_two_patients_for_the_column_the_call_and_the_blend(grader, capsys):
    photo(grader / "a/7_left.jpeg", 1, grade=4)
    photo(grader / "b/7_right.jpeg", 2)
    photo(grader / "c/8_left.jpeg", 3)
    photo(grader / "c/8_right.jpeg", 4)
    status, err, rows = predict(capsys, "a", "b", "c")
    assert status == 0, err
    rows = by_image(rows)
    for name, folder in (("a/7_left.jpeg", "a"), ("b/7_right.jpeg", "b")):
        assert rows[name]["patient"] == f"{folder}/7"  # two people: the clinics both numbered them 7
        assert rows[name]["patient_referable"] == ""  # no patient call from another person's eye
        assert rows[name]["source"] == "single-no-partner"  # nor a grade blended with it
    assert rows["c/8_left.jpeg"]["patient"] == rows["c/8_right.jpeg"]["patient"] == "c/8"
    assert {rows[f"c/8_{eye}.jpeg"]["source"] for eye in ("left", "right")} == {"fused"}
    worse = max(int(rows[f"c/8_{eye}.jpeg"]["grade"]) for eye in ("left", "right"))
    assert rows["c/8_left.jpeg"]["patient_referable"] == str(int(worse >= 2))
    # One folder, however it is spelled, is one folder.
    status, err, rows = predict(capsys, "c/8_left.jpeg", "./c/8_right.jpeg")
    assert status == 0 and {row["source"] for row in rows} == {"fused"}


def test_the_rule_is_stated_in_predict_help_and_the_readme(capsys):
    status, out, _ = run(capsys, "predict", "--help")
    help_text = " ".join(out.split())
    assert status == 0
    assert "one patient's only when they are in the same folder" in help_text
    assert "a/7_left.jpeg and b/7_right.jpeg are two people" in help_text
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "one patient's only when they are in the same folder" in readme


@pytest.mark.slow
def test_pair_joins_two_folders_and_is_used_without_a_blend_too(grader, capsys):
    photo(grader / "a/7_left.jpeg", 1)
    photo(grader / "b/9_Right.jpeg", 2)
    pair = ["--pair", "a/7_left.jpeg", "b/9_Right.jpeg"]
    status, err, rows = predict(capsys, "a/7_left.jpeg", "b/9_Right.jpeg", *pair)
    assert status == 0, err
    assert [row["source"] for row in rows] == ["fused", "fused"]
    # Without a blend (no --blend with --checkpoint) each eye is graded alone, and still paired.
    single = predict(capsys, "a/7_left.jpeg", "b/9_Right.jpeg", *pair, blended=False)[2]
    assert [row["source"] for row in single] == ["single", "single"]
    # The blend reads the other eye's scores: each fused row is softmax(20 x its partner's probabilities).
    for fused, other in zip(rows, reversed(single), strict=True):
        expected = torch.softmax(20 * torch.tensor(probabilities(other)), 0).numpy()
        assert probabilities(fused) == pytest.approx(expected, abs=1e-4)
    for result in (rows, single):
        assert [row["patient"] for row in result] == ["a/7+b/9"] * 2
        worse = max(int(row["grade"]) for row in single)
        assert [row["patient_referable"] for row in result] == [str(int(worse >= 2))] * 2
    # Without --pair the two are two patients.
    rows = predict(capsys, "a/7_left.jpeg", "b/9_Right.jpeg", blended=False)[2]
    assert [(row["patient"], row["patient_referable"]) for row in rows] == [("a/7", ""), ("b/9", "")]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("inputs", "pair", "expected"),
    [
        (
            ["7_right.jpeg", "8_left.jpeg"],
            ["7_right.jpeg", "8_left.jpeg"],
            r"--pair 7_right.jpeg 8_left.jpeg: the sides are swapped: LEFT 7_right.jpeg is named as a "
            r"right eye and RIGHT 8_left.jpeg as a left eye; give the left eye first: "
            r"--pair 8_left.jpeg 7_right.jpeg",
        ),
        (
            ["7_left.jpeg"],
            ["7_left.jpeg", "7_left.jpeg"],
            r"--pair 7_left.jpeg 7_left.jpeg: LEFT and RIGHT are one photograph \(the same file\)",
        ),
        (
            ["7_left.jpeg", "copy/7_right.jpeg"],
            ["7_left.jpeg", "copy/7_right.jpeg"],
            r"LEFT and RIGHT are one photograph \(identical bytes\); "
            r"give the patient's left eye, then its right",
        ),
        (
            ["one.jpeg", "two.jpeg"],
            ["one.jpeg", "two.jpeg"],
            r"--pair one.jpeg two.jpeg: LEFT one.jpeg does not say which eye it is .*name the photographs as "
            r"EyePACS does \(e.g. 7_left.jpeg, 7_right.jpeg\)",
        ),
        (["7_left.jpeg", "two.jpeg"], ["7_left.jpeg", "two.jpeg"], r"RIGHT two.jpeg does not say which eye"),
        (
            ["7_left.jpeg", "8_left.jpeg"],
            ["7_left.jpeg", "8_left.jpeg"],
            r"RIGHT 8_left.jpeg is named as a left eye; give one patient's left eye, then its right eye",
        ),
        (
            ["7_left.jpeg"],
            ["7_left.jpeg", "8_right.jpeg"],
            r"RIGHT 8_right.jpeg is not one of the images given to grade; give it as a PATH too",
        ),
        (
            ["7_left.jpeg", "7_left.jpeg", "8_right.jpeg"],
            ["7_left.jpeg", "8_right.jpeg"],
            r"LEFT 7_left.jpeg is given 2 times among the images to grade; give it once",
        ),
        (
            ["a/3_left.jpeg", "a/3_right.jpeg", "b/3_right.jpeg"],
            ["a/3_left.jpeg", "b/3_right.jpeg"],
            r"a/3_right.jpeg is another right eye of this patient .* the pair is ambiguous",
        ),
    ],
)
@pytest.mark.parametrize("blended", [True, False])
def test_a_pair_the_names_contradict_is_refused_before_grading(
    grader, capsys, inputs, pair, expected, blended
):
    for seed, name in enumerate(dict.fromkeys([*inputs, *pair])):
        if name != "copy/7_right.jpeg":
            photo(grader / name, seed)
    if "copy/7_right.jpeg" in inputs:
        (grader / "copy").mkdir()
        shutil.copyfile(grader / "7_left.jpeg", grader / "copy/7_right.jpeg")
    status, err, rows = predict(capsys, *inputs, "--pair", *pair, blended=blended)
    assert status == 2 and "Traceback" not in err
    assert re.search(expected, " ".join(err.split())), err
    assert not Path("out.csv").exists()  # refused before grading: nothing written


@pytest.mark.slow
def test_a_photograph_in_two_pairs_is_refused(grader, capsys):
    for seed, name in enumerate(("a/1_left.jpeg", "b/1_right.jpeg", "c/1_right.jpeg")):
        photo(grader / name, seed)
    status, err, _ = predict(
        capsys,
        "a",
        "b",
        "c",
        "--pair",
        "a/1_left.jpeg",
        "b/1_right.jpeg",
        "--pair",
        "a/1_left.jpeg",
        "c/1_right.jpeg",
    )
    assert status == 2 and "a/1_left.jpeg is in two pairs (also with b/1_right.jpeg)" in err


@pytest.mark.slow
def test_mixed_case_eyes_pair_for_the_blend_in_predict(grader, capsys):
    photo(grader / "eyes/7_Left.jpeg", 1)
    photo(grader / "eyes/7_RIGHT.jpeg", 2)
    status, err, rows = predict(capsys, "eyes")
    assert status == 0, err
    assert [(row["patient"], row["source"]) for row in rows] == [("eyes/7", "fused")] * 2
    assert rows[0]["patient_referable"] == rows[1]["patient_referable"] != ""


# ------------------------------------------------------------------------- 3. predict's inputs


@pytest.mark.slow
def test_predict_reads_a_list_as_prepare_does_header_row_and_jpeg_names(tmp_path, monkeypatch, capsys):
    root = course(tmp_path / "course", [f"p{i}_left" for i in range(10)], ["q1_left", "q1_right", "q2_left"])
    listed = root / "test_img.csv"
    listed.write_text("image\nq1_left.jpeg\nq1_right.jpeg\nq2_left.jpeg\n")
    (root / "test_label.csv").write_text("level\n0\n1\n2\n")
    write_params(tmp_path, data={"root": "course"})
    checkpoint(tmp_path / "best.pt")
    monkeypatch.chdir(tmp_path)
    status, _, err = run(capsys, "prepare")
    assert status == 0, err  # prepare accepts this list ...
    status, err, rows = predict(capsys, str(listed), blended=False)
    assert status == 0, err  # ... and so does predict, with the same reader
    assert [row["image"] for row in rows] == [
        str(root / f"{name}.jpeg") for name in ("q1_left", "q1_right", "q2_left")
    ]
    assert all(row["error"] == "" for row in rows)
    assert "header row 'image' skipped" in err and "'.jpeg' extension stripped from all 3 names" in err
    # What prepare refuses, predict refuses too, naming the line.
    listed.write_text("q1_left.jpeg\nq1_right\n")
    status, err, _ = predict(capsys, str(listed), blended=False)
    assert status == 2 and f"{listed}:1: 'q1_left.jpeg' is listed with '.jpeg' but {listed}:2" in err
    listed.write_text("q1_left\nq1_right\nq1_left\n")
    status, err, _ = predict(capsys, str(listed), blended=False)
    assert status == 2 and f"{listed}:3: image 'q1_left' is listed twice" in err


@pytest.mark.slow
def test_a_folder_s_pipes_folders_and_dangling_links_are_rows_never_opened(tmp_path):
    folder = tmp_path / "photos"
    photo(folder / "good.jpeg", 1)
    os.mkfifo(folder / "pipe.jpeg")  # opening it for reading would wait for a writer forever
    os.mkfifo(folder / "queue")
    (folder / "scan.png").mkdir()
    os.symlink(folder / "gone.jpeg", folder / "dangling.jpg")
    checkpoint(tmp_path / "best.pt")
    write_params(tmp_path, train={"batch_size": 2})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "retinopathy",
            "predict",
            "photos",
            "--checkpoint",
            "best.pt",
            "--out",
            "out.csv",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr  # three inputs could not be graded
    with open(tmp_path / "out.csv", newline="") as stream:
        rows = {Path(row["image"]).name: row for row in csv.DictReader(stream)}
    assert list(rows) == ["dangling.jpg", "good.jpeg", "pipe.jpeg", "scan.png"]
    assert rows["good.jpeg"]["error"] == "" and rows["good.jpeg"]["grade"] != ""
    assert "is a named pipe, not a regular file" in rows["pipe.jpeg"]["error"]
    assert "is a folder, not a regular file" in rows["scan.png"]["error"]
    assert "image file not found" in rows["dangling.jpg"]["error"]
    err = " ".join(result.stderr.split())
    assert "3 of 4 images could not be graded" in err
    assert "photos: 1 file(s) not graded (not .jpeg/.jpg/.png), e.g. queue" in err  # named, not silent
    assert "Traceback" not in result.stderr
