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
import json
import os
from pathlib import Path
from typing import Any

from retinopathy.config import Params, load_params
from retinopathy.contract import INDEX_COLUMNS, Layout, is_demo_dataset
from retinopathy.data.dataset import check_images
from retinopathy.data.index import build_summary, index_text, split_validation
from retinopathy.data.labels import read_course_splits
from retinopathy.errors import RetinopathyError, note
from retinopathy.files import check_output_folder, holds_only, json_with, staged_folder, starts_with

# What prepare writes, as an earlier run left it: only such a folder is replaced (nothing else is deleted).
OURS = holds_only({Layout().index.name: starts_with(",".join(INDEX_COLUMNS).encode() + b"\n"),
                   Layout().summary.name: json_with("splits", "majority_baseline")})


def prepare(params: Params, out: Path, workers: int = 1) -> dict[str, Any]:
    """Check the data at ``params.data.root`` and write ``index.csv`` and ``summary.json`` to ``out``.

    ``out`` must be absent, empty, or an earlier output of prepare (:data:`OURS`),
    checked before the data are read.

    Raises:
        RetinopathyError: on any bad input, naming the file and line, or an ``out`` that
            holds anything else; ``out`` is then untouched.
    """
    check_output_folder(out, "prepare", OURS)
    root = Path(params.data.root)
    if not root.is_dir():
        raise RetinopathyError(
            f"{root}: data folder not found (params.yaml `data.root`); run `dvc repro demo-data` "
            "for the demo, or point data.root at the course folder (see README)"
        )
    course = read_course_splits(root)
    check_images(root, course.train + course.test, workers=workers, max_pixels=params.data.max_pixels)
    train, val = split_validation(course.train, params.data.val_fraction, params.data.seed)
    splits = {"train": train, "val": val, "test": course.test}
    summary = build_summary(str(root), splits, course.notes, is_demo_dataset(root))

    with staged_folder(out, "prepare", OURS) as staging:
        staged = Layout(prepared=staging)
        staged.index.write_text(index_text(splits))
        staged.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy prepare [--params params.yaml] [--out data/prepared]``."""
    parser = argparse.ArgumentParser(prog="retinopathy prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("--out", type=Path, default=Layout.prepared,
                        help="output folder, replaced as a whole: absent, empty or an earlier output "
                             f"of prepare (default: {Layout.prepared})")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads that check the images open")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    summary = prepare(params, args.out, workers=args.workers)
    for name, split in summary["splits"].items():
        print(f"{name}: {split['count']} images, per grade {split['class_counts']}")
    baseline = summary["majority_baseline"]
    print(f"always grade {baseline['grade']}: {baseline['test_accuracy']:.2%} test accuracy")
    for text in summary["notes"]:
        note(f"note: {text}")
    return 0
