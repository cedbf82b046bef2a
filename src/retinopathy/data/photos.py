"""New photographs for `predict`: files, folders or lists of names -> the images the grader takes.

A square image (the course layout's, or the demo's) is decoded exactly as
training decodes it (:func:`~retinopathy.data.images.decode_image` at the
network's size), so `predict` on the test split gives the grades `evaluate`
gave. A photograph of any other shape (a camera's, with its black border) is
first cropped to the fundus and squared exactly as `import-kaggle` builds the
course dataset (:func:`~retinopathy.data.fundus.square_fundus`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from retinopathy.contract import COURSE_IMAGE_SIZE
from retinopathy.data.fundus import square_fundus
from retinopathy.data.images import check_pixels, decode_image, image_size, read_image_file, resize
from retinopathy.data.labels import check_name, image_path, read_lines
from retinopathy.errors import RetinopathyError

PHOTO_SUFFIXES = (".jpeg", ".jpg", ".png")
LIST_SUFFIX = ".csv"  # a course-layout list: one image name per line, the images beside it as <name>.jpeg


def collect(paths: Sequence[str | Path]) -> list[Path]:
    """The photographs that ``paths`` name, in order: files as given, folders' JPEG/PNG files sorted,
    and each line of a ``.csv`` list as ``<its folder>/<name>.jpeg``.

    A path that does not exist is kept (its row will say so); a list with a bad
    line is an error, as it is for `prepare`.

    Raises:
        RetinopathyError: naming the list, the line and the fix.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
        elif path.suffix.lower() == LIST_SUFFIX and path.is_file():
            lines, _ = read_lines(path)
            for number, name in lines:
                check_name(path, number, name)
                found.append(image_path(path.parent, name))
        else:
            found.append(path)
    return found


def prepare_photo(path: Path, size: int, max_pixels: int) -> np.ndarray:
    """One photograph as the grader takes it: uint8 [size, size, 3].

    Args:
        path: The image file.
        size: The grader's image size (its spec's).
        max_pixels: Refuse larger images from their header (params.yaml ``data.max_pixels``).

    Raises:
        RetinopathyError: naming the file and what is wrong with it.
    """
    data = read_image_file(path, max_pixels)
    check_pixels(path, data, max_pixels)
    width, height = image_size(path, data)
    if width == height:
        return decode_image(path, size, max_pixels=max_pixels)  # as the Dataset reads training images
    square, _ = square_fundus(path, data, COURSE_IMAGE_SIZE)  # as import-kaggle builds the course's
    return resize(square, size) if size != COURSE_IMAGE_SIZE else np.array(square)


class PhotoDataset(Dataset):
    """``dataset[i]``: ``(image [3, S, S] uint8, i)``, or ``(zeros, -1 - i)`` if photo ``i`` cannot be used.

    A failure never stops the batch: its index is negative, and
    :func:`prepare_photo` says why when it is called again for that photo.
    """

    def __init__(self, paths: Sequence[Path], size: int, max_pixels: int) -> None:
        self.paths, self.size, self.max_pixels = list(paths), size, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            image = prepare_photo(self.paths[index], self.size, self.max_pixels)
        except RetinopathyError:
            return torch.zeros((3, self.size, self.size), dtype=torch.uint8), -1 - index
        return torch.from_numpy(image).permute(2, 0, 1), index

