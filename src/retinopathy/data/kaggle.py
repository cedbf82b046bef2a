"""Kaggle's ``trainLabels.csv`` and the train/test split of its images.

Kaggle's "Diabetic Retinopathy Detection" (EyePACS, 2015) ships ``trainLabels.csv``
(header ``image,level``). The split is either the course's own lists (their
labels must agree with ``trainLabels.csv``) or a seeded split stratified by
grade that keeps both eyes of a patient on the same side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retinopathy.core.contract import NUM_GRADES
from retinopathy.core.errors import RetinopathyError, where
from retinopathy.data.labels import (
    SPLIT_FILES,
    check_grade,
    check_name,
    parse_course_splits,
    patient_of,
    read_course_splits,
    read_lines,
)

LABELS_HEADER = ("image", "level")


def read_kaggle_labels(labels_csv: str | Path) -> dict[str, tuple[int, int]]:
    """Read and validate Kaggle's ``trainLabels.csv``.

    Args:
        labels_csv: The file, with header ``image,level`` and one ``name,grade`` per line.

    Returns:
        ``{image name: (grade, 1-based line)}`` in file order.

    Raises:
        RetinopathyError: a missing file, a wrong header, a malformed line, a
            grade outside 0-4 or a duplicated image, naming the file and line.
    """
    path = Path(labels_csv)
    if not path.is_file():
        raise RetinopathyError(f"{path}: file not found; pass Kaggle's trainLabels.csv")
    lines, _ = read_lines(path)  # BOM, CRLF and trailing blank lines are harmless here
    header = [field.strip().lower() for field in lines[0][1].split(",")] if lines else []
    if tuple(header) != LABELS_HEADER:
        found = repr(lines[0][1]) if lines else "an empty file"
        raise RetinopathyError(
            f"{where(path, lines[0][0] if lines else 1)}: expected the header "
            f"'{','.join(LABELS_HEADER)}' of Kaggle's trainLabels.csv, found {found}"
        )
    labels: dict[str, tuple[int, int]] = {}
    for number, line in lines[1:]:
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not fields[0]:
            raise RetinopathyError(f"{where(path, number)}: expected 'image,level', found {line!r}")
        name, level = fields
        check_name(path, number, name)  # the same rule the course layout's lists obey
        grade = check_grade(path, number, level)
        if name in labels:
            raise RetinopathyError(
                f"{where(path, number)}: image {name!r} is listed twice, also at line "
                f"{labels[name][1]}; delete one of the two lines"
            )
        labels[name] = (grade, number)
    if not labels:
        raise RetinopathyError(f"{path}: no images listed under the header")
    return labels


def splits_from_lists(
    split_lists: str | Path, labels: dict[str, tuple[int, int]], labels_csv: str | Path
) -> dict[str, list[str]]:
    """Take the split from the course's lists, checking them against ``trainLabels.csv``.

    Raises:
        RetinopathyError: the lists are invalid, name an image that is not in
            ``trainLabels.csv``, or give it another grade (naming both lines).
    """
    splits: dict[str, list[str]] = {}
    for split, listing in parse_course_splits(split_lists).items():  # both valid and disjoint
        for record, img_line, lab_line in zip(
            listing.records, listing.img_lines, listing.lab_lines, strict=True
        ):
            if record.image not in labels:
                raise RetinopathyError(
                    f"{where(listing.img_path, img_line)}: {record.image!r} is not in "
                    f"{labels_csv}; use split lists made for this download"
                )
            level, line = labels[record.image]
            if level != record.label:
                raise RetinopathyError(
                    f"{where(listing.lab_path, lab_line)} gives {record.image!r} grade "
                    f"{record.label} but {where(labels_csv, line)} gives grade {level}; "
                    "the split lists and trainLabels.csv disagree - fix whichever is wrong"
                )
        splits[split] = [record.image for record in listing.records]
    return splits


def lists_cover(split_lists: Path, labels: dict[str, tuple[int, int]]) -> bool:
    """Whether all four lists exist under ``split_lists`` and name only labelled images."""
    files = [split_lists / name for pair in SPLIT_FILES.values() for name in pair]
    if not all(file.is_file() for file in files):
        return False
    splits = read_course_splits(split_lists)
    return all(record.image in labels for record in splits.train + splits.test)


def stratified_split(
    labels: dict[str, tuple[int, int]], test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Seeded train/test split, stratified by grade, both eyes of a patient together.

    Patients are grouped by their worse eye's grade and ``test_fraction`` of
    each group (rounded) goes to test, so per-grade proportions match up to
    rounding and no patient's other eye leaks across the split.

    Returns:
        ``{"train": names, "test": names}``, each in ``trainLabels.csv`` order.

    Raises:
        RetinopathyError: the fraction is outside (0, 1) or leaves a split empty.
    """
    if not 0.0 < test_fraction < 1.0:
        raise RetinopathyError(f"test fraction must be between 0 and 1, got {test_fraction}")
    patients: dict[str, int] = {}
    for name, (level, _) in labels.items():
        key = patient_of(name)
        patients[key] = max(level, patients.get(key, 0))
    rng = np.random.default_rng(seed)
    test_patients: set[str] = set()
    for grade in range(NUM_GRADES):
        group = [key for key, worst in patients.items() if worst == grade]
        chosen = rng.permutation(len(group))[: round(len(group) * test_fraction)]
        test_patients.update(group[i] for i in chosen)
    test = [name for name in labels if patient_of(name) in test_patients]
    train = [name for name in labels if patient_of(name) not in test_patients]
    if not train or not test:
        raise RetinopathyError(
            f"a test fraction of {test_fraction} leaves the "
            f"{'train' if not train else 'test'} split empty with {len(labels)} images"
        )
    return {"train": train, "test": test}
