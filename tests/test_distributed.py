"""`torchrun --nproc_per_node=2` trains with DDP over gloo on the CPU, reduces, resumes."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

from conftest import subprocess_env, write_params
from retinopathy.core.config import load_params
from retinopathy.data.cache import open_dataset
from retinopathy.data.index import read_index
from retinopathy.engine import checkpoint, loops
from retinopathy.engine.batches import loader
from retinopathy.engine.distributed import Process, ShardSampler
from retinopathy.engine.runtime import make_runtime
from retinopathy.models.grader import GraderSpec, load_grader
from retinopathy.models.head import Head

pytestmark = pytest.mark.slow


def torchrun(folder, *args):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "retinopathy",
        "train",
        "--init",
        "scratch",
        *args,
    ]
    return subprocess.run(
        command, cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )


def test_two_process_ddp_training_reduces_over_ranks_and_resumes(tiny_project):
    first = torchrun(tiny_project)
    assert first.returncode == 0, first.stdout + first.stderr
    # Only rank 0 reports and writes: each epoch line appears once.
    assert first.stdout.count("scratch epoch 2/2:") == 1

    last = checkpoint.load(tiny_project / "models/scratch/last.pt", "last")
    assert last.epoch == 2 and last.fingerprint_inputs.world_size == 2
    with open(tiny_project / "metrics/history/scratch.csv") as stream:
        history = list(csv.DictReader(stream))
    assert len(history) == 2

    # The test accuracy summed over both ranks equals a single-process evaluation
    # of the saved model over the whole test split (no image lost or counted twice).
    params = load_params(tiny_project / "params.yaml")
    model = load_grader(GraderSpec.from_dict(last.spec, "last.pt"), last.model, "last.pt")
    records = read_index(tiny_project / "data/prepared/index.csv")["test"]
    # data.root is relative: the cwd is tiny_project
    dataset = open_dataset(params.data.root, "test", records, params.data.image_size)
    runtime = make_runtime(torch.device("cpu"), num_workers=0)
    batches = loader(dataset, 5, ShardSampler(len(dataset), Process()), runtime)
    result = loops.evaluate_epoch(model, batches, runtime, Head("cross_entropy"))
    assert result.count == len(records)
    assert float(history[-1]["test_accuracy"]) == pytest.approx(result.accuracy, abs=1e-6)

    write_params(tiny_project, train={"epochs": 3})
    resumed = torchrun(tiny_project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stderr.count("resuming after epoch 2 of 3") == 1  # said once, by rank 0
    assert checkpoint.load(tiny_project / "models/scratch/last.pt", "last").epoch == 3
