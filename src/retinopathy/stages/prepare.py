"""The `prepare` stage: check the raw data, write the index of records and a summary.

Reads the course layout at ``data.root`` (every CSV line is a record; every
image must decode), with ``data.split: patients`` re-splits the listed images
by patient (:mod:`retinopathy.data.patients`), optionally holds out a
stratified validation split of the training records (``data.val_fraction``;
by patient whenever the names give patients), and writes into ``data/prepared``:

- ``index.csv``: ``split,image,label`` for every record (split: train, val, test);
- ``summary.json``: counts per class and split, the majority-class baseline,
  notes on anything that was accepted and normalised (a header row, a BOM,
  Windows line endings), and ``identical_images``: the same photograph listed
  under several names (identical bytes), within a split or across splits; and
  ``patients``: patients per split and those with eyes on both sides of a split.

Identical images are a warning, not an error: the course's official split lists
define the lab protocol and cannot be changed to run it, so the command names them,
counts them in the summary (the test accuracy then includes images the network
trained on) and says how to remove them. So are patients with one eye in test and
the other in train (the course's lists hold thousands): a warning that names the
effect and the fix (``data.split: patients``). An image smaller than
``data.images.MIN_IMAGE_SIDE`` a side is refused, as is (with ``data.image_size:
null``) a size that differs from the others', or a ``data.val_fraction`` that leaves
no training or no validation image.

Nothing is written unless every check passes.
"""

from __future__ import annotations

import os
from pathlib import Path

from retinopathy.core.config import Params, cli_positive_int
from retinopathy.core.contract import INDEX_COLUMNS, Layout, is_demo_dataset
from retinopathy.core.errors import RetinopathyError, note, warn
from retinopathy.core.files import check_output_folder, holds_only, json_with, staged_folder, starts_with
from retinopathy.core.records import Duplicates, PreparedSummary, summary_text
from retinopathy.data.index import build_summary, index_text
from retinopathy.data.labels import Record, read_course_splits
from retinopathy.data.patients import (
    check_named_by_patient,
    hold_out_patients,
    hold_out_validation,
    leakage,
    leakage_warning,
    split_by_patient,
)
from retinopathy.pipeline.options import stage_params, stage_parser

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = ("data.root", "data.image_size", "data.val_fraction", "data.seed", "data.max_pixels", "data.split")

# What prepare writes, as an earlier run left it: only such a folder is replaced (nothing else is deleted).
OURS = holds_only(
    {
        Layout().index.name: starts_with(",".join(INDEX_COLUMNS).encode() + b"\n"),
        Layout().summary.name: json_with("splits", "majority_baseline"),
    }
)


def prepare(params: Params, out: Path, workers: int = 1) -> PreparedSummary:
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
    # the image decoders: imported here, so that --help is instant
    from retinopathy.data.checks import check_images, check_one_size, duplicates_summary, identical_images

    course = read_course_splits(root)
    splits = _splits(params, course.train, course.test)  # before the images: a bad setting fails fast
    _check_split_sizes(params, len(splits["train"]) + len(splits["val"]), splits["train"], splits["val"])
    records = course.train + course.test
    checked = check_images(root, records, workers=workers, max_pixels=params.data.max_pixels)
    facts = {record.image: fact for record, fact in zip(records, checked, strict=True)}
    if params.data.image_size is None:
        check_one_size(root, records, facts)
    duplicates = duplicates_summary(identical_images(splits, facts))
    notes = [*course.notes, *([_duplicates_note(duplicates)] if duplicates.groups else [])]
    summary = build_summary(
        str(root), splits, notes, is_demo_dataset(root), duplicates, leakage(splits, params.data.split)
    )

    with staged_folder(out, "prepare", OURS) as staging:
        staged = Layout(prepared=staging)
        staged.index.write_text(index_text(splits))
        staged.summary.write_text(summary_text(summary))
    return summary


def _splits(params: Params, train: list[Record], test: list[Record]) -> dict[str, list[Record]]:
    """train, val and test: the lists' (``data.split: lists``) or re-split by patient (``patients``)."""
    data = params.data
    if data.split == "lists":
        train, val = hold_out_validation(train, data.val_fraction, data.seed)
        return {"train": train, "val": val, "test": test}
    check_named_by_patient([*train, *test], params.source)
    train, test = split_by_patient(train, test, data.seed)
    train, val = hold_out_patients(train, data.val_fraction, data.seed)
    return {"train": train, "val": val, "test": test}


def _check_split_sizes(params: Params, listed: int, train: list, val: list) -> None:
    """Refuse a ``data.val_fraction`` that leaves the training split (or the validation split) empty."""
    fraction = params.data.val_fraction
    if not train:
        raise RetinopathyError(
            f"{params.source}: `data.val_fraction` {fraction} holds out all {listed} training images "
            "(a grade with a single image goes to validation whole), leaving none to train on; lower "
            "data.val_fraction (or set 0), or list more training images"
        )
    if fraction > 0 and not val:
        raise RetinopathyError(
            f"{params.source}: `data.val_fraction` {fraction} holds out none of the {listed} training "
            "images, so there is no validation split to pick the epoch on; raise data.val_fraction, "
            "or set it to 0 to pick the epoch on the test split"
        )


def _duplicates_note(counts: Duplicates) -> str:
    """Words for summary.json's notes and the warning: the same photograph under several names."""
    examples = "; ".join(" = ".join(group) for group in counts.examples[:3])
    return (
        f"{counts.images} listed images are {counts.groups} photographs under more than one name "
        f"(identical bytes): {counts.across_splits} across splits (the test measures images the "
        f"network trained on), {counts.within_a_split} within one split (counted twice), "
        f"{counts.different_grades} with different grades; e.g. {examples} - see `identical_images` "
        "in summary.json; remove one of each from the split lists to fix it"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy prepare [--params params.yaml] [--out data/prepared]``."""
    parser = stage_parser("retinopathy prepare", __doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Layout.prepared,
        metavar="DIR",
        help="The output folder, replaced as a whole: absent, empty or an earlier output "
        f"of prepare (default: {Layout.prepared}).",
    )
    parser.add_argument(
        "--workers",
        type=cli_positive_int,
        default=min(4, os.cpu_count() or 1),
        help="Threads that check the images open (default: the CPU count, at most 4).",
    )
    args = parser.parse_args(argv)
    params = stage_params(args)
    summary = prepare(params, args.out, workers=args.workers)
    for name, split in summary.splits.items():
        print(f"{name}: {split.count} images, per grade {split.class_counts}")
    patients = summary.patients
    print(
        "patients: "
        + ", ".join(f"{name} {n}" for name, n in patients.count.items())
        + f" (data.split: {patients.split})"
    )
    baseline = summary.majority_baseline
    print(f"always grade {baseline.grade}: {baseline.test_accuracy:.2%} test accuracy")
    identical = summary.identical_images
    duplicates = _duplicates_note(identical) if identical.groups else None
    for text in summary.notes:
        if text != duplicates:
            note(f"note: {text}")
    if duplicates:
        warn(duplicates)
    leaked = leakage_warning(patients)
    if leaked:
        warn(leaked)
    return 0
