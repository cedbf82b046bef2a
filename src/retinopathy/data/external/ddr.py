"""DDR (Nankai University, its GitHub release): 13,673 photographs of 9,598 patients, 147 hospitals in China.

Layout: the ``DDR-dataset`` folder as it unpacks, grading part::

    DR_grading/train.txt  valid.txt  test.txt      lines "name grade", e.g. "007-0004-000.jpg 0"
    DR_grading/train/  valid/  test/               the photographs

Grade 5 means ungradable: those photographs are written for ``quality.csv``
but are not in the test split. DDR publishes no patient of each photograph,
so each is its own patient and keeps its file's stem as its name (a stem in
two splits is refused as a duplicate).
"""

from __future__ import annotations

from pathlib import Path

from retinopathy.core.errors import RetinopathyError, where
from retinopathy.data.external.listing import (
    UNLABELLED,
    LeftOut,
    Listing,
    Photo,
    files_in,
    missing_file,
    output_name,
    relative,
)
from retinopathy.data.labels import check_grade, read_lines

GRADING = "DR_grading"
SPLITS = ("train", "valid", "test")
UNGRADABLE_GRADE = "5"
SUFFIXES = (".jpg", ".jpeg", ".png")
FIX = (
    "Download DDR from its GitHub release (nkicsl/DDR-dataset), unpack it, and pass the folder that "
    "holds DR_grading/ (DDR-dataset) as --root"
)
QUALITY_DEFINITION = (
    "grade 5 is ungradable (written as EyeQ quality 2); grades 0-4 gradable (0); DDR does not grade Usable"
)


def read(root: Path) -> Listing:
    """Read DDR's grading part from ``root`` (see the module's docstring for the layout)."""
    photos: list[Photo] = []
    left_out: list[LeftOut] = []
    label_files: list[Path] = []
    notes: list[str] = []
    names: dict[str, str] = {}  # output name -> file:line, across the splits
    for split in SPLITS:
        path = root / GRADING / f"{split}.txt"
        if not path.is_file():
            raise missing_file(f"DDR {split} label file", path, FIX)
        lines, found = read_lines(path)  # BOM, CRLF and trailing blank lines accepted (and noted)
        label_files.append(path)
        notes += found
        images = root / GRADING / split
        listed = set()
        for number, line in lines:
            at = where(path, number)
            fields = line.split()
            if len(fields) != 2:
                raise RetinopathyError(
                    f"{at}: expected 'name grade' (two values separated by a space), found {line[:80]!r}"
                )
            file, text = fields
            if file in listed:
                raise RetinopathyError(
                    f"{at}: {file!r} is listed twice in {path.name}; delete one of the lines"
                )
            listed.add(file)
            name = output_name(Path(file).stem, at)
            if name in names:
                raise RetinopathyError(
                    f"{at}: {file!r} has the name {name!r} of the photograph at "
                    f"{names[name]}; DDR's names are unique, so one of the lines is wrong"
                )
            names[name] = at
            gradable = text != UNGRADABLE_GRADE
            photos.append(
                Photo(
                    source=images / file,
                    name=name,
                    grade=check_grade(path, number, text) if gradable else None,
                    dme=None,
                    gradable=gradable,
                    patient=None,
                    eye=None,
                    split=split,
                    where=at,
                )
            )
        left_out += [
            LeftOut(UNLABELLED, relative(root, image), split, f"{images} (not in {path.name})")
            for file, image in files_in(images, SUFFIXES).items()
            if file not in listed
        ]
    return Listing("ddr", root, photos, left_out, label_files, notes, quality_definition=QUALITY_DEFINITION)
