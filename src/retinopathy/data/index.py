"""The prepared index (``index.csv``) and summary (``summary.json``): written by `prepare`, read by the rest.

The index lists every record once with its split (train, val, test; see
``contract.INDEX_COLUMNS``), so training and evaluation read the split that
prepare checked, not the raw lists again. The summary holds the counts per
grade and split, the majority-class baseline and notes on the input.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from retinopathy.contract import INDEX_COLUMNS, NUM_GRADES, SPLITS
from retinopathy.data.labels import Record, class_counts
from retinopathy.errors import RetinopathyError


def split_validation(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out ``fraction`` of each grade (at least one where a grade has 2+ records).

    Stratified so that rare grades 3 and 4 appear in both parts; seeded, and
    independent of the order of other grades.
    """
    if fraction <= 0:
        return list(records), []
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for grade in range(NUM_GRADES):
        members = [i for i, r in enumerate(records) if r.label == grade]
        take = int(round(fraction * len(members)))
        if len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)
        held.update(rng.permutation(members)[:take].tolist())
    train = [r for i, r in enumerate(records) if i not in held]
    val = [r for i, r in enumerate(records) if i in held]
    return train, val


def build_summary(root: str, splits: dict[str, list[Record]], notes: list[str],
                  synthetic: bool) -> dict[str, Any]:
    """Counts per class and split, and the accuracy of always predicting the commonest grade."""
    counts = {name: class_counts(records) for name, records in splits.items()}
    majority = int(np.argmax(counts["train"]))
    test_total = len(splits["test"])
    return {
        "root": root,
        "synthetic": synthetic,
        "splits": {
            name: {"count": len(records), "class_counts": counts[name]}
            for name, records in splits.items()
        },
        "majority_baseline": {
            "grade": majority,
            "test_accuracy": counts["test"][majority] / test_total,
            "rule": "always predict the commonest training grade",
        },
        "notes": notes,
    }


def index_text(splits: dict[str, list[Record]]) -> str:
    """The text of ``index.csv``: a header, then every record of every split, in split order."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for name in SPLITS:
        writer.writerows((name, r.image, r.label) for r in splits[name])
    return text.getvalue()


def read_index(path: Path) -> dict[str, list[Record]]:
    """Read ``index.csv`` back into records per split (train, val, test)."""
    if not path.is_file():
        raise RetinopathyError(f"{path}: not found; run `dvc repro prepare` first")
    splits: dict[str, list[Record]] = {name: [] for name in SPLITS}
    with open(path, newline="") as stream:
        for row in csv.DictReader(stream):
            splits[row["split"]].append(Record(row["image"], int(row["label"])))
    return splits


def read_summary(path: Path) -> dict[str, Any]:
    """Read ``summary.json``."""
    if not path.is_file():
        raise RetinopathyError(f"{path}: not found; run `dvc repro prepare` first")
    return json.loads(path.read_text())
