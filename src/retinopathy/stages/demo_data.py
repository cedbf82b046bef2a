"""The `demo-data` stage: write the synthetic demo dataset in the course layout.

The images are patients' two eyes, ``demo_<patient>_left`` and
``demo_<patient>_right``, both in the same split (sizes are image counts: two
per patient), with the grades of both eyes drawn as often alike as in the
course's train split (:func:`~retinopathy.data.synthetic.pair_counts`). Images
are painted by :mod:`retinopathy.data.synthetic`, one per record, each seeded
from (seed, split, image number), so the same settings give byte-identical
files. The folder is built under a temporary name and swapped in whole, and a
README whose first line is ``contract.DEMO_MARKER`` marks it as synthetic
(prepare notes it; the report labels every figure with it).

The label lists hold one grader's grades (:mod:`retinopathy.data.demo_grader`),
``truth.csv`` the painted ones; a share of the photos has a camera fault
(:mod:`retinopathy.data.demo_quality`), and ``quality.csv`` says which, in EyeQ's
format. Beside the demo, ``--shifted`` gets the shifted set from another camera in
APTOS 2019's layout (:mod:`retinopathy.data.demo_camera`), written together with it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from retinopathy.core.config import load_params
from retinopathy.core.contract import (
    DEMO_MARKER,
    DEMO_QUALITY,
    DEMO_README,
    DEMO_TRUTH,
    NUM_GRADES,
    SHIFTED_SUFFIX,
    Layout,
    is_demo_dataset,
    shifted_folder,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import check_name_length, staged_folder
from retinopathy.data.demo_camera import ShiftedSet, write_shifted_set
from retinopathy.data.demo_grader import Grader, truth_text
from retinopathy.data.demo_quality import Spoil, describe_quality, plan, quality_text
from retinopathy.data.labels import SPLIT_FILES, image_path
from retinopathy.data.synthetic import pair_counts, render_fundus, vary
from retinopathy.pipeline.paramkeys import restrict

# The params keys this stage reads (retinopathy.pipeline.paramkeys: reading any other is an error);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = ("demo",)

JPEG_QUALITY = 90
SPLITS = tuple(SPLIT_FILES)  # train, test
# SeedSequence keys are (seed, purpose, split, index): a fixed length, because
# SeedSequence pads short keys with zeros, so [s, 1] and [s, 1, 0] would collide.
# Keys with 9 in the purpose's place are the shifted set's (retinopathy.data.demo_camera).
_PURPOSE_IMAGE, _PURPOSE_ORDER, _PURPOSE_VARIATION = 1, 2, 3
_PURPOSE_GRADER, _PURPOSE_QUALITY, _PURPOSE_FAULT = 4, 5, 6


def _check_size(
    name: str, value: object, minimum: int, maximum: int | None = None, even: bool = False
) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
        or (even and value % 2)
    ):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        what = "an even integer" if even else "an integer"
        why = " (two eyes per patient)" if even else ""
        raise RetinopathyError(
            f"demo: {name} must be {what} {bound}{why}, got {value!r}; fix `demo.{name}` in params.yaml"
        )
    return value


def _stream(seed: int, purpose: int, code: int, number: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, code, number]))


@dataclass(frozen=True)
class _Look:
    """How hard the demo is: the painter's subtlety, the grader, and the cameras' faults."""

    subtlety: float = 0.0
    grader: Grader = Grader()
    ungradable: float = 0.0
    usable: float = 0.0


class _Photo(NamedTuple):
    """One written photo: its name, painted grade, the grader's grade, and the camera's fault."""

    name: str
    grade: int
    label: int
    spoil: Spoil


def _write_split(
    folder: Path,
    split: str,
    seed: int,
    first: int,
    n: int,
    size: int,
    variation: bool,
    look: _Look,
) -> list[_Photo]:
    """Write one split's ``n // 2`` patients (numbered from ``first``) and CSVs; returns its photos."""
    pairs = [kind for kind, count in pair_counts(n // 2).items() for _ in range(count)]
    code = SPLITS.index(split)
    order = np.random.default_rng(np.random.SeedSequence([seed, _PURPOSE_ORDER, code, 0]))
    pairs = [pairs[i] for i in order.permutation(len(pairs))]
    lower_left = order.random(len(pairs)) < 0.5  # which eye has the lower grade
    spoils = plan(n, look.ungradable, look.usable, _stream(seed, _PURPOSE_QUALITY, code, 0))
    photos: list[_Photo] = []
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
            photos.append(_Photo(name, grade, label, spoil))
    img_file, label_file = SPLIT_FILES[split]
    (folder / img_file).write_text("".join(f"{p.name}\n" for p in photos), encoding="utf-8")
    (folder / label_file).write_text("".join(f"{p.label}\n" for p in photos), encoding="utf-8")
    return photos


def _readme(
    seed: int,
    sizes: dict[str, int],
    photos: dict[str, list[_Photo]],
    size: int,
    variation: bool,
    look: _Look,
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


def _per_grade(photos: list[_Photo], which: str) -> list[int]:
    """Photos per grade 0-4: of the painted grade (``which`` "grade") or the label ("label")."""
    return np.bincount([getattr(photo, which) for photo in photos], minlength=NUM_GRADES).tolist()


def write_demo_dataset(
    out: str | Path,
    *,
    seed: int,
    train_size: int,
    test_size: int,
    image_size: int,
    variation: bool,
    subtlety: float = 0.0,
    grader: Grader | None = None,
    ungradable: float = 0.0,
    usable: float = 0.0,
    shifted_size: int = 0,
    shifted_out: str | Path | None = None,
) -> None:
    """Write the demo dataset to ``out`` and its shifted set to ``shifted_out``, deterministically.

    Each folder is built next to its destination under a temporary name and then
    swapped in, the shifted set's just before the demo's, so an interrupted run never
    leaves a half-written dataset. Each image is seeded from (seed, split, image number),
    so the same arguments give byte-identical files (with the same numpy and Pillow:
    their float maths and image encoders make the bytes). The defaults of the keyword
    arguments after ``variation`` draw the demo as it was before they existed.

    Args:
        out: Destination folder; an existing demo folder there is replaced entirely.
        seed: Integer 0 <= seed < 2**32.
        train_size: Number of training images: two per patient, an even number >= 10 (so
            every grade occurs).
        test_size: Number of test images (even, >= 10); their patients follow train's.
        image_size: Width and height of the images in pixels (32-2048).
        variation: Vary the photos as cameras do (:func:`~retinopathy.data.synthetic.vary`).
        subtlety: 0-1: smaller, fainter and fewer lesions (:func:`~retinopathy.data.synthetic.render_fundus`).
        grader: Draws each label from the painted grade; None labels every image with its painted grade.
        ungradable: Share of each split's photos given a camera fault that makes them ungradable.
        usable: Share of each split's photos given a mild camera fault (still gradable).
        shifted_size: Photos of the shifted set (:mod:`retinopathy.data.demo_camera`); 0: none.
        shifted_out: Its folder, replaced entirely (required when ``shifted_size`` > 0).

    Raises:
        RetinopathyError: on a bad setting, or if ``out`` or ``shifted_out`` exists and is not
            a demo folder (refusing to delete what this command did not write).
    """
    _check_size("seed", seed, 0, 2**32 - 1)
    _check_size("train_size", train_size, 10, even=True)
    _check_size("test_size", test_size, 10, even=True)
    _check_size("image_size", image_size, 32, 2048)
    if shifted_size:
        _check_size("shifted_size", shifted_size, 10)
    look = _Look(subtlety, grader if grader is not None else Grader(), ungradable, usable)
    _check_replaceable(Path(out))
    if shifted_out is not None:
        _check_apart(Path(out), Path(shifted_out))
        _check_replaceable(Path(shifted_out), "--shifted")
    elif shifted_size:
        raise RetinopathyError("demo: a shifted set (shifted_size > 0) needs its folder, shifted_out")
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(staged_folder(out, "demo-data", is_demo_dataset))
        shifted: ShiftedSet | None = None
        if shifted_out is not None:
            # Entered second, so it is swapped in first: the demo's folder, the one the
            # pipeline reads, changes last.
            other = stack.enter_context(staged_folder(shifted_out, "demo-data", is_demo_dataset))
            shifted = write_shifted_set(
                other,
                seed=seed,
                count=shifted_size,
                subtlety=subtlety,
                grader=look.grader,
                ungradable=ungradable,
                usable=usable,
            )
        sizes = {"train": train_size, "test": test_size}
        photos = {
            "train": _write_split(work, "train", seed, 0, train_size, image_size, variation, look),
            "test": _write_split(work, "test", seed, train_size // 2, test_size, image_size, variation, look),
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
            _readme(seed, sizes, photos, image_size, variation, look, shifted), encoding="utf-8"
        )


def _check_replaceable(out: Path, option: str = "--out") -> None:
    """Refuse to replace anything but an empty folder or an earlier demo dataset."""
    check_name_length(out)  # first: even a stat of an over-long name fails with an OSError
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise RetinopathyError(f"{out}: exists and is not a folder; remove it or pass {option} DIR")
    if any(out.iterdir()) and not is_demo_dataset(out):
        raise RetinopathyError(
            f"{out}: exists and is not a demo dataset (no {DEMO_README} from `retinopathy "
            f"demo-data`); refusing to replace it. Pass another {option}, or delete the folder."
        )


def _check_apart(out: Path, shifted: Path) -> None:
    """Refuse a shifted set's folder that is the demo's, inside it or holding it (one replaces the other)."""
    a, b = Path(os.path.abspath(out)), Path(os.path.abspath(shifted))
    if a == b or a in b.parents or b in a.parents:
        raise RetinopathyError(
            f"--shifted {shifted}: must be a folder apart from --out {out} (not the same, inside it or "
            f"holding it); pass another --shifted (default: {shifted_folder(out)})"
        )


def main(argv: list[str] | None = None) -> int:
    """CLI ``retinopathy demo-data [--params params.yaml] [--out data/demo] [--shifted DIR]``.

    Args:
        argv: Arguments after the command name; None reads ``sys.argv``.

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="retinopathy demo-data",
        description="Write the synthetic demo dataset (course layout) from the `demo` "
        "section of params.yaml.",
    )
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="The parameters file (default: params.yaml)."
    )
    parser.add_argument(
        "--out",
        default=str(Layout.demo),
        metavar="DIR",
        help=f"The output folder, replaced (default: {Layout.demo}).",
    )
    parser.add_argument(
        "--shifted",
        metavar="DIR",
        help=f"The shifted set's folder, replaced (default: beside --out, its name + {SHIFTED_SUFFIX}).",
    )
    args = parser.parse_args(argv)
    demo = restrict(load_params(args.params), PARAMS, __name__).demo
    shifted = Path(args.shifted) if args.shifted is not None else shifted_folder(args.out)
    write_demo_dataset(
        args.out,
        seed=demo.seed,
        train_size=demo.train_size,
        test_size=demo.test_size,
        image_size=demo.image_size,
        variation=demo.variation,
        subtlety=demo.subtlety,
        grader=Grader(demo.grader_misses, demo.grader_slips, demo.grader_artefacts),
        ungradable=demo.ungradable,
        usable=demo.usable,
        shifted_size=demo.shifted_size,
        shifted_out=shifted,
    )
    print(
        f"wrote {demo.train_size} train + {demo.test_size} test synthetic images (two eyes per patient) "
        f"({demo.image_size} px, seed {demo.seed}) to {args.out}, and {demo.shifted_size} photos from "
        f"another camera (APTOS 2019's layout) to {shifted}"
    )
    return 0
