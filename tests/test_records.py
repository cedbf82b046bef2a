"""The records between stages: each read back as written; anything else refused, naming the file and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retinopathy.core import records
from retinopathy.core.records import (
    Duplicates,
    EvaluationInfo,
    MajorityBaseline,
    PreparedSummary,
    RecordError,
    Skipped,
    SplitCounts,
    TrainingStatus,
)
from retinopathy.data.labels import Record
from retinopathy.data.patients import leakage

# prepare's patient counts: patient 1's eyes on both sides of the split
PATIENTS = leakage(
    {
        "train": [Record("1_left", 0), Record("2_left", 1), Record("2_right", 1)],
        "val": [],
        "test": [Record("1_right", 0)],
    },
    "lists",
)
STATUS = TrainingStatus(
    model="resnet18",
    init="scratch",
    epochs=2,
    best_epoch=1,
    selection="test",
    select_by="accuracy",
    decoder="pillow",
    resident=False,
    weights="random",
    fingerprint="0123456789abcdef",
    history=[
        {
            "epoch": epoch,
            "train_loss": 1.5,
            "train_accuracy": 0.5,
            "train_kappa": 0.0,
            "test_loss": 1.25,
            "test_accuracy": accuracy,
            "test_kappa": -0.25,
        }
        for epoch, accuracy in ((1, 0.5), (2, 0.25))
    ],
)
INFO = EvaluationInfo(
    model="resnet18",
    init="scratch",
    weights="random",
    data="data/demo",
    synthetic=True,
    selection="test",
    select_by="accuracy",
    selection_rule="epoch with the highest test accuracy",
    tta="none",
    epochs=2,
    test_size=12,
    decoder="pillow",
    trained_with_decoder="pillow",
    fingerprint="0123456789abcdef",
    numerics={"portable": False},
    patients=PATIENTS,
)
SKIPPED = Skipped(model="resnet18", init="pretrained", reason="offline", fix="get the weights")
SUMMARY = PreparedSummary(
    root="data/demo",
    synthetic=True,
    splits={
        "train": SplitCounts(10, [6, 1, 1, 1, 1]),
        "val": SplitCounts(0, [0] * 5),
        "test": SplitCounts(4, [3, 1, 0, 0, 0]),
    },
    majority_baseline=MajorityBaseline(0, 0.75, "always predict the commonest grade"),
    notes=["a header row"],
    identical_images=Duplicates(
        groups=0, images=0, across_splits=0, within_a_split=0, different_grades=0, examples=[]
    ),
    patients=PATIENTS,
)


def _write_summary(path: Path, summary: PreparedSummary) -> None:
    path.write_text(records.summary_text(summary))


@pytest.mark.parametrize(
    ("record", "write", "read"),
    [
        (STATUS, records.write_status, lambda path: records.read_status(path, "scratch")),
        (SKIPPED, records.write_status, lambda path: records.read_status(path, "pretrained")),
        (INFO, records.write_info, lambda path: records.read_info(path, "scratch")),
        (SKIPPED, records.write_info, lambda path: records.read_info(path, "pretrained")),
        (SUMMARY, _write_summary, records.read_summary),
    ],
)
def test_each_record_reads_back_as_written_with_its_version_first(tmp_path, record, write, read):
    path = tmp_path / "record.json"
    write(path, record)
    assert read(path) == record
    assert next(iter(json.loads(path.read_text()))) == "version"


def _damaged(tmp_path: Path, change) -> Path:
    path = tmp_path / "summary.json"
    raw = json.loads(records.summary_text(SUMMARY))
    change(raw)
    path.write_text(json.dumps(raw))
    return path


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda raw: raw.pop("version"), "written before records were versioned"),
        (lambda raw: raw.update(version=records.SUMMARY_VERSION + 1), "format version 2"),
        (lambda raw: raw.pop("notes"), "the key 'notes' is missing"),
        (lambda raw: raw.update(eyes=3), "the key(s) 'eyes', which a PreparedSummary does not"),
        (
            lambda raw: raw["splits"]["test"].update(count="4"),
            "'splits.test.count' is \"4\", not of type int",
        ),
        (lambda raw: raw["majority_baseline"].update(test_accuracy=True), "not of type float"),
        (lambda raw: raw["majority_baseline"].update(test_accuracy=75), "not a fraction"),
    ],
)
def test_a_summary_of_another_version_or_shape_is_refused_whole_with_the_fix(tmp_path, change, words):
    path = _damaged(tmp_path, change)
    with pytest.raises(RecordError) as caught:
        records.read_summary(path)
    assert str(caught.value).startswith(f"{path}: ") and words in str(caught.value)
    assert "dvc repro -f prepare" in str(caught.value)


def test_an_info_of_neither_kind_names_the_evaluate_stage_to_rerun(tmp_path):
    path = tmp_path / "scratch.info.json"
    path.write_text(json.dumps({"version": records.INFO_VERSION, "status": "done"}))
    with pytest.raises(RecordError, match=r"its `status` is 'done'.*dvc repro -f evaluate@scratch"):
        records.read_info(path, "scratch")
    with pytest.raises(RecordError, match=r"not found; run `dvc repro evaluate@scratch` first"):
        records.read_info(tmp_path / "missing.json", "scratch")
