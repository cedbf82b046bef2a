"""Write a synthetic course-layout project for the GPU check: distinct 512 px JPEGs, listed many times.

``python scripts/gpu_data.py FOLDER DISTINCT TRAIN TEST`` paints DISTINCT demo
fundus photographs (512 px, JPEG quality 95, as the course's), then makes TRAIN
training and TEST test images as hard links to them under distinct names (the
course layout lists each name once), so every epoch decodes TRAIN files.
"""

from __future__ import annotations

import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

from retinopathy.data.synthetic import render_fundus, vary


def paint(task: tuple[Path, int]) -> None:
    folder, index = task
    pixels = vary(
        render_fundus(index % 5, np.random.default_rng([7, index]), 512, subtle=True),
        np.random.default_rng([8, index]),
    )
    Image.fromarray(pixels).save(folder / f"source_{index:04d}.jpeg", "JPEG", quality=95)


def main() -> None:
    folder, distinct, train, test = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    folder.mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(paint, [(folder, i) for i in range(distinct)])
    for split, count, first in (("train", train, 0), ("test", test, train)):
        names = [f"{split}_{first + i:06d}" for i in range(count)]
        for i, name in enumerate(names):
            os.link(folder / f"source_{(first + i) % distinct:04d}.jpeg", folder / f"{name}.jpeg")
        (folder / f"{split}_img.csv").write_text("".join(f"{n}\n" for n in names))
        grades = ((first + i) % distinct % 5 for i in range(count))
        (folder / f"{split}_label.csv").write_text("".join(f"{g}\n" for g in grades))


if __name__ == "__main__":
    main()
