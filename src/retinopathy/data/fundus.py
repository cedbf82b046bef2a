"""Finding the fundus in a photograph: crop the black border and pad to a centred square.

Used by `import-kaggle` on Kaggle's full-size photographs and by `predict` on
new photographs of any size, so both see a fundus framed the same way.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.images import check_pixels, check_work, upright_8bit

# The border is found on a copy about this many pixels wide: fast, and precise
# to a fraction of a percent of the fundus diameter.
_BOX_SIDE = 256
# Decode large JPEGs at a reduced DCT scale whose short side is still this
# many times the output size: the fundus fills most of the short side, so the
# crop is still resized down, while a 4752x3168 photograph decodes at 1/4
# scale (1/16 of the pixels) for 512x512 output.
DECODE_MARGIN = 1.5
# A pixel belongs to the fundus when its brightest channel is above this (0-255): the
# border of a fundus photograph is black up to JPEG noise, the dimmest rim of a lit
# fundus is well above it. The quality measures (retinopathy.quality) use the same rule.
FUNDUS_THRESHOLD = 10


class NoFundusError(RetinopathyError):
    """No pixel of the image is brighter than the threshold: nothing to crop to."""


def fundus_pixels(pixels: np.ndarray, threshold: int = FUNDUS_THRESHOLD) -> np.ndarray:
    """Which pixels of an RGB uint8 array [H, W, 3] are bright enough to be fundus: bool [H, W].

    A pixel counts when its brightest channel exceeds ``threshold`` (0-255).
    """
    # Two elementwise maxima: numpy's max over a last axis of 3 is about 20x slower.
    return np.maximum(np.maximum(pixels[..., 0], pixels[..., 1]), pixels[..., 2]) > threshold


def crop_to_fundus(img: Image.Image, threshold: int = FUNDUS_THRESHOLD) -> Image.Image:
    """Crop the black border around the fundus and pad the result to a black square.

    The bounding box of the pixels whose brightest channel exceeds
    ``threshold`` is found on a box-averaged copy about 256 pixels wide; rows
    and columns with only a speck of bright pixels do not count. The
    crop is then centred on a square black canvas, so a fundus whose top and
    bottom are cut off by the photograph stays round and centred.

    Args:
        img: A fundus photograph (any mode; the result is RGB).
        threshold: Brightness (0-255) above which a pixel belongs to the fundus.

    Returns:
        A square RGB image, side the longer side of the bounding box.

    Raises:
        NoFundusError: no pixel is brighter than ``threshold``.
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return pad_to_square(rgb.crop(fundus_box(rgb, threshold)))


def fundus_box(rgb: Image.Image, threshold: int = 10) -> tuple[int, int, int, int]:
    """The box (left, upper, right, lower) of the fundus in the RGB image ``rgb``: see :func:`crop_to_fundus`.

    Raises:
        NoFundusError: no pixel is brighter than ``threshold``.
    """
    width, height = rgb.size
    factor = max(1, max(width, height) // _BOX_SIDE)
    small = np.asarray(rgb.reduce(factor) if factor > 1 else rgb)
    bright = fundus_pixels(small, threshold)
    # A row or column is part of the fundus only with bright cells over about 1%
    # of the longer side, so a speck of dust or a stray hot pixel in the
    # border does not widen the box.
    min_cells = max(1, max(bright.shape) // 100)
    rows = np.flatnonzero(bright.sum(axis=1) >= min_cells)
    cols = np.flatnonzero(bright.sum(axis=0) >= min_cells)
    if rows.size == 0:
        raise NoFundusError(f"no pixel is brighter than {threshold}: the image is black")
    return (
        int(cols[0]) * factor,
        int(rows[0]) * factor,
        min(width, (int(cols[-1]) + 1) * factor),
        min(height, (int(rows[-1]) + 1) * factor),
    )


def pad_to_square(img: Image.Image) -> Image.Image:
    """Centre ``img`` on a black square canvas whose side is its longer side."""
    width, height = img.size
    side = max(width, height)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(img.convert("RGB"), ((side - width) // 2, (side - height) // 2))
    return canvas


def square_fundus(
    path: Path, data: bytes, size: int, max_pixels: int | None = None
) -> tuple[Image.Image, bool]:
    """A photograph of any size as the course dataset holds it: the fundus, squared, ``size`` x ``size``.

    Decodes ``data`` (large JPEGs at a reduced DCT scale, :data:`DECODE_MARGIN`;
    upright by its EXIF orientation; 16-bit grey scaled to 8 bits), crops the
    black border and pads to a centred square (:func:`crop_to_fundus`), and
    resizes with a bicubic filter. `import-kaggle` and `predict` both use it.

    The work is bounded at every step, not only by the file's header: the decode and
    the padded square may each hold at most ``max_pixels`` pixels (checked before
    they are made; a 40000x1000 strip passes a 40-megapixel limit, its square would
    hold 1600 megapixels), and the output is ``size`` x ``size``.

    Args:
        path: The file, named in errors.
        data: Its bytes.
        size: The output side (at most ``MAX_IMAGE_SIZE``: the callers' settings bound it).
        max_pixels: The most pixels of any intermediate image (None:
            :data:`~retinopathy.data.images.PIXEL_CEILING`).

    Returns:
        The RGB image, and whether a fundus was found (False: the photograph had no
        pixel brighter than the border threshold and was kept whole, padded).

    Raises:
        RetinopathyError: naming ``path`` if it cannot be decoded or a step would be over the limit.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RetinopathyError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; leave it False")
    check_pixels(path, data, max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            wanted = math.ceil(size * DECODE_MARGIN)
            image.draft("RGB", (wanted, wanted))  # JPEG DCT scaling; no-op for other formats
            image.load()
            upright = upright_8bit(image)  # EXIF orientation applied, 16-bit grey scaled to 8 bits
            rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
            try:
                box, found = fundus_box(rgb), True
            except NoFundusError:
                box, found = (0, 0, *rgb.size), False
            width, height = box[2] - box[0], box[3] - box[1]
            side = max(width, height)
            what = "fundus" if found else "image (no fundus found)"
            check_work(path, side, side, max_pixels, f"padding its {width}x{height} {what} to a square")
            square = pad_to_square(rgb.crop(box))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise RetinopathyError(
            f"{path}: cannot decode the image ({error}); the file is truncated, corrupt or not an image"
        ) from None
    return square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0), found
