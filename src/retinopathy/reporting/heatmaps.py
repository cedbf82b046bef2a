"""The report's heat maps: which test images to show, and each one's Grad-CAM of the grade it got.

:func:`read_grades` reads the true and predicted grade of every test image from
evaluate's predictions CSV; :func:`choose` picks :data:`PER_GRADE` images of each
true grade, among them one the arm graded right and one it graded wrong where
there are such; :func:`tiles` gives each its picture, its heat map
(:func:`~retinopathy.models.gradcam.grad_cam` of the predicted grade, on the eager
fp32 network) and its caption, for :func:`save_grid`, which draws them (HEAT_ALPHA of
the colour map over the photograph). :func:`save_explanation` draws one photograph's
map for `retinopathy predict --explain`; :func:`save_message` a page that says why there
is no grid.
"""

from __future__ import annotations

import csv
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import matplotlib
import numpy as np
import torch

from retinopathy.core.contract import GRADES, NUM_GRADES, PREDICTION_COLUMNS
from retinopathy.core.errors import RetinopathyError, where
from retinopathy.core.files import PNG_SOFTWARE
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.labels import Record, grade_of
from retinopathy.models.gradcam import grad_cam
from retinopathy.models.grader import Grader
from retinopathy.models.head import Head, require_finite
from retinopathy.reporting.escape import plain_text

matplotlib.use("Agg")  # before pyplot: DVC stages and CI have no display
from matplotlib import colormaps  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

PER_GRADE = 3  # test images per true grade: a row of the grid
HEAT_ALPHA = 0.45  # how much of the heat map's colour covers the photograph, at its hottest

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


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The photograph [H, W, 3] uint8 with the heat map drawn over it in the 'jet' colours."""
    coloured = colormaps["jet"](heat)[..., :3]
    weight = HEAT_ALPHA * heat[..., None] ** 0.5  # cold regions stay close to the photograph
    mixed = image.astype(np.float32) / 255 * (1 - weight) + coloured * weight
    return (np.clip(mixed, 0, 1) * 255 + 0.5).astype(np.uint8)


def save_explanation(target: Path | IO[bytes], image: np.ndarray, heat: np.ndarray, title: str) -> None:
    """One PNG: the photograph and its heat map side by side, the grade in the title (drawn as given)."""
    with plain_text():  # the title holds the photograph's file name: never mathtext
        fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4.4), layout="constrained")
        left.imshow(image)
        left.set_title("photograph (as the network saw it)", fontsize=10)
        right.imshow(overlay(image, heat))
        right.set_title("Grad-CAM of the predicted grade", fontsize=10)
        for ax in (left, right):
            ax.axis("off")
        fig.suptitle(title, fontsize=12)
        # PNG_SOFTWARE: predict recognises its own heat maps by it.
        fig.savefig(target, format="png", dpi=110, metadata={"Software": PNG_SOFTWARE})
        plt.close(fig)


def save_grid(
    target: Path | IO[bytes],
    tiles: Sequence[tuple[np.ndarray, np.ndarray, str, bool] | None],
    columns: int,
    row_labels: Sequence[str],
    title: str,
) -> None:
    """A grid of heat maps: ``tiles`` row by row (None: an empty cell), correct titles green, wrong red.

    Args:
        tiles: (image, heat, caption, correct) per cell.
        columns: Cells per row.
        row_labels: One label per row (the true grade).
    """
    rows = len(row_labels)
    with plain_text():  # the captions hold image names: never mathtext
        fig, axes = plt.subplots(
            rows, columns, figsize=(3.1 * columns + 1.2, 3.2 * rows), layout="constrained", squeeze=False
        )
        for index, ax in enumerate(axes.flat):
            ax.axis("off")
            tile = tiles[index] if index < len(tiles) else None
            if tile is None:
                ax.text(
                    0.5,
                    0.5,
                    "no such test image",
                    ha="center",
                    va="center",
                    color="grey",
                    transform=ax.transAxes,
                )
                continue
            image, heat, caption, correct = tile
            ax.imshow(overlay(image, heat))
            ax.set_title(textwrap.fill(caption, 34), fontsize=9, color="darkgreen" if correct else "darkred")
        for row, label in enumerate(row_labels):
            axes[row, 0].text(
                -0.08,
                0.5,
                label,
                rotation=90,
                ha="right",
                va="center",
                fontsize=11,
                transform=axes[row, 0].transAxes,
            )
        fig.suptitle(title, fontsize=13)
        fig.savefig(target, format="png", dpi=90, metadata={"Software": None})
        plt.close(fig)


def save_message(target: Path | IO[bytes], title: str, text: str) -> None:
    """A small PNG that says why there is nothing to show (a skipped arm)."""
    with plain_text():  # the reason may hold a user's path: never mathtext
        fig, ax = plt.subplots(figsize=(7, 3), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.7, title, ha="center", va="center", fontsize=15, weight="bold", transform=ax.transAxes)
        ax.text(
            0.5, 0.35, textwrap.fill(text, 80), ha="center", va="center", fontsize=9, transform=ax.transAxes
        )
        fig.savefig(target, format="png", dpi=90, metadata={"Software": None})
        plt.close(fig)
