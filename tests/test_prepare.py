"""The prepare stage: index and summary, the validation split, and no output on bad input."""

from __future__ import annotations

import json

import pytest

from conftest import write_params
from retinopathy.core.config import load_params
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.index import read_index, split_validation
from retinopathy.data.labels import Record
from retinopathy.stages import prepare


def test_index_and_summary(tiny_project):
    summary = json.loads((tiny_project / "data/prepared/summary.json").read_text())
    splits = read_index(tiny_project / "data/prepared/index.csv")
    assert len(splits["train"]) == 40 and len(splits["test"]) == 12 and splits["val"] == []
    assert summary["splits"]["test"]["count"] == 12 and summary["synthetic"] is True
    test_counts = summary["splits"]["test"]["class_counts"]
    assert summary["majority_baseline"]["grade"] == 0
    assert summary["majority_baseline"]["test_accuracy"] == pytest.approx(test_counts[0] / 12)


def test_validation_split_is_stratified_seeded_and_disjoint():
    grades = [0] * 60 + [1] * 20 + [2] * 10 + [3] * 3 + [4] * 2
    records = [Record(f"img{i}", grade) for i, grade in enumerate(grades)]
    train, val = split_validation(records, 0.2, seed=1)
    assert len(train) + len(val) == len(records) and not {r.image for r in train} & {r.image for r in val}
    val_grades = [r.label for r in val]
    assert val_grades.count(0) == 12 and val_grades.count(1) == 4 and val_grades.count(2) == 2
    assert val_grades.count(3) == 1 and val_grades.count(4) == 1  # rare grades on both sides
    assert split_validation(records, 0.2, seed=1) == (train, val)
    assert split_validation(records, 0.2, seed=2) != (train, val)


def test_accepted_quirks_are_noted_in_the_summary(tiny_project):
    labels = tiny_project / "data/demo/train_label.csv"
    images = tiny_project / "data/demo/train_img.csv"
    labels.write_bytes(b"level\r\n" + labels.read_bytes().replace(b"\n", b"\r\n"))
    images.write_bytes(b"image\r\n" + images.read_bytes().replace(b"\n", b"\r\n"))
    summary = prepare.prepare(load_params(tiny_project / "params.yaml"), tiny_project / "data/prepared")
    assert summary.splits["train"].count == 40  # the header is not an image; no image dropped
    notes = " ".join(summary.notes).lower()
    assert "header" in notes and "crlf" in notes


def test_bad_input_leaves_the_previous_output_untouched(tiny_project):
    index = tiny_project / "data/prepared/index.csv"
    before = index.read_bytes()
    first_image = (tiny_project / "data/demo/test_img.csv").read_text().splitlines()[0]
    (tiny_project / f"data/demo/{first_image}.jpeg").unlink()
    with pytest.raises(RetinopathyError, match=rf"{first_image}\.jpeg"):
        prepare.main([])
    assert index.read_bytes() == before
    assert sorted(p.name for p in (tiny_project / "data").iterdir()) == ["demo", "prepared"]


def test_missing_root_says_how_to_fix(tiny_project):
    write_params(tiny_project, data={"root": "data/nowhere"})
    with pytest.raises(RetinopathyError, match=r"data/nowhere: data folder not found.*data\.root"):
        prepare.main([])
