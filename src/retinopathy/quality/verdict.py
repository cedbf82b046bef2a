"""Whether a photograph can be graded, and why not: thresholds on the measures, and the verdict.

The reasons come from one fixed vocabulary, :data:`REASONS`, in the order a verdict
lists them: the field first (without a fundus nothing else means anything), then
exposure, focus and flare. The default thresholds were checked on the real colour
fundus photograph that scikit-image ships (``skimage.data.retina()``), on all 800
photographs of the demo, and on degraded copies of both (BENCHMARKS.md, "Image
quality"): the originals and mildly degraded copies are gradable, copies with a
fault a screening nurse would reject are not, each with the fault's reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from retinopathy.core.errors import RetinopathyError
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
class Thresholds:
    """Where each measure stops being gradable (units as on :class:`~retinopathy.quality.measures.Measures`).

    Each default lies between what was measured on photographs that must stay gradable
    and on copies that must not (BENCHMARKS.md, "Image quality": the real photograph
    ``skimage.data.retina()``, the demo's 800 photos, and copies of both degraded by
    :mod:`retinopathy.quality.degrade` at a ``mild`` and a ``reject`` strength).

    Attributes:
        min_coverage: Below this share of the frame covered by the disc, no fundus: 0.05.
            A black frame or a speck of light covers under 0.01; the demo's photos cover
            0.45-0.87, the real one 0.78, and still 0.39 with half the eye out of the frame.
        min_visible: Below this share of the disc in the picture, off-field: 0.7. The demo's
            photos measure 0.91-0.99 (those zoomed until the frame cuts them included), the
            real one 0.95, and 0.85 in a camera's frame that cuts a tenth of the disc off
            the top and the bottom; with half the eye out of the frame 0.36-0.63.
        min_brightness: Below this mean luminance (0-255), dark: 20. The demo's darkest
            photo is 38 (27 at 70% of its exposure), the real one 114; at 12% of their
            exposure all measure 17 or less.
        max_clipped_dark: Above this share of the disc clipped dark, dark: 0.5. The demo's
            photos 0.06 at most; the real one 0.02, 0.79 at 12% of its exposure.
        max_brightness: Above this mean luminance, overexposed: 210. The demo's brightest
            photo is 135; the real one 186 with 3% of its fundus clipped, 228 with half.
        max_clipped_bright: Above this share of the disc clipped in green, overexposed:
            0.15. The demo's photos 0.02 at most (0.08 with 3% of the fundus clipped on
            purpose); with half clipped 0.40 or more.
        min_focus: Below this focus, blur: 0.18. The demo's softest photo measures 0.24
            (0.21 blurred by a further 0.4% of the frame); the real one 0.47-0.50 and 0.37
            so blurred. Defocus of 1.5% of the frame (7.7 px at 512 px) leaves 0.15 at
            most; the real photograph drops below 0.18 at 1.1%.
        max_flare: Above this share of the disc under a haze, flare: 0.15. The demo's
            photos 0.09 at most (0.10 under a faint haze), the real one 0.00; under a haze
            of 60% of white at its centre 0.21 or more.
    """

    min_coverage: float = 0.05
    min_visible: float = 0.7
    min_brightness: float = 20.0
    max_clipped_dark: float = 0.5
    max_brightness: float = 210.0
    max_clipped_bright: float = 0.15
    min_focus: float = 0.18
    max_flare: float = 0.15

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            top = 255.0 if item.name.endswith("brightness") else None if item.name == "min_focus" else 1.0
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not np.isfinite(value)
                or value < 0
                or (top is not None and value > top)
            ):
                span = f"between 0 and {top:g}" if top is not None else ">= 0"
                raise RetinopathyError(
                    f"quality threshold {item.name} must be a number {span}, got "
                    f"{value!r}; fix {item.name} (default {item.default})"
                )
        if self.min_brightness >= self.max_brightness:
            raise RetinopathyError(
                f"quality thresholds: min_brightness ({self.min_brightness}) must be below max_brightness "
                f"({self.max_brightness}), or every photograph is dark or overexposed; fix one of them"
            )


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
