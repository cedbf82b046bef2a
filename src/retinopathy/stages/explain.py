"""The `explain` stage: what the model looks at, for the report.

``retinopathy explain --init scratch|pretrained`` takes three test images of
every true grade, chosen by ``train.seed`` (among them one the arm graded
right and one it graded wrong, where there are such), and draws them with the
Grad-CAM heat map of the grade the arm predicted (:mod:`retinopathy.models.gradcam`) into
``plots/explain_<arm>.png``. The grades are those `evaluate` wrote to
``metrics/predictions/<arm>.csv``; the heat maps come from the eager fp32
network of ``best.pt``. A skipped arm gets a figure that says so.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from retinopathy.core.config import Params, load_params
from retinopathy.core.contract import ARMS, GRADES, NUM_GRADES, PREDICTION_COLUMNS, Layout, grade_label
from retinopathy.core.errors import RetinopathyError, where
from retinopathy.core.files import atomic_file
from retinopathy.core.records import Skipped, read_info
from retinopathy.core.registry import title
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.index import read_index
from retinopathy.data.labels import grade_of
from retinopathy.engine import checkpoint
from retinopathy.engine.runtime import resolve_device
from retinopathy.models.gradcam import grad_cam, save_grid, save_message
from retinopathy.models.head import require_finite

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = ("data.root", "train.seed", "train.device", "train.portable")

PER_GRADE = 3  # test images per true grade: a row of the grid


def _predictions(path: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The true and predicted grade of every test image, from evaluate's predictions CSV, checked."""
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


def explain_arm(params: Params, arm: str, layout: Layout | None = None) -> Path:
    """Draw ``plots/explain_<arm>.png``; returns its path."""
    layout = layout or Layout()
    files, out = layout.arm(arm), layout.explanation(arm)
    info = read_info(files.info, arm)
    if isinstance(info, Skipped):
        with atomic_file(out, "wb") as stream:
            save_message(stream, f"{arm} arm: not trained", info.reason)
        return out
    trained = checkpoint.load_trained(files.best, fix=f"restore it with `dvc checkout {files.model_dir}`")
    spec = trained.spec
    device = resolve_device(params.train.device)
    grader = trained.grader.to(device)  # eager fp32: Grad-CAM's hooks
    records = read_index(layout.index)["test"]
    actual, predicted = _predictions(files.predictions, len(records))
    dataset = RetinopathyDataset(
        params.data.root, "test", spec.image_size, records=records, dtype=torch.uint8
    )
    head = spec.head()
    tiles: list[tuple[np.ndarray, np.ndarray, str, bool] | None] = []
    for index in choose(actual, predicted, params.train.seed):
        if index is None:
            tiles.append(None)
            continue
        image = dataset[index][0].unsqueeze(0).to(device)
        grade = int(predicted[index])
        with torch.no_grad():
            scores = head.scores(grader.eval()(image))[0]
        require_finite(
            scores.unsqueeze(0).cpu(),
            files.best,
            "its weights are finite, but the network "
            f"overflows on this image; train the arm again (`dvc repro -f train@{arm}`)",
            [records[index].image],
        )
        heat = grad_cam(grader, image, [0 if head.regression else grade])[0]
        score = f"value {float(scores):.2f}" if head.regression else f"p {float(scores[grade]):.2f}"
        caption = f"{records[index].image}: graded {grade} ({score})"
        tiles.append((image[0].permute(1, 2, 0).cpu().numpy(), heat, caption, grade == actual[index]))
    heading = (
        f"{title(spec.model)}, {arm} arm: where it looked on test images\n"
        f"(Grad-CAM of the grade it gave; green: graded right, red: graded wrong)"
    )
    with atomic_file(out, "wb") as stream:
        save_grid(stream, tiles, PER_GRADE, [f"true {grade_label(g)}" for g in GRADES], heading)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy explain --init scratch|pretrained [--params params.yaml]``."""
    parser = argparse.ArgumentParser(prog="retinopathy explain", description=__doc__.split("\n")[0])
    parser.add_argument("--init", choices=ARMS, required=True, help="The arm whose heat maps to draw.")
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="The parameters file (default: params.yaml)."
    )
    args = parser.parse_args(argv)
    print(f"wrote {explain_arm(load_params(args.params), args.init)}")
    return 0
