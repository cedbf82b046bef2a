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

import io
import json
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
from retinopathy.core.files import write_csv_atomic, write_json_atomic
from retinopathy.evaluation.screening import FIGURES, Scored, calibration, per_patient, roc_points

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


def write_screening(files: ScreeningFiles, record: dict[str, Any] | None, test: Scored | None,
                    probabilities: bool) -> None:
    """Write the arm's screening JSON, ROC curves and reliability bins (a skipped arm: ``{}``, headers)."""
    for level in LEVELS:
        rows: list[list[str]] = []
        if test is not None:
            chosen = test if level == "image" else per_patient(test)
            rows = [[_number(f), _number(t), _number(h)]
                    for f, t, h in roc_points(chosen.actual >= REFERABLE_GRADE, chosen.referable)]
        write_csv_atomic(files.roc(level), list(ROC_COLUMNS), rows)
    bins: list[list[Any]] = []
    if test is not None and probabilities:
        _, found = calibration(test.actual >= REFERABLE_GRADE, test.referable)
        # Empty bins are left out (they have no mean): DVC's plot and the figure draw the others.
        bins = [[_number(b.low), _number(b.high), b.count, _number(b.mean_probability), _number(b.observed)]
                for b in found if b.count]
    write_csv_atomic(files.reliability, list(RELIABILITY_COLUMNS), bins)
    write_json_atomic(files.screening, _rounded(record or {}))


@dataclass(frozen=True)
class Screening:
    """One trained arm's screening files, read back and checked."""

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
        raise RetinopathyError(f"{path}: the header is {','.join(map(str, frame.columns))}, expected "
                               f"{','.join(columns)}: {fix}")
    return frame


def check_record(path: Path, record: Any, fix: str = EVALUATE_FIX) -> dict[str, Any]:
    """``record`` if it holds every figure per level, each a number or null, else a RetinopathyError."""
    if not isinstance(record, dict) or not all(level in record for level in LEVELS):
        raise RetinopathyError(f"{path}: expected the screening figures per {' and '.join(LEVELS)}: "
                               f"{fix}")
    for level in LEVELS:
        for key in FIGURES:
            entry = record[level].get(key)
            if not isinstance(entry, dict) or "value" not in entry:
                raise RetinopathyError(f"{path}: '{level}.{key}' is missing: {fix}")
            for part in ("value", "low", "high"):
                value = entry.get(part)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                          or not np.isfinite(value)):
                    raise RetinopathyError(f"{path}: '{level}.{key}.{part}' is {value!r}, expected a number "
                                           f"or null: {fix}")
    return record


def load_screening(files: ScreeningFiles, fix: str = EVALUATE_FIX) -> Screening:
    """Read and check a trained arm's screening files (``fix``: the stage that writes them).

    Raises:
        RetinopathyError: a file is missing or malformed (the message names it).
    """
    try:
        record = json.loads(files.screening.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RetinopathyError(f"{files.screening}: file not found: {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RetinopathyError(f"{files.screening}: not valid JSON ({error}): {fix}") from None
    record = check_record(files.screening, record, fix)
    roc = {level: _csv(files.roc(level), ROC_COLUMNS, fix) for level in LEVELS}
    return Screening(record, roc, _csv(files.reliability, RELIABILITY_COLUMNS, fix))
