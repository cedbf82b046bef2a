"""Whether a photograph can be graded, and why not: thresholds on the measures, and the verdict.

The reasons come from one fixed vocabulary, :data:`REASONS`, in the order a verdict
lists them: the field first (without a fundus nothing else means anything), then
exposure, focus and flare. The default thresholds were checked on the real colour
fundus photograph that scikit-image ships (``skimage.data.retina()``), on all 800
photographs of the demo, and on degraded copies of both (BENCHMARKS.md, "Image
quality"): the originals and mildly degraded copies are gradable, copies with a
fault a screening nurse would reject are not, each with the fault's reason.
``Thresholds`` is params.yaml's ``quality.thresholds`` (``core.config.QualityThresholds``,
which documents each default and the measurements behind it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retinopathy.core.config import QualityThresholds as Thresholds
from retinopathy.quality.measures import Measures, measure

NO_FUNDUS = "no fundus"
OFF_FIELD = "off-field"
DARK = "dark"
OVEREXPOSED = "overexposed"
BLUR = "blur"
FLARE = "flare"
# Every reason a verdict can give, in the order it lists them.
REASONS = (NO_FUNDUS, OFF_FIELD, DARK, OVEREXPOSED, BLUR, FLARE)


@dataclass(frozen=True)
class Verdict:
    """Whether a photograph can be graded, the reasons it cannot, and what was measured.

    Attributes:
        reasons: The reasons it is ungradable, from :data:`REASONS` in that order;
            empty when it is gradable.
        measures: The measures the verdict was drawn from.
        thresholds: The thresholds it was drawn with.
    """

    reasons: tuple[str, ...]
    measures: Measures
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def gradable(self) -> bool:
        """True when no reason was found; an ungradable verdict always names one."""
        return not self.reasons

    def explain(self) -> list[str]:
        """One line per reason: the measure, its value and the threshold it crossed."""
        m, t = self.measures, self.thresholds
        lines = {
            NO_FUNDUS: f"no fundus: the disc covers {m.coverage:.0%} of the frame (at least "
            f"{t.min_coverage:.0%} needed)",
            OFF_FIELD: f"off-field: {m.disc_visible or 0:.0%} of the fundus disc is in the picture "
            f"(at least {t.min_visible:.0%} needed)",
            DARK: f"dark: mean brightness {m.brightness or 0:.0f}/255 (at least {t.min_brightness:g}), "
            f"{m.clipped_dark or 0:.0%} of the disc black (at most {t.max_clipped_dark:.0%})",
            OVEREXPOSED: f"overexposed: mean brightness {m.brightness or 0:.0f}/255 (at most "
            f"{t.max_brightness:g}), {m.clipped_bright or 0:.0%} of the disc white (at most "
            f"{t.max_clipped_bright:.0%})",
            BLUR: f"blur: focus {m.focus or 0:.2f} (at least {t.min_focus:.2f})",
            FLARE: f"flare: {m.flare or 0:.0%} of the disc under a haze (at most {t.max_flare:.0%})",
        }
        return [lines[reason] for reason in self.reasons]


def judge(measures: Measures, thresholds: Thresholds | None = None) -> Verdict:
    """The verdict on a photograph from its measures.

    Args:
        measures: From :func:`~retinopathy.quality.measures.measure`.
        thresholds: None uses the defaults.

    Returns:
        The :class:`Verdict`. Without a fundus ("no fundus") nothing else is judged,
        since nothing else was measured; otherwise every threshold crossed adds its reason.
    """
    t = thresholds if thresholds is not None else Thresholds()
    m = measures
    if (
        m.disc_visible is None
        or m.brightness is None
        or m.clipped_dark is None
        or m.clipped_bright is None
        or m.focus is None
        or m.flare is None
        or m.coverage < t.min_coverage
    ):
        return Verdict((NO_FUNDUS,), m, t)
    found = {
        OFF_FIELD: m.disc_visible < t.min_visible,
        DARK: m.brightness < t.min_brightness or m.clipped_dark > t.max_clipped_dark,
        OVEREXPOSED: m.brightness > t.max_brightness or m.clipped_bright > t.max_clipped_bright,
        BLUR: m.focus < t.min_focus,
        FLARE: m.flare > t.max_flare,
    }
    return Verdict(tuple(reason for reason in REASONS if found.get(reason, False)), m, t)


def assess(image: np.ndarray, thresholds: Thresholds | None = None) -> Verdict:
    """Measure a photograph and judge it: :func:`judge` of :func:`~retinopathy.quality.measures.measure`.

    Args:
        image: An RGB uint8 array [height, width, 3], any size.
        thresholds: None uses the defaults.

    Raises:
        RetinopathyError: if ``image`` is not an RGB uint8 array.
    """
    return judge(measure(image), thresholds)
