"""Ungradable photographs in the demo, as cameras make them, and their quality in EyeQ's format.

A share of a split's photos gets a camera fault of :mod:`retinopathy.quality.degrade`
(passed in by the caller as ``faults``: data/ sits below quality/ and imports nothing from it)
at the strength a screening nurse would reject (``Fault.reject``: defocus, under- and
over-exposure, the eye half out of the frame, flare), another share the same faults at
a strength she would still accept (``Fault.mild``). The faults are the library's, with
the strengths it calibrated against :mod:`retinopathy.quality.verdict`'s assessor, so
the assessor finds each rejected photo ungradable for its fault's reason and the mild
ones gradable (tests/test_demo_dataset.py checks every one).

Each photo's quality is written as EyeQ labels it (Fu et al., MICCAI 2019; columns
``contract.QUALITY_HEADER``): 0 Good (untouched), 1 Usable (a mild fault), 2 Reject
(a rejected fault). The faulted photos keep their grade in the label lists, as
EyePACS's graders graded the photos EyeQ later rejected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from retinopathy.core.contract import QUALITY_HEADER, QUALITY_LEVELS
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import csv_text
from retinopathy.data.labels import IMAGE_SUFFIX

GOOD, USABLE, REJECT = (QUALITY_LEVELS.index(level) for level in ("Good", "Usable", "Reject"))


class Fault(Protocol):
    """A camera fault as :data:`retinopathy.quality.degrade.FAULTS` holds them: its name, the
    strengths an assessor accepts (``mild``) and rejects (``reject``), and the fault itself."""

    @property
    def name(self) -> str: ...
    @property
    def mild(self) -> float: ...
    @property
    def reject(self) -> float: ...
    def __call__(self, image: np.ndarray, strength: float, seed: int = 0) -> np.ndarray: ...


@dataclass(frozen=True)
class Spoil:
    """What a camera did to one photo.

    Attributes:
        fault: The fault's name (a key of :data:`~retinopathy.quality.degrade.FAULTS`), or
            None for an untouched photo.
        strength: Its strength (0 for none).
        quality: The photo's EyeQ quality: :data:`GOOD`, :data:`USABLE` or :data:`REJECT`.
        paint: The fault that :meth:`apply` paints (None for an untouched photo).
    """

    fault: str | None
    strength: float
    quality: int
    paint: Fault | None = field(default=None, compare=False, repr=False)

    def apply(self, pixels: np.ndarray, seed: int) -> np.ndarray:
        """The photo with the fault (``seed`` draws the direction of a fault that has one)."""
        if self.paint is None:
            return pixels
        return self.paint(pixels, self.strength, seed=seed)


CLEAN = Spoil(None, 0.0, GOOD)


def plan(
    count: int, ungradable: float, usable: float, rng: np.random.Generator, faults: Mapping[str, Fault]
) -> list[Spoil]:
    """Which of ``count`` photos get a fault, which fault and how strong.

    ``round(ungradable * count)`` photos get a fault at its reject strength and
    ``round(usable * count)`` others one at its mild strength, drawn from ``rng``
    without replacement; the faults are dealt out in turn (in an order drawn from
    ``rng``), so every kind occurs as soon as there are five such photos.

    Args:
        count: Photos in the split.
        ungradable: Share made ungradable (EyeQ Reject).
        usable: Share given a mild fault (EyeQ Usable); ``ungradable + usable`` at most 1.
        rng: Source of the choice.
        faults: The faults by name (:data:`retinopathy.quality.degrade.FAULTS`); needed only when
            a photo gets one.

    Returns:
        One :class:`Spoil` per photo, in the photos' order.
    """
    rejects, mild = round(ungradable * count), round(usable * count)
    if rejects + mild > count:
        raise RetinopathyError(
            f"demo: {rejects} ungradable and {mild} usable photos of {count}: fix `demo.ungradable` "
            "and `demo.usable` in params.yaml (together at most 1)"
        )
    if rejects + mild and not faults:
        raise RetinopathyError("demo: faulted photos were asked for, but no camera faults were given")
    order = rng.permutation(count)
    kinds = [list(faults)[k] for k in rng.permutation(len(faults))]
    spoils = [CLEAN] * count
    for turn, photo in enumerate(order[:rejects].tolist()):
        fault = faults[kinds[turn % len(kinds)]]
        spoils[photo] = Spoil(fault.name, fault.reject, REJECT, fault)
    for turn, photo in enumerate(order[rejects : rejects + mild].tolist()):
        fault = faults[kinds[turn % len(kinds)]]
        spoils[photo] = Spoil(fault.name, fault.mild, USABLE, fault)
    return spoils


def quality_text(photos: Sequence[tuple[str, int, Spoil]]) -> str:
    """The text of the demo's ``quality.csv``: EyeQ's ``Label_EyeQ_*.csv`` for the demo's photos.

    Args:
        photos: (image name without extension, its label, its :class:`Spoil`) per photo.

    Returns:
        A CSV with EyeQ's header (``contract.QUALITY_HEADER``: an unnamed row number,
        ``image`` (the file's name), ``quality`` 0-2, ``DR_grade`` (the label)), one row per photo.
    """
    return csv_text(
        list(QUALITY_HEADER),
        (
            [row, f"{name}{IMAGE_SUFFIX}", spoil.quality, label]
            for row, (name, label, spoil) in enumerate(photos)
        ),
    )


def describe_quality(spoils: Sequence[Spoil], where: str) -> list[str]:
    """Lines for a README: the photos per EyeQ level and what made them so (listed in ``where``)."""
    good, usable, reject = np.bincount([spoil.quality for spoil in spoils], minlength=len(QUALITY_LEVELS))
    return [
        f"Image quality ({where}, EyeQ's format ,image,quality,DR_grade: 0 Good, 1 Usable, 2 Reject):",
        f"{good} Good, {usable} Usable (a mild camera fault), {reject} Reject (made ungradable by defocus,",
        "under- or over-exposure, the eye half out of the frame, or flare: retinopathy.quality.degrade",
        "at its reject strength). Every image keeps its grade in the label lists, as EyePACS's",
        "graders graded the photos that EyeQ later rejected.",
    ]
