"""New photographs for `predict`: files, folders or lists of names -> the images the grader takes.

A square image (the course layout's, or the demo's) is decoded exactly as
training decodes it (:func:`~retinopathy.data.images.decode_image` at the
network's size), so `predict` on the test split gives the grades `evaluate`
gave. A photograph of any other shape (a camera's, with its black border) is
first cropped to the fundus and squared exactly as `import-kaggle` builds the
course dataset (:func:`~retinopathy.data.fundus.square_fundus`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from retinopathy.core.contract import COURSE_IMAGE_SIZE
from retinopathy.core.errors import RetinopathyError, note, warn
from retinopathy.data.fundus import square_fundus
from retinopathy.data.images import (
    check_min_side,
    check_pixels,
    decode_image,
    image_size,
    read_image_file,
    resize,
)
from retinopathy.data.labels import (
    MAX_LISTED,
    NAME_RULE,
    image_path,
    name_problem,
    read_image_list,
)

PHOTO_SUFFIXES = (".jpeg", ".jpg", ".png")
LIST_SUFFIX = ".csv"  # a course-layout list: one image name per line, the images beside it as <name>.jpeg


def collect(paths: Sequence[str | Path]) -> list[Path]:
    """The photographs that ``paths`` name, in order: files as given, folders' JPEG/PNG entries sorted,
    and each name of a ``.csv`` list as ``<its folder>/<name>.jpeg``.

    A folder gives the photographs directly in it, not those in its subfolders (which
    may hold earlier heat maps, backups or another eye's series): a warning names each
    subfolder that holds photographs, how many, and how to include them, and counts
    the other entries that were skipped. An entry named like a photograph that is no
    regular file (a named pipe, a folder, a dangling link) is kept, as a path that does
    not exist is: its row says what it is, and it is never opened (a pipe would block).
    A list is read as `prepare` reads ``*_img.csv`` (:func:`~retinopathy.data.labels.read_image_list`:
    a header row, names with ``.jpeg``); a list with a bad line is an error, as it is for `prepare`.

    Raises:
        RetinopathyError: naming the list, the line and the fix.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            entries = sorted(path.iterdir())
            found += [p for p in entries if p.suffix.lower() in PHOTO_SUFFIXES]
            _report_skipped(path, entries)
        elif path.suffix.lower() == LIST_SUFFIX and path.is_file():
            lines, notes = read_image_list(path)
            for text in notes:
                note(f"note: {text}")
            found += [image_path(path.parent, name) for _, name in lines]
        else:
            found.append(path)
    return found


def _report_skipped(folder: Path, entries: list[Path]) -> None:
    """Warn about what a folder argument does not grade: photographs in subfolders, other entries."""
    nested: list[str] = []
    for entry in entries:
        if entry.is_dir():
            count = sum(
                1
                for _, _, names in os.walk(entry)
                for name in names
                if Path(name).suffix.lower() in PHOTO_SUFFIXES
            )
            if count:
                nested.append(f"{entry} ({count})")
    if nested:
        shown = ", ".join(nested[:MAX_LISTED]) + (
            f" and {len(nested) - MAX_LISTED} more" if len(nested) > MAX_LISTED else ""
        )
        warn(
            f"{folder}: photographs in subfolders are not graded: {shown}; pass each folder that "
            "should be graded as its own argument"
        )
    # Every other entry that is not a folder: files, and pipes, sockets and links named otherwise.
    others = [e for e in entries if not e.is_dir() and e.suffix.lower() not in PHOTO_SUFFIXES]
    if others:
        warn(
            f"{folder}: {len(others)} file(s) not graded (not {'/'.join(PHOTO_SUFFIXES)}), e.g. "
            f"{others[0].name}"
        )


def check_photo_name(path: Path) -> None:
    """Refuse a photograph whose name (``path.stem``) is not an image name, as a listed one would be.

    Its name becomes the row's patient and its heat map's title and file name; the rule is
    the course layout's (:data:`~retinopathy.data.labels.IMAGE_NAME`), so a name carrying
    markup is refused where it is first read, not rendered.

    Raises:
        RetinopathyError: naming the file, what is wrong and the fix.
    """
    problem = name_problem(path.stem)
    if problem:
        raise RetinopathyError(
            f"{path}: {path.stem!r} is not an image name ({problem}); {NAME_RULE} - rename the file"
        )


def same_photograph(first: Path, second: Path) -> str | None:
    """Why ``first`` and ``second`` are one photograph ("the same file", "identical bytes"), or None.

    Only regular files are compared by content (a pipe is never opened); what cannot be
    read is not compared here: grading it reports why.
    """
    try:
        if os.path.samefile(first, second):
            return "the same file"
        one, two = os.stat(first), os.stat(second)
    except OSError:
        return None
    if not (stat.S_ISREG(one.st_mode) and stat.S_ISREG(two.st_mode)) or one.st_size != two.st_size:
        return None
    try:
        return "identical bytes" if read_image_file(first) == read_image_file(second) else None
    except RetinopathyError:
        return None


def prepare_photo(path: Path, size: int, max_pixels: int) -> np.ndarray:
    """One photograph as the grader takes it: uint8 [size, size, 3].

    No step holds more than ``max_pixels`` pixels: the file's header, the decode and the
    padded square are each checked before they are made (:func:`~retinopathy.data.fundus.square_fundus`).

    Args:
        path: The image file.
        size: The grader's image size (its spec's).
        max_pixels: Refuse larger images, and larger intermediate images (params.yaml ``data.max_pixels``).

    Raises:
        RetinopathyError: naming the file and what is wrong with it.
    """
    check_photo_name(path)
    data = read_image_file(path, max_pixels)
    check_pixels(path, data, max_pixels)
    width, height = image_size(path, data)
    check_min_side(path, width, height)
    if width == height:
        return decode_image(path, size, max_pixels=max_pixels)  # as the Dataset reads training images
    # As import-kaggle builds the course's images.
    square, _ = square_fundus(path, data, COURSE_IMAGE_SIZE, max_pixels)
    return resize(square, size) if size != COURSE_IMAGE_SIZE else np.array(square)


def photo_error(path: Path, size: int, max_pixels: int) -> str:
    """Why :func:`prepare_photo` cannot use ``path``, in words ("" if it can), for its row's ``error``.

    Running out of memory is one photograph's failure too: the others keep their grades.
    """
    try:
        prepare_photo(path, size, max_pixels)
    except RetinopathyError as error:
        return str(error)
    except MemoryError:
        return f"{path}: not enough memory to decode it; grade it on a machine with more memory"
    return ""


class PhotoDataset(Dataset):
    """``dataset[i]``: ``(image [3, S, S] uint8, i)``, or ``(zeros, -1 - i)`` if photo ``i`` cannot be used.

    A failure never stops the batch: its index is negative, and
    :func:`photo_error` says why when it is called for that photo.
    """

    def __init__(self, paths: Sequence[Path], size: int, max_pixels: int) -> None:
        self.paths, self.size, self.max_pixels = list(paths), size, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            image = prepare_photo(self.paths[index], self.size, self.max_pixels)
        except (RetinopathyError, MemoryError):  # one photograph's failure: the others are still graded
            return torch.zeros((3, self.size, self.size), dtype=torch.uint8), -1 - index
        return torch.from_numpy(image).permute(2, 0, 1), index


# Thresholds of :func:`photo_warning`, on a copy about 64 px a side (0-255 levels).
_CHECK_SIDE = 64
_COLOUR_SPREAD = 12  # a pixel whose channels differ by more than this is coloured
_COLOUR_SHARE = 0.01  # in a colour photograph more than 1% of the fundus's pixels are
_BRIGHT = 10  # the fundus threshold of fundus.crop_to_fundus
_BRIGHT_SHARE = 0.01  # a fundus covers far more than 1% of the photograph
_FLAT_STD = 2.0  # one flat colour: the grey levels vary less than this


def photo_warning(path: Path, max_pixels: int) -> str:
    """Why ``path`` is clearly not a colour fundus photograph, or "" if nothing is wrong.

    The grader only ever saw colour fundus photographs, and it still answers
    confidently on anything else (a greyscale copy of a grade-0 photo was graded 3
    at p=0.99). Flagged: one flat colour, and greyscale (the channels agree almost
    everywhere in the fundus: its pixels brighter than the border, so a sliver of an
    eye at the frame's edge is not "greyscale" for the black around it). What the
    quality assessor names (:mod:`retinopathy.quality`: a black frame is "no fundus",
    an eye mostly out of the frame "off-field") is left to it. Cheap: the image is
    decoded at about 64 px a side. An image that cannot be decoded gives "" here;
    grading it reports the error.
    """
    try:
        pixels = decode_image(path, _CHECK_SIDE, max_pixels=max_pixels).astype(np.int16)
    except RetinopathyError:
        return ""
    fundus = pixels.max(axis=2) > _BRIGHT
    if fundus.mean() < _BRIGHT_SHARE:
        return ""  # black: the assessor says "no fundus"
    if pixels.mean(axis=2).std() < _FLAT_STD:
        return "one flat colour: not a fundus photograph, the grade means nothing"
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    if (spread[fundus] > _COLOUR_SPREAD).mean() < _COLOUR_SHARE:
        return (
            "greyscale: the grader was trained on colour fundus photographs only, so its grade of a "
            "greyscale image means little"
        )
    return ""
