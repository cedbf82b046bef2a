"""The prepared index (``index.csv``) and summary (``summary.json``): written by `prepare`, read by the rest.

The index lists every record once with its split (train, val, test; see
``contract.INDEX_COLUMNS``), so training and evaluation read the split that
prepare checked, not the raw lists again. The summary holds the counts per
grade and split, the majority-class baseline and notes on the input
(:class:`retinopathy.core.records.PreparedSummary`, which also reads and writes it).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from retinopathy.core.contract import INDEX_COLUMNS, NUM_GRADES, SPLITS
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import (
    PREPARE_FIX,
    Duplicates,
    MajorityBaseline,
    PatientCounts,
    PreparedSummary,
    SplitCounts,
)
from retinopathy.data.labels import Record, check_name, class_counts, grade_of


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


def build_summary(
    root: str,
    splits: dict[str, list[Record]],
    notes: list[str],
    synthetic: bool,
    identical_images: Duplicates,
    patients: PatientCounts,
) -> PreparedSummary:
    """Counts per class and split, and the accuracy of always predicting the commonest grade."""
    counts = {name: class_counts(records) for name, records in splits.items()}
    majority = int(np.argmax(counts["train"]))
    test_total = len(splits["test"])
    return PreparedSummary(
        root=root,
        synthetic=synthetic,
        splits={
            name: SplitCounts(count=len(records), class_counts=counts[name])
            for name, records in splits.items()
        },
        majority_baseline=MajorityBaseline(
            grade=majority,
            test_accuracy=counts["test"][majority] / test_total,
            rule="always predict the commonest training grade",
        ),
        notes=notes,
        identical_images=identical_images,
        patients=patients,
    )


def index_text(splits: dict[str, list[Record]]) -> str:
    """The text of ``index.csv``: a header, then every record of every split, in split order."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(INDEX_COLUMNS)
    for name in SPLITS:
        writer.writerows((name, r.image, r.label) for r in splits[name])
    return text.getvalue()


def _damaged(path: Path, what: str, line: int | None = None) -> RetinopathyError:
    location = f"{path}:{line}" if line is not None else str(path)
    return RetinopathyError(
        f"{location}: {what}; the file is damaged or from another version - {PREPARE_FIX}"
    )


def _prepared_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RetinopathyError(f"{path}: not found; run `dvc repro prepare` first") from None
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None
    except OSError as error:
        raise RetinopathyError(f"{path}: cannot read it ({error.strerror})") from None


def read_index(path: Path) -> dict[str, list[Record]]:
    """Read ``index.csv`` back into records per split (train, val, test).

    Raises:
        RetinopathyError: the file is missing, or its header, a split, a name or a grade is
            not what `prepare` writes (e.g. a renamed column or merge-conflict markers); the
            message names the file and line and says to run `dvc repro -f prepare`.
    """
    splits: dict[str, list[Record]] = {name: [] for name in SPLITS}
    rows = csv.reader(io.StringIO(_prepared_text(path), newline=""))
    header = next(rows, None)
    if header is None or tuple(header) != INDEX_COLUMNS:
        raise _damaged(
            path,
            f"the header is {','.join(header or []) or 'missing'}, expected {','.join(INDEX_COLUMNS)}",
            1,
        )
    for row in rows:
        line = rows.line_num
        if len(row) != len(INDEX_COLUMNS):
            fields = ",".join(row)[:60]
            raise _damaged(path, f"{len(row)} fields where {len(INDEX_COLUMNS)} belong ({fields!r})", line)
        split, image, label = row
        if split not in splits:
            raise _damaged(path, f"split {split[:40]!r} is not one of {', '.join(SPLITS)}", line)
        try:
            check_name(path, line, image)
        except RetinopathyError:
            raise _damaged(path, f"{image[:40]!r} is not an image name", line) from None
        grade = grade_of(label)
        if grade is None:
            raise _damaged(path, f"label {label[:40]!r} is not a grade 0-{NUM_GRADES - 1}", line)
        splits[split].append(Record(image, grade))
    return splits
