"""Which photograph is the other eye of which: pairs by EyePACS name (``<patient>_left|right``).

A patient's two eyes are paired only when exactly one left and one right
photograph of that patient are among the names given (one split, or one
folder of one call of `predict`: :func:`photo_patients`); every other image
(one eye only, a repeated eye, a name that says no eye) has no partner. Pairs
never cross splits: a test image's partner is never a training image, whose
features the network has learned.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.labels import eye_of, patient_of

EYES = ("left", "right")
NO_PARTNER = -1


def side_of(eye: str) -> float:
    """The blend's ``side`` input: 0 for the left eye, 1 for the right."""
    return float(EYES.index(eye))


def partners(names: Sequence[str]) -> tuple[list[int], list[float]]:
    """Each name's partner (its index in ``names``, or :data:`NO_PARTNER`) and its side (0 left, 1 right).

    An image without a partner gets side 0; it is never given to the blend.
    """
    eyes = [eye_of(name) for name in names]
    patients: dict[str, int] = {}
    group = [patients.setdefault(patient_of(name), len(patients)) for name in names]
    return _partners(group, eyes), [side_of(eye) if eye is not None else 0.0 for eye in eyes]


def _partners(group: Sequence[int], eyes: Sequence[str | None]) -> list[int]:
    """Each image's partner: the other eye of its patient (``group``) when the patient has exactly one
    photograph of each eye, else :data:`NO_PARTNER`."""
    members: dict[int, dict[str, list[int]]] = defaultdict(lambda: {eye: [] for eye in EYES})
    for index, (number, eye) in enumerate(zip(group, eyes, strict=True)):
        if eye is not None:
            members[number][eye].append(index)
    found = [NO_PARTNER] * len(group)
    for both in members.values():
        if len(both["left"]) == 1 and len(both["right"]) == 1:
            left, right = both["left"][0], both["right"][0]
            found[left], found[right] = right, left
    return found


@dataclass(frozen=True)
class Patients:
    """Who is who among `predict`'s photographs, by input index (see :func:`photo_patients`)."""

    label: list[str]  # each photograph's patient as the CSV shows it: <folder>/<id>, "+" joining a --pair
    group: list[int]  # each photograph's patient as a number: equal numbers, one patient
    eye: list[str | None]  # "left", "right", or None when the name says no eye
    partner: list[int]  # the other eye's index, or NO_PARTNER
    side: list[float]  # the blend's side input (0 left, 1 right; 0 without a partner)


def photo_patients(paths: Sequence[Path], pairs: Sequence[tuple[int, int]] = ()) -> Patients:
    """Each photograph's patient, eye and partner: one rule for predict's pairs, patient column and calls.

    Two photographs are one patient's when they are in the same folder and their names say the same
    patient (:func:`~retinopathy.data.labels.patient_of`: ``7_left`` and ``7_Right``), or when they are
    given as an explicit pair (``pairs``: (left index, right index), checked by the caller to name a left
    and a right eye). A name alone never joins photographs of two folders: ``a/7_left`` and ``b/7_right``
    are two people's, whom two clinics may both have numbered 7. A patient's two eyes are partners only
    when exactly one left and one right photograph of that patient are given, as for :func:`partners`.

    Raises:
        RetinopathyError: a photograph in two pairs, or a pair whose patient has another photograph of
            the same eye in its folder (which eye would the pair mean?).
    """
    keys: dict[tuple[str, str], int] = {}
    group: list[int] = []
    labels: list[str] = []
    for path in paths:
        patient = patient_of(path.stem)
        # realpath: `./a/7_left.jpeg` and `a/7_right.jpeg` are in one folder, however it is spelled.
        key = (os.path.realpath(path.parent), patient)
        if key not in keys:
            keys[key] = len(keys)
            labels.append(str(path.parent / patient))
        group.append(keys[key])
    eyes = [eye_of(path.stem) for path in paths]
    paired: dict[int, int] = {}
    for left, right in pairs:
        for index in (left, right):
            if index in paired:
                raise RetinopathyError(
                    f"--pair: {paths[index]} is in two pairs (also with "
                    f"{paths[paired[index]]}); give each eye in one --pair only"
                )
        paired[left], paired[right] = right, left
        joined, gone = group[left], group[right]
        if joined != gone:  # the right eye's patient (its folder and name) becomes the left eye's
            labels[joined] = f"{labels[joined]}+{labels[gone]}"
            group = [joined if g == gone else g for g in group]
        for index, eye in ((left, "left"), (right, "right")):
            others = [i for i, g in enumerate(group) if g == joined and eyes[i] == eye and i != index]
            if others:
                raise RetinopathyError(
                    f"--pair {paths[left]} {paths[right]}: {paths[others[0]]} is another {eye} eye of this "
                    "patient (same folder, same patient in its name), so the pair is ambiguous; give only "
                    "one photograph of each eye, or leave out --pair to pair them by name"
                )
    found = _partners(group, eyes)
    sides = [
        side_of(eye) if eye is not None and found[i] != NO_PARTNER else 0.0 for i, eye in enumerate(eyes)
    ]
    return Patients([labels[g] for g in group], group, eyes, found, sides)
