"""The report's heat maps: which test images to show, and each one's Grad-CAM of the grade it got.

:func:`read_grades` reads the true and predicted grade of every test image from
evaluate's predictions CSV; :func:`choose` picks :data:`PER_GRADE` images of each
true grade, among them one the arm graded right and one it graded wrong where
there are such; :func:`tiles` gives each its picture, its heat map
(:func:`~retinopathy.models.gradcam.grad_cam` of the predicted grade, on the eager
fp32 network) and its caption, for :func:`~retinopathy.models.gradcam.save_grid`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from retinopathy.core.contract import GRADES, NUM_GRADES, PREDICTION_COLUMNS
from retinopathy.core.errors import RetinopathyError, where
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.labels import Record, grade_of
from retinopathy.models.gradcam import grad_cam
from retinopathy.models.grader import Grader
from retinopathy.models.head import Head, require_finite

PER_GRADE = 3  # test images per true grade: a row of the grid

Tile = tuple[np.ndarray, np.ndarray, str, bool]  # the image, its heat map, the caption, graded right?


def read_grades(path: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The true and predicted grade of every test image, from evaluate's predictions CSV, checked.

    Raises:
        RetinopathyError: the file is missing or unreadable, a grade is not one, or it does not
            hold ``count`` rows (naming the file, the line and the fix).
    """
    fix = "run `dvc repro evaluate` first"
    grades: list[list[int]] = []
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = csv.DictReader(stream)
            for row in rows:
                # grade_of, not int(): a damaged file may hold thousands of digits or no number at all.
                pair = [grade_of(row.get(column) or "") for column in PREDICTION_COLUMNS]
                if None in pair:
                    column = PREDICTION_COLUMNS[pair.index(None)]
                    raise RetinopathyError(
                        f"{where(path, rows.line_num)}: '{column}' is not a grade 0-{NUM_GRADES - 1}; {fix}"
                    )
                grades.append([grade for grade in pair if grade is not None])
            header = rows.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RetinopathyError(f"{path}: cannot read it ({error}); {fix}") from None
    if not grades or not set(PREDICTION_COLUMNS) <= set(header) or len(grades) != count:
        raise RetinopathyError(
            f"{path}: expected {count} rows of {','.join(PREDICTION_COLUMNS)} (one per test image): {fix}"
        )
    actual, predicted = np.array(grades).T
    return actual, predicted


def choose(actual: np.ndarray, predicted: np.ndarray, seed: int) -> list[int | None]:
    """:data:`PER_GRADE` test images of each true grade, row by row (None where there are fewer).

    Drawn with ``seed``; a row shows an image the arm graded wrong and one it graded
    right whenever the grade has both, then others of the grade.
    """
    rng = np.random.default_rng(seed)
    chosen: list[int | None] = []
    for grade in GRADES:
        members = np.flatnonzero(actual == grade)
        right, wrong = (rng.permutation(members[(predicted[members] == grade) == ok]) for ok in (True, False))
        first = [int(pool[0]) for pool in (wrong, right) if len(pool)]
        rest = [int(i) for i in rng.permutation(members) if int(i) not in first]
        row = (first + rest)[:PER_GRADE]
        chosen += row + [None] * (PER_GRADE - len(row))
    return chosen


def tiles(
    grader: Grader,
    head: Head,
    dataset: RetinopathyDataset,
    records: Sequence[Record],
    actual: np.ndarray,
    predicted: np.ndarray,
    chosen: Sequence[int | None],
    device: torch.device,
    checkpoint: Path,
    overflow: str,
) -> list[Tile | None]:
    """Each chosen test image with the Grad-CAM heat map of the grade it got; None for an empty place.

    Args:
        grader: The eager fp32 network on ``device`` (Grad-CAM's hooks need it so).
        head: Its head.
        dataset: The test split, as uint8 pixels at the network's size.
        records: The test split's records (their names caption the images).
        actual: Each test image's true grade (:func:`read_grades`).
        predicted: Each test image's predicted grade (evaluate's, as the report shows them).
        chosen: :func:`choose`'s indices.
        device: Where the network is.
        checkpoint: The network's file (for messages).
        overflow: The fix when the network's scores on an image are not finite.

    Raises:
        RetinopathyError: the scores of a chosen image are NaN or infinite.
    """
    drawn: list[Tile | None] = []
    for index in chosen:
        if index is None:
            drawn.append(None)
            continue
        image = dataset[index][0].unsqueeze(0).to(device)
        grade = int(predicted[index])
        with torch.no_grad():
            scores = head.scores(grader.eval()(image))[0]
        require_finite(scores.unsqueeze(0).cpu(), checkpoint, overflow, [records[index].image])
        heat = grad_cam(grader, image, [0 if head.regression else grade])[0]
        score = f"value {float(scores):.2f}" if head.regression else f"p {float(scores[grade]):.2f}"
        caption = f"{records[index].image}: graded {grade} ({score})"
        drawn.append((image[0].permute(1, 2, 0).cpu().numpy(), heat, caption, grade == actual[index]))
    return drawn
