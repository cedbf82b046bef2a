"""Writing a public set as a test-only folder in the course layout (`retinopathy import-external`).

The folder is what the pipeline's external validation reads:

- ``test_img.csv`` / ``test_label.csv``: the graded photographs the set does not call
  ungradable, header-less, one value per line (``data.labels.parse_split(folder, "test")``);
- ``<name>.jpeg`` for each of them, and for each ungradable photograph, converted as
  `import-kaggle` converts (:mod:`retinopathy.data.convert`);
- the files of ``contract.ImportedSet``: ``test_dme.csv`` (sets with DME labels),
  ``quality.csv`` in EyeQ's format (sets with quality labels), ``sources.csv`` (every
  photograph of the set and what became of it) and ``import.json``
  (``core.records.ImportSummary``).

Everything is read and checked before anything is written (every listed file there, every
name unique and safe, the output folder new or empty), and the folder appears only when
complete: it is built beside ``out`` and renamed into place.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from retinopathy.core.contract import (
    COURSE_IMAGE_SIZE,
    LEFT_OUT_REASONS,
    NUM_GRADES,
    QUALITY_HEADER,
    QUALITY_LEVELS,
    SOURCE_COLUMNS,
    ImportedSet,
)
from retinopathy.core.errors import RetinopathyError, note, warn
from retinopathy.core.files import check_output_folder, csv_text, sha256_of, staged_folder
from retinopathy.core.records import ImportSummary, import_summary_text
from retinopathy.data.convert import convert_photos
from retinopathy.data.external.formats import reader_of
from retinopathy.data.external.listing import MISSING, UNGRADABLE, UNLABELLED, Listing, Photo, relative
from retinopathy.data.labels import (
    IMAGE_SUFFIX,
    MAX_LISTED,
    SPLIT_FILES,
    eye_of,
    image_path,
    parse_split,
    patient_of,
)

COMMAND = "import-external"
GOOD, REJECT = QUALITY_LEVELS.index("Good"), QUALITY_LEVELS.index("Reject")


def _present(listing: Listing, allow_missing: bool) -> tuple[list[Photo], list[Photo]]:
    """The photographs whose file is there, and the others (an error unless ``allow_missing``)."""
    there: list[Photo] = []
    missing: list[Photo] = []
    for photo in listing.photos:
        (there if photo.source.is_file() else missing).append(photo)
    if missing and not allow_missing:
        listed = "\n".join(
            f"  {photo.where}: {relative(listing.root, photo.source)}" for photo in missing[:MAX_LISTED]
        )
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise RetinopathyError(
            f"{len(missing)} listed image(s) missing under {listing.root}:\n{listed}{more}\n"
            "Download or unpack them, or pass --allow-missing to import the others (the missing ones "
            f"are then counted as '{MISSING}' in import.json and sources.csv)"
        )
    return there, missing


def _check_names(photos: list[Photo]) -> None:
    """Every name unique, and read back as the patient and eye the set says (or as none).

    Raises:
        RetinopathyError: two photographs under one name, or a name that would give the
            pipeline an eye the set does not give (naming the label lines).
    """
    seen: dict[str, Photo] = {}
    for photo in photos:
        if photo.name in seen:
            raise RetinopathyError(
                f"{photo.where}: names the output image {photo.name!r}, as "
                f"{seen[photo.name].where} does; two photographs cannot share a name - "
                "delete the duplicate row"
            )
        seen[photo.name] = photo
        if photo.eye is None and eye_of(photo.name) is not None:
            raise RetinopathyError(
                f"{photo.where}: the name {photo.name!r} would read as the {eye_of(photo.name)} eye of "
                f"patient {patient_of(photo.name)!r}, which the set does not say; rename the file and its row"
            )
        if photo.eye is not None and (eye_of(photo.name), patient_of(photo.name)) != (
            photo.eye,
            photo.patient,
        ):
            raise AssertionError(f"{photo.name!r} does not read back as {photo.patient}'s {photo.eye} eye")


def _check_out(out: Path) -> None:
    """The output folder is new or empty (a second run never replaces the first's folder)."""
    if out.is_dir() and not out.is_symlink() and any(out.iterdir()):
        raise RetinopathyError(
            f"{out}: already exists and is not empty; import-external writes a new folder and "
            "never replaces one - choose another --out, or move it away first"
        )
    check_output_folder(out, COMMAND, None)  # a file, a link to nothing, the current folder


def _eye_pairs(test: list[Photo]) -> int:
    eyes: dict[str, set[str]] = defaultdict(set)
    for photo in test:
        eye = eye_of(photo.name)
        if eye:
            eyes[patient_of(photo.name)].add(eye)
    return sum(1 for found in eyes.values() if len(found) == 2)


def _summary(listing: Listing, size: int, written: list[Photo], missing: list[Photo]) -> ImportSummary:
    test = [photo for photo in written if photo.in_test]
    ungradable = [photo for photo in written if not photo.in_test]
    sources = {
        UNGRADABLE: [relative(listing.root, photo.source) for photo in ungradable],
        UNLABELLED: [left.source for left in listing.left_out],
        MISSING: [relative(listing.root, photo.source) for photo in missing],
    }
    named = any(photo.eye for photo in listing.photos)
    return ImportSummary(
        format=listing.format,
        root=str(listing.root),
        size=size,
        images=len(test),
        grades=[sum(1 for photo in test if photo.grade == grade) for grade in range(NUM_GRADES)],
        splits=dict(Counter(photo.split for photo in test)),
        left_out={reason: len(sources[reason]) for reason in LEFT_OUT_REASONS},
        left_out_examples={reason: sources[reason][:MAX_LISTED] for reason in LEFT_OUT_REASONS},
        patients=len({patient_of(photo.name) for photo in test}) if named else None,
        eye_pairs=_eye_pairs(test) if named else None,
        referable_dme=sum(photo.dme or 0 for photo in test) if listing.dme_definition else None,
        dme_definition=listing.dme_definition,
        quality=(
            {"Good": len(test), "Usable": 0, "Reject": len(ungradable)}
            if listing.quality_definition
            else None
        ),
        quality_definition=listing.quality_definition,
        label_files={relative(listing.root, path): sha256_of(path) for path in listing.label_files},
        notes=listing.notes
        + ([f"{len(missing)} listed image(s) missing, left out (--allow-missing)"] if missing else []),
    )


def _source_row(photo: Photo, name: str, status: str, root: Path, sha256: str) -> list[object]:
    facts = (photo.patient, photo.eye, photo.grade, photo.dme)
    return [
        name,
        status,
        relative(root, photo.source),
        photo.split,
        *("" if f is None else f for f in facts),
        sha256,
    ]


def _source_rows(
    listing: Listing, written: list[Photo], digests: dict[str, str], missing: list[Photo]
) -> list[list[object]]:
    """``sources.csv``'s rows (``contract.SOURCE_COLUMNS``): written, then missing, then left out."""
    rows = [
        _source_row(
            photo, photo.name, "test" if photo.in_test else UNGRADABLE, listing.root, digests[photo.name]
        )
        for photo in written
    ]
    rows += [_source_row(photo, "", MISSING, listing.root, "") for photo in missing]
    rows += [["", left.reason, left.source, left.split, "", "", "", "", ""] for left in listing.left_out]
    return rows


def import_external(
    format: str,
    root: str | Path,
    out: str | Path,
    *,
    size: int = COURSE_IMAGE_SIZE,
    workers: int = 1,
    allow_missing: bool = False,
) -> ImportSummary:
    """Write the public set ``format`` found in ``root`` as a test-only folder ``out``.

    Args:
        format: One of ``contract.EXTERNAL_FORMATS``.
        root: The folder the set was unpacked into (each format's module says what it holds).
        out: The folder to create; must not exist yet (or be empty).
        size: Side of the square images written.
        workers: Processes converting images in parallel.
        allow_missing: Leave out photographs whose file is missing (counted), instead of refusing.

    Returns:
        The summary written to ``import.json``.

    Raises:
        RetinopathyError: an unknown format, a missing label file, a malformed or out-of-range
            label (file and line), a duplicated id, missing images, an existing non-empty ``out``
            (all checked before anything is written), or an image that cannot be decoded.
    """
    read = reader_of(format)
    root, out = Path(root), Path(out)
    if size < 1 or workers < 1:
        raise RetinopathyError(f"size and workers must be >= 1, got {size} and {workers}")
    if not root.is_dir():
        raise RetinopathyError(
            f"{root}: not a folder; pass the folder the {format} set was unpacked into as --root"
        )
    _check_out(out)  # first: a second run fails at once, whatever the set holds
    listing = read(root)
    _check_names(listing.photos)
    written, missing = _present(listing, allow_missing)
    test = [photo for photo in written if photo.in_test]
    if not test:
        raise RetinopathyError(
            f"{root}: no graded photograph to import ({len(listing.photos)} listed, "
            f"{len(listing.left_out)} unlabelled, {len(missing)} missing); is it the "
            f"{format} set?"
        )

    with staged_folder(out, COMMAND) as build:
        files = ImportedSet(build)
        img_file, lab_file = SPLIT_FILES["test"]
        (build / img_file).write_text("".join(f"{photo.name}\n" for photo in test))
        (build / lab_file).write_text("".join(f"{photo.grade}\n" for photo in test))
        if listing.dme_definition:
            files.dme.write_text("".join(f"{photo.dme}\n" for photo in test))
        tasks = [(photo.source, image_path(build, photo.name), size) for photo in written]
        converted = convert_photos(tasks, workers, COMMAND)
        digests = {photo.name: result.sha256 for photo, result in zip(written, converted, strict=True)}
        if listing.quality_definition:
            files.quality.write_text(
                csv_text(
                    list(QUALITY_HEADER),
                    (
                        [
                            index,
                            f"{photo.name}{IMAGE_SUFFIX}",
                            GOOD if photo.in_test else REJECT,
                            photo.grade if photo.in_test else "",
                        ]
                        for index, photo in enumerate(written)
                    ),
                )
            )
        files.sources.write_text(
            csv_text(list(SOURCE_COLUMNS), _source_rows(listing, written, digests, missing))
        )
        summary = _summary(listing, size, written, missing)
        files.summary.write_text(import_summary_text(summary))
        from retinopathy.data.checks import check_images  # the image decoders: not at the top, for --help

        parsed = parse_split(build, "test")  # what the pipeline will read, checked before we publish
        if [(r.image, r.label) for r in parsed.records] != [(p.name, p.grade) for p in test]:
            raise AssertionError(f"{build}: the test lists do not read back as written")
        check_images(build, parsed.records, workers=workers, min_side=1)

    _report(out, summary, [result.source for result in converted if not result.found])
    return summary


def _report(out: Path, summary: ImportSummary, blanks: list[Path]) -> None:
    grades = ", ".join(f"{count} grade {grade}" for grade, count in enumerate(summary.grades))
    print(
        f"wrote {out}: {summary.images} test images ({grades}) of {summary.format}, "
        f"{summary.size}x{summary.size}"
    )
    left = ", ".join(f"{count} {reason}" for reason, count in summary.left_out.items())
    print(f"left out of the test split: {left} (sources.csv lists each)")
    if summary.patients is not None:
        print(f"patients: {summary.patients}, with both eyes: {summary.eye_pairs}")
    if summary.referable_dme is not None:
        print(f"referable DME: {summary.referable_dme} test images ({summary.dme_definition})")
    for text in summary.notes:
        note(f"note: {text}")
    if blanks:
        warn(
            f"{len(blanks)} image(s) have no pixel brighter than the border threshold and were kept whole "
            f"(padded to a square, not cropped): {', '.join(str(path) for path in blanks[:MAX_LISTED])}"
            + (" ..." if len(blanks) > MAX_LISTED else "")
        )
