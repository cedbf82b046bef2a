"""The synthetic demo dataset's files: each split's patients in the course layout, and its README.

:func:`write_split` paints one split's patients (two eyes each, their grades drawn
as often alike as in the course's train split, :func:`~retinopathy.data.synthetic.pair_counts`)
and writes their JPEGs and the split's two lists; :func:`readme` is the README whose
first line, ``contract.DEMO_MARKER``, marks the folder as synthetic. Each image is
seeded from (seed, split, image number), so the same settings give byte-identical
files. `retinopathy demo-data` (``stages/demo_data.py``) checks the settings and
builds the folder with them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from retinopathy.core.contract import DEMO_MARKER, NUM_GRADES
from retinopathy.data.labels import SPLIT_FILES, image_path
from retinopathy.data.synthetic import pair_counts, render_fundus, vary

JPEG_QUALITY = 90
SPLITS = tuple(SPLIT_FILES)  # train, test
# SeedSequence keys are (seed, purpose, split, index): a fixed length, because
# SeedSequence pads short keys with zeros, so [s, 1] and [s, 1, 0] would collide.
_PURPOSE_IMAGE, _PURPOSE_ORDER, _PURPOSE_VARIATION = 1, 2, 3


def write_split(
    folder: Path, split: str, seed: int, first: int, n: int, size: int, variation: bool
) -> list[int]:
    """Write one split's ``n // 2`` patients (numbered from ``first``) and CSVs; returns its class counts."""
    pairs = [kind for kind, count in pair_counts(n // 2).items() for _ in range(count)]
    code = SPLITS.index(split)
    order = np.random.default_rng(np.random.SeedSequence([seed, _PURPOSE_ORDER, code, 0]))
    pairs = [pairs[i] for i in order.permutation(len(pairs))]
    lower_left = order.random(len(pairs)) < 0.5  # which eye has the lower grade
    names, grades = [], []
    for i, ((lower, higher), flip) in enumerate(zip(pairs, lower_left.tolist(), strict=True)):
        patient = first + i
        for side, (eye, grade) in enumerate(
            (("left", lower if flip else higher), ("right", higher if flip else lower))
        ):
            number = 2 * patient + side  # the image's own seed: the eyes share nothing but the grades
            name = f"demo_{patient:05d}_{eye}"
            rng = np.random.default_rng(np.random.SeedSequence([seed, _PURPOSE_IMAGE, code, number]))
            pixels = render_fundus(grade, rng, size, eye=eye, subtle=variation)
            if variation:  # a stream of its own: without variation the drawing is what it always was
                pixels = vary(
                    pixels,
                    np.random.default_rng(np.random.SeedSequence([seed, _PURPOSE_VARIATION, code, number])),
                )
            # Fixed quality and 4:4:4 chroma (tiny yellow/red lesions differ mainly in
            # colour); no optimize/progressive/EXIF, so the bytes are reproducible.
            Image.fromarray(pixels).save(
                image_path(folder, name), "JPEG", quality=JPEG_QUALITY, subsampling=0
            )
            names.append(name)
            grades.append(grade)
    img_file, label_file = SPLIT_FILES[split]
    (folder / img_file).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    (folder / label_file).write_text("".join(f"{g}\n" for g in grades), encoding="utf-8")
    return np.bincount(grades, minlength=NUM_GRADES).tolist()


def readme(seed: int, sizes: dict[str, int], counts: dict[str, list[int]], size: int, variation: bool) -> str:
    """The README of a demo folder: what it is (:data:`~retinopathy.core.contract.DEMO_MARKER` first), its
    settings, each split's patients and grades, and the layout."""
    lines = [
        f"{DEMO_MARKER} - NOT REAL PATIENT IMAGES",
        "",
        "Every image in this folder was drawn by a program (`retinopathy demo-data`,",
        "painter retinopathy.data.synthetic); none is a photograph of a person. The",
        "lesions are exaggerated so that a small network can learn them quickly on a",
        "CPU. Use this folder to try the pipeline, never to judge a model for clinical use.",
        "",
        f"seed: {seed}",
        f"image size: {size}x{size} px, RGB JPEG quality {JPEG_QUALITY}",
        "variation between photos (exposure, colour cast, focus, noise, rotation, field of view; "
        "subtle grade-1 lesions): " + ("on" if variation else "off"),
    ]
    for split in SPLITS:
        per_grade = ", ".join(f"grade {g}: {c}" for g, c in enumerate(counts[split]))
        lines.append(f"{split}: {sizes[split]} images of {sizes[split] // 2} patients ({per_grade})")
    lines += [
        "",
        "Layout (as the course's dataset): train_img.csv / test_img.csv list image names",
        "without extension, train_label.csv / test_label.csv the grade 0-4 on the same",
        "line; no header; the images are <name>.jpeg in this folder. Each patient's two",
        "eyes are demo_<patient>_left and demo_<patient>_right, in the same split.",
        "Regenerate with `retinopathy demo-data` (byte-identical for the same settings",
        "and the same numpy and Pillow versions).",
    ]
    return "\n".join(lines) + "\n"
