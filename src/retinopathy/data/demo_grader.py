"""The demo's grader: the grade a human grader writes down for a painted eye, disagreement included.

The painter (:mod:`retinopathy.data.synthetic`) knows each eye's true grade; real
label files hold one grader's opinion of it. Graders disagree. Krause et al. 2018
(Ophthalmology) measured quadratic-weighted kappa 0.80-0.91 among graders and an
adjudicated reference; of the disagreements, 36% were missed microaneurysms and 20%
artefacts taken for lesions. The demo's labels are drawn through :class:`Grader`, a
confusion matrix of three numbers:

- ``misses``: the share of mild eyes (grade 1: microaneurysms only) called healthy;
- ``slips``: the share of the other eyes with retinopathy given a neighbouring grade,
  half one grade lower and half one higher (grade 4 only lower; a mild eye only
  higher, since lower is a miss);
- ``artefacts``: the share of healthy eyes called mild (an artefact taken for a
  microaneurysm).

With the course's grade mix and the defaults of params.yaml (0.6, 0.35, 0.02) one
grader's labels agree with the painted grades at quadratic kappa about 0.93, two such
graders with each other at about 0.88, and missed microaneurysms are about a third of
the disagreements (tests/test_demo_dataset.py measures them on drawn labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retinopathy.core.contract import NUM_GRADES
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import csv_text

MILD = 1  # the grade whose only sign is microaneurysms
# contract.DEMO_TRUTH: per photo its name, its split, the painted grade, the grader's (the label
# lists'), and what the camera did (EyeQ quality 0-2, the fault's name or empty, its strength).
TRUTH_COLUMNS = ("image", "split", "grade", "label", "quality", "fault", "strength")


@dataclass(frozen=True)
class Grader:
    """How a grader's grade differs from the true one (see the module's docstring).

    The shares are probabilities; params.yaml's bounds on them (``demo.grader_*``) are
    config.py's.

    Attributes:
        misses: Share of grade-1 eyes called 0 (missed microaneurysms).
        slips: Share of the eyes with retinopathy given a neighbouring grade.
        artefacts: Share of healthy eyes called 1.
    """

    misses: float = 0.0
    slips: float = 0.0
    artefacts: float = 0.0

    def __post_init__(self) -> None:
        for name, value in (("misses", self.misses), ("slips", self.slips), ("artefacts", self.artefacts)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise RetinopathyError(f"demo grader: {name} must be a share from 0 to 1, got {value!r}")
        if self.misses + self.slips / 2 > 1:  # a mild eye is missed or slips up, never both
            raise RetinopathyError(
                f"demo grader: misses + slips / 2 must be at most 1 (a mild eye's chances), got "
                f"{self.misses} + {self.slips} / 2"
            )

    @property
    def exact(self) -> bool:
        """Whether every label is the true grade (no disagreement at all)."""
        return self.misses == 0 and self.slips == 0 and self.artefacts == 0

    def confusion(self) -> np.ndarray:
        """P(label | true grade): float64 [5, 5], rows the true grade, each row summing to 1."""
        half = self.slips / 2
        matrix = np.zeros((NUM_GRADES, NUM_GRADES))
        for grade in range(NUM_GRADES):
            down = self.misses if grade == MILD else half if grade > MILD else 0.0
            up = self.artefacts if grade == 0 else half if grade < NUM_GRADES - 1 else 0.0
            if grade > 0:
                matrix[grade, grade - 1] = down
            if grade < NUM_GRADES - 1:
                matrix[grade, grade + 1] = up
            matrix[grade, grade] = 1.0 - down - up
        return matrix

    def grade(self, truth: int, rng: np.random.Generator) -> int:
        """The grader's grade of an eye whose true grade is ``truth``.

        Draws one number from ``rng`` whatever the settings, so the draws of one
        photo never depend on another's.
        """
        if truth not in range(NUM_GRADES):
            raise RetinopathyError(f"demo grader: a true grade must be 0-4, got {truth!r}")
        row = self.confusion()[truth]
        # The inverse of the row's cumulative sum at one uniform draw; min() guards against
        # a cumulative sum that rounds to just below 1.
        return min(int(np.searchsorted(np.cumsum(row), rng.random(), side="right")), NUM_GRADES - 1)

    def describe(self, truth: Sequence[int], labels: Sequence[int], where: str) -> list[str]:
        """Lines for a README: what the labels are, and how many differ from ``truth`` (kept in ``where``)."""
        pairs = list(zip(truth, labels, strict=True))
        differ = sum(t != g for t, g in pairs)
        missed = sum(t == MILD and g == MILD - 1 for t, g in pairs)
        painted = np.bincount(list(truth), minlength=NUM_GRADES).tolist()
        return [
            "The labels are ONE GRADER'S grades, not the truth. Like human graders, this one misses",
            f"the microaneurysms of {self.misses:.0%} of mild eyes, gives {self.slips:.0%} of the other eyes "
            "with retinopathy",
            f"a neighbouring grade and calls {self.artefacts:.0%} of healthy eyes mild (demo.grader_*). Here "
            f"{differ} of {len(pairs)}",
            f"labels differ from the painted grade ({missed} of them missed microaneurysms). {where}",
            "holds each image's painted grade (column grade) beside its label, and its camera fault.",
            f"Painted grades 0-4: {', '.join(str(n) for n in painted)}.",
        ]


def truth_text(rows: Sequence[Sequence[object]]) -> str:
    """The text of ``contract.DEMO_TRUTH``: :data:`TRUTH_COLUMNS`, one row per photo."""
    return csv_text(list(TRUTH_COLUMNS), rows)
