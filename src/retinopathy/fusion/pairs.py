"""Which photograph is the other eye of which: pairs by EyePACS name (``<patient>_left|right``).

A patient's two eyes are paired only when exactly one left and one right
photograph of that patient are among the names given (one split, or one call
of `predict`); every other image (one eye only, a repeated eye, a name that
says no eye) has no partner. Pairs never cross splits: a test image's partner
is never a training image, whose features the network has learned.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

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
    eyes: dict[str, dict[str, list[int]]] = defaultdict(lambda: {eye: [] for eye in EYES})
    sides = [0.0] * len(names)
    for index, name in enumerate(names):
        eye = eye_of(name)
        if eye is not None:
            eyes[patient_of(name)][eye].append(index)
            sides[index] = side_of(eye)
    found = [NO_PARTNER] * len(names)
    for both in eyes.values():
        if len(both["left"]) == 1 and len(both["right"]) == 1:
            left, right = both["left"][0], both["right"][0]
            found[left], found[right] = right, left
    return found, sides


def explicit_partners(count: int, pairs: Sequence[tuple[int, int]]) -> tuple[list[int], list[float]]:
    """Partners and sides from explicit (left index, right index) pairs of ``count`` images.

    Raises:
        RetinopathyError: an image in two pairs, or paired with itself.
    """
    found, sides = [NO_PARTNER] * count, [0.0] * count
    for left, right in pairs:
        if left == right or found[left] != NO_PARTNER or found[right] != NO_PARTNER:
            raise RetinopathyError(f"--pair: image {left + 1 if found[left] != NO_PARTNER else right + 1} "
                                   "of the inputs is paired twice (or with itself); give each eye once")
        found[left], found[right] = right, left
        sides[left], sides[right] = side_of("left"), side_of("right")
    return found, sides
