"""Quality labels in EyeQ's format, matched to the photographs of a project.

EyeQ (Fu et al., MICCAI 2019) rates 28,792 EyePACS photographs Good, Usable or Reject in
``Label_EyeQ_train.csv`` and ``Label_EyeQ_test.csv``, with the columns ``,image,quality,DR_grade``
(``contract.QUALITY_HEADER``: an unnamed row number, the file's name such as ``10_left.jpeg``,
quality 0 Good, 1 Usable, 2 Reject, and the DR grade); the demo's ``quality.csv`` and the external
importers write the same format. The prepared index names a photograph without its suffix
(``10_left``), so a label's name matches with or without an image file's extension.

A label that names no photograph of the project is counted and the first few are listed
(EyeQ's files cover only part of EyePACS; a project may use a part of it), never dropped
silently; a row that is not EyeQ's format, or a second label for one photograph, is an error
naming the file and the line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from retinopathy.core.contract import NUM_GRADES, QUALITY_HEADER, QUALITY_LEVELS
from retinopathy.core.errors import RetinopathyError, where
from retinopathy.data.labels import IMAGE_SUFFIX, OTHER_EXTENSIONS, utf8_text

# The unmatched names a :class:`QualityLabels` keeps to show (the count covers them all).
UNMATCHED_SHOWN = 5
_EXTENSIONS = (IMAGE_SUFFIX, *OTHER_EXTENSIONS)


@dataclass(frozen=True)
class QualityLabels:
    """The quality labels of one file, matched to a project's photographs.

    Attributes:
        path: The label file.
        levels: Photograph name (as the index lists it) -> EyeQ quality 0 Good, 1 Usable,
            2 Reject (``contract.QUALITY_LEVELS``), for the photographs that have a label.
        rows: Label rows read.
        unmatched: Rows whose name is no photograph of the project.
        unmatched_examples: The first :data:`UNMATCHED_SHOWN` of those names, in the file's order.
        unlabelled: Photographs of the project without a label.
    """

    path: Path
    levels: dict[str, int]
    rows: int
    unmatched: int
    unmatched_examples: tuple[str, ...]
    unlabelled: int

    def level_name(self, photo: str) -> str:
        """The EyeQ level's name of ``photo`` (``Good``, ``Usable``, ``Reject``), ``""`` without a label."""
        level = self.levels.get(photo)
        return "" if level is None else QUALITY_LEVELS[level]


def stem(name: str) -> str:
    """``name`` without an image file's extension (``10_left.jpeg`` -> ``10_left``), in any case."""
    lower = name.lower()
    for extension in _EXTENSIONS:
        if lower.endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)]
    return name


def read_quality_labels(
    path: str | Path, photos: Iterable[str], key: str = "quality.labels"
) -> QualityLabels:
    """Read EyeQ-format quality labels from ``path`` and match them to ``photos``.

    Args:
        path: A CSV with EyeQ's header (``contract.QUALITY_HEADER``); a UTF-8 BOM is accepted.
        photos: The project's photograph names, as the prepared index lists them (no suffix).
        key: The params key that named the file (for messages).

    Returns:
        The matched labels, with the names that matched no photograph counted.

    Raises:
        RetinopathyError: the file is missing or not EyeQ's format (a wrong header, a row with
            another number of fields, a quality other than 0, 1 or 2, a DR grade other than empty
            or 0-4, no name), or two rows label one photograph; naming the file, the line and the fix.
    """
    path = Path(path)
    fix = (
        f"give EyeQ's columns {','.join(QUALITY_HEADER)} (quality 0 Good, 1 Usable, 2 Reject), "
        f"or set {key} to null"
    )
    if not path.is_file():
        raise RetinopathyError(
            f"{path}: file not found (params.yaml `{key}`); point {key} at a CSV in EyeQ's format "
            "(e.g. Label_EyeQ_train.csv), or set it to null"
        )
    rows = csv.reader(io.StringIO(utf8_text(path, [], fix), newline=""))
    header = next(rows, None)
    if header is None or tuple(field.strip() for field in header) != QUALITY_HEADER:
        found = ",".join(header) if header else "missing"
        raise RetinopathyError(f"{where(path, 1)}: the header is {found[:80]!r}; {fix}")
    by_stem = {stem(name): name for name in photos}
    levels: dict[str, int] = {}
    first_line: dict[str, int] = {}
    unmatched: list[str] = []
    count = 0
    for row in rows:
        line = rows.line_num
        if not row or not "".join(row).strip():
            continue  # a blank line (a trailing newline, Windows line endings) holds no label
        if len(row) != len(QUALITY_HEADER):
            raise RetinopathyError(
                f"{where(path, line)}: {len(row)} fields where {len(QUALITY_HEADER)} belong "
                f"({','.join(row)[:60]!r}); {fix}"
            )
        _, name, quality, grade = (field.strip() for field in row)
        if not name:
            raise RetinopathyError(f"{where(path, line)}: no image name; {fix}")
        if quality not in {str(level) for level in range(len(QUALITY_LEVELS))}:
            raise RetinopathyError(f"{where(path, line)}: quality {quality[:20]!r} is not 0, 1 or 2; {fix}")
        if grade and grade not in {str(g) for g in range(NUM_GRADES)}:
            raise RetinopathyError(
                f"{where(path, line)}: DR_grade {grade[:20]!r} is neither empty nor a grade 0-4; {fix}"
            )
        count += 1
        photo = by_stem.get(stem(name))
        if photo is None:
            unmatched.append(name)
            continue
        if photo in levels:
            raise RetinopathyError(
                f"{where(path, line)}: a second label for {photo} (the first is on line "
                f"{first_line[photo]}); keep one row per photograph"
            )
        levels[photo], first_line[photo] = int(quality), line
    return QualityLabels(
        path=path,
        levels=levels,
        rows=count,
        unmatched=len(unmatched),
        unmatched_examples=tuple(unmatched[:UNMATCHED_SHOWN]),
        unlabelled=len(by_stem) - len(levels),
    )
