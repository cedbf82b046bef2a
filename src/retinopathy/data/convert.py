"""Converting photographs of any size into the course layout's ``<name>.jpeg``.

The one definition of how an imported photograph is written, shared by
`import-kaggle` and `import-external` so that a set imported by either looks
the same to the network: the black border cropped, padded to a centred
square (:func:`retinopathy.data.fundus.square_fundus`), resized to
``size`` x ``size`` and saved at JPEG quality :data:`JPEG_QUALITY`.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from retinopathy.data.fundus import square_fundus
from retinopathy.data.images import PIXEL_CEILING, read_image_file

JPEG_QUALITY = 95

# (source photograph, target <name>.jpeg, output side in pixels)
Task = tuple[Path, Path, int]


@dataclass(frozen=True)
class Converted:
    """One photograph written.

    Attributes:
        source: The photograph read.
        found: Whether a fundus was found; False: no pixel was brighter than the border
            threshold, and the photograph was kept whole (padded to a square, not cropped).
        sha256: The SHA-256 of the source file's bytes, as read (for provenance).
    """

    source: Path
    found: bool
    sha256: str


def convert_photo(task: Task) -> Converted:
    """Crop, square, resize and save one photograph (a top-level function: pools pickle it).

    Raises:
        RetinopathyError: naming the source if it is not a regular file or cannot be decoded.
    """
    source, target, size = task
    data = read_image_file(source, PIXEL_CEILING)
    image, found = square_fundus(source, data, size)
    image.save(target, "JPEG", quality=JPEG_QUALITY)
    return Converted(source, found, hashlib.sha256(data).hexdigest())


def convert_photos(tasks: Sequence[Task], workers: int, command: str) -> list[Converted]:
    """Convert every photograph, in ``workers`` processes, with a progress bar on stderr.

    Args:
        tasks: (source, target, size) for each photograph.
        workers: Processes converting in parallel (1: in this process).
        command: The command's name, for the progress bar.

    Returns:
        One :class:`Converted` per task, in the order of ``tasks``.
    """
    converted: list[Converted] = []
    with (
        tqdm(total=len(tasks), unit="img", desc=command, file=sys.stderr) as progress,
        contextlib.ExitStack() as stack,
    ):
        results: Iterable[Converted] = map(convert_photo, tasks)
        if workers > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            results = pool.imap(convert_photo, tasks, chunksize=8)  # ordered: results pair with tasks
        for result in results:
            converted.append(result)
            progress.update()
    return converted
