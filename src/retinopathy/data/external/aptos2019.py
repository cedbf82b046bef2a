"""APTOS 2019 Blindness Detection (Kaggle): 3,662 graded PNGs from Aravind Eye Hospital, India.

Layout, as Kaggle's download unpacks (the competition's data page)::

    train.csv              id_code,diagnosis       (grade 0-4, one grader)
    train_images/<id_code>.png                       (sizes vary)
    test.csv               id_code                  (1,928 images; grades never released)
    test_images/<id_code>.png

The set names no patients or eyes, so every image is its own patient and keeps
its 12-hex ``id_code`` as its name. ``test.csv``'s images and any PNG that
``train.csv`` does not list are counted as unlabelled.
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
from retinopathy.data.external.tables import check_unique, read_table
from retinopathy.data.labels import check_grade

LABELS = "train.csv"
COLUMNS = ("id_code", "diagnosis")  # LABELS' header (the demo's shifted set writes it too)
IMAGES = "train_images"
TEST_LIST = "test.csv"
TEST_IMAGES = "test_images"
SUFFIX = ".png"
FIX = (
    "Download the competition's data from Kaggle (APTOS 2019 Blindness Detection), unpack it, and "
    "pass the folder that holds train.csv and train_images/ as --root"
)


def read(root: Path) -> Listing:
    """Read APTOS 2019 from ``root`` (see the module's docstring for the layout)."""
    table = read_table(root / LABELS, COLUMNS, "APTOS 2019 label file (train.csv)", FIX)
    check_unique(table, "id_code")
    photos = []
    for row in table.rows:
        name = output_name(row["id_code"], table.at(row))
        photos.append(
            Photo(
                source=root / IMAGES / f"{name}{SUFFIX}",
                name=name,
                grade=check_grade(table.path, row.line, row["diagnosis"]),
                dme=None,
                gradable=None,
                patient=None,
                eye=None,
                split="train",
                where=table.at(row),
            )
        )
    listed = {photo.source.name for photo in photos}
    left_out = [
        LeftOut(UNLABELLED, relative(root, path), "train", f"{root / IMAGES} (not in {LABELS})")
        for file, path in files_in(root / IMAGES, (SUFFIX,)).items()
        if file not in listed
    ]
    label_files = [table.path]
    notes = list(table.notes)
    test_files = files_in(root / TEST_IMAGES, (SUFFIX,))
    if (root / TEST_LIST).is_file():
        tests = read_table(root / TEST_LIST, ("id_code",), "APTOS 2019 test list (test.csv)", FIX)
        label_files.append(tests.path)
        notes += tests.notes
        for row in tests.rows:
            file = f"{row['id_code']}{SUFFIX}"
            path = test_files.pop(file, None)
            left_out.append(
                LeftOut(UNLABELLED, relative(root, path) if path else row["id_code"], "test", tests.at(row))
            )
    left_out += [
        LeftOut(UNLABELLED, relative(root, path), "test", str(root / TEST_IMAGES))
        for path in test_files.values()
    ]
    return Listing("aptos2019", root, photos, left_out, label_files, notes)
