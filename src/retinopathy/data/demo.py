"""The synthetic demo dataset's files: each split's patients in the course layout, and its README.

:func:`write_demo` fills a demo folder (and the shifted set's, if any): :func:`write_split`
paints one split's patients (two eyes each, their grades drawn as often alike as in the
course's train split, :func:`~retinopathy.data.synthetic.pair_counts`) with the
:class:`Look`'s subtlety and camera faults, and writes their JPEGs and the split's two
lists, which hold one grader's grades (:mod:`retinopathy.data.demo_grader`);
``truth.csv`` keeps the painted grades and ``quality.csv`` the photos' EyeQ quality
(:mod:`retinopathy.data.demo_quality`). :func:`readme` is the README whose first line,
``contract.DEMO_MARKER``, marks the folder as synthetic. Each image is seeded from
(seed, split, image number), so the same settings give byte-identical files.
`retinopathy demo-data` (``stages/demo_data.py``) checks the settings and builds the
folders with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from retinopathy.core.contract import DEMO_MARKER, DEMO_QUALITY, DEMO_README, DEMO_TRUTH, NUM_GRADES
from retinopathy.data.demo_camera import ShiftedSet, write_shifted_set
from retinopathy.data.demo_grader import Grader, truth_text
from retinopathy.data.demo_quality import Fault, Spoil, describe_quality, plan, quality_text
from retinopathy.data.labels import SPLIT_FILES, image_path
from retinopathy.data.synthetic import pair_counts, render_fundus, vary

JPEG_QUALITY = 90
SPLITS = tuple(SPLIT_FILES)  # train, test
# SeedSequence keys are (seed, purpose, split, index): a fixed length, because
# SeedSequence pads short keys with zeros, so [s, 1] and [s, 1, 0] would collide.
# Keys with 9 in the purpose's place are the shifted set's (retinopathy.data.demo_camera).
_PURPOSE_IMAGE, _PURPOSE_ORDER, _PURPOSE_VARIATION = 1, 2, 3
_PURPOSE_GRADER, _PURPOSE_QUALITY, _PURPOSE_FAULT = 4, 5, 6


def _stream(seed: int, purpose: int, code: int, number: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, code, number]))


@dataclass(frozen=True)
class Look:
    """How hard the demo is: the painter's subtlety, the grader, and the cameras' faults."""

    subtlety: float = 0.0
    grader: Grader = Grader()
    ungradable: float = 0.0
    usable: float = 0.0
    # The faults by name (retinopathy.quality.degrade.FAULTS, passed in: data/ imports no quality/).
    faults: Mapping[str, Fault] = field(default_factory=dict)


class Photo(NamedTuple):
    """One written photo: its name, painted grade, the grader's grade, and the camera's fault."""

    name: str
    grade: int
    label: int
    spoil: Spoil


def write_split(
    folder: Path,
    split: str,
    seed: int,
    first: int,
    n: int,
    size: int,
    variation: bool,
    look: Look,
) -> list[Photo]:
    """Write one split's ``n // 2`` patients (numbered from ``first``) and CSVs; returns its photos."""
    pairs = [kind for kind, count in pair_counts(n // 2).items() for _ in range(count)]
    code = SPLITS.index(split)
    order = np.random.default_rng(np.random.SeedSequence([seed, _PURPOSE_ORDER, code, 0]))
    pairs = [pairs[i] for i in order.permutation(len(pairs))]
    lower_left = order.random(len(pairs)) < 0.5  # which eye has the lower grade
    spoils = plan(n, look.ungradable, look.usable, _stream(seed, _PURPOSE_QUALITY, code, 0), look.faults)
    photos: list[Photo] = []
    for i, ((lower, higher), flip) in enumerate(zip(pairs, lower_left.tolist(), strict=True)):
        patient = first + i
        for side, (eye, grade) in enumerate(
            (("left", lower if flip else higher), ("right", higher if flip else lower))
        ):
            number = 2 * patient + side  # the image's own seed: the eyes share nothing but the grades
            name = f"demo_{patient:05d}_{eye}"
            rng = np.random.default_rng(np.random.SeedSequence([seed, _PURPOSE_IMAGE, code, number]))
            pixels = render_fundus(grade, rng, size, eye=eye, subtle=variation, subtlety=look.subtlety)
            if variation:  # a stream of its own: without variation the drawing is what it always was
                pixels = vary(
                    pixels,
                    np.random.default_rng(np.random.SeedSequence([seed, _PURPOSE_VARIATION, code, number])),
                )
            spoil = spoils[len(photos)]
            # The fault's direction (off-frame, flare) from a stream of the image's own.
            pixels = spoil.apply(
                pixels, seed=int(_stream(seed, _PURPOSE_FAULT, code, number).integers(2**31))
            )
            # Fixed quality and 4:4:4 chroma (tiny yellow/red lesions differ mainly in
            # colour); no optimize/progressive/EXIF, so the bytes are reproducible.
            Image.fromarray(pixels).save(
                image_path(folder, name), "JPEG", quality=JPEG_QUALITY, subsampling=0
            )
            label = look.grader.grade(grade, _stream(seed, _PURPOSE_GRADER, code, number))
            photos.append(Photo(name, grade, label, spoil))
    img_file, label_file = SPLIT_FILES[split]
    (folder / img_file).write_text("".join(f"{p.name}\n" for p in photos), encoding="utf-8")
    (folder / label_file).write_text("".join(f"{p.label}\n" for p in photos), encoding="utf-8")
    return photos


def readme(
    seed: int,
    sizes: dict[str, int],
    photos: dict[str, list[Photo]],
    size: int,
    variation: bool,
    look: Look,
    shifted: ShiftedSet | None,
) -> str:
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
        f"lesion subtlety: {look.subtlety:g} (0: as large and as many as drawn before; 1: the subtlest)",
    ]
    for split in SPLITS:
        per_grade = ", ".join(f"grade {g}: {c}" for g, c in enumerate(_per_grade(photos[split], "label")))
        lines.append(f"{split}: {sizes[split]} images of {sizes[split] // 2} patients ({per_grade})")
    every = [photo for split in SPLITS for photo in photos[split]]
    lines += [
        "",
        *look.grader.describe([p.grade for p in every], [p.label for p in every], DEMO_TRUTH),
        "",
        *describe_quality([p.spoil for p in every], DEMO_QUALITY),
        "",
        "Layout (as the course's dataset): train_img.csv / test_img.csv list image names",
        "without extension, train_label.csv / test_label.csv the grade 0-4 on the same",
        "line; no header; the images are <name>.jpeg in this folder. Each patient's two",
        "eyes are demo_<patient>_left and demo_<patient>_right, in the same split.",
    ]
    if shifted is not None:
        lines.append(
            f"The shifted set from another camera ({sum(shifted.labels)} images) was written with it."
        )
    lines += [
        "Regenerate with `retinopathy demo-data` (byte-identical for the same settings",
        "and the same numpy and Pillow versions).",
    ]
    return "\n".join(lines) + "\n"


def _per_grade(photos: list[Photo], which: str) -> list[int]:
    """Photos per grade 0-4: of the painted grade (``which`` "grade") or the label ("label")."""
    return np.bincount([getattr(photo, which) for photo in photos], minlength=NUM_GRADES).tolist()


def write_demo(
    work: Path,
    shifted_work: Path | None,
    *,
    seed: int,
    sizes: dict[str, int],
    image_size: int,
    variation: bool,
    look: Look,
    shifted_size: int,
) -> None:
    """Write a demo into the empty folder ``work`` and its shifted set into ``shifted_work`` (if given).

    Args:
        work: The demo's folder (staged by the caller): the course layout, ``truth.csv``,
            ``quality.csv`` and the README, written last.
        shifted_work: The shifted set's folder (staged by the caller), or None for none.
        seed: Integer 0 <= seed < 2**32.
        sizes: Images per split (``train``, ``test``): two per patient, test's patients after train's.
        image_size: Width and height of the demo's images in pixels.
        variation: Vary the photos as cameras do (:func:`~retinopathy.data.synthetic.vary`).
        look: The painter's subtlety, the grader and the share of faulted photos (and the faults).
        shifted_size: Photos of the shifted set (used only with ``shifted_work``).
    """
    shifted: ShiftedSet | None = None
    if shifted_work is not None:
        shifted = write_shifted_set(
            shifted_work,
            seed=seed,
            count=shifted_size,
            subtlety=look.subtlety,
            grader=look.grader,
            ungradable=look.ungradable,
            usable=look.usable,
            faults=look.faults,
        )
    firsts = {"train": 0, "test": sizes["train"] // 2}
    photos = {
        split: write_split(work, split, seed, firsts[split], sizes[split], image_size, variation, look)
        for split in SPLITS
    }
    every = [(split, photo) for split in SPLITS for photo in photos[split]]
    (work / DEMO_TRUTH).write_text(
        truth_text(
            [
                [p.name, split, p.grade, p.label, p.spoil.quality, p.spoil.fault or "", p.spoil.strength]
                for split, p in every
            ]
        ),
        encoding="utf-8",
    )
    (work / DEMO_QUALITY).write_text(
        quality_text([(p.name, p.label, p.spoil) for _, p in every]), encoding="utf-8"
    )
    (work / DEMO_README).write_text(
        readme(seed, sizes, photos, image_size, variation, look, shifted), encoding="utf-8"
    )
