"""compare groups experiments that differ only in train.seed: mean, standard deviation and n."""

from __future__ import annotations

import statistics

from retinopathy.core.records import FusionFacts
from retinopathy.reporting.comparison import render, seeds_table
from retinopathy.reporting.experiments import Experiment, seed_groups
from retinopathy.reporting.results import Arm, Fused
from test_report import SKIPPED, _trained


def fused(acc: float, kappa: float, auc_patient: float | None) -> Fused:
    """What the `fuse` stage wrote, as results.load_arm reads it back."""
    figure = {"value": auc_patient, "low": None, "high": None, "undefined": 0}
    return Fused(
        {"acc": acc, "bacc": 0.4, "kappa": kappa},
        {"patient": {"auc_referable": figure}},
        FusionFacts("blend", "epoch 3 of 60", 3, 10, 8, 2, 0),
    )


def experiment(
    name: str, seed: int, acc: float, lr: float = 0.01, kappa: float = 0.5, both: Fused | None = None
) -> Experiment:
    params = {"model": "resnet18", "train": {"seed": seed, "lr": lr}}
    arms = {
        "scratch": Arm(
            "scratch",
            _trained("scratch", acc)[1],
            {"acc": acc, "kappa": kappa, "bacc": 0.4, "base": 0.7, "epoch": 2},
            fused=both,
        ),
        "pretrained": Arm("pretrained", SKIPPED, {}),
    }
    return Experiment(name, name, params, arms)


def test_only_experiments_differing_in_the_seed_are_grouped():
    runs = [
        experiment("a", 0, 0.80),
        experiment("b", 1, 0.84),
        experiment("c", 2, 0.83),
        experiment("other-lr", 1, 0.9, lr=0.1),
        experiment("again", 1, 0.5),
    ]
    groups = seed_groups(runs)
    assert len(groups) == 1
    assert [e.name for e in groups[0].members] == ["a", "b", "c"] and groups[0].seeds == (0, 1, 2)
    assert groups[0].left_out == ("again",)  # same params and seed as b: not counted twice
    assert seed_groups([experiment("a", 0, 0.8), experiment("x", 0, 0.8, lr=0.1)]) == []


def test_the_table_gives_mean_sample_sd_and_n_per_arm():
    runs = [
        experiment("a", 0, 0.80, kappa=0.6),
        experiment("b", 1, 0.84, kappa=0.7),
        experiment("c", 2, 0.83, kappa=0.65),
    ]
    lines = seeds_table(seed_groups(runs))
    scratch = next(line for line in lines if "| scratch |" in line)
    mean, sd = statistics.fmean([0.80, 0.84, 0.83]), statistics.stdev([0.80, 0.84, 0.83])
    assert f"| 3 | {mean:.3f} ± {sd:.3f} | 0.650 ± 0.050 | 0.400 ± 0.000 | n/a | n/a |" in scratch
    assert "`a` (0), `b` (1), `c` (2)" in scratch
    pretrained = next(line for line in lines if "| pretrained |" in line)
    assert "| 0 | skipped |" in pretrained
    text = render(runs, ["train.seed"], [])
    assert "## Across seeds" in text and scratch in text
    assert "## Across seeds" not in render(runs[:1], [], [])


def test_the_fused_kappa_and_auc_per_patient_across_seeds_count_the_runs_that_have_them():
    runs = [
        experiment("a", 0, 0.80, both=fused(0.82, 0.70, 0.90)),
        experiment("b", 1, 0.84, both=fused(0.85, 0.74, 0.86)),
        experiment("c", 2, 0.83, both=fused(0.84, 0.72, None)),
    ]
    scratch = next(line for line in seeds_table(seed_groups(runs)) if "| scratch |" in line)
    kappa = f"{statistics.fmean([0.70, 0.74, 0.72]):.3f} ± {statistics.stdev([0.70, 0.74, 0.72]):.3f}"
    auc = f"{statistics.fmean([0.90, 0.86]):.3f} ± {statistics.stdev([0.90, 0.86]):.3f} (n=2)"
    assert scratch.endswith(f"| {kappa} | {auc} |")


def test_the_results_table_shows_the_fused_accuracy_and_kappa_or_na():
    from retinopathy.reporting.comparison import results_table

    runs = [experiment("with", 0, 0.80, both=fused(0.825, 0.71, 0.9)), experiment("without", 0, 0.80, lr=0.1)]
    lines = results_table(runs)
    assert "| fused acc | fused kappa |" in lines[0]
    with_fusion = next(line for line in lines if line.startswith("| with |"))
    without = next(line for line in lines if line.startswith("| without |"))
    assert "| 80.0% | 0.500 | 40.0% | 82.5% | 0.710 |" in with_fusion
    assert "| 80.0% | 0.500 | 40.0% | n/a | n/a |" in without
