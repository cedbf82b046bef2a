"""The `prepare` stage: check the raw data, write the index of records and a summary.

Reads the course layout at ``data.root`` (every CSV line is a record; every
image must decode), optionally holds out a stratified validation split of the
training records (``data.val_fraction``), and writes into ``data/prepared``:

- ``index.csv``: ``split,image,label`` for every record (split: train, val, test);
- ``summary.json``: counts per class and split, the majority-class baseline,
  and notes on anything that was accepted and normalised (a header row, a BOM,
  Windows line endings).

Nothing is written unless every check passes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from retinopathy.config import Params, load_params
from retinopathy.data import NUM_CLASSES, Record, check_images, class_counts, read_course_splits
from retinopathy.demo import is_demo_dataset
from retinopathy.errors import RetinopathyError
from retinopathy.files import staged_folder

SPLITS = ("train", "val", "test")


def split_validation(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out ``fraction`` of each grade (at least one where a grade has 2+ records).

    Stratified so that rare grades 3 and 4 appear in both parts; seeded, and
    independent of the order of other grades.
    """
    if fraction <= 0:
        return list(records), []
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for grade in range(NUM_CLASSES):
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


def prepare(params: Params, out: Path, workers: int = 1) -> dict[str, Any]:
    """Check the data at ``params.data.root`` and write ``index.csv`` and ``summary.json`` to ``out``.

    Raises:
        RetinopathyError: on any bad input, naming the file and line; ``out`` is then untouched.
    """
    root = Path(params.data.root)
    if not root.is_dir():
        raise RetinopathyError(
            f"{root}: data folder not found (params.yaml `data.root`); run `dvc repro demo-data` "
            "for the demo, or point data.root at the course folder (see README)"
        )
    course = read_course_splits(root)
    check_images(root, course.train + course.test, workers=workers)
    train, val = split_validation(course.train, params.data.val_fraction, params.data.seed)
    splits = {"train": train, "val": val, "test": course.test}
    summary = build_summary(str(root), splits, course.notes, is_demo_dataset(root))

    with staged_folder(out) as staging:
        with open(staging / "index.csv", "w", newline="") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["split", "image", "label"])
            for name in SPLITS:
                writer.writerows((name, r.image, r.label) for r in splits[name])
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def read_index(path: Path) -> dict[str, list[Record]]:
    """Read ``index.csv`` back into records per split (train, val, test)."""
    if not path.is_file():
        raise RetinopathyError(f"{path}: not found; run `dvc repro prepare` first")
    splits: dict[str, list[Record]] = {name: [] for name in SPLITS}
    with open(path, newline="") as stream:
        for row in csv.DictReader(stream):
            splits[row["split"]].append(Record(row["image"], int(row["label"])))
    return splits


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy prepare [--params params.yaml] [--out data/prepared]``."""
    parser = argparse.ArgumentParser(prog="retinopathy prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("--out", type=Path, default=Path("data/prepared"))
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads that check the images open")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = prepare(params, args.out, workers=args.workers)
    for name, split in summary["splits"].items():
        print(f"{name}: {split['count']} images, per grade {split['class_counts']}")
    baseline = summary["majority_baseline"]
    print(f"always grade {baseline['grade']}: {baseline['test_accuracy']:.2%} test accuracy")
    for note in summary["notes"]:
        print(f"note: {note}")
    return 0
