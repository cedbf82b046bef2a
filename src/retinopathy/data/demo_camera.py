"""The demo's shifted set: eyes of another population, photographed by another camera, in APTOS 2019's layout.

External validation (issue 28) needs a set the grader never saw that differs as
real sets differ from its training data. This one is painted by the same painter
(:func:`~retinopathy.data.synthetic.render_fundus`, same lesions and subtlety), then
photographed by :func:`photograph`, a camera unlike the demo's
(:func:`~retinopathy.data.synthetic.vary`):

- the frame is landscape 4:3 and cuts the top and bottom of the fundus, as many
  APTOS 2019 photographs do, at sizes that vary from photo to photo;
- a softer, wider lens: the painting magnified and blurred (:data:`LENS_BLUR`: at
  the 128 px the demo trains at, about a pixel, the size of a microaneurysm), and
  vignetting that darkens the rim to about half of the centre;
- a yellow-green colour cast and a lighter gamma, outside the demo's own range;
- JPEG compression at quality 30-60 before the lossless PNG it is stored in
  (APTOS's PNGs carry the blocks of an earlier JPEG).

The population differs too: its grades follow APTOS 2019's training set
(:data:`APTOS_GRADES`: far more disease than the course's), every photo is its own
patient (APTOS names no patients or eyes), and one grader labels it
(:class:`~retinopathy.data.demo_grader.Grader`). A share of the photos has camera
faults, as the demo's do (:mod:`retinopathy.data.demo_quality`).

The folder is what Kaggle's download unpacks: ``train.csv`` (``id_code,diagnosis``)
and ``train_images/<id_code>.png`` with 12-hex-digit ids, so ``retinopathy
import-external aptos2019 --root <folder>`` imports it unchanged. Beside them,
``truth.csv`` (``contract.DEMO_TRUTH``) holds what the painter knows and no APTOS user has: each photo's true
grade, its fault and its EyeQ quality; and ``README.txt`` says it is synthetic.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from retinopathy.core.contract import DEMO_MARKER, DEMO_README, DEMO_TRUTH, NUM_GRADES
from retinopathy.core.files import csv_text
from retinopathy.data.demo_grader import Grader, truth_text
from retinopathy.data.demo_quality import Fault, plan
from retinopathy.data.external.aptos2019 import COLUMNS, IMAGES, LABELS, SUFFIX
from retinopathy.data.synthetic import render_fundus

# APTOS 2019's training set per grade 0-4 (train.csv of the Kaggle competition: 3,662 photos).
APTOS_GRADES = (1805, 370, 999, 193, 295)
# contract.DEMO_TRUTH here: demo_grader.TRUTH_COLUMNS with APTOS's id as the image and "train"
# (train.csv lists it) as the split; no public set has this file.
# The painting's side in pixels; the camera magnifies it (the frames are 224-384 px high).
PAINT_SIZE = 256
FRAME_HEIGHTS = (224, 384)
FRAME_ASPECT = 4 / 3
# The fundus's diameter as a share of the frame's height: over 1, the frame cuts it.
FILL = (1.04, 1.12)
# render_fundus draws the fundus's radius at 0.42-0.47 of its side; the middle of that.
PAINTED_RADIUS = 0.445
JPEG_QUALITY = (30, 60)  # the camera's compression, before the PNG
# The lens's blur: a Gaussian radius in the frame's pixels (224-384 high; the grader sees 128).
LENS_BLUR = (1.5, 3.0)
# SeedSequence keys are (seed, SHIFTED, purpose, index): the demo's own keys
# (data/demo.py) have their purposes, 1-6, in the second place, never 9.
SHIFTED = 9
_PAINT, _CAMERA, _GRADER, _ORDER = 1, 2, 3, 4


@dataclass(frozen=True)
class ShiftedSet:
    """What :func:`write_shifted_set` wrote.

    Attributes:
        labels: The grader's grade of each photo, per grade 0-4 (``train.csv``'s ``diagnosis``).
        truth: The painted grade of each photo, per grade 0-4.
        quality: Photos per EyeQ level (Good, Usable, Reject).
        sizes: The smallest and the largest frame, (width, height); None when empty.
    """

    labels: list[int]
    truth: list[int]
    quality: list[int]
    sizes: tuple[tuple[int, int], tuple[int, int]] | None


def grade_counts(count: int, mix: tuple[int, ...] = APTOS_GRADES) -> list[int]:
    """``count`` photos split over the grades in proportion to ``mix`` (largest remainder).

    When ``count >= 5`` every grade gets one at least (taken from the commonest), so a
    small set still has every grade.
    """
    whole = sum(mix)
    quotas = [count * n / whole for n in mix]
    counts = [math.floor(q) for q in quotas]
    # Largest remainder first; ties go to the lower grade, so the result is unique.
    for grade in sorted(range(len(mix)), key=lambda g: (-(quotas[g] - counts[g]), g))[: count - sum(counts)]:
        counts[grade] += 1
    if count >= len(mix):
        for grade in range(len(mix)):
            if counts[grade] == 0:
                counts[counts.index(max(counts))] -= 1
                counts[grade] = 1
    return counts


def photograph(painting: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The other camera's photograph of a painted eye, before its compression.

    Args:
        painting: uint8 [size, size, 3], as :func:`~retinopathy.data.synthetic.render_fundus` returns.
        rng: Source of the framing, the optics and the colour.

    Returns:
        uint8 [height, width, 3], landscape 4:3, 224-384 px high, the fundus cut at the top and bottom.
    """
    size = painting.shape[0]
    height = int(rng.integers(FRAME_HEIGHTS[0], FRAME_HEIGHTS[1] + 1))
    width = round(height * FRAME_ASPECT)
    radius = rng.uniform(*FILL) * height / 2  # the fundus's radius in the frame
    zoom = radius / (PAINTED_RADIUS * size)
    angle = math.radians(rng.uniform(0.0, 360.0))  # a fundus has no up
    centre = (width / 2 + rng.normal(0.0, 0.02 * height), height / 2 + rng.normal(0.0, 0.02 * height))
    # Output (x, y) samples the painting at C + R(-angle) (out - centre) / zoom, C its centre.
    c, s = math.cos(angle) / zoom, math.sin(angle) / zoom
    half = size / 2
    matrix = (c, s, half - c * centre[0] - s * centre[1], -s, c, half + s * centre[0] - c * centre[1])
    frame = (
        Image.fromarray(painting)
        .transform(
            (width, height),
            Image.Transform.AFFINE,
            matrix,
            resample=Image.Resampling.BICUBIC,
            fillcolor=(3, 3, 3),
        )
        .filter(ImageFilter.GaussianBlur(rng.uniform(*LENS_BLUR)))
    )
    pixels = np.asarray(frame, dtype=np.float32) / 255.0
    # Vignetting: the rim of the fundus at 40-60% of the centre's light.
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    rho = np.hypot(xx - centre[0], yy - centre[1]) / radius
    pixels *= (1.0 - rng.uniform(0.4, 0.6) * np.minimum(rho, 1.0) ** 2)[..., None]
    # A yellow-green cast and a lighter gamma: this camera's white balance, not the demo's.
    cast = np.array([rng.uniform(0.8, 0.9), rng.uniform(1.1, 1.25), rng.uniform(1.25, 1.6)], np.float32)
    pixels = np.clip(pixels * cast * rng.uniform(1.0, 1.25), 0.0, 1.0) ** rng.uniform(0.7, 0.85)
    noisy = pixels * 255.0 + rng.normal(0.0, 1.5, size=pixels.shape)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


def compress(pixels: np.ndarray, quality: int) -> np.ndarray:
    """``pixels`` through a JPEG of ``quality`` (4:2:0 chroma, as cameras store them), decoded again."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _rng(seed: int, purpose: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SHIFTED, purpose, index]))


def _id_codes(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` distinct 12-hex-digit ids, as APTOS names its photos."""
    codes: list[str] = []
    seen: set[str] = set()
    while len(codes) < count:
        code = rng.bytes(6).hex()
        if code not in seen:
            seen.add(code)
            codes.append(code)
    return codes


def write_shifted_set(
    folder: Path,
    *,
    seed: int,
    count: int,
    subtlety: float,
    grader: Grader,
    ungradable: float,
    usable: float,
    faults: Mapping[str, Fault],
) -> ShiftedSet:
    """Paint, photograph and write ``count`` photos in APTOS 2019's layout into ``folder`` (which exists).

    Everything is drawn from ``seed`` (through its own keys, so the demo's photos are
    the same with or without this set), so the same arguments give the same bytes.
    With ``count`` 0 only a README saying so is written.

    Args:
        folder: An empty folder: ``train.csv``, ``train_images/`` and ``truth.csv`` go there.
        seed: The demo's seed.
        count: Photos to write.
        subtlety: The painter's subtlety (:func:`~retinopathy.data.synthetic.render_fundus`).
        grader: Draws the label of each photo from its painted grade.
        ungradable: Share with a fault at its reject strength (:func:`~retinopathy.data.demo_quality.plan`).
        usable: Share with a fault at its mild strength.
        faults: The camera faults by name (:data:`retinopathy.quality.degrade.FAULTS`).

    Returns:
        What was written (:class:`ShiftedSet`).
    """
    if count == 0:  # the folder is still an output of the stage: say why it is empty
        (folder / DEMO_README).write_text(
            f"{DEMO_MARKER} (SHIFTED SET)\n\nEmpty: demo.shifted_size is 0 in params.yaml.\n",
            encoding="utf-8",
        )
        return ShiftedSet([0] * NUM_GRADES, [0] * NUM_GRADES, [0, 0, 0], None)
    order = _rng(seed, _ORDER, 0)
    grades = [grade for grade, n in enumerate(grade_counts(count)) for _ in range(n)]
    grades = [grades[i] for i in order.permutation(count)]
    codes = _id_codes(count, order)
    spoils = plan(count, ungradable, usable, order, faults)
    (folder / IMAGES).mkdir()
    labels, rows, shapes = [], [], []
    for index, (code, grade, spoil) in enumerate(zip(codes, grades, spoils, strict=True)):
        painting = render_fundus(grade, _rng(seed, _PAINT, index), PAINT_SIZE, subtle=True, subtlety=subtlety)
        camera = _rng(seed, _CAMERA, index)
        pixels = photograph(painting, camera)
        # The fault happens in front of the sensor (focus, light, framing), the compression after it.
        pixels = spoil.apply(pixels, seed=int(camera.integers(2**31)))
        pixels = compress(pixels, int(camera.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
        # No optimisation and no metadata, so the bytes depend only on the pixels.
        Image.fromarray(pixels).save(folder / IMAGES / f"{code}{SUFFIX}", "PNG")
        label = grader.grade(grade, _rng(seed, _GRADER, index))
        labels.append(label)
        rows.append([code, "train", grade, label, spoil.quality, spoil.fault or "", spoil.strength])
        shapes.append((pixels.shape[1], pixels.shape[0]))
    (folder / LABELS).write_text(csv_text(list(COLUMNS), ([r[0], r[3]] for r in rows)), encoding="utf-8")
    (folder / DEMO_TRUTH).write_text(truth_text(rows), encoding="utf-8")
    written = ShiftedSet(
        labels=np.bincount(labels, minlength=NUM_GRADES).tolist(),
        truth=np.bincount(grades, minlength=NUM_GRADES).tolist(),
        quality=np.bincount([spoil.quality for spoil in spoils], minlength=3).tolist(),
        sizes=(min(shapes), max(shapes)),
    )
    (folder / DEMO_README).write_text(
        _readme(seed, subtlety, written, grader, grades, labels), encoding="utf-8"
    )
    return written


def _readme(
    seed: int, subtlety: float, written: ShiftedSet, grader: Grader, grades: list[int], labels: list[int]
) -> str:
    assert written.sizes is not None
    (narrow, low), (wide, high) = written.sizes
    good, usable, reject = written.quality
    lines = [
        f"{DEMO_MARKER} (SHIFTED SET) - NOT REAL PATIENT IMAGES",
        "",
        "The demo's shifted set, written by `retinopathy demo-data` with the demo: eyes painted",
        "as the demo's are (retinopathy.data.synthetic, the same lesions), but of another",
        "population, and photographed by another camera (retinopathy.data.demo_camera): a",
        "landscape frame that cuts the fundus at the top and bottom, a softer lens with strong",
        "vignetting, a yellow-green cast, and JPEG compression before the PNG. A grader trained",
        "on the demo has never seen such photographs: its figures here show the shift.",
        "",
        f"seed: {seed}; lesion subtlety: {subtlety:g}",
        f"{sum(written.labels)} images, {narrow}x{low} to {wide}x{high} px, each its own patient",
        "labels per grade 0-4 (train.csv's diagnosis): " + ", ".join(str(n) for n in written.labels),
        "",
        *grader.describe(grades, labels, DEMO_TRUTH),
        "The painted grades follow APTOS 2019's mix (1805/370/999/193/295).",
        "",
        f"Quality ({DEMO_TRUTH}, column quality; APTOS itself has no quality labels): {good} Good,",
        f"{usable} Usable (a mild camera fault), {reject} Reject (a fault that makes it ungradable).",
        "",
        "Layout (APTOS 2019 Blindness Detection as Kaggle's download unpacks): train.csv with the",
        "header id_code,diagnosis, and train_images/<id_code>.png with 12-hex-digit ids. Import it",
        "as a test-only set with: retinopathy import-external aptos2019 --root <this folder> --out DIR",
    ]
    return "\n".join(lines) + "\n"
