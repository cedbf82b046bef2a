"""The `import-kaggle` command: build the course's dataset (512x512 JPEGs + four split CSVs).

Kaggle's "Diabetic Retinopathy Detection" (EyePACS, 2015) ships ``trainLabels.csv``
(header ``image,level``) and a folder of full-size ``<image>.jpeg`` photographs,
about 4752x3168 with a black border around the round fundus. For each image we
crop the border, pad to a square with black so the fundus stays centred and
round (:mod:`retinopathy.data.fundus`), resize to ``size`` x ``size`` and save
at JPEG quality 95 (:mod:`retinopathy.data.convert`, shared with `import-external`).

The split is either the course's own lists (``data/splits/lab``; their labels
must agree with ``trainLabels.csv``) or a seeded split stratified by grade that
keeps both eyes of a patient on the same side (:mod:`retinopathy.data.kaggle`).
Everything is validated before anything is written, and the output folder
appears only when complete: it is built in a temporary sibling folder and
renamed into place.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retinopathy.core.config import cli_fraction, cli_positive_int, cli_seed
from retinopathy.core.contract import MAX_IMAGE_SIZE
from retinopathy.core.errors import RetinopathyError, note, warn, where
from retinopathy.core.files import check_name_length, check_output_folder, staged_folder
from retinopathy.data.convert import convert_photos
from retinopathy.data.kaggle import lists_cover, read_kaggle_labels, splits_from_lists, stratified_split
from retinopathy.data.labels import MAX_LISTED, SPLIT_FILES, image_path, read_course_splits

DEFAULT_SPLIT_LISTS = Path("data/splits/lab")


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
    check_name_length(out)  # before `out.exists()`, which fails with an OSError on an over-long name
    if size < 1 or workers < 1:
        raise RetinopathyError(f"size and workers must be >= 1, got {size} and {workers}")
    if size > MAX_IMAGE_SIZE:  # every image is resized to size x size: bound that work too
        raise RetinopathyError(
            f"--size {size}: at most {MAX_IMAGE_SIZE} px a side, the largest image "
            "size any network here takes (params.yaml `data.image_size`); pass a "
            "smaller one"
        )
    labels = read_kaggle_labels(labels_csv)
    if not images_dir.is_dir():
        raise RetinopathyError(f"{images_dir}: not a folder; pass Kaggle's train/ image folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RetinopathyError(f"{out}: already exists; remove it or choose another --out")
    check_output_folder(out, "import-kaggle", None)  # a link to nothing, a device, the current folder
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

    with staged_folder(out, "import-kaggle") as build:  # `out` is empty or absent (checked above)
        for split, (img_file, lab_file) in SPLIT_FILES.items():
            names = splits[split]
            (build / img_file).write_text("".join(f"{name}\n" for name in names))
            (build / lab_file).write_text("".join(f"{labels[name][0]}\n" for name in names))
        tasks = [(image_path(images_dir, name), image_path(build, name), size) for name in chosen]
        blanks = [
            converted.source.stem
            for converted in convert_photos(tasks, workers, "import-kaggle")
            if not converted.found
        ]
        from retinopathy.data.checks import check_images  # the image decoders: not at the top, for --help

        course = read_course_splits(build)  # what prepare will read, checked before we publish
        # Decodable is what is checked here; the size is the user's --size (prepare refuses < 32 px).
        check_images(build, course.train + course.test, workers=workers, min_side=1)

    left_out = len(labels) - len(chosen)
    print(
        f"wrote {out}: {len(splits['train'])} train and {len(splits['test'])} test images, "
        f"{size}x{size}, from {source}"
    )
    if left_out:
        note(f"note: {left_out} images of {labels_csv} are in neither split and were not imported")
    if blanks:
        warn(
            f"{len(blanks)} image(s) have no pixel brighter than the border threshold and were kept "
            f"whole (padded to a square, not cropped): {', '.join(sorted(blanks)[:MAX_LISTED])}"
            + (" ..." if len(blanks) > MAX_LISTED else "")
        )


def main(argv: list[str] | None = None) -> int:
    """``retinopathy import-kaggle``: parse the command line and run ``import_kaggle``."""
    parser = argparse.ArgumentParser(
        prog="retinopathy import-kaggle",
        description="Build the course's square JPEG dataset (four split CSVs + <image>.jpeg) "
        "from Kaggle's trainLabels.csv and full-size training images.",
    )
    parser.add_argument(
        "--labels", type=Path, required=True, metavar="FILE", help="Kaggle's trainLabels.csv."
    )
    parser.add_argument(
        "--images", type=Path, required=True, metavar="DIR", help="The folder of <image>.jpeg."
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="The folder to create.")
    parser.add_argument(
        "--size", type=cli_positive_int, default=512, help="The output side in pixels (default: 512)."
    )
    parser.add_argument(
        "--split-lists",
        type=Path,
        metavar="DIR",
        help=f"The folder with the four course CSVs to take the split from (default: "
        f"{DEFAULT_SPLIT_LISTS} when it lists only images of --labels, else a seeded split).",
    )
    parser.add_argument(
        "--test-fraction", type=cli_fraction, help="Seeded split: the test share (default: 0.2)."
    )
    parser.add_argument("--seed", type=cli_seed, help="Seeded split: the random seed (default: 0).")
    parser.add_argument(
        "--workers", type=cli_positive_int, default=1, help="Parallel processes (default: 1)."
    )
    args = parser.parse_args(argv)
    seeded = args.test_fraction is not None or args.seed is not None
    if args.split_lists is not None and seeded:
        parser.error("--split-lists and --test-fraction/--seed choose the split in two ways")
    split_lists = args.split_lists
    if split_lists is None and not seeded:
        if lists_cover(DEFAULT_SPLIT_LISTS, read_kaggle_labels(args.labels)):
            split_lists = DEFAULT_SPLIT_LISTS
        else:
            note(
                f"note: {DEFAULT_SPLIT_LISTS} is missing or names images that are not in "
                f"{args.labels}; using a seeded stratified split"
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
