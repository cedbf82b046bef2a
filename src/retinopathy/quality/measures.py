"""What can be measured of a fundus photograph's quality, in numbers a person can check.

Every measure is taken on one analysis copy of the photograph, resized so that
its longer side is :data:`ANALYSIS_SIDE` pixels, so a threshold means the same
for a 4752x3168 camera file, a 512 px course image and a 256 px demo photo: a
blur of 1% of the frame is 1% of the frame. Each measure is documented with its
unit on :class:`Measures`; none of them needs a network or torch.

The fundus disc is found with the rule that crops the border for `predict` and
`import-kaggle` (:func:`retinopathy.data.fundus.fundus_pixels`: brightest channel
above 10, here also above a tenth of the photograph's bright level), keeping the
largest connected region and taking its convex hull, so dark lesions, a dark
macula or a dark crescent inside the field stay in the disc.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import scipy.fft
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.fundus import FUNDUS_THRESHOLD, fundus_pixels

# The longer side of the copy every measure is taken on. The bands that tell a
# defocused photograph from a sharp one lie at 1-8 px of this copy (2-16 px of a
# 512 px image); nothing finer is used, because sensor noise and JPEG blocks
# dominate there and say nothing about focus. 256 px is also 4x cheaper than 512.
ANALYSIS_SIDE = 256
# The disc is found on a copy this many times smaller than the analysis copy
# (128 px): a fraction of a percent of the frame is precise enough for the field.
_MASK_REDUCTION = 2
# The disc's pixels are brighter than fundus.py's threshold and also than this share of
# the photograph's bright level (the 99th percentile of the brightest channel): with
# the exposure turned up, a camera's grey border and its noise rise above 10 too.
_BORDER_SHARE = 0.1
# A disc smaller than this share of the frame is too small to measure anything in;
# its measures are None (the verdict says "no fundus", whose threshold is higher).
MEASURABLE_COVERAGE = 0.01
# Luminance (0-255, ITU-R 601, Pillow's "L") below which a pixel is clipped dark:
# within a few JPEG levels of black, where no detail survives.
DARK_LEVEL = 16
# Green value at and above which a pixel is clipped bright. Green is the channel that
# shows the vessels and lesions (hence red-free photography); red alone saturates in
# many good photographs, while where green clips, the detail is gone.
BRIGHT_LEVEL = 250
# Focus compares two bands of the luminance, the differences of Gaussian blurs with
# these standard deviations (px of the analysis copy): fine = G1 - G2, coarse = G2 - G8.
_FOCUS_SIGMAS = (1.0, 2.0, 8.0)
# The band of the disc's rim (and of the frame's edge) left out of the focus measure,
# analysis pixels: 3 standard deviations of the middle blur.
_FOCUS_RIM = 6
# Flare is measured on a copy this many times smaller than the analysis copy (64 px),
# smoothed with this Gaussian (px of that copy: 2.3% of the frame), because a haze
# is a large, smooth veil and every detail smaller than that is not flare.
_FLARE_REDUCTION = 4
_FLARE_SIGMA = 1.5
# A place is under a haze when its whiteness exceeds the disc's usual whiteness by this.
# The usual whiteness is this percentile of the disc's: the haze-free part as long as a
# haze covers less than three quarters of the disc (the median rises under a wide one).
FLARE_EXCESS = 0.2
_FLARE_REFERENCE = 25


@dataclass(frozen=True)
class Measures:
    """The quality measures of one photograph (see the module's docstring for the analysis copy).

    ``coverage`` is always measured; the others are None when no fundus disc of at
    least :data:`MEASURABLE_COVERAGE` of the frame was found.

    Attributes:
        coverage: Share of the frame (0-1) inside the fundus disc (the convex hull of
            the largest bright region). A whole disc in a square frame covers about
            0.6-0.8; a black frame covers 0.
        disc_visible: Share of the fundus disc (0-1) that lies in the picture: the disc's
            area over the area of a whole disc as wide as its widest extent. 1 for a
            whole disc; about 0.85 when the frame cuts a tenth of the disc off the top and
            the bottom, as many cameras do; 0.5 when half of the eye is out of the frame.
        brightness: Mean luminance (0-255) inside the disc.
        clipped_dark: Share of the disc (0-1) with luminance below :data:`DARK_LEVEL`.
        clipped_bright: Share of the disc (0-1) whose green channel is at or above :data:`BRIGHT_LEVEL`.
        focus: Fine detail over coarse detail inside the disc, a ratio of standard
            deviations of two bands of the luminance: the differences of Gaussian blurs
            of 1 and 2 px, and of 2 and 8 px, of the analysis copy, taken 6 px inside the
            disc's rim, the 8 px blur of the disc alone, so the rim's edge is no detail.
            0.24-0.64 on the demo's photographs and 0.47 on a real one, falling to
            0.1-0.15 as defocus wipes out the vessels' edges; 0 for a disc without detail.
            It does not change with exposure or with how much of the frame the disc fills,
            except in a photograph too dark to grade, where the steps between its few grey
            levels pass for detail (the verdict says "dark" there).
        flare: Share of the disc (0-1) under a whitish haze: where the whiteness (darkest
            over brightest channel, smoothed over about 2% of the frame) exceeds the
            disc's usual whiteness (its lower quartile) by :data:`FLARE_EXCESS`, and green
            is not clipped (that is overexposure). The optic disc alone stays near 0; a
            uniform change of exposure does not count.
    """

    coverage: float
    disc_visible: float | None
    brightness: float | None
    clipped_dark: float | None
    clipped_bright: float | None
    focus: float | None
    flare: float | None

    def as_dict(self) -> dict[str, float | None]:
        """The measures by name, rounded to 4 decimals (None where not measured)."""
        return {key: None if value is None else round(value, 4) for key, value in asdict(self).items()}


def check_rgb(image: np.ndarray, what: str) -> None:
    """Raise unless ``image`` is an RGB uint8 array [H, W, 3] with both sides >= 2.

    Args:
        image: The array to check.
        what: The name of the function or argument, for the message.

    Raises:
        RetinopathyError: naming ``what``, what was given and what is expected.
    """
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
        or min(image.shape[:2]) < 2
    ):
        got = (
            f"{image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else type(image).__name__
        )
        raise RetinopathyError(
            f"{what}: expected an RGB uint8 array [height, width, 3], got {got}; "
            "decode the photograph with retinopathy.data.images.decode_image"
        )


def analysis_copy(image: np.ndarray) -> Image.Image:
    """The photograph resized so that its longer side is :data:`ANALYSIS_SIDE` (aspect kept), as RGB."""
    check_rgb(image, "analysis_copy")
    picture = Image.fromarray(image)
    height, width = image.shape[:2]
    longer = max(width, height)
    size = (max(1, round(width * ANALYSIS_SIDE / longer)), max(1, round(height * ANALYSIS_SIDE / longer)))
    # Whole factors by box averaging (exact for a 512 or 1024 px photograph, and fast),
    # what is left (less than 2x either way) by a bilinear filter.
    if longer // ANALYSIS_SIDE >= 2:
        picture = picture.reduce(longer // ANALYSIS_SIDE)
    return picture if picture.size == size else picture.resize(size, Image.Resampling.BILINEAR)


def _disc(picture: Image.Image) -> tuple[np.ndarray, float, float] | None:
    """The fundus disc of the analysis copy: its convex hull's corners (x, y in analysis
    pixels), area and widest extent (px), or None if no pixel is bright enough."""
    small = np.asarray(picture.reduce(_MASK_REDUCTION))
    brightest = np.maximum(np.maximum(small[..., 0], small[..., 1]), small[..., 2]).ravel()
    rank = int(0.99 * (brightest.size - 1))
    level = float(np.partition(brightest, rank)[rank])  # the 99th percentile, without a full sort
    labels, count = ndimage.label(fundus_pixels(small, max(FUNDUS_THRESHOLD, round(_BORDER_SHARE * level))))
    if count == 0:
        return None
    region = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    # The region's hull is the hull of each row's first and last pixel; taking their
    # corners rather than their centres makes it wrap the pixels.
    rows = np.flatnonzero(region.any(axis=1))
    first = region[rows].argmax(axis=1)
    last = region.shape[1] - 1 - region[rows, ::-1].argmax(axis=1)
    corners = np.concatenate(
        [
            np.column_stack((first, rows)),
            np.column_stack((first, rows + 1)),
            np.column_stack((last + 1, rows)),
            np.column_stack((last + 1, rows + 1)),
        ]
    )
    points = corners.astype(np.float64) * _MASK_REDUCTION
    hull = ConvexHull(points)  # never flat: each pixel adds a unit square
    vertices = points[hull.vertices]
    spans = vertices[:, None, :] - vertices[None, :, :]
    widest = float(np.sqrt((spans**2).sum(axis=2)).max())
    return vertices, float(hull.volume), widest  # a 2-D hull's "volume" is its area


def _polygon_mask(size: tuple[int, int], vertices: np.ndarray, inset: float = 0.0) -> np.ndarray:
    """A bool [height, width] mask of the pixels whose centres lie in the convex polygon,
    shrunk towards its centre by ``inset`` px (exact for a disc, close for a cut one)."""
    centre = vertices.mean(axis=0)
    reach = np.sqrt(((vertices - centre) ** 2).sum(axis=1)).max()
    shrunk = centre + (vertices - centre) * max(0.0, 1.0 - inset / reach)
    canvas = Image.new("L", size, 0)
    ImageDraw.Draw(canvas).polygon([(float(x) - 0.5, float(y) - 0.5) for x, y in shrunk], fill=1)
    return np.asarray(canvas, dtype=bool)


@functools.lru_cache(maxsize=8)
def _gaussian_spectrum(shape: tuple[int, int], sigma: float) -> np.ndarray:
    """The transfer function of a Gaussian blur of ``sigma`` px, laid out as ``scipy.fft.rfft2``'s."""
    fy, fx = scipy.fft.fftfreq(shape[0]), scipy.fft.rfftfreq(shape[1])
    return np.exp(-2 * math.pi**2 * sigma**2 * (fy[:, None] ** 2 + fx[None, :] ** 2)).astype(np.float32)


def _focus(luminance: np.ndarray, disc: np.ndarray, inner: np.ndarray) -> float:
    """Fine over coarse detail inside the disc (see :attr:`Measures.focus`), measured where
    ``inner`` (the disc less its rim) is true."""
    fine_sigma, middle_sigma, coarse_sigma = _FOCUS_SIGMAS
    # Only where the two finer blurs see nothing but the disc: 3 sigma from its rim and
    # from the frame's edge (the FFT below wraps around it).
    inner = inner.copy()
    inner[:_FOCUS_RIM] = inner[-_FOCUS_RIM:] = False
    inner[:, :_FOCUS_RIM] = inner[:, -_FOCUS_RIM:] = False
    if not inner.any():
        return 0.0
    # The finer blurs in the frequency domain: one FFT and two inverse ones cost less than
    # direct convolution here.
    spectrum = scipy.fft.rfft2(luminance)
    fine_spectrum, middle_spectrum = (
        _gaussian_spectrum(luminance.shape, sigma) for sigma in (fine_sigma, middle_sigma)
    )
    fine_band = scipy.fft.irfft2(spectrum * (fine_spectrum - middle_spectrum), s=luminance.shape)
    middle = scipy.fft.irfft2(spectrum * middle_spectrum, s=luminance.shape)
    # The coarse blur reaches across the rim, so it is a normalised convolution (the blur of
    # the disc alone, as if the black border were not there: the rim's edge is no detail),
    # taken on a copy a quarter the size (a box of 4 px and a Gaussian of a quarter of the
    # rest make about coarse_sigma) and enlarged back.
    weight = disc.astype(np.float32)
    quarter = [np.asarray(Image.fromarray(plane, "F").reduce(4)) for plane in (luminance * weight, weight)]
    reach = math.sqrt(coarse_sigma**2 - (4**2 - 1) / 12) / 4
    blurred, support = (ndimage.gaussian_filter(plane, reach, truncate=3.0) for plane in quarter)
    small_coarse = Image.fromarray(blurred / np.maximum(support, 1e-3), "F")
    coarse = np.asarray(small_coarse.resize(disc.shape[::-1], Image.Resampling.BILINEAR))
    fine = float(fine_band[inner].std())
    detail = float((middle - coarse)[inner].std())
    # A disc without detail at any scale (a flat colour) has nothing in focus.
    return fine / detail if detail > 1e-6 else 0.0


def _flare(picture: Image.Image, disc: np.ndarray) -> float:
    """The share of the disc under a whitish haze (see :attr:`Measures.flare`)."""
    small = np.asarray(picture.reduce(_FLARE_REDUCTION), dtype=np.float32)
    smooth = ndimage.gaussian_filter(small, (_FLARE_SIGMA, _FLARE_SIGMA, 0.0))
    red, green, blue = smooth[..., 0], smooth[..., 1], smooth[..., 2]
    darkest = np.minimum(np.minimum(red, green), blue)
    whiteness = darkest / np.maximum(np.maximum(np.maximum(red, green), blue), 1.0)
    # The places whose every analysis pixel lies in the disc, less a rim of one.
    block = np.asarray(Image.fromarray(disc.astype(np.uint8) * 255).reduce(_FLARE_REDUCTION))
    full = ndimage.binary_erosion(block == 255, iterations=1)
    if not full.any():
        return 0.0
    usual = float(np.percentile(whiteness[full], _FLARE_REFERENCE))
    # A haze is light over the detail, not light in place of it: where green is clipped,
    # the photograph is overexposed (clipped_bright counts that), so it is not flare too.
    veiled = (whiteness > usual + FLARE_EXCESS) & (green < BRIGHT_LEVEL - 10)
    return float(veiled[full].mean())


def measure(image: np.ndarray) -> Measures:
    """Measure a photograph's field, exposure, focus and flare.

    Args:
        image: An RGB uint8 array [height, width, 3], any size (as
            :func:`retinopathy.data.images.decode_image` returns).

    Returns:
        The :class:`Measures`; those inside the disc are None when no disc of at least
        :data:`MEASURABLE_COVERAGE` of the frame is found.

    Raises:
        RetinopathyError: if ``image`` is not an RGB uint8 array.
    """
    check_rgb(image, "measure")
    picture = analysis_copy(image)
    width, height = picture.size
    found = _disc(picture)
    coverage = 0.0 if found is None else min(1.0, found[1] / (width * height))
    if found is None or coverage < MEASURABLE_COVERAGE:
        return Measures(coverage, None, None, None, None, None, None)
    vertices, area, widest = found
    disc = _polygon_mask((width, height), vertices)
    luminance = np.asarray(picture.convert("L"), dtype=np.float32)
    inside = luminance[disc]
    green = np.asarray(picture)[..., 1][disc]
    return Measures(
        coverage=coverage,
        disc_visible=min(1.0, area / (math.pi * widest**2 / 4)),
        brightness=float(inside.mean()),
        clipped_dark=float((inside < DARK_LEVEL).mean()),
        clipped_bright=float((green >= BRIGHT_LEVEL).mean()),
        focus=_focus(luminance, disc, _polygon_mask((width, height), vertices, inset=_FOCUS_RIM)),
        flare=_flare(picture, disc),
    )
