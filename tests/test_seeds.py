"""compare groups experiments that differ only in train.seed: mean, standard deviation and n."""

from __future__ import annotations

import statistics

from retinopathy.commands.compare import render, seeds_table
from retinopathy.reporting.experiments import Experiment, seed_groups
from retinopathy.reporting.results import Arm


def experiment(name: str, seed: int, acc: float, lr: float = 0.01, kappa: float = 0.5) -> Experiment:
    params = {"model": "resnet18", "train": {"seed": seed, "lr": lr}}
    arms = {"scratch": Arm("scratch", {"status": "trained", "model": "resnet18"},
                           {"acc": acc, "kappa": kappa, "bacc": 0.4, "base": 0.7, "epoch": 2}),
            "pretrained": Arm("pretrained", {"status": "skipped", "model": "resnet18"}, {})}
    return Experiment(name, name, params, arms)


def test_only_experiments_differing_in_the_seed_are_grouped():
    runs = [experiment("a", 0, 0.80), experiment("b", 1, 0.84), experiment("c", 2, 0.83),
            experiment("other-lr", 1, 0.9, lr=0.1), experiment("again", 1, 0.5)]
    groups = seed_groups(runs)
    assert len(groups) == 1
    assert [e.name for e in groups[0].members] == ["a", "b", "c"] and groups[0].seeds == (0, 1, 2)
    assert groups[0].left_out == ("again",)  # same params and seed as b: not counted twice
    assert seed_groups([experiment("a", 0, 0.8), experiment("x", 0, 0.8, lr=0.1)]) == []


def test_the_table_gives_mean_sample_sd_and_n_per_arm():
    runs = [experiment("a", 0, 0.80, kappa=0.6), experiment("b", 1, 0.84, kappa=0.7),
            experiment("c", 2, 0.83, kappa=0.65)]
    lines = seeds_table(seed_groups(runs))
    scratch = next(line for line in lines if "| scratch |" in line)
    mean, sd = statistics.fmean([0.80, 0.84, 0.83]), statistics.stdev([0.80, 0.84, 0.83])
    assert f"| 3 | {mean:.3f} ± {sd:.3f} | 0.650 ± 0.050 | 0.400 ± 0.000 |" in scratch
    assert "`a` (0), `b` (1), `c` (2)" in scratch
    pretrained = next(line for line in lines if "| pretrained |" in line)
    assert "| 0 | skipped |" in pretrained
    text = render(runs, ["train.seed"], [])
    assert "## Across seeds" in text and scratch in text
    assert "## Across seeds" not in render(runs[:1], [], [])
