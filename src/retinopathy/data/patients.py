"""Patients: the two eyes of one person, counted across the splits or kept on one side.

EyePACS names a photograph ``<patient>_left`` or ``<patient>_right``
(:func:`~retinopathy.data.labels.patient_of`). A patient's two eyes usually
share a grade (87% of the pairs in the course's training list), so a test image
whose patient's other eye was trained on is graded partly from memory: the
course's split lists put one eye of thousands of patients in train and the
other in test, which flatters every test figure. :func:`leakage` counts that
for ``summary.json`` and the report (``data.split: lists``, the lab's split);
:func:`split_by_patient` re-splits the listed images so that no patient
straddles the split (``data.split: patients``), to measure what it was worth.
:func:`hold_out_validation` draws the validation split by patient whenever the names
give patients, under either setting, so that fuse's blend chooses its epoch on
two-eyed patients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from retinopathy.core.contract import NUM_GRADES
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import EyePairs, PatientCounts
from retinopathy.data.index import split_validation
from retinopathy.data.labels import Record, eye_of, patient_of

# SeedSequence keys (data.seed, purpose): the test and validation re-splits draw from streams of their own.
_PURPOSE_TEST, _PURPOSE_VAL = 1, 2


def patient_grades(records: Sequence[Record]) -> dict[str, int]:
    """Each patient's grade: that of the worse eye (the one a screening programme acts on)."""
    grades: dict[str, int] = {}
    for record in records:
        patient = patient_of(record.image)
        grades[patient] = max(grades.get(patient, 0), record.label)
    return grades


def check_named_by_patient(records: Sequence[Record], source: str) -> None:
    """Refuse ``data.split: patients`` on images whose names carry no patient (no ``_left``/``_right``)."""
    if not any(eye_of(record.image) for record in records):
        example = records[0].image if records else "none"
        raise RetinopathyError(
            f"{source}: `data.split` is patients, but no listed image is named <patient>_left or "
            f"<patient>_right (e.g. {example!r}), so there are no patients to keep together; set "
            "data.split: lists, or name the images as EyePACS does (e.g. 2576_left, 2576_right)"
        )


def hold_out_patients(
    records: Sequence[Record],
    fraction: float,
    seed: int,
    purpose: int = _PURPOSE_VAL,
) -> tuple[list[Record], list[Record]]:
    """Hold out ``fraction`` of the patients of each grade (the worse eye's), with all their eyes.

    Stratified like :func:`~retinopathy.data.index.split_validation` (at least one patient where a
    grade has two or more), keeping the total share by largest-remainder rounding, and seeded: the
    same records, fraction and seed give the same split, whatever order the records are listed in.
    Records keep their order.
    """
    if fraction <= 0:
        return list(records), []
    rng = np.random.default_rng(np.random.SeedSequence([seed, purpose]))
    grades = patient_grades(records)
    members = [sorted(p for p, worst in grades.items() if worst == grade) for grade in range(NUM_GRADES)]
    # The patients to take: ``fraction`` of all, over the grades by largest remainder (ties to the
    # lower grade), so that the share holds on small data too; then at least one patient of a grade
    # with two or more, and never all of them.
    quotas = [fraction * len(group) for group in members]
    takes = [int(q) for q in quotas]
    order = sorted(range(NUM_GRADES), key=lambda g: (-(quotas[g] - takes[g]), g))
    for grade in order[: max(0, int(round(fraction * len(grades))) - sum(takes))]:
        takes[grade] += 1
    held: set[str] = set()
    for group, take in zip(members, takes, strict=True):
        if len(group) >= 2:
            take = min(max(take, 1), len(group) - 1)
        held.update(rng.permutation(np.array(group, dtype=object))[:take].tolist())
    kept = [r for r in records if patient_of(r.image) not in held]
    return kept, [r for r in records if patient_of(r.image) in held]


def hold_out_validation(
    records: Sequence[Record], fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Hold out the validation split of the training ``records``: by patient where the names give patients.

    Where any name is EyePACS's ``<patient>_left``/``<patient>_right``, ``fraction`` of the patients
    go to validation with both eyes (:func:`hold_out_patients`): drawn per image, few validation
    images would have their other eye there, and fuse's blend would choose its epoch on those few.
    Names without patients are held out per image, as before
    (:func:`~retinopathy.data.index.split_validation`). ``fraction`` 0 (the lab's protocol) holds
    out nothing.

    Returns:
        (train, val), each in the records' order.
    """
    if any(eye_of(record.image) for record in records):
        return hold_out_patients(records, fraction, seed)
    return split_validation(list(records), fraction, seed)


def split_by_patient(
    train: Sequence[Record],
    test: Sequence[Record],
    seed: int,
) -> tuple[list[Record], list[Record]]:
    """Re-split the union of the listed ``train`` and ``test`` by patient, with the same test share.

    The share is of images (``len(test) / (len(train) + len(test))``), taken as a share of the
    patients of each grade, so it holds to within rounding when patients have two eyes each.
    """
    share = len(test) / (len(train) + len(test))
    return hold_out_patients([*train, *test], share, seed, _PURPOSE_TEST)


def _patients(records: Sequence[Record]) -> set[str]:
    return {patient_of(record.image) for record in records}


def leakage(splits: dict[str, list[Record]], split: str) -> PatientCounts:
    """Patients per split, and those with eyes on both sides: summary.json's ``patients``.

    Args:
        splits: The records of ``train``, ``val`` (maybe empty) and ``test``.
        split: ``data.split`` (``lists`` or ``patients``), recorded with the counts.

    Returns:
        The counts (:class:`~retinopathy.core.records.PatientCounts`); ``train_pairs`` is
        :func:`eye_pairs` of train.
    """
    train, val, test = (_patients(splits[name]) for name in ("train", "val", "test"))
    across_test = test & (train | val)
    across_val = val & train
    test_images = sum(patient_of(r.image) in across_test for r in splits["test"])
    val_images = sum(patient_of(r.image) in across_val for r in splits["val"])
    return PatientCounts(
        split=split,
        named_by_patient=any(eye_of(r.image) for records in splits.values() for r in records),
        count={name: len(_patients(records)) for name, records in splits.items()},
        test_and_train=len(across_test),
        test_images=test_images,
        test_share=test_images / len(splits["test"]) if splits["test"] else 0.0,
        val_and_train=len(across_val),
        val_images=val_images,
        val_share=val_images / len(splits["val"]) if splits["val"] else 0.0,
        train_pairs=eye_pairs(splits["train"]),
    )


def leakage_warning(counts: PatientCounts) -> str | None:
    """Words for prepare's warning and the report: the patients on both sides, and what it does.

    None when no patient straddles a split. ``counts`` is :func:`leakage`'s result.
    """
    parts = []
    if counts.test_and_train:
        parts.append(
            f"{counts.test_and_train} patients have one eye in test and the other in train/val, so "
            f"{counts.test_images} test images ({counts.test_share:.1%} of the test split) are graded "
            "after the network was trained on the other eye of the same patient; a patient's two eyes "
            "usually share a grade, so the test figures are flattered"
        )
    if counts.val_and_train:
        parts.append(
            f"{counts.val_and_train} patients have one eye in val and the other in train "
            f"({counts.val_images} validation images, {counts.val_share:.1%}), which flatters the "
            "validation figures and the epoch they pick"
        )
    if not parts:
        return None
    fix = (
        "set data.split: patients in params.yaml to split by patient (and measure what this was worth)"
        if counts.split == "lists"
        else ""
    )
    return "; ".join(parts) + (f" - {fix}" if fix else "")


def eye_pairs(records: Sequence[Record]) -> EyePairs:
    """The patients of ``records`` with both eyes listed: how many, the share whose eyes share a
    grade, and how many differ by 0, 1, ... 4 grades."""
    eyes: dict[str, dict[str, int]] = {}
    for record in records:
        eye = eye_of(record.image)
        if eye:
            eyes.setdefault(patient_of(record.image), {})[eye] = record.label
    differences = [abs(e["left"] - e["right"]) for e in eyes.values() if len(e) == 2]
    counts = np.bincount(np.array(differences, dtype=int), minlength=NUM_GRADES).tolist()
    return EyePairs(
        pairs=len(differences),
        same_grade=counts[0] / len(differences) if differences else None,
        differences=counts,
    )
