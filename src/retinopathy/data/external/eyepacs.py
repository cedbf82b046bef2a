"""EyePACS, Kaggle's Diabetic Retinopathy Detection (2015) test set: 53,576 photographs with released grades.

Layout: Kaggle's download, unpacked::

    retinopathy_solution.csv     image,level,Usage     (Usage: Public or Private leaderboard)
    test/<image>.jpeg            (test.zip.001-007)

Names are EyePACS's own, ``<patient>_left`` / ``<patient>_right``, so patients
and eyes come from them as for the course's data. ``Usage`` is kept as the
split of origin. A photograph in ``test/`` that the solution does not list is
counted as unlabelled.
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
from retinopathy.data.labels import IMAGE_SUFFIX, check_grade, eye_of, patient_of

LABELS = "retinopathy_solution.csv"
IMAGES = "test"
FIX = (
    "Download retinopathy_solution.csv and test.zip.001-007 of Kaggle's Diabetic Retinopathy Detection, "
    "unpack the images into test/, and pass the folder that holds both as --root"
)


def read(root: Path) -> Listing:
    """Read the EyePACS test set from ``root`` (see the module's docstring for the layout)."""
    table = read_table(
        root / LABELS, ("image", "level"), "EyePACS test solution (retinopathy_solution.csv)", FIX
    )
    check_unique(table, "image")
    usage = "Usage" in table.rows[0].values if table.rows else False
    photos = []
    for row in table.rows:
        at = table.at(row)
        name = output_name(row["image"], at)
        eye = eye_of(name)
        photos.append(
            Photo(
                source=root / IMAGES / f"{name}{IMAGE_SUFFIX}",
                name=name,
                grade=check_grade(table.path, row.line, row["level"]),
                dme=None,
                gradable=None,
                patient=patient_of(name) if eye else None,
                eye=eye,
                split=(row["Usage"] or "test") if usage else "test",
                where=at,
            )
        )
    listed = {photo.source.name for photo in photos}
    left_out = [
        LeftOut(UNLABELLED, relative(root, path), "test", f"{root / IMAGES} (not in {LABELS})")
        for file, path in files_in(root / IMAGES, (IMAGE_SUFFIX,)).items()
        if file not in listed
    ]
    notes = list(table.notes)
    if not usage:
        notes.append(f"{LABELS}: no Usage column; every image's split is 'test'")
    return Listing("eyepacs", root, photos, left_out, [table.path], notes)
