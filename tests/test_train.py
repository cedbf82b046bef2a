"""Training, resuming, skipping and evaluating one arm on a tiny synthetic project."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from conftest import run_arm, subprocess_env, write_params
from retinopathy.core.config import load_params
from retinopathy.core.contract import QUALITY_COLUMNS
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import INFO_VERSION, SUMMARY_VERSION, EvaluationInfo, Skipped, TrainingStatus
from retinopathy.engine import checkpoint, loops
from retinopathy.stages import evaluate, weights


def read_history(folder: Path, init: str = "scratch") -> list[dict[str, str]]:
    with open(folder / "metrics/history" / f"{init}.csv") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.slow
def test_trains_evaluates_and_writes_every_output(tiny_project):
    status = run_arm(tiny_project)
    assert isinstance(status, TrainingStatus) and status.selection == "test"
    history = read_history(tiny_project)
    assert [int(row["epoch"]) for row in history] == [1, 2]
    last = checkpoint.load(tiny_project / "models/scratch/last.pt", "last")
    assert last.epoch == 2 and last.history == status.history and last.fingerprint == status.fingerprint
    assert last.optimizer["state"] and last.config["train"]["epochs"] == 2 and "torch" in last.rng
    best = checkpoint.load(tiny_project / "models/scratch/best.pt", "best")
    assert best.epoch == status.best_epoch and best.fingerprint == status.fingerprint

    params = load_params(tiny_project / "params.yaml")
    result = evaluate.evaluate_arm(params, "scratch")
    # The evaluated checkpoint reproduces the accuracy recorded during training.
    metrics, info = result.metrics, result.info
    history_row = read_history(tiny_project)[metrics["epoch"] - 1]
    assert metrics["acc"] == round(float(history_row["test_accuracy"]), 3)
    assert isinstance(info, EvaluationInfo) and info.test_size == 12
    assert json.loads((tiny_project / "metrics/scratch.json").read_text()) == metrics
    assert all(isinstance(v, int | float) for v in metrics.values())
    summary = json.loads((tiny_project / "data/prepared/summary.json").read_text())
    assert metrics["base"] == round(summary["majority_baseline"]["test_accuracy"], 3)
    assert summary["version"] == SUMMARY_VERSION
    assert json.loads((tiny_project / "metrics/scratch.info.json").read_text())["version"] == INFO_VERSION
    with open(tiny_project / "metrics/confusion/scratch_normalized.csv") as stream:
        rows = list(csv.reader(stream))[1:]
    for row in rows:
        total = sum(map(float, row[1:]))
        assert total == pytest.approx(1.0, abs=1e-5) or total == 0
    with open(tiny_project / "metrics/predictions/scratch.csv") as stream:
        predictions = list(csv.DictReader(stream))
    assert len(predictions) == 12 and list(predictions[0]) == [
        "image",
        "patient",
        "actual",
        "predicted",
        "p0",
        "p1",
        "p2",
        "p3",
        "p4",
        "referable_score",
        *QUALITY_COLUMNS,  # empty: the quality stage has not run in this project
    ]
    correct = sum(row["actual"] == row["predicted"] for row in predictions)
    assert round(correct / 12, 3) == metrics["acc"]


def test_pretrained_arm_is_skipped_offline_with_reason_and_fix(tiny_project):
    assert isinstance(run_arm(tiny_project, "pretrained"), Skipped)
    assert read_history(tiny_project, "pretrained") == []
    result = evaluate.evaluate_arm(load_params(tiny_project / "params.yaml"), "pretrained")
    assert result.metrics == {} and isinstance(result.info, Skipped)
    assert "resnet18-f37072fd.pth" in result.info.reason and "train.weights" in result.info.fix
    assert json.loads((tiny_project / "metrics/pretrained.json").read_text()) == {}
    assert not (tiny_project / "models/pretrained/last.pt").exists()


@pytest.mark.slow
def test_pretrained_arm_trains_from_a_state_dict_file(tiny_project):
    path = tiny_project / "test-written-weights.pth"
    torch.save(tvm.resnet18().state_dict(), path)
    write_params(tiny_project, train={"weights": str(path), "epochs": 1})
    assert weights.main([]) == 0
    status = run_arm(tiny_project, "pretrained")
    assert isinstance(status, TrainingStatus)
    assert str(path) in status.weights and "imagenet" not in status.weights.lower()


@pytest.mark.slow
def test_more_epochs_continue_and_match_an_uninterrupted_run(tiny_project, scratch_dir):
    twin = scratch_dir
    shutil.copytree(tiny_project, twin, dirs_exist_ok=True)
    run_arm(tiny_project)  # 2 epochs in one go

    write_params(twin, train={"epochs": 1})
    run_arm(twin)
    write_params(twin, train={"epochs": 2})
    run_arm(twin)  # resumes after epoch 1
    assert read_history(twin) == read_history(tiny_project)


@pytest.mark.slow
def test_changed_params_do_not_resume(tiny_project, capsys):
    run_arm(tiny_project)
    write_params(tiny_project, train={"lr": 0.02})
    run_arm(tiny_project)
    out = capsys.readouterr().err  # notices go to stderr
    assert "made with other settings, not resuming" in out and "train.lr: 0.01 -> 0.02" in out
    assert checkpoint.load(tiny_project / "models/scratch/last.pt", "last").config["train"]["lr"] == 0.02


RECIPES = {
    "lab": {},
    "field": {
        "augment": {
            "flip": True,
            "rotate": 180,
            "scale": [0.87, 1.15],
            "translate": 0.2,
            "brightness": 0.2,
            "contrast": 0.2,
        },
        "train": {"schedule": "cosine", "warmup_epochs": 1, "nesterov": True},
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_killed_run_resumes_with_the_same_history(tiny_project, scratch_dir, recipe):
    settings = RECIPES[recipe]
    write_params(
        tiny_project,
        data={"image_size": 64},
        train={"epochs": 4, **settings.get("train", {})},
        augment=settings.get("augment", {}),
    )
    twin = scratch_dir
    shutil.copytree(tiny_project, twin, dirs_exist_ok=True)
    run_arm(twin)  # uninterrupted reference, in-process

    command = [sys.executable, "-m", "retinopathy", "train", "--init", "scratch"]
    child = subprocess.Popen(
        command, cwd=tiny_project, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    last = tiny_project / "models/scratch/last.pt"
    deadline = time.time() + 300
    while not last.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)  # no chance to clean up
    child.wait()
    # The run's own copy, in its resume store, may be an epoch ahead of models/scratch/last.pt.
    stored = list((tiny_project / "models/.resume/scratch").glob("*/last.pt"))
    assert len(stored) == 1, "the unfinished run is kept in its resume store"
    killed_after = checkpoint.load(stored[0], "last").epoch
    assert 1 <= killed_after < 4, "the kill should land before the last epoch"

    resumed = subprocess.run(command, cwd=tiny_project, env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {killed_after} of 4" in resumed.stderr, resumed.stderr
    assert read_history(tiny_project) == read_history(twin)
    assert not list((tiny_project / "models/scratch").glob("*.tmp")), "no temporary file left behind"
    assert not (tiny_project / "models/.resume").exists(), "the finished run's resume store is removed"


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_project, monkeypatch):
    real = loops.train_epoch
    calls = []

    def second_epoch_diverges(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise loops.NonFiniteLoss("step 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(loops, "train_epoch", second_epoch_diverges)
    expected = r"NaN or infinite in epoch 2 \(step 3\).*train\.lr.*epoch 1\) is kept"
    with pytest.raises(RetinopathyError, match=expected):
        run_arm(tiny_project)
    assert checkpoint.load(tiny_project / "models/scratch/last.pt", "last").epoch == 1
    assert len(read_history(tiny_project)) == 1


@pytest.mark.slow
def test_validation_split_picks_the_epoch(tiny_project):
    write_params(tiny_project, data={"val_fraction": 0.25})
    from retinopathy.stages import prepare

    prepare.prepare(load_params(tiny_project / "params.yaml"), tiny_project / "data/prepared")
    status = run_arm(tiny_project)
    assert isinstance(status, TrainingStatus) and status.selection == "validation"
    history = read_history(tiny_project)
    assert "val_accuracy" in history[0]
    result = evaluate.evaluate_arm(load_params(tiny_project / "params.yaml"), "scratch")
    assert isinstance(result.info, EvaluationInfo)
    assert result.info.selection == "validation" and "validation" in result.info.selection_rule
    best = max(history, key=lambda row: float(row["val_accuracy"]))
    assert result.metrics["epoch"] == int(best["epoch"])
    assert result.metrics["val"] == round(float(best["val_accuracy"]), 3)


@pytest.mark.slow
def test_the_decoded_cache_changes_speed_only(tiny_project, scratch_dir):
    twin = scratch_dir / "twin"
    shutil.copytree(tiny_project, twin)
    run_arm(tiny_project)
    write_params(twin, data={"cache_dir": str(scratch_dir / "pixels")})
    run_arm(twin)
    assert read_history(twin) == read_history(tiny_project)
