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
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from retinopathy.core.config import load_params
from retinopathy.core.contract import DEMO_MARKER, DEMO_README, NUM_GRADES, Layout, is_demo_dataset
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import check_name_length, staged_folder
from retinopathy.data.labels import SPLIT_FILES, image_path
from retinopathy.data.synthetic import pair_counts, render_fundus, vary

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = ("demo",)

JPEG_QUALITY = 90
SPLITS = tuple(SPLIT_FILES)  # train, test
# SeedSequence keys are (seed, purpose, split, index): a fixed length, because
# SeedSequence pads short keys with zeros, so [s, 1] and [s, 1, 0] would collide.
_PURPOSE_IMAGE, _PURPOSE_ORDER, _PURPOSE_VARIATION = 1, 2, 3


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


def _write_split(
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


def _readme(
    seed: int, sizes: dict[str, int], counts: dict[str, list[int]], size: int, variation: bool
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


def write_demo_dataset(
    out: str | Path, *, seed: int, train_size: int, test_size: int, image_size: int, variation: bool
) -> None:
    """Write the demo dataset to ``out``, atomically and deterministically.

    The folder is built next to ``out`` under a temporary name and then swapped
    in, so an interrupted run never leaves a half-written dataset. Each image is
    seeded from (seed, split, image number), so the same arguments give byte-identical files
    (with the same numpy and Pillow: their float maths and JPEG encoder make the bytes).

    Args:
        out: Destination folder; an existing demo folder there is replaced entirely.
        seed: Integer 0 <= seed < 2**32.
        train_size: Number of training images: two per patient, an even number >= 10 (so
            every grade occurs).
        test_size: Number of test images (even, >= 10); their patients follow train's.
        image_size: Width and height of the images in pixels (32-2048).
        variation: Vary the photos as cameras do (:func:`~retinopathy.data.synthetic.vary`).

    Raises:
        RetinopathyError: on a bad setting, or if ``out`` exists and is not a demo
            folder (refusing to delete what this command did not write).
    """
    _check_size("seed", seed, 0, 2**32 - 1)
    _check_size("train_size", train_size, 10, even=True)
    _check_size("test_size", test_size, 10, even=True)
    _check_size("image_size", image_size, 32, 2048)
    _check_replaceable(Path(out))
    with staged_folder(out, "demo-data", is_demo_dataset) as work:
        sizes = {"train": train_size, "test": test_size}
        counts = {
            "train": _write_split(work, "train", seed, 0, train_size, image_size, variation),
            "test": _write_split(work, "test", seed, train_size // 2, test_size, image_size, variation),
        }
        (work / DEMO_README).write_text(_readme(seed, sizes, counts, image_size, variation), encoding="utf-8")


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier demo dataset."""
    check_name_length(out)  # first: even a stat of an over-long name fails with an OSError
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise RetinopathyError(f"{out}: exists and is not a folder; remove it or pass --out DIR")
    if any(out.iterdir()) and not is_demo_dataset(out):
        raise RetinopathyError(
            f"{out}: exists and is not a demo dataset (no {DEMO_README} from `retinopathy "
            "demo-data`); refusing to replace it. Pass another --out, or delete the folder."
        )


def main(argv: list[str] | None = None) -> int:
    """CLI ``retinopathy demo-data [--params params.yaml] [--out data/demo]``.

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
    args = parser.parse_args(argv)
    demo = load_params(args.params).demo
    write_demo_dataset(
        args.out,
        seed=demo.seed,
        train_size=demo.train_size,
        test_size=demo.test_size,
        image_size=demo.image_size,
        variation=demo.variation,
    )
    print(
        f"wrote {demo.train_size} train + {demo.test_size} test synthetic images (two eyes per patient) "
        f"({demo.image_size} px, seed {demo.seed}) to {args.out}"
    )
    return 0
