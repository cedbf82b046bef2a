"""The field's recipe, knob by knob: each does what it says, and with every knob off nothing changes."""

from __future__ import annotations

import copy
import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_params
from retinopathy.core.config import AugmentParams, load_params
from retinopathy.core.contract import QUALITY_COLUMNS, Layout
from retinopathy.core.records import EvaluationInfo, OperatingPoints, TrainingStatus
from retinopathy.engine import checkpoint, loops, recipe
from retinopathy.engine.augment import Augment, affine, colour
from retinopathy.engine.distributed import BalancedSampler, Process
from retinopathy.engine.optim import lr_factor, make_optimizer, make_scheduler
from retinopathy.engine.runtime import plain_runtime
from retinopathy.evaluation.scoring import grades_of_values, quadratic_kappa, tune_thresholds
from retinopathy.models.grader import Grader, GraderSpec, graham
from retinopathy.models.head import Head, class_weights
from retinopathy.models.resnet import resnet18
from retinopathy.stages import evaluate, prepare, train

CPU = torch.device("cpu")
OFF = AugmentParams(flip=False, rotate=0.0, scale=None, translate=0.0, brightness=0.0, contrast=0.0)
FIELD = AugmentParams(
    flip=True, rotate=180.0, scale=[0.87, 1.15], translate=0.2, brightness=0.2, contrast=0.2
)


def batch(n: int = 4, side: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=generator)


# ----------------------------------------------------------------- augmentation


def test_a_rotation_by_90_degrees_permutes_the_pixels_like_rot90():
    images = batch().float()
    n = images.shape[0]
    none, keep = torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.float64)
    for degrees, k in ((90.0, 1), (-90.0, -1), (180.0, 2)):
        turned = affine(images, torch.full((n,), degrees), none, none, keep, torch.zeros(n, 2))
        torch.testing.assert_close(turned, torch.rot90(images, k, dims=(2, 3)), atol=1e-3, rtol=0)


def test_flips_mirror_exactly_and_the_identity_changes_nothing():
    images = batch().float()
    n = images.shape[0]
    yes, no = torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    keep, still = torch.ones(n, dtype=torch.float64), torch.zeros(n, 2)
    zero = torch.zeros(n)
    torch.testing.assert_close(affine(images, zero, yes, no, keep, still), images.flip(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(affine(images, zero, no, yes, keep, still), images.flip(2), atol=1e-3, rtol=0)
    torch.testing.assert_close(affine(images, zero, no, no, keep, still), images, atol=1e-3, rtol=0)
    assert torch.equal(Augment(OFF, seed=0)(batch(), epoch=1, step=1), batch())  # all off: untouched


def test_zoom_shift_brightness_and_contrast_do_what_they_say():
    images = torch.zeros(1, 3, 16, 16)
    images[..., 6:10, 6:10] = 200.0  # a bright square in the middle
    one, no, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.bool), torch.zeros(1)
    zoomed_in = affine(images, zero, no, no, one / 4, torch.zeros(1, 2))  # keep a quarter of the area
    assert (zoomed_in > 100).sum() == 4 * (images > 100).sum()  # twice the side
    shifted = affine(images, zero, no, no, one, torch.tensor([[0.25, 0.0]]))  # a quarter side to the right
    torch.testing.assert_close(shifted[..., 6:10, 10:14], images[..., 6:10, 6:10], atol=1e-3, rtol=0)
    brighter = colour(images, torch.tensor([1.2]), torch.tensor([1.0]))
    torch.testing.assert_close(brighter, images * 1.2)
    flat = colour(images, torch.tensor([1.0]), torch.tensor([0.0]))  # no contrast: the mean grey everywhere
    assert torch.allclose(flat, flat[..., :1, :1].expand_as(flat))


def test_augmentation_draws_depend_only_on_seed_epoch_step_and_rank():
    images = batch(8, 32)
    first = Augment(FIELD, seed=3)(images, epoch=2, step=5)
    torch.manual_seed(999)  # the global generator must not matter
    assert torch.equal(Augment(FIELD, seed=3)(images, epoch=2, step=5), first)
    assert not torch.equal(Augment(FIELD, seed=3)(images, epoch=2, step=6), first)
    assert not torch.equal(Augment(FIELD, seed=3, rank=1)(images, epoch=2, step=5), first)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    drawn = Augment(FIELD, seed=3).draw(1000, epoch=1, step=1)
    assert drawn["angle"].abs().max() <= 180 and 0.87 <= drawn["area"].min() <= drawn["area"].max() <= 1.15
    assert drawn["shift"].abs().max() <= 0.2 and 0.4 < drawn["flip_x"].float().mean() < 0.6


# ----------------------------------------------------------------- schedule


def test_the_learning_rate_per_step_warms_up_then_follows_the_schedule():
    assert [lr_factor(s, "constant", 0, 10) for s in range(3)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, "constant", 4, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, "cosine", 2, 10) for s in range(10)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[2] == 1.0
    assert cosine[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:], strict=False)) and cosine[-1] > 0
    # Through a real optimizer: the rate each step uses, stepped once per batch.
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer, "cosine", 2, 10)
    used = []
    for _ in range(10):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([0.1 * f for f in cosine])
    # The schedule resumes from its state: one integer.
    again = make_scheduler(torch.optim.SGD(model.parameters(), lr=0.1), "cosine", 2, 10)
    again.load_state_dict(scheduler.state_dict())
    assert again.last_epoch == 10


def test_nesterov_reaches_the_optimizer():
    runtime = plain_runtime(CPU)
    optimizer = make_optimizer(
        torch.nn.Linear(2, 1), runtime, lr=0.1, momentum=0.9, weight_decay=0, nesterov=True
    )
    assert optimizer.param_groups[0]["nesterov"] is True


# ----------------------------------------------------------------- heads, weights, thresholds


def test_the_regression_head_rounds_its_output_into_grades():
    head = Head("regression")
    values = torch.tensor([[-1.0], [0.4], [0.5], [0.51], [1.49], [2.5], [3.6], [9.0]])
    assert head.grades(values).tolist() == [0, 0, 0, 1, 1, 2, 4, 4]
    assert grades_of_values(values.squeeze(1).numpy(), head.thresholds).tolist() == [0, 0, 0, 1, 1, 2, 4, 4]
    assert head.num_outputs == 1
    loss = head.loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0, 3]))
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2)  # MSE towards the grade
    tuned = Head("regression", thresholds=[0.2, 1.0, 2.0, 3.0])
    assert tuned.grades(torch.tensor([[0.3]])).item() == 1


def test_weighted_loss_weights_are_inverse_frequencies():
    weights = class_weights([60, 20, 10, 10, 0])
    assert weights.tolist() == pytest.approx([100 / 240, 100 / 80, 100 / 40, 100 / 40, 0])
    head = Head("cross_entropy", class_weights=weights)
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 2, 3, 0])
    per_image = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per_image * weights[labels]).sum() / weights[labels].sum()
    assert head.loss(logits, labels).item() == pytest.approx(expected.item())
    assert head.loss(logits, labels, weighted=False).item() == pytest.approx(per_image.mean().item())


def test_tuned_thresholds_raise_kappa_on_a_biased_regressor():
    rng = np.random.default_rng(0)
    actual = rng.integers(0, 5, 400)
    values = actual * 0.7 + rng.normal(0, 0.25, 400)  # predicts too low for high grades
    before = quadratic_kappa(actual, grades_of_values(values, (0.5, 1.5, 2.5, 3.5)))
    thresholds = tune_thresholds(values, actual)
    after = quadratic_kappa(actual, grades_of_values(values, thresholds))
    assert after > before + 0.05 and thresholds == sorted(thresholds)


def test_the_balanced_sampler_draws_every_grade_about_equally_and_reproducibly():
    labels = [0] * 80 + [1] * 10 + [2] * 5 + [3] * 3 + [4] * 2
    sampler = BalancedSampler(labels, seed=1, process=Process())
    sampler.set_epoch(1)
    drawn = [labels[i] for _ in range(20) for i in sampler]  # 20 passes of the same epoch: the same draws
    assert drawn[:100] == drawn[100:200]
    counts = np.bincount([labels[i] for epoch in range(1, 41) for i in (sampler.set_epoch(epoch) or sampler)])
    assert counts.min() / counts.max() > 0.8


# ----------------------------------------------------------------- test-time augmentation, preprocessing


class Lopsided(torch.nn.Module):
    """Outputs that depend on where the bright pixels are: flips change them."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        left = x[..., :, : x.shape[-1] // 2].mean((1, 2, 3))
        top = x[..., : x.shape[-2] // 2, :].mean((1, 2, 3))
        return torch.stack([left, top, -left, -top, left - top], 1) / 50


def test_tta_averages_the_scores_over_the_four_flips():
    images, model, head = batch(3), Lopsided(), Head("cross_entropy")
    runtime = plain_runtime(CPU)
    expected = sum(head.scores(model(images.flip(dims) if dims else images)) for dims in loops.FLIPS) / 4
    averaged = loops.predict_scores(model, images, runtime, head, tta=True)
    torch.testing.assert_close(averaged, expected)
    assert not torch.allclose(averaged, head.scores(model(images)))
    scores, grades, _ = loops.predict(
        model, [(images, torch.zeros(3, dtype=torch.int64))], runtime, head, tta=True
    )
    assert torch.equal(grades, averaged.argmax(1)) and torch.allclose(scores, averaged)


def test_graham_subtracts_the_local_average_and_greys_the_rim():
    flat = torch.full((1, 3, 64, 64), 90.0)
    out = graham(flat)
    assert torch.allclose(out, torch.full_like(out, 128.0), atol=1e-3)  # no local detail: mid-grey
    spotted = flat.clone()
    spotted[..., 32, 32] = 200.0  # a small bright lesion stands out
    assert graham(spotted)[0, 0, 32, 32] == 255.0
    assert graham(spotted)[0, 0, 0, 0] == 128.0  # outside 90% of the radius
    spec = GraderSpec(
        model="resnet18",
        image_size=None,
        normalize="none",
        preprocess="graham",
        loss="cross_entropy",
        thresholds=None,
    )
    grader = Grader(resnet18(num_classes=5), spec)
    expected = torch.full((1, 3, 64, 64), 128 / 255)
    assert torch.allclose(grader.transform(flat.to(torch.uint8)), expected, atol=1e-3)


# ----------------------------------------------------------------- with every knob off, the lab's loop


@pytest.mark.slow
def test_every_knob_off_trains_exactly_like_the_labs_loop():
    torch.manual_seed(0)
    net = resnet18(num_classes=5)
    spec = GraderSpec(
        model="resnet18",
        image_size=None,
        normalize="imagenet",
        preprocess="none",
        loss="cross_entropy",
        thresholds=None,
    )
    batches = [(batch(4, 32, seed), torch.tensor([0, 1, 2, 4])) for seed in range(3)]
    runtime = plain_runtime(CPU)
    ours = Grader(copy.deepcopy(net), spec)
    optimizer = make_optimizer(ours, runtime, lr=0.01, momentum=0.9, weight_decay=5e-4)
    scheduler = make_scheduler(optimizer, "constant", 0, 3)
    params = load_params(Path(__file__).parents[1] / "params.yaml")
    settings = params.train
    # The shipped defaults are the lab's: no augmentation, the plain head.
    assert recipe.make_augment(params.augment, settings.seed, Process()) is None
    head = recipe.make_head(settings.loss, settings.class_balance, [0, 1])
    learner = loops.Learner(ours, optimizer, head, scheduler=scheduler)
    result = loops.train_epoch(learner, batches, runtime, augment=None)
    # The lab's loop, written out: cross-entropy on the logits, SGD, a constant learning rate.
    lab = Grader(copy.deepcopy(net), spec)
    lab_optimizer = torch.optim.SGD(lab.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
    lab.train()
    losses = []
    for images, labels in batches:
        loss = torch.nn.functional.cross_entropy(lab(images).float(), labels)
        lab_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lab_optimizer.step()
        losses.append(loss.item() * len(labels))
    assert result.loss == sum(losses) / 12
    for (name, a), b in zip(ours.named_parameters(), lab.parameters(), strict=True):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------- the whole recipe, end to end


FIELD_PARAMS = {
    "data": {"val_fraction": 0.25, "preprocess": "graham"},
    "augment": {
        "flip": True,
        "rotate": 180,
        "scale": [0.87, 1.15],
        "translate": 0.2,
        "brightness": 0.2,
        "contrast": 0.2,
    },
    "train": {
        "loss": "regression",
        "tune_thresholds": True,
        "select_by": "kappa",
        "schedule": "cosine",
        "warmup_epochs": 1,
        "nesterov": True,
        "class_balance": "sampler",
        "epochs": 3,
        "lr": 0.001,
    },
    "evaluate": {"tta": "flips"},
}


@pytest.mark.slow
def test_the_fields_recipe_trains_selects_by_kappa_and_evaluates(tiny_project):
    write_params(tiny_project, **FIELD_PARAMS)
    params = load_params(tiny_project / "params.yaml")
    prepare.prepare(params, tiny_project / "data/prepared")
    status = train.train_arm(params, "scratch")
    assert isinstance(status, TrainingStatus)
    assert status.select_by == "kappa" and status.selection == "validation"
    history = status.history
    assert {"val_kappa", "test_kappa", "train_kappa"} <= set(history[0])
    best = checkpoint.load(tiny_project / "models/scratch/best.pt", "best")
    assert best.epoch == max(history, key=lambda row: row["val_kappa"])["epoch"]
    spec = GraderSpec.from_dict(best.spec, "best.pt")
    assert spec.loss == "regression" and spec.preprocess == "graham" and len(spec.thresholds) == 4
    last = checkpoint.load(tiny_project / "models/scratch/last.pt", "last")
    steps_per_epoch = math.ceil(30 / 8)  # 40 training images less the quarter held out, batch 8
    assert last.scheduler["last_epoch"] == 3 * steps_per_epoch
    evaluation = evaluate.evaluate_arm(params, "scratch")
    assert isinstance(evaluation.info, EvaluationInfo)
    assert evaluation.info.tta == "flips" and "validation kappa" in evaluation.info.selection_rule
    assert set(evaluation.metrics) >= {"acc", "kappa", "val"}
    with open(tiny_project / "metrics/predictions/scratch.csv") as stream:  # the regression head's value
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == [
        "image",
        "patient",
        "actual",
        "predicted",
        "value",
        "referable_score",
        *QUALITY_COLUMNS,
    ]
    assert all(row["value"] == row["referable_score"] for row in rows)
    assert evaluation.screening.calibration.ece is None  # no probability to calibrate
    held_out = sum(line.startswith("val,") for line in Layout().index.read_text().splitlines())
    assert isinstance(evaluation.screening.operating_points, OperatingPoints)
    assert evaluation.screening.operating_points.val_images == held_out > 0


@pytest.mark.slow
def test_cosine_schedules_are_not_resumed_after_raising_the_epochs(tiny_project, capsys):
    write_params(tiny_project, train={"schedule": "cosine", "epochs": 1})
    os.chdir(tiny_project)
    train.train_arm(load_params("params.yaml"), "scratch")
    write_params(tiny_project, train={"schedule": "cosine", "epochs": 2})
    train.train_arm(load_params("params.yaml"), "scratch")
    assert "params.train.epochs: 1 -> 2" in capsys.readouterr().err  # every step's rate depends on the total
    assert Layout().arm("scratch").history.is_file()
