"""The verdict on a photograph file, and the two cells every predictions CSV gives it.

`predict` judges each photograph as it is stored, decoded at its own size (not the
network's copy, nor the crop of a camera's photograph): the measures take their own
analysis copy (:data:`~retinopathy.quality.measures.ANALYSIS_SIDE`), so a threshold means
the same whatever the network's size. The cells are :data:`~retinopathy.core.contract.QUALITY_COLUMNS`:
``gradable`` (``true``/``false``) and ``quality`` (the reasons, ``"; "`` between them).
With a learned assessor (``predict --quality-model``), :func:`second_opinions` gives its
view of the same measures.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from retinopathy.core.config import QualityThresholds
from retinopathy.core.contract import GRADABLE_CELLS
from retinopathy.core.contract import QUALITY_REASON_SEPARATOR as REASON_SEPARATOR
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.images import decode_image
from retinopathy.quality.learned import LearnedAssessor
from retinopathy.quality.verdict import Verdict, assess

T = TypeVar("T")


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


def _assess_file(path: Path, thresholds: QualityThresholds) -> Verdict:
    return assess(decode_image(path), thresholds)


def _in_processes(function: Callable[[Path], T], paths: Sequence[Path], workers: int, start: str) -> list[T]:
    """``function`` of each path, in order, over ``workers`` processes started by ``start``."""
    from concurrent.futures import ProcessPoolExecutor

    workers = min(workers, len(paths))
    # Chunks of photographs per task, 8 per process or more: fewer round trips, and still balanced.
    chunk = max(1, len(paths) // (8 * workers))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start)) as pool:
        return list(pool.map(function, paths, chunksize=chunk))


def assess_files(paths: Sequence[Path], thresholds: QualityThresholds, workers: int = 0) -> list[Verdict]:
    """The verdict on each photograph in ``paths``, in their order, over ``workers`` processes.

    The verdicts are the same whatever ``workers``: each photograph is judged alone. On 2 cores,
    two processes judged the demo's 800 photographs 1.9x as fast as one (BENCHMARKS.md, "Image
    quality"). The processes are forks of this one: call it where torch is not loaded (the
    `quality` stage); :func:`assess_photos` is for a process that has it.

    Args:
        paths: The image files.
        thresholds: ``quality.thresholds``.
        workers: Processes to judge them in (``data.num_workers``); 0 or 1: this one.

    Raises:
        RetinopathyError: a photograph is missing or cannot be decoded (naming it).
    """
    judge = functools.partial(_assess_file, thresholds=thresholds)
    if workers <= 1 or len(paths) < 2:
        return [judge(path) for path in paths]
    return _in_processes(judge, paths, workers, "fork")


# A process with torch loaded (predict) starts fresh helper processes ("spawn"), never copies of
# itself: a fork would copy torch's thread pools mid-state. Starting them costs about 0.7 s here
# (the imports), against 0.04 s for a fork, so predict judges photographs itself for the first
# JUDGE_HERE_S, and hands the rest to processes only when they would take longer than
# SPAWN_WORTH_S alone at that pace.
JUDGE_HERE_S = 1.0
SPAWN_WORTH_S = 1.5


def assess_photos(
    paths: Sequence[Path], thresholds: QualityThresholds, max_pixels: int, workers: int = 0
) -> list[Verdict | None]:
    """:func:`assess_photo` of each path, in order: here, or the rest over ``workers`` fresh processes.

    It judges photographs here for :data:`JUDGE_HERE_S`; if the rest would take longer than
    :data:`SPAWN_WORTH_S` at that pace, it judges them over ``workers`` processes. A camera's
    4752x3168 photograph takes 150-300 ms to decode and judge, a 512 px one 5-10 ms.

    Args:
        paths: The image files.
        thresholds: ``quality.thresholds``.
        max_pixels: ``data.max_pixels``.
        workers: Processes to judge them in (``data.num_workers``); 0 or 1: this one.
    """
    judge = functools.partial(assess_photo, thresholds=thresholds, max_pixels=max_pixels)
    if workers <= 1 or len(paths) < 2:
        return [judge(path) for path in paths]
    started = time.perf_counter()
    done = [judge(paths[0])]
    while len(done) < len(paths) and time.perf_counter() - started < JUDGE_HERE_S:
        done.append(judge(paths[len(done)]))
    rest = paths[len(done) :]
    pace = (time.perf_counter() - started) / len(done)
    if not rest or pace * len(rest) <= SPAWN_WORTH_S:
        return done + [judge(path) for path in rest]
    return done + _in_processes(judge, rest, workers, "spawn")


def cpu_workers(setting: int | str) -> int:
    """Processes for judging photographs: ``data.num_workers`` as given, or every usable core for ``auto``.

    Unlike training's DataLoader (``engine.runtime.default_workers``, none on CPU: the model's
    threads need the cores), nothing else runs while photographs are judged (the `quality`
    stage; predict, after grading), so ``auto`` uses every core.
    """
    if setting != "auto":
        return int(setting)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def quality_cells(verdict: Verdict | None) -> tuple[str, str]:
    """``gradable`` and ``quality`` of a predictions CSV's row: ``("true", "")``,
    ``("false", "blur; flare")``, or ``("", "")`` where no verdict could be drawn."""
    if verdict is None:
        return "", ""
    return GRADABLE_CELLS[verdict.gradable], REASON_SEPARATOR.join(verdict.reasons)


def explain_verdict(verdict: Verdict) -> str:
    """The reasons of an ungradable verdict on one line: each measure, its value and its threshold."""
    return REASON_SEPARATOR.join(verdict.explain())


@dataclass(frozen=True)
class SecondOpinion:
    """The learned assessor's view of one photograph, beside the verdict of the thresholds.

    Attributes:
        probability: Its P(EyeQ Reject) (``contract.LEARNED_COLUMN``).
        ungradable: Whether it is at or above the assessor's threshold.
        reasons: The measure that moved it most, as a reason (``LearnedAssessor.reasons``);
            empty when not ungradable.
    """

    probability: float
    ungradable: bool
    reasons: tuple[str, ...]


def second_opinions(
    assessor: LearnedAssessor, verdicts: Mapping[int, Verdict | None]
) -> dict[int, SecondOpinion]:
    """The learned assessor's view of every judged photograph, by the key of ``verdicts``.

    It reads the measures the thresholds' verdict was drawn from, so a photograph is measured once.
    Photographs without a verdict (unreadable) get none.

    Raises:
        RetinopathyError: a measure that is not a finite number.
    """
    judged = [(key, verdict) for key, verdict in verdicts.items() if verdict is not None]
    measures = [verdict.measures for _, verdict in judged]
    probability = assessor.probability(measures)
    flagged = assessor.ungradable(measures)
    reasons = assessor.reasons(measures)
    return {
        key: SecondOpinion(float(p), bool(f), r)
        for (key, _), p, f, r in zip(judged, probability, flagged, reasons, strict=True)
    }
