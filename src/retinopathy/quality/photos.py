"""The verdict on a photograph file, and the two cells every predictions CSV gives it.

`predict` judges each photograph as it is stored, decoded at its own size (not the
network's copy, nor the crop of a camera's photograph): the measures take their own
analysis copy (:data:`~retinopathy.quality.measures.ANALYSIS_SIDE`), so a threshold means
the same whatever the network's size. The cells are :data:`~retinopathy.core.contract.QUALITY_COLUMNS`:
``gradable`` (``true``/``false``) and ``quality`` (the reasons, ``"; "`` between them).
"""

from __future__ import annotations

from pathlib import Path

from retinopathy.core.config import QualityThresholds
from retinopathy.core.contract import QUALITY_REASON_SEPARATOR as REASON_SEPARATOR
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.images import decode_image
from retinopathy.quality.verdict import Verdict, assess


def assess_photo(path: Path, thresholds: QualityThresholds, max_pixels: int) -> Verdict | None:
    """The verdict on the photograph in ``path``, decoded at its own size.

    Args:
        path: The image file.
        thresholds: params.yaml's ``quality.thresholds`` (or their defaults).
        max_pixels: Refuse larger images (params.yaml ``data.max_pixels``).

    Returns:
        The :class:`~retinopathy.quality.verdict.Verdict`; None when the file cannot be
        decoded, or not in the memory there is: grading it says why, in its row's ``error``.
    """
    try:
        image = decode_image(path, max_pixels=max_pixels)
        return assess(image, thresholds)
    except (RetinopathyError, MemoryError):
        return None


def quality_cells(verdict: Verdict | None) -> tuple[str, str]:
    """``gradable`` and ``quality`` of a predictions CSV's row: ``("true", "")``,
    ``("false", "blur; flare")``, or ``("", "")`` where no verdict could be drawn."""
    if verdict is None:
        return "", ""
    return ("true" if verdict.gradable else "false"), REASON_SEPARATOR.join(verdict.reasons)


def explain_verdict(verdict: Verdict) -> str:
    """The reasons of an ungradable verdict on one line: each measure, its value and its threshold."""
    return REASON_SEPARATOR.join(verdict.explain())
