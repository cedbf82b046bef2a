"""Messidor-2 (ADCIS) with Krause et al.'s adjudicated grades: 874 exams, 1,748 photographs.

Layout: the ADCIS download, with the adjudicated grades (Kaggle ``messidor2-dr-grades``,
Krause et al. 2018) copied beside it::

    IMAGES/<image>          .png (Messidor-Original) and .JPG (Messidor-Extension)
    messidor-2.csv          left;right               one exam per row, ';'-separated
    messidor_data.csv       image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable

``image_id`` is the file name in ``IMAGES/``. Grade and DME are empty when
``adjudicated_gradable`` is 0: those photographs are written for ``quality.csv``
but are not in the test split. ``adjudicated_dme`` 1 is referable diabetic
macular edema as Gulshan et al. 2016 graded it (hard exudates within one disc
diameter of the fovea), the definition the issue's DME figures use.

Exams give patients and eyes: the two photographs of exam *n* (the *n*-th row
of ``messidor-2.csv``) are named ``exam<n>_left`` and ``exam<n>_right`` (four
digits); ``sources.csv`` maps each back to its file. A graded photograph in no
exam keeps its file's stem (and is its own patient); a photograph of an exam
without a grade row is counted as unlabelled.
"""

from __future__ import annotations

from pathlib import Path

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.external.listing import (
    UNLABELLED,
    LeftOut,
    Listing,
    Photo,
    files_in,
    output_name,
    relative,
)
from retinopathy.data.external.tables import Table, check_unique, choice, read_table
from retinopathy.data.labels import check_grade

IMAGES = "IMAGES"
EXAMS = "messidor-2.csv"
GRADES = "messidor_data.csv"
COLUMNS = ("image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable")
SUFFIXES = (".png", ".jpg", ".jpeg", ".tif")
FIX_GRADES = (
    "Messidor-2 ships without grades: download Krause et al.'s adjudicated grades from Kaggle "
    "(messidor2-dr-grades) and copy messidor_data.csv into the folder that holds IMAGES/ (--root)"
)
FIX_EXAMS = (
    "It comes with the images in ADCIS's Messidor-2 download; pass the folder that holds it and "
    "IMAGES/ as --root"
)
DME_DEFINITION = (
    "adjudicated_dme = 1 (Krause et al. 2018: hard exudates within one disc diameter of the fovea, "
    "Gulshan et al. 2016's referable DME)"
)
QUALITY_DEFINITION = (
    "adjudicated_gradable: 1 gradable (written as EyeQ quality 0), 0 ungradable (2); "
    "Messidor-2 does not grade Usable"
)


def _exams(table: Table) -> dict[str, tuple[str, str, str, str]]:
    """``{file in lower case: (file, patient, eye, file:line)}`` from ``messidor-2.csv``'s rows.

    Keyed in lower case so that an exam's ``.JPG`` finds a grade row's ``.jpg`` (and the other way).
    """
    eyes: dict[str, tuple[str, str, str, str]] = {}
    width = max(4, len(str(len(table.rows))))
    for number, row in enumerate(table.rows, start=1):
        patient = f"exam{number:0{width}d}"
        for eye in ("left", "right"):
            file = row[eye]
            if not file:
                raise RetinopathyError(
                    f"{table.at(row)}: the {eye} image is empty; every exam lists "
                    "two photographs, 'left;right'"
                )
            if file.lower() in eyes:
                raise RetinopathyError(
                    f"{table.at(row)}: {file!r} is in two exams, also at "
                    f"{eyes[file.lower()][3]}; keep it in one"
                )
            eyes[file.lower()] = (file, patient, eye, table.at(row))
    return eyes


def _image_of(images: dict[str, Path], lower: dict[str, list[str]], file: str) -> tuple[str, bool]:
    """The file in ``IMAGES/`` for ``file``: itself, or its only namesake in another case (True)."""
    if file in images:
        return file, False
    others = lower.get(file.lower(), [])
    return (others[0], True) if len(others) == 1 else (file, False)


def read(root: Path) -> Listing:
    """Read Messidor-2 from ``root`` (see the module's docstring for the layout)."""
    grades = read_table(
        root / GRADES, COLUMNS, "Messidor-2 adjudicated grades (messidor_data.csv)", FIX_GRADES
    )
    check_unique(grades, "image_id")
    exams = read_table(
        root / EXAMS, ("left", "right"), "Messidor-2 exam list (messidor-2.csv)", FIX_EXAMS, delimiter=";"
    )
    eyes = _exams(exams)
    images = files_in(root / IMAGES, SUFFIXES)
    lower: dict[str, list[str]] = {}
    for file in images:
        lower.setdefault(file.lower(), []).append(file)
    photos, graded, recased, ignored = [], set(), 0, 0
    for row in grades.rows:
        at = grades.at(row)
        file, changed = _image_of(images, lower, row["image_id"])
        recased += changed
        graded.add(row["image_id"].lower())
        gradable = choice(grades, row, "adjudicated_gradable", ("0", "1")) == "1"
        grade = dme = None
        ignored += not gradable and bool(row["adjudicated_dr_grade"] or row["adjudicated_dme"])
        if gradable:
            grade = check_grade(grades.path, row.line, row["adjudicated_dr_grade"])
            dme = int(choice(grades, row, "adjudicated_dme", ("0", "1")))
        _, patient, eye, _ = eyes.get(row["image_id"].lower(), (None, None, None, ""))
        name = f"{patient}_{eye}" if patient else output_name(Path(row["image_id"]).stem, at)
        photos.append(
            Photo(
                source=root / IMAGES / file,
                name=name,
                grade=grade,
                dme=dme,
                gradable=gradable,
                patient=patient,
                eye=eye,
                split="messidor-2",
                where=at,
            )
        )
    left_out = []
    for key, (file, _, _, at) in eyes.items():
        if key not in graded:
            found, _ = _image_of(images, lower, file)
            left_out.append(
                LeftOut(
                    UNLABELLED,
                    relative(root, root / IMAGES / found) if found in images else file,
                    "messidor-2",
                    f"{at} (not in {GRADES})",
                )
            )
    named = graded | set(eyes)
    left_out += [
        LeftOut(
            UNLABELLED,
            relative(root, path),
            "messidor-2",
            f"{root / IMAGES} (in neither {GRADES} nor {EXAMS})",
        )
        for file, path in images.items()
        if file.lower() not in named
    ]
    notes = grades.notes + exams.notes
    if ignored:
        notes.append(
            f"{GRADES}: {ignored} ungradable row(s) carry a grade or DME anyway; ignored, as for "
            "every ungradable photograph"
        )
    if recased:
        notes.append(
            f"{GRADES}: {recased} image_id(s) found in {IMAGES}/ under another case of the "
            "same name (e.g. .JPG for .jpg)"
        )
    alone = sum(1 for key in graded if key not in eyes)
    if alone:
        notes.append(
            f"{alone} graded photograph(s) are in no exam of {EXAMS}: named by their file, each "
            "its own patient"
        )
    return Listing(
        "messidor2",
        root,
        photos,
        left_out,
        [grades.path, exams.path],
        notes,
        dme_definition=DME_DEFINITION,
        quality_definition=QUALITY_DEFINITION,
    )
