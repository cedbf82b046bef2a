"""IDRiD, part B "Disease Grading" (IEEE DataPort): 516 photographs at 4288x2848, India.

Layout: the part's folder as it unpacks (``B. Disease Grading``)::

    1. Original Images/a. Training Set/IDRiD_001.jpg ... IDRiD_413.jpg
    1. Original Images/b. Testing Set/IDRiD_001.jpg ... IDRiD_103.jpg
    2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
    2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv

The label files' header is ``Image name,Retinopathy grade,Risk of macular edema ``
(a trailing space), and rows may carry empty columns after the last one and
CRLF line ends; both are accepted and noted. Both sets number their images
from ``IDRiD_001``, so the same name is two different photographs: each name
is prefixed with its split of origin (``train_IDRiD_001``, ``test_IDRiD_001``).

IDRiD names no patients or eyes. Its "risk of macular edema" is 0 (no hard
exudates), 1 (exudates further than one disc diameter from the macula's
centre) or 2 (within one disc diameter): risk 2 is referable diabetic
macular edema as Gulshan et al. 2016 define it, and is written as 1 in
``test_dme.csv``.
"""

from __future__ import annotations

from pathlib import Path

from retinopathy.data.external.listing import (
    UNLABELLED,
    LeftOut,
    Listing,
    Photo,
    files_in,
    output_name,
    relative,
)
from retinopathy.data.external.tables import check_unique, choice, read_table
from retinopathy.data.labels import check_grade

IMAGES = "1. Original Images"
LABELS = "2. Groundtruths"
SPLITS = {  # split of origin -> (image folder, label file)
    "train": ("a. Training Set", "a. IDRiD_Disease Grading_Training Labels.csv"),
    "test": ("b. Testing Set", "b. IDRiD_Disease Grading_Testing Labels.csv"),
}
COLUMNS = ("Image name", "Retinopathy grade", "Risk of macular edema")
SUFFIX = ".jpg"
FIX = (
    'Download IDRiD\'s "B. Disease Grading" from IEEE DataPort, unpack it, and pass the folder '
    '"B. Disease Grading" (which holds "1. Original Images" and "2. Groundtruths") as --root'
)
DME_DEFINITION = (
    "Risk of macular edema = 2 (hard exudates within one disc diameter of the macula's centre, "
    "Gulshan et al. 2016's referable DME); risks 0 and 1 are written as 0"
)


def read(root: Path) -> Listing:
    """Read IDRiD's disease grading part from ``root`` (see the module's docstring for the layout)."""
    photos: list[Photo] = []
    left_out: list[LeftOut] = []
    label_files: list[Path] = []
    notes: list[str] = []
    for split, (folder, labels) in SPLITS.items():
        table = read_table(root / LABELS / labels, COLUMNS, f"IDRiD {split} label file", FIX)
        check_unique(table, "Image name")
        label_files.append(table.path)
        notes += table.notes
        images = root / IMAGES / folder
        for row in table.rows:
            at = table.at(row)
            stem = output_name(row["Image name"], at)
            risk = int(choice(table, row, "Risk of macular edema", ("0", "1", "2")))
            photos.append(
                Photo(
                    source=images / f"{stem}{SUFFIX}",
                    name=f"{split}_{stem}",
                    grade=check_grade(table.path, row.line, row["Retinopathy grade"]),
                    dme=int(risk == 2),
                    gradable=None,
                    patient=None,
                    eye=None,
                    split=split,
                    where=at,
                )
            )
        listed = {f"{row['Image name']}{SUFFIX}" for row in table.rows}
        left_out += [
            LeftOut(UNLABELLED, relative(root, path), split, f"{images} (not in {labels})")
            for file, path in files_in(images, (SUFFIX,)).items()
            if file not in listed
        ]
    notes.append("IDRiD numbers each split from IDRiD_001: names are prefixed with the split (train_, test_)")
    return Listing("idrid", root, photos, left_out, label_files, notes, dme_definition=DME_DEFINITION)
