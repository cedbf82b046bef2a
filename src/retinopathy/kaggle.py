"""Build the course's dataset (512x512 JPEGs + four split CSVs) from the Kaggle download.

Kaggle's "Diabetic Retinopathy Detection" (EyePACS, 2015) ships ``trainLabels.csv``
(header ``image,level``) and a folder of full-size ``<image>.jpeg`` photographs,
about 4752x3168 with a black border around the round fundus. For each image we
crop the border, pad to a square with black so the fundus stays centred and
round, resize to ``size`` x ``size`` and save at JPEG quality 95.

The split is either the course's own lists (``data/splits/lab``; their labels
must agree with ``trainLabels.csv``) or a seeded split stratified by grade that
keeps both eyes of a patient on the same side. Everything is validated before
anything is written, and the output folder appears only when complete: it is
built in a temporary sibling folder and renamed into place.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile
from tqdm import tqdm

from retinopathy.data import (
    MAX_LISTED,
    NUM_CLASSES,
    SPLIT_FILES,
    check_grade,
    check_images,
    check_name,
    image_path,
    parse_course_splits,
    read_course_splits,
    read_lines,
)
from retinopathy.errors import RetinopathyError, where
from retinopathy.files import staged_folder

DEFAULT_SPLIT_LISTS = Path("data/splits/lab")
JPEG_QUALITY = 95
LABELS_HEADER = ("image", "level")
# The border is found on a copy about this many pixels wide: fast, and precise
# to a fraction of a percent of the fundus diameter.
_BOX_SIDE = 256
# Decode large JPEGs at a reduced DCT scale whose short side is still this
# many times the output size: the fundus fills most of the short side, so the
# crop is still resized down, while a 4752x3168 photograph decodes at 1/4
# scale (1/16 of the pixels) for 512x512 output.
_DECODE_MARGIN = 1.5
_PATIENT = re.compile(r"(.+)_(?:left|right)")


class NoFundusError(RetinopathyError):
    """No pixel of the image is brighter than the threshold: nothing to crop to."""


def crop_to_fundus(img: Image.Image, threshold: int = 10) -> Image.Image:
    """Crop the black border around the fundus and pad the result to a black square.

    The bounding box of the pixels whose brightest channel exceeds
    ``threshold`` is found on a box-averaged copy about 256 pixels wide; rows
    and columns with only a speck of bright pixels do not count. The
    crop is then centred on a square black canvas, so a fundus whose top and
    bottom are cut off by the photograph stays round and centred.

    Args:
        img: A fundus photograph (any mode; the result is RGB).
        threshold: Brightness (0-255) above which a pixel belongs to the fundus.

    Returns:
        A square RGB image, side the longer side of the bounding box.

    Raises:
        NoFundusError: no pixel is brighter than ``threshold``.
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    width, height = rgb.size
    factor = max(1, max(width, height) // _BOX_SIDE)
    small = np.asarray(rgb.reduce(factor) if factor > 1 else rgb)
    bright = small.max(axis=2) > threshold
    # A row or column is part of the fundus only with bright cells over about 1%
    # of the longer side, so a speck of dust or a stray hot pixel in the
    # border does not widen the box.
    min_cells = max(1, max(bright.shape) // 100)
    rows = np.flatnonzero(bright.sum(axis=1) >= min_cells)
    cols = np.flatnonzero(bright.sum(axis=0) >= min_cells)
    if rows.size == 0:
        raise NoFundusError(f"no pixel is brighter than {threshold}: the image is black")
    box = (
        int(cols[0]) * factor,
        int(rows[0]) * factor,
        min(width, (int(cols[-1]) + 1) * factor),
        min(height, (int(rows[-1]) + 1) * factor),
    )
    return pad_to_square(rgb.crop(box))


def pad_to_square(img: Image.Image) -> Image.Image:
    """Centre ``img`` on a black square canvas whose side is its longer side."""
    width, height = img.size
    side = max(width, height)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(img.convert("RGB"), ((side - width) // 2, (side - height) // 2))
    return canvas


# --------------------------------------------------------------------------- inputs


def read_kaggle_labels(labels_csv: str | Path) -> dict[str, tuple[int, int]]:
    """Read and validate Kaggle's ``trainLabels.csv``.

    Args:
        labels_csv: The file, with header ``image,level`` and one ``name,grade`` per line.

    Returns:
        ``{image name: (grade, 1-based line)}`` in file order.

    Raises:
        RetinopathyError: a missing file, a wrong header, a malformed line, a
            grade outside 0-4 or a duplicated image, naming the file and line.
    """
    path = Path(labels_csv)
    if not path.is_file():
        raise RetinopathyError(f"{path}: file not found; pass Kaggle's trainLabels.csv")
    lines, _ = read_lines(path)  # BOM, CRLF and trailing blank lines are harmless here
    header = [field.strip().lower() for field in lines[0][1].split(",")] if lines else []
    if tuple(header) != LABELS_HEADER:
        found = repr(lines[0][1]) if lines else "an empty file"
        raise RetinopathyError(
            f"{where(path, lines[0][0] if lines else 1)}: expected the header "
            f"'{','.join(LABELS_HEADER)}' of Kaggle's trainLabels.csv, found {found}"
        )
    labels: dict[str, tuple[int, int]] = {}
    for number, line in lines[1:]:
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 2 or not fields[0]:
            raise RetinopathyError(f"{where(path, number)}: expected 'image,level', found {line!r}")
        name, level = fields
        check_name(path, number, name)  # the same rule the course layout's lists obey
        grade = check_grade(path, number, level)
        if name in labels:
            raise RetinopathyError(
                f"{where(path, number)}: image {name!r} is listed twice, also at line "
                f"{labels[name][1]}; delete one of the two lines"
            )
        labels[name] = (grade, number)
    if not labels:
        raise RetinopathyError(f"{path}: no images listed under the header")
    return labels


def splits_from_lists(
    split_lists: str | Path, labels: dict[str, tuple[int, int]], labels_csv: str | Path
) -> dict[str, list[str]]:
    """Take the split from the course's lists, checking them against ``trainLabels.csv``.

    Raises:
        RetinopathyError: the lists are invalid, name an image that is not in
            ``trainLabels.csv``, or give it another grade (naming both lines).
    """
    splits: dict[str, list[str]] = {}
    for split, listing in parse_course_splits(split_lists).items():  # both valid and disjoint
        for record, img_line, lab_line in zip(
            listing.records, listing.img_lines, listing.lab_lines, strict=True
        ):
            if record.image not in labels:
                raise RetinopathyError(
                    f"{where(listing.img_path, img_line)}: {record.image!r} is not in "
                    f"{labels_csv}; use split lists made for this download"
                )
            level, line = labels[record.image]
            if level != record.label:
                raise RetinopathyError(
                    f"{where(listing.lab_path, lab_line)} gives {record.image!r} grade "
                    f"{record.label} but {where(labels_csv, line)} gives grade {level}; "
                    "the split lists and trainLabels.csv disagree - fix whichever is wrong"
                )
        splits[split] = [record.image for record in listing.records]
    return splits


def lists_cover(split_lists: Path, labels: dict[str, tuple[int, int]]) -> bool:
    """Whether all four lists exist under ``split_lists`` and name only labelled images."""
    files = [split_lists / name for pair in SPLIT_FILES.values() for name in pair]
    if not all(file.is_file() for file in files):
        return False
    splits = read_course_splits(split_lists)
    return all(record.image in labels for record in splits.train + splits.test)


def patient_of(name: str) -> str:
    """The patient of an EyePACS image name: ``"10_left"`` -> ``"10"`` (else the name)."""
    match = _PATIENT.fullmatch(name)
    return match.group(1) if match else name


def stratified_split(
    labels: dict[str, tuple[int, int]], test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Seeded train/test split, stratified by grade, both eyes of a patient together.

    Patients are grouped by their worse eye's grade and ``test_fraction`` of
    each group (rounded) goes to test, so per-grade proportions match up to
    rounding and no patient's other eye leaks across the split.

    Returns:
        ``{"train": names, "test": names}``, each in ``trainLabels.csv`` order.

    Raises:
        RetinopathyError: the fraction is outside (0, 1) or leaves a split empty.
    """
    if not 0.0 < test_fraction < 1.0:
        raise RetinopathyError(f"test fraction must be between 0 and 1, got {test_fraction}")
    patients: dict[str, int] = {}
    for name, (level, _) in labels.items():
        key = patient_of(name)
        patients[key] = max(level, patients.get(key, 0))
    rng = np.random.default_rng(seed)
    test_patients: set[str] = set()
    for grade in range(NUM_CLASSES):
        group = [key for key, worst in patients.items() if worst == grade]
        chosen = rng.permutation(len(group))[: round(len(group) * test_fraction)]
        test_patients.update(group[i] for i in chosen)
    test = [name for name in labels if patient_of(name) in test_patients]
    train = [name for name in labels if patient_of(name) not in test_patients]
    if not train or not test:
        raise RetinopathyError(
            f"a test fraction of {test_fraction} leaves the "
            f"{'train' if not train else 'test'} split empty with {len(labels)} images"
        )
    return {"train": train, "test": test}


# --------------------------------------------------------------------------- conversion


def _convert(task: tuple[Path, Path, int]) -> str | None:
    """Crop, square and resize one photograph; return its name if it had no fundus."""
    source, target, size = task
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RetinopathyError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; leave it False")
    blank = None
    try:
        with Image.open(source) as image:
            wanted = math.ceil(size * _DECODE_MARGIN)
            image.draft("RGB", (wanted, wanted))  # JPEG DCT scaling; no-op for other formats
            image.load()
            try:
                square = crop_to_fundus(image)
            except NoFundusError:
                square, blank = pad_to_square(image), source.stem
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise RetinopathyError(f"{source}: cannot decode the image ({error}); download it again") from None
    resized = square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    resized.save(target, "JPEG", quality=JPEG_QUALITY)
    return blank


def _run(tasks: Sequence[tuple[Path, Path, int]], workers: int) -> list[str]:
    """Convert every image, in ``workers`` processes; return the names kept uncropped."""
    blanks: list[str] = []
    with (
        tqdm(total=len(tasks), unit="img", desc="import-kaggle", file=sys.stderr) as progress,
        contextlib.ExitStack() as stack,
    ):
        results: Iterable[str | None] = map(_convert, tasks)
        if workers > 1:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            results = pool.imap_unordered(_convert, tasks, chunksize=8)
        for blank in results:
            if blank:
                blanks.append(blank)
            progress.update()
    return blanks


def import_kaggle(
    labels_csv: str | Path,
    images_dir: str | Path,
    out: str | Path,
    *,
    size: int = 512,
    split_lists: Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 1,
) -> None:
    """Build the course layout in ``out`` from Kaggle's ``trainLabels.csv`` and images.

    Args:
        labels_csv: Kaggle's ``trainLabels.csv``.
        images_dir: Folder of the full-size ``<image>.jpeg`` files.
        out: Folder to create; must not exist yet (or be empty).
        size: Side of the square output images.
        split_lists: Folder with the four course CSVs to take the split from;
            None for a seeded stratified split (``test_fraction``, ``seed``).
            Images of ``trainLabels.csv`` in neither list are left out, and
            the number left out is printed.
        test_fraction: Share of patients per grade in the test split.
        seed: Seed of the stratified split.
        workers: Processes converting images in parallel.

    Raises:
        RetinopathyError: invalid inputs (checked before anything is written),
            an undecodable image, or an existing non-empty ``out``.
    """
    labels_csv, images_dir, out = Path(labels_csv), Path(images_dir), Path(out)
    if size < 1 or workers < 1:
        raise RetinopathyError(f"size and workers must be >= 1, got {size} and {workers}")
    labels = read_kaggle_labels(labels_csv)
    if not images_dir.is_dir():
        raise RetinopathyError(f"{images_dir}: not a folder; pass Kaggle's train/ image folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RetinopathyError(f"{out}: already exists; remove it or choose another --out")
    if split_lists is not None:
        splits = splits_from_lists(split_lists, labels, labels_csv)
        source = f"the split lists in {split_lists}"
    else:
        splits = stratified_split(labels, test_fraction, seed)
        source = (
            f"a split stratified by grade, grouped by patient (test fraction {test_fraction}, seed {seed})"
        )
    chosen = splits["train"] + splits["test"]
    missing = [name for name in chosen if not image_path(images_dir, name).is_file()]
    if missing:
        listed = "\n".join(
            f"  {where(labels_csv, labels[name][1])}: {image_path(images_dir, name)}"
            for name in missing[:MAX_LISTED]
        )
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise RetinopathyError(
            f"{len(missing)} listed image(s) missing from {images_dir}:\n{listed}{more}\n"
            "Download or unpack them (Kaggle ships train.zip.001-005) before importing."
        )

    with staged_folder(out) as build:  # `out` is empty or absent (checked above)
        for split, (img_file, lab_file) in SPLIT_FILES.items():
            names = splits[split]
            (build / img_file).write_text("".join(f"{name}\n" for name in names))
            (build / lab_file).write_text("".join(f"{labels[name][0]}\n" for name in names))
        tasks = [(image_path(images_dir, name), image_path(build, name), size) for name in chosen]
        blanks = _run(tasks, workers)
        course = read_course_splits(build)  # what prepare will read, checked before we publish
        check_images(build, course.train + course.test, workers=workers)

    left_out = len(labels) - len(chosen)
    print(
        f"wrote {out}: {len(splits['train'])} train and {len(splits['test'])} test images, "
        f"{size}x{size}, from {source}"
    )
    if left_out:
        print(f"note: {left_out} images of {labels_csv} are in neither split and were not imported")
    if blanks:
        print(
            f"warning: {len(blanks)} image(s) have no pixel brighter than the border threshold and "
            f"were kept whole (padded to a square, not cropped): {', '.join(sorted(blanks)[:MAX_LISTED])}"
            + (" ..." if len(blanks) > MAX_LISTED else ""),
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    """``retinopathy import-kaggle``: parse the command line and run ``import_kaggle``."""
    parser = argparse.ArgumentParser(
        prog="retinopathy import-kaggle",
        description="Build the course's square JPEG dataset (four split CSVs + <image>.jpeg) "
        "from Kaggle's trainLabels.csv and full-size training images.",
    )
    parser.add_argument("--labels", type=Path, required=True, help="Kaggle's trainLabels.csv")
    parser.add_argument("--images", type=Path, required=True, help="folder of <image>.jpeg")
    parser.add_argument("--out", type=Path, required=True, help="folder to create")
    parser.add_argument("--size", type=int, default=512, help="output side (default 512)")
    parser.add_argument(
        "--split-lists",
        type=Path,
        help=f"folder with the four course CSVs to take the split from (default "
        f"{DEFAULT_SPLIT_LISTS} when it lists only images of --labels, else a seeded split)",
    )
    parser.add_argument("--test-fraction", type=float, help="seeded split: test share (0.2)")
    parser.add_argument("--seed", type=int, help="seeded split: random seed (0)")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    args = parser.parse_args(argv)
    seeded = args.test_fraction is not None or args.seed is not None
    if args.split_lists is not None and seeded:
        parser.error("--split-lists and --test-fraction/--seed choose the split in two ways")
    split_lists = args.split_lists
    if split_lists is None and not seeded:
        if lists_cover(DEFAULT_SPLIT_LISTS, read_kaggle_labels(args.labels)):
            split_lists = DEFAULT_SPLIT_LISTS
        else:
            print(
                f"note: {DEFAULT_SPLIT_LISTS} is missing or names images that are not in "
                f"{args.labels}; using a seeded stratified split",
                file=sys.stderr,
            )
    import_kaggle(
        args.labels,
        args.images,
        args.out,
        size=args.size,
        split_lists=split_lists,
        test_fraction=0.2 if args.test_fraction is None else args.test_fraction,
        seed=0 if args.seed is None else args.seed,
        workers=args.workers,
    )
    return 0
