"""Image decoding: any listed image file -> a uint8 RGB array, optionally resized.

JPEGs in RGB/YCbCr (all of the course's images) go through libjpeg-turbo via
simplejpeg, in strict mode so that truncated or corrupt files raise. Grey,
CMYK and YCCK JPEGs and other formats (PNG, palette, RGBA) saved under a
``.jpeg`` name take Pillow's documented path, ``convert("RGB")``; 16-bit
greyscale (a PNG's ``I;16``) is first scaled to 8 bits, not clipped. A camera
JPEG whose EXIF orientation tag says it is stored rotated or mirrored is
turned upright; a file without that tag (the course's, the demo's) is decoded
exactly as before. Nothing on this path touches float64.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageFile, ImageOps

from retinopathy.core.errors import RetinopathyError

# Colour spaces libjpeg-turbo converts to RGB itself; grey, CMYK and YCCK
# JPEGs take Pillow's conversion instead.
_TURBO_COLORSPACES = frozenset({"YCbCr", "RGB"})

# The smallest image side `prepare` and `predict` accept. The networks' own minimum input
# is 32 px (params `data.image_size` >= 32); an image with a shorter side holds too
# little of a fundus to grade (a 3x3 px image was graded 0 at probability 1.000).
MIN_IMAGE_SIDE = 32
# EXIF orientation tag (0x0112): 1 is upright; 2-8 are mirrored and/or rotated.
_ORIENTATION_TAG = 0x0112
_EXIF_MARKER = b"Exif\x00\x00"
# How far into a JPEG its APP1 (EXIF) segment is looked for: after SOI and a few APPn
# segments (JFIF, an ICC profile) of at most 64 KB each.
_EXIF_SEARCH_BYTES = 1 << 18
# 16-bit greyscale modes Pillow opens (a PNG with bit depth 16 is "I;16"; older Pillow says "I").
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
# The most pixels an image may hold at any step of a decode that is given no limit (training's and
# evaluation's decode of the images `prepare` checked, import-kaggle): Pillow's own
# decompression-bomb limit (twice its default Image.MAX_IMAGE_PIXELS), written out so that
# libjpeg-turbo's path, which Pillow's check never sees, obeys it too, and so that a changed
# Pillow global cannot lift it.
PIXEL_CEILING = 2 * 89_478_485


def _undecodable(path: Path, error: Exception) -> RetinopathyError:
    return RetinopathyError(
        f"{path}: cannot decode the image ({error}); the file is truncated, corrupt or not an "
        "image - copy it again from the source dataset"
    )


def read_image_file(path: str | Path, max_pixels: int | None = None) -> bytes:
    """The bytes of an image file, refusing anything that is not a regular file first.

    A named pipe would block the reader forever and a device could stream
    without end, so the entry is checked before it is read (and again on the
    open file, so it cannot be swapped in between). With ``max_pixels``, a
    file larger than any image within the limit could be is refused unread.

    Raises:
        RetinopathyError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        kind = _kind(os.stat(path).st_mode)
        if kind is None:
            # O_NONBLOCK: opening a FIFO swapped in since the stat must not wait for a writer.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as stream:
                info = os.fstat(stream.fileno())
                kind = _kind(info.st_mode)
                if kind is None:
                    if max_pixels is not None and info.st_size > _max_file_bytes(max_pixels):
                        raise RetinopathyError(
                            f"{path}: {info.st_size / 1e6:.0f} MB is more than an image of "
                            f"{max_pixels / 1e6:g} megapixels can take (params.yaml `data.max_pixels`); "
                            "remove it from the split lists, or raise the limit"
                        )
                    return stream.read()
    except FileNotFoundError:
        raise RetinopathyError(f"{path}: image file not found") from None
    except OSError as error:
        raise RetinopathyError(f"{path}: cannot read the image file ({error.strerror})") from None
    raise RetinopathyError(f"{path}: is a {kind}, not a regular file; list only image files")


def _kind(mode: int) -> str | None:
    """None for a regular file, else what the entry is, in words."""
    if stat.S_ISREG(mode):
        return None
    kinds = {
        stat.S_ISDIR: "folder",
        stat.S_ISFIFO: "named pipe",
        stat.S_ISCHR: "character device",
        stat.S_ISBLK: "block device",
        stat.S_ISSOCK: "socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def _max_file_bytes(max_pixels: int) -> int:
    # A JPEG or PNG of N pixels is never much larger than its raw N * 3 bytes.
    return 3 * max_pixels + (1 << 20)


def image_size(path: Path, data: bytes) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    if data[:2] == b"\xff\xd8":
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return width, height
        except ValueError:
            pass  # Pillow may still read it (or will say what is wrong)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _undecodable(path, error) from None


def check_pixels(path: Path, data: bytes, max_pixels: int | None) -> None:
    """Refuse an image whose header says it has more than ``max_pixels`` pixels, before decoding it."""
    width, height = image_size(path, data)
    check_work(path, width, height, max_pixels)


def check_work(path: Path, width: int, height: int, max_pixels: int | None, step: str | None = None) -> None:
    """Refuse an image that holds, or after a transform would hold, more than ``max_pixels`` pixels.

    Called before every step that makes a new image (the decode itself, padding to a
    square), with the size that step would make: a header within the limit says nothing
    about what comes after it (a 40000x1000 strip is 40 megapixels, its square 1600).

    Args:
        path: The image file, named in the message.
        width: Width of the image the step would make.
        height: Its height.
        max_pixels: params.yaml's ``data.max_pixels``; None: :data:`PIXEL_CEILING`.
        step: What makes that image, in words (None: decoding the file as stored).

    Raises:
        RetinopathyError: naming the file, the step, the size, the limit and the fix.
    """
    limit = PIXEL_CEILING if max_pixels is None else max_pixels
    pixels = width * height
    if pixels <= limit:
        return
    source = (
        "params.yaml `data.max_pixels`"
        if max_pixels is not None
        else "the most any image may hold: Pillow's decompression-bomb limit"
    )
    fix = "remove it, or raise the limit" if max_pixels is not None else "remove it, or shrink it"
    made = f"{width}x{height} is" if step is None else f"{step} would make {width}x{height},"
    raise RetinopathyError(
        f"{path}: {made} {pixels / 1e6:.0f} megapixels, over the limit of {limit / 1e6:g} ({source}; "
        f"it would take {pixels * 3 / 1e9:.1f} GB); {fix}"
    )


def decode_image(path: str | Path, size: int | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to RGB, optionally resized to ``size`` x ``size``.

    RGB/YCbCr JPEGs are decoded by libjpeg-turbo (simplejpeg) in strict mode, so
    a truncated or corrupt file raises instead of yielding grey rows. When
    ``size`` is smaller than the source, the decoder's DCT scaling (n/8 of the
    stored size, the smallest that is still >= ``size``) does the bulk of the
    downscale, faster than decoding everything and an area filter too;
    Pillow's bilinear resize then makes the size exact where n/8 does not land
    on it (e.g. 224 from 512 decodes at 256). Grey, CMYK and YCCK JPEGs and
    other formats (PNG, palette, RGBA) are decoded by Pillow and converted to RGB.

    Args:
        path: The image file (a regular file: see :func:`read_image_file`).
        size: Output side length, or None to keep the stored size.
        max_pixels: Refuse, from the header, images with more pixels (None: :data:`PIXEL_CEILING`).

    Returns:
        A writable, C-contiguous uint8 array of shape [H, W, 3].

    Raises:
        RetinopathyError: the file is missing, unreadable, not a regular file, over
            the pixel limit or not a decodable image.
    """
    path = Path(path)
    data = read_image_file(path, max_pixels)
    return decode_data(path, data, size, max_pixels)


def decode_data(
    path: Path, data: bytes, size: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """:func:`decode_image` of bytes already read from ``path`` (named in errors)."""
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    # Every decode is bounded (PIXEL_CEILING without a limit), and the resize that follows
    # makes size x size, which params and checkpoints bound by MAX_IMAGE_SIZE.
    check_pixels(path, data, max_pixels)
    if data[:2] == b"\xff\xd8":  # JPEG start-of-image marker
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as error:
            raise _undecodable(path, error) from None
        if colorspace in _TURBO_COLORSPACES:
            return _decode_turbo(path, data, height, width, size, jpeg_orientation(data))
    return _decode_pillow(path, data, size)


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG; 1 (upright) when it has no EXIF or no such tag.

    Cheap for files without EXIF (the course's and the demo's): a byte search near the
    start, no parsing, so their decoding is exactly what it was without this.
    """
    if data.find(_EXIF_MARKER, 0, _EXIF_SEARCH_BYTES) < 0:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError):
        return 1  # unreadable EXIF: the pixels are still decoded (and checked) as stored
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# numpy's view of Pillow's transposes for EXIF orientations 2-8 (ImageOps.exif_transpose's table).
_ORIENT = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270: 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90: 90 degrees anticlockwise
}


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` [H, W, C] turned upright as EXIF ``orientation`` says (as ``ImageOps.exif_transpose``)."""
    return np.ascontiguousarray(_ORIENT[orientation](array))


def upright_8bit(image: Image.Image) -> Image.Image:
    """``image`` turned upright by its EXIF orientation, 16-bit greyscale scaled to 8 bits.

    Without an orientation tag and in an 8-bit mode, ``image`` itself is returned
    (its pixels untouched). The result converts to RGB with ``convert("RGB")``:
    Pillow's own conversion of ``I;16`` clips every value above 255 to white.
    """
    if image.getexif().get(_ORIENTATION_TAG, 1) not in (1, None):
        image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.rint(wide * (255 / 65535)), 0, 255).astype(np.uint8), "L")
    return image


def _decode_turbo(
    path: Path, data: bytes, height: int, width: int, size: int | None, orientation: int = 1
) -> np.ndarray:
    scale = {}
    if size is not None and size < min(height, width):
        # libjpeg-turbo picks the smallest of its n/8 scales that keeps both
        # sides >= size. Below 1/2 that is the brief's DCT downscale; above it
        # (7/8 -> 448 from 512) it still beats a full decode plus Pillow's
        # resize (2.6 ms against 7 ms here), and lands exactly on n/8 sizes.
        scale = {"min_height": size, "min_width": size}
    try:
        array = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **scale)
    except ValueError as error:
        raise _undecodable(path, error) from None
    if orientation != 1:
        array = _orient(array, orientation)
    if size is not None and array.shape[:2] != (size, size):
        array = resize(Image.fromarray(array), size)
    return array


def _decode_pillow(path: Path, data: bytes, size: int | None) -> np.ndarray:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone switched Pillow's global to pad truncated files with grey;
        # decoding anyway would hide broken images.
        raise RetinopathyError(
            f"{path}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images would load "
            "silently; leave it False"
        )
    try:
        with Image.open(io.BytesIO(data)) as image:
            if size is not None and image.format == "JPEG" and 2 * size <= min(image.size):
                image.draft(image.mode, (size, size))  # DCT scaling, as on the turbo path
            image.load()
            rgb = upright_8bit(image).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _undecodable(path, error) from None
    if size is not None and rgb.size != (size, size):
        return resize(rgb, size)
    return np.array(rgb)  # a copy: np.asarray of a PIL image is read-only


def resize(image: Image.Image, size: int) -> np.ndarray:
    """``image`` resized to ``size`` x ``size`` (bilinear, anti-aliased), as a uint8 array."""
    # Pillow's resize widens the filter support when shrinking, so it does not
    # alias; reducing_gap first box-reduces large non-JPEG sources cheaply.
    resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.array(resized)


def check_min_side(path: Path, width: int, height: int, minimum: int = MIN_IMAGE_SIDE) -> None:
    """Refuse an image with a side shorter than :data:`MIN_IMAGE_SIDE`: too small to be a fundus photograph.

    Raises:
        RetinopathyError: naming the file, its size and the minimum.
    """
    if min(width, height) < minimum:
        raise RetinopathyError(
            f"{path}: {width}x{height} px is too small to be a fundus photograph (the minimum is "
            f"{minimum} px a side); use the full-size photograph, or remove it from the list"
        )


@dataclass(frozen=True)
class ImageFacts:
    """What `prepare` learns of a listed image while checking it.

    Attributes:
        sha256: Hex SHA-256 of the file's bytes (identical content under two names).
        width: Width of the decoded (upright) image.
        height: Height of the decoded (upright) image.
    """

    sha256: str
    width: int
    height: int


def check_image(
    path: str | Path, max_pixels: int | None = None, min_side: int = MIN_IMAGE_SIDE
) -> ImageFacts:
    """Read, hash and fully decode one listed image, refusing one too small to be a fundus.

    Raises:
        RetinopathyError: what :func:`decode_image` refuses, or a side under :data:`MIN_IMAGE_SIDE`.
    """
    path = Path(path)
    data = read_image_file(path, max_pixels)
    digest = hashlib.sha256(data).hexdigest()
    array = decode_data(path, data, max_pixels=max_pixels)
    height, width = array.shape[:2]
    check_min_side(path, width, height, min_side)
    return ImageFacts(digest, width, height)
