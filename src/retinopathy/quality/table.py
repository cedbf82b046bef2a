"""``metrics/quality/photos.csv`` read back: the `quality` stage's verdicts, as evaluate reads them.

The stage writes the file (``quality.survey.photos_text``); :func:`read_verdicts` reads one split's
verdicts, every row checked. This module needs neither the measures nor the learned assessor, so
evaluate reads the verdicts without them. Torch-free.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from retinopathy.core.contract import GRADABLE_CELLS, QUALITY_PHOTO_COLUMNS, QUALITY_REASON_SEPARATOR, SPLITS
from retinopathy.core.errors import RetinopathyError, where
from retinopathy.core.records import read_text_file
from retinopathy.quality.verdict import REASONS

QUALITY_FIX = "run `dvc repro quality` (or `retinopathy quality`) to write it again"


@dataclass(frozen=True)
class PhotoVerdict:
    """One photograph's verdict as ``metrics/quality/photos.csv`` holds it (``contract.QUALITY_COLUMNS``)."""

    gradable: bool
    quality: str  # the reasons joined by contract.QUALITY_REASON_SEPARATOR; empty when gradable


def read_verdicts(path: Path, split: str) -> dict[str, PhotoVerdict]:
    """The verdicts of ``split``'s photographs in ``metrics/quality/photos.csv``, by image name.

    Raises:
        RetinopathyError: the file is missing or not the `quality` stage's (its header, a split, a
            ``gradable`` that is not true or false, a reason out of ``verdict.REASONS``, reasons on a
            gradable photograph or none on an ungradable one, a photograph listed twice), naming the
            file, the line and the fix.
    """
    text = read_text_file(path, "run `dvc repro quality` first", QUALITY_FIX)
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None) or []
    if tuple(header[: len(QUALITY_PHOTO_COLUMNS)]) != QUALITY_PHOTO_COLUMNS:
        raise RetinopathyError(
            f"{where(path, 1)}: the header starts {','.join(header[:5])[:80]!r}, not "
            f"{','.join(QUALITY_PHOTO_COLUMNS)}; {QUALITY_FIX}"
        )
    out: dict[str, PhotoVerdict] = {}
    for row in rows:
        line = rows.line_num
        if len(row) != len(header):
            raise RetinopathyError(
                f"{where(path, line)}: {len(row)} fields where {len(header)} belong; {QUALITY_FIX}"
            )
        image, row_split, _, gradable, quality = row[: len(QUALITY_PHOTO_COLUMNS)]
        reasons = [reason for reason in quality.split(QUALITY_REASON_SEPARATOR) if reason]
        if (
            row_split not in SPLITS
            or gradable not in GRADABLE_CELLS
            or any(reason not in REASONS for reason in reasons)
            or (gradable == GRADABLE_CELLS[True]) == bool(reasons)
        ):
            raise RetinopathyError(
                f"{where(path, line)}: {','.join(row[:5])[:100]!r} is no verdict (split, gradable true or "
                f"false, and the reasons of an ungradable photograph from {', '.join(REASONS)}); "
                + QUALITY_FIX
            )
        if row_split != split:
            continue
        if image in out:
            raise RetinopathyError(f"{where(path, line)}: {image} is listed twice; {QUALITY_FIX}")
        out[image] = PhotoVerdict(gradable == GRADABLE_CELLS[True], quality)
    return out
