"""DeepDRiD (ISBI 2020, its GitHub repository): 2,000 regular fundus photographs of 500 patients, China.

Layout: the repository's ``regular_fundus_images`` part (the ultra-widefield part is not read)::

    regular_fundus_images/regular-fundus-training/regular-fundus-training.csv
    regular_fundus_images/regular-fundus-training/Images/<patient_id>/<image_id>.jpg
    regular_fundus_images/regular-fundus-validation/regular-fundus-validation.csv
    regular_fundus_images/regular-fundus-validation/Images/<patient_id>/<image_id>.jpg
    regular_fundus_images/Online-Challenge1&2-Evaluation/Challenge1_upload.csv    (no grades)

The CSVs' columns are ``patient_id,image_id,image_path,Overall quality,
left_eye_DR_Level,right_eye_DR_Level,patient_DR_Level,Clarity,Field definition,
Artifact``. ``image_path`` is a Windows path that leaves out ``Images``, so the
photograph is found from ``patient_id`` and ``image_id`` instead. Each row fills
the DR level of one eye: that is the photograph's eye and grade.

Each eye has two views, ``<patient>_l1`` and ``<patient>_l2``: they are named
``<patient>_left_1`` and ``<patient>_left_2`` (``data.labels`` reads a view
number after the eye), so both stay one patient and one eye. Where the letter
of ``image_id`` and the filled column disagree (patient 56 of the training
set), the column is taken and the disagreement noted.

``Overall quality`` 0 is "not good enough for the diagnosis": those photographs
are written for ``quality.csv`` but are not in the test split (about half of
the set). The evaluation set's photographs are counted as unlabelled: the
grades the repository added later are an Excel file, which is not read.
"""

from __future__ import annotations

import re
from pathlib import Path

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.external.listing import UNLABELLED, LeftOut, Listing, Photo, output_name, relative
from retinopathy.data.external.tables import check_unique, choice, read_table
from retinopathy.data.labels import check_grade

PART = "regular_fundus_images"
SPLITS = {  # split of origin -> (folder, label file)
    "training": ("regular-fundus-training", "regular-fundus-training.csv"),
    "validation": ("regular-fundus-validation", "regular-fundus-validation.csv"),
}
EVALUATION = ("Online-Challenge1&2-Evaluation", "Challenge1_upload.csv")
COLUMNS = ("patient_id", "image_id", "Overall quality", "left_eye_DR_Level", "right_eye_DR_Level")
SUFFIX = ".jpg"
_IMAGE_ID = re.compile(r"(?P<patient>[0-9A-Za-z]+)_(?P<eye>[lr])(?P<view>[0-9]+)")
FIX = (
    "Clone or download DeepDRiD's GitHub repository (deepdrdoc/DeepDRiD) and pass the folder that "
    f"holds {PART}/ as --root"
)
QUALITY_DEFINITION = (
    "Overall quality: 1 good enough for diagnosis (written as EyeQ quality 0), 0 not (2); "
    "DeepDRiD does not grade Usable"
)


def read(root: Path) -> Listing:
    """Read DeepDRiD's regular fundus photographs from ``root`` (see the module's docstring)."""
    photos: list[Photo] = []
    left_out: list[LeftOut] = []
    label_files: list[Path] = []
    notes: list[str] = []
    swapped: list[str] = []
    for split, (folder, labels) in SPLITS.items():
        table = read_table(root / PART / folder / labels, COLUMNS, f"DeepDRiD {split} label file", FIX)
        check_unique(table, "image_id")
        label_files.append(table.path)
        notes += table.notes
        for row in table.rows:
            at = table.at(row)
            match = _IMAGE_ID.fullmatch(row["image_id"])
            if not match or match["patient"] != row["patient_id"]:
                raise RetinopathyError(
                    f"{at}: image_id {row['image_id'][:60]!r} is not "
                    f"'<patient_id>_<l or r><view>' of patient_id {row['patient_id'][:60]!r}; "
                    "fix the row"
                )
            patient = output_name(row["patient_id"], at)
            filled = [eye for eye in ("left", "right") if row[f"{eye}_eye_DR_Level"]]
            named = "left" if match["eye"] == "l" else "right"
            if not filled:
                left_out.append(
                    LeftOut(
                        UNLABELLED,
                        relative(root, _image(root, folder, row["patient_id"], row["image_id"])),
                        split,
                        at,
                    )
                )
                continue
            eye = named if named in filled else filled[0]
            if eye != named:
                swapped.append(row["image_id"])
            gradable = choice(table, row, "Overall quality", ("0", "1")) == "1"
            photos.append(
                Photo(
                    source=_image(root, folder, row["patient_id"], row["image_id"]),
                    name=f"{patient}_{eye}_{int(match['view'])}",
                    grade=check_grade(table.path, row.line, row[f"{eye}_eye_DR_Level"]),
                    dme=None,
                    gradable=gradable,
                    patient=patient,
                    eye=eye,
                    split=split,
                    where=at,
                )
            )
    if swapped:
        notes.append(
            f"{len(swapped)} image_id(s) name one eye but grade the other in the DR level columns "
            f"({', '.join(swapped[:10])}): the column's eye and grade are taken"
        )
    folder, labels = EVALUATION
    evaluation = root / PART / folder / labels
    if evaluation.is_file():
        table = read_table(evaluation, ("image_id",), "DeepDRiD evaluation list", FIX)
        label_files.append(table.path)
        for row in table.rows:
            match = _IMAGE_ID.fullmatch(row["image_id"])
            source = (
                relative(root, _image(root, folder, match["patient"], row["image_id"]))
                if match
                else row["image_id"]
            )
            left_out.append(LeftOut(UNLABELLED, source, "evaluation", table.at(row)))
    return Listing(
        "deepdrid", root, photos, left_out, label_files, notes, quality_definition=QUALITY_DEFINITION
    )


def _image(root: Path, folder: str, patient: str, image_id: str) -> Path:
    return root / PART / folder / "Images" / patient / f"{image_id}{SUFFIX}"
