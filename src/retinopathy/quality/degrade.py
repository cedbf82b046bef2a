"""Camera faults that make a fundus photograph ungradable, made on purpose for the demo and the tests.

Each fault takes an RGB uint8 photograph and a strength from 0 (the photograph
unchanged) to 1 (the worst this fault does), and returns a new image of the same
size; the input is never changed. The faults that have a direction (which way the
eye leaves the frame, where the flare falls) draw it from ``seed``, so the same
arguments always give the same image.

:data:`FAULTS` names each fault with the verdict reason it causes, a strength a
screening nurse would still accept (``mild``) and one she would reject
(``reject``), as measured on real and demo photographs (BENCHMARKS.md, "Image quality").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.fundus import fundus_pixels
from retinopathy.quality.measures import check_rgb
from retinopathy.quality.verdict import BLUR, DARK, FLARE, OFF_FIELD, OVEREXPOSED

# Defocus at strength 1: a Gaussian blur whose standard deviation is this share of the
# longer side (2%: 10 px at 512 px, where no vessel narrower than the optic disc's is left).
DEFOCUS_SIGMA = 0.02
# The flare's haze: a Gaussian veil this wide (standard deviation, share of the longer side)
# centred this far from the frame's centre, where reflections from the cornea fall.
FLARE_WIDTH = 0.2
FLARE_OFFSET = 0.25


def _check(image: np.ndarray, strength: float, what: str) -> float:
    check_rgb(image, what)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise RetinopathyError(
            f"{what}: strength must be a number from 0 (unchanged) to 1 (the worst), got {strength!r}"
        )
    return float(strength)


def _check_seed(seed: int, what: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise RetinopathyError(f"{what}: seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)


def _lit(image: np.ndarray) -> np.ndarray:
    """Where the camera's light falls, float32 [H, W] in 0-1: the fundus, its edge softened
    over 0.5% of the side. A fundus camera's field stop keeps the border black whatever
    the light, so the faults of light (over-exposure, flare) leave it as it is."""
    fundus = Image.fromarray(fundus_pixels(image).astype(np.uint8) * 255)
    soft = fundus.filter(ImageFilter.GaussianBlur(max(image.shape[:2]) / 200))
    return np.asarray(soft, dtype=np.float32) / 255


def defocus(image: np.ndarray, strength: float) -> np.ndarray:
    """Out of focus: a Gaussian blur of ``strength`` x :data:`DEFOCUS_SIGMA` of the longer side."""
    strength = _check(image, strength, "defocus")
    sigma = strength * DEFOCUS_SIGMA * max(image.shape[:2])
    if sigma == 0:
        return image.copy()
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def underexpose(image: np.ndarray, strength: float) -> np.ndarray:
    """Too little light: every pixel value times ``1 - strength`` (0.92: at 8% of its brightness)."""
    strength = _check(image, strength, "underexpose")
    return _to_uint8(image.astype(np.float32) * (1.0 - strength))


def overexpose(image: np.ndarray, strength: float) -> np.ndarray:
    """Too much light: the exposure raised until ``strength`` of the fundus is clipped white in green.

    The fundus's pixel values are multiplied by one gain, clipped at 255 as a sensor
    clips (the black border stays black, as behind a camera's field stop). The
    gain is the photograph's own: it drives that share of the fundus's pixels (those
    :func:`~retinopathy.data.fundus.fundus_pixels` finds) to 255 in the green channel,
    the channel that shows vessels and lesions, so a dim photograph and a bright one
    lose the same share of their detail. 0 leaves the photograph as it is; 0.5 washes
    out half of the fundus.
    """
    strength = _check(image, strength, "overexpose")
    green = image[..., 1][fundus_pixels(image)]
    if strength == 0 or green.size == 0:
        return image.copy()
    level = float(np.quantile(green, 1.0 - strength))
    gain = max(1.0, 255.0 / max(level, 1.0))
    return _to_uint8(image.astype(np.float32) * (1.0 + (gain - 1.0) * _lit(image))[..., None])


def off_frame(image: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """The eye partly out of the frame: the picture shifted by ``strength`` x its side, the gap black.

    The direction (left, right, up or down) is drawn from ``seed``. At 0.5 the centre
    of a centred fundus lies on the frame's edge: half of the eye is out of the frame.
    """
    strength = _check(image, strength, "off_frame")
    direction = int(np.random.default_rng(_check_seed(seed, "off_frame")).integers(4))
    height, width = image.shape[:2]
    dx, dy = ((1, 0), (-1, 0), (0, 1), (0, -1))[direction]
    dx, dy = round(dx * strength * width), round(dy * strength * height)
    shifted = np.zeros_like(image)
    if abs(dx) < width and abs(dy) < height:
        shifted[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
            max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
        ]
    return shifted


def flare(image: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
    """A whitish haze over part of the fundus, as a reflection from the cornea or the lens leaves it.

    A Gaussian veil (:data:`FLARE_WIDTH` of the longer side) whose centre lies
    :data:`FLARE_OFFSET` of the side from the frame's centre, in a direction drawn from
    ``seed``, adds up to ``strength`` x 255 to every channel, on the fundus only.
    """
    strength = _check(image, strength, "flare")
    angle = np.random.default_rng(_check_seed(seed, "flare")).uniform(0.0, 2.0 * np.pi)
    height, width = image.shape[:2]
    side = max(height, width)
    cx = width / 2 + FLARE_OFFSET * side * np.cos(angle)
    cy = height / 2 + FLARE_OFFSET * side * np.sin(angle)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    veil = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (FLARE_WIDTH * side) ** 2))
    return _to_uint8(image.astype(np.float32) + (strength * 255 * veil * _lit(image))[..., None])


@dataclass(frozen=True)
class Fault:
    """One camera fault, the verdict reason it causes, and how strong it must be to cause it.

    Attributes:
        name: Its name, the key in :data:`FAULTS`.
        reason: The reason (:data:`~retinopathy.quality.verdict.REASONS`) a photograph
            with this fault at ``reject`` strength is ungradable for.
        mild: A strength a screening nurse would accept: the photograph stays gradable.
        reject: A strength a screening nurse would reject: the photograph is ungradable.
        function: The fault itself, ``function(image, strength[, seed])``.
        seeded: Whether ``function`` takes a seed (the faults with a direction).
    """

    name: str
    reason: str
    mild: float
    reject: float
    function: Callable[..., np.ndarray]
    seeded: bool = False

    def __call__(self, image: np.ndarray, strength: float, seed: int = 0) -> np.ndarray:
        """Apply the fault: ``function(image, strength, seed)``, the seed only where it has a direction."""
        return self.function(image, strength, seed) if self.seeded else self.function(image, strength)


FAULTS: dict[str, Fault] = {
    fault.name: fault
    for fault in (
        Fault("defocus", BLUR, mild=0.2, reject=0.75, function=defocus),
        Fault("underexpose", DARK, mild=0.3, reject=0.88, function=underexpose),
        Fault("overexpose", OVEREXPOSED, mild=0.03, reject=0.5, function=overexpose),
        Fault("off_frame", OFF_FIELD, mild=0.1, reject=0.5, function=off_frame, seeded=True),
        Fault("flare", FLARE, mild=0.1, reject=0.6, function=flare, seeded=True),
    )
}
