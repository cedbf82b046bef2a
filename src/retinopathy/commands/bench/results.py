"""What a run records: comparisons of two measurements, and the machine and settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # timing imports torch; the options (SECTIONS) must not wait for it
    from retinopathy.commands.bench.timing import Measurement

SECTIONS = ("input", "models", "fastpath", "feed", "compile")


@dataclass
class Comparison:
    """A baseline and a candidate measured alternately; ``ratio`` = candidate / baseline."""

    section: str
    name: str
    baseline: Measurement
    candidate: Measurement
    target: float | None = None  # the smallest acceptable ratio, if there is a target
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.candidate.rate / self.baseline.rate

    @property
    def round_ratios(self) -> list[float]:
        return [c / b for c, b in zip(self.candidate.round_rates, self.baseline.round_rates, strict=True)]

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target

    def to_dict(self) -> dict[str, object]:
        return {
            "section": self.section,
            "name": self.name,
            "baseline": self.baseline.to_dict(),
            "candidate": self.candidate.to_dict(),
            "ratio": self.ratio,
            "round_ratios": self.round_ratios,
            "target_min_ratio": self.target,
            "met": self.met,
            "note": self.note,
        }


@dataclass
class BenchResult:
    """Everything one run measured, and where."""

    machine: dict[str, object]
    settings: dict[str, object]
    comparisons: list[Comparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }
