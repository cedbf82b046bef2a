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
from retinopathy.contract import Layout, is_demo_dataset
from retinopathy.data.index import build_summary, index_text, split_validation
from retinopathy.data.labels import read_course_splits
from retinopathy.errors import RetinopathyError, note
from retinopathy.files import staged_folder


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
    from retinopathy.data.dataset import check_images  # imports torch: here, so that --help is instant

    course = read_course_splits(root)
    check_images(root, course.train + course.test, workers=workers, max_pixels=params.data.max_pixels)
    train, val = split_validation(course.train, params.data.val_fraction, params.data.seed)
    splits = {"train": train, "val": val, "test": course.test}
    summary = build_summary(str(root), splits, course.notes, is_demo_dataset(root))

    with staged_folder(out) as staging:
        staged = Layout(prepared=staging)
        staged.index.write_text(index_text(splits))
        staged.summary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy prepare [--params params.yaml] [--out data/prepared]``."""
    parser = argparse.ArgumentParser(prog="retinopathy prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", metavar="FILE",
                        help="The parameters file (default: params.yaml).")
    parser.add_argument("--out", type=Path, default=Layout.prepared, metavar="DIR",
                        help=f"The output folder, replaced as a whole (default: {Layout.prepared}).")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="Threads that check the images open (default: the CPU count, at most 4).")
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
