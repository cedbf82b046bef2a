"""The screening files of one arm: written by `evaluate`, read back and checked for the report.

``metrics/<arm>.screening.json`` (:func:`retinopathy.evaluation.screening.record`: every
figure per image and per patient with its bootstrap interval, the operating
points, the calibration error), ``metrics/roc/<arm>_image.csv`` and
``<arm>_patient.csv`` (the ROC curve of referable DR, ``contract.ROC_COLUMNS``)
and ``metrics/reliability/<arm>.csv`` (the reliability diagram's non-empty
bins, ``contract.RELIABILITY_COLUMNS``). A skipped arm gets ``{}`` and header-only CSVs.
The `fuse` stage writes the same files of the grades given with both eyes
(``contract.Layout.fused``), through the same writer.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinopathy.core.contract import (
    LEVELS,
    REFERABLE_GRADE,
    RELIABILITY_COLUMNS,
    ROC_COLUMNS,
    ScreeningFiles,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import csv_text, json_text, write_together
from retinopathy.core.records import (
    LevelFigures,
    ScreeningRecord,
    check_screening,
    read_json_object,
    read_working_tree,
    screening_data,
)
from retinopathy.evaluation.screening import FIGURES, Scored, calibration, per_patient, roc_points

# The screening file's reader (core/records.py) names the figures as fields: the same list as the writer's.
if not set(FIGURES) <= {field.name for field in dataclasses.fields(LevelFigures)}:
    raise ImportError("core/records.py: LevelFigures lacks a figure of evaluation/screening.py's FIGURES")

EVALUATE_FIX = "run `dvc repro evaluate` first"
FUSE_FIX = "run `dvc repro fuse` first"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


DECIMALS = 4  # of the screening JSON's figures (the predictions CSV keeps 6)


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return round(value, DECIMALS) if isinstance(value, float) else value


def screening_contents(
    files: ScreeningFiles, record: ScreeningRecord | None, test: Scored | None, probabilities: bool
) -> dict[Path, str]:
    """The texts of the arm's screening JSON, ROC curves and reliability bins (a skipped arm: ``{}``,
    headers), by file: for the stage to write with its other outputs (``files.write_together``)."""
    contents: dict[Path, str] = {}
    for level in LEVELS:
        rows: list[list[str]] = []
        if test is not None:
            chosen = test if level == "image" else per_patient(test)
            rows = [
                [_number(f), _number(t), _number(h)]
                for f, t, h in roc_points(chosen.actual >= REFERABLE_GRADE, chosen.referable)
            ]
        contents[files.roc(level)] = csv_text(list(ROC_COLUMNS), rows)
    bins: list[list[Any]] = []
    if test is not None and probabilities:
        _, found = calibration(test.actual >= REFERABLE_GRADE, test.referable)
        # Empty bins are left out (they have no mean): DVC's plot and the figure draw the others.
        bins = [
            [_number(b.low), _number(b.high), b.count, _number(b.mean_probability), _number(b.observed)]
            for b in found
            if b.count
        ]
    contents[files.reliability] = csv_text(list(RELIABILITY_COLUMNS), bins)
    contents[files.screening] = json_text(files.screening, _rounded(screening_data(record) if record else {}))
    return contents


def write_screening(
    files: ScreeningFiles, record: ScreeningRecord | None, test: Scored | None, probabilities: bool
) -> None:
    """Write :func:`screening_contents`, all of them or none."""
    write_together(screening_contents(files, record, test, probabilities))


@dataclass(frozen=True)
class Screening:
    """One trained arm's screening files, read back and checked.

    ``record`` is the JSON as read, once :func:`~retinopathy.core.records.check_screening` has found
    it a whole :class:`~retinopathy.core.records.ScreeningRecord`: the report reads it as plain data.
    """

    record: dict[str, Any]
    roc: dict[str, pd.DataFrame]  # level -> fpr, tpr, threshold
    reliability: pd.DataFrame  # RELIABILITY_COLUMNS; no rows for the regression head


def _csv(path: Path, columns: tuple[str, ...], fix: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.StringIO(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise RetinopathyError(f"{path}: file not found: {fix}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RetinopathyError(f"{path}: not a readable CSV ({error}): {fix}") from None
    if tuple(frame.columns) != columns:
        raise RetinopathyError(
            f"{path}: the header is {','.join(map(str, frame.columns))}, expected {','.join(columns)}: {fix}"
        )
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise RetinopathyError(f"{path}: a value is not a number: {fix}") from None
    if not np.isfinite(values).all():  # the writer leaves no cell empty, and writes no NaN or infinity
        raise RetinopathyError(f"{path}: a value is empty, NaN or infinite: {fix}")
    return frame


def load_screening(files: ScreeningFiles, fix: str = EVALUATE_FIX) -> Screening:
    """Read and check a trained arm's screening files (``fix``: the stage that writes them).

    Raises:
        RetinopathyError: a file is missing or malformed (the message names it).
    """
    raw = read_json_object(files.screening, read_working_tree, fix, fix)
    check_screening(files.screening, raw, fix)  # the whole record, or a RecordError naming what is wrong
    roc = {level: _csv(files.roc(level), ROC_COLUMNS, fix) for level in LEVELS}
    return Screening(raw, roc, _csv(files.reliability, RELIABILITY_COLUMNS, fix))
