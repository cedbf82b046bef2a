"""Training runs that go wrong: kills between writes, DVC checkouts, a second `dvc exp run`, no memory.

Also what a long run shows while it works (progress lines with an ETA), and
seeds up to the largest torch takes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, run_arm, subprocess_env, tiny_params, write_params
from retinopathy.core.config import AugmentParams, load_params, parse_params
from retinopathy.core.contract import Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import TrainingStatus
from retinopathy.engine import checkpoint, loops
from retinopathy.engine.augment import Augment
from retinopathy.engine.distributed import BalancedSampler, EpochShuffleSampler, Process, torch_seed
from retinopathy.engine.store import CheckpointStore
from retinopathy.stages import evaluate, train


def stored(folder: Path, arm: str = "scratch") -> list[Path]:
    """The last.pt files of unfinished runs in the resume store."""
    return sorted((folder / "models/.resume" / arm).glob("*/last.pt"))


# --- what a long pass shows ------------------------------------------------------------------


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Batches(list):
    """A list of (images, labels) batches with a sampler's length, as a DataLoader has."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__((torch.zeros(n, 3, 2, 2), torch.zeros(n, dtype=torch.int64)) for n in sizes)
        self.sampler = range(sum(sizes))


def test_progress_off_a_terminal_prints_a_plain_line_with_an_eta_per_interval():
    stream = io.StringIO()
    batches = Batches([8, 8, 8, 8, 8, 8, 8, 4])  # 60 images; the clock moves 10 s per read
    shown = loops.Progress(
        batches,
        "scratch epoch 2/4 training",
        Process(),
        stream=stream,
        clock=FakeClock(10.0),
        every=30.0,
        terminal=False,
    )
    assert [len(labels) for _, labels in shown] == [8] * 7 + [4]  # the batches, unchanged
    lines = stream.getvalue().splitlines()
    # Started at t=10; reads at 20, 30, ...: a line once 30 s have passed since the last one.
    assert lines == [
        "scratch epoch 2/4 training: 24/60 images, 0.8 img/s, ETA 0:45",
        "scratch epoch 2/4 training: 48/60 images, 0.8 img/s, ETA 0:15",
    ], lines


def test_progress_counts_all_processes_and_is_silent_off_the_main_one():
    stream = io.StringIO()
    list(
        loops.Progress(
            Batches([4, 4]),
            "test",
            Process(rank=1, world_size=2),
            stream=stream,
            clock=FakeClock(100.0),
            terminal=False,
        )
    )
    assert stream.getvalue() == ""
    list(
        loops.Progress(
            Batches([4, 4]),
            "test",
            Process(rank=0, world_size=2),
            stream=stream,
            clock=FakeClock(100.0),
            every=30.0,
            terminal=False,
        )
    )
    assert stream.getvalue().splitlines()[-1] == "test: 16/16 images, 0.1 img/s, ETA 0:00"


def test_progress_on_a_terminal_is_a_bar_with_an_eta():
    stream = io.StringIO()
    list(
        loops.Progress(Batches([8, 8]), "scratch epoch 1/2 training", Process(), stream=stream, terminal=True)
    )
    assert "scratch epoch 1/2 training" in stream.getvalue() and "<" in stream.getvalue()  # tqdm's ETA


def test_clock_time_reads_as_minutes_or_hours():
    assert [loops.clock_time(s) for s in (7, 65, 3600 + 62)] == ["0:07", "1:05", "1:01:02"]


# --- out of memory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
            "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"
        ),
    ],
)
def test_an_allocation_failure_says_what_to_lower(error):
    expected = r"^grading: ran out of .*memory \(.*allocate.*\); lower B$"
    with pytest.raises(loops.OutOfMemory, match=expected), loops.memory_guard("grading", "B"):
        raise error
    with pytest.raises(RuntimeError, match="something else"), loops.memory_guard("grading", "B"):
        raise RuntimeError("something else")  # other errors pass unchanged


def test_out_of_memory_in_training_names_the_settings_to_lower(tiny_project, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 999 bytes")

    monkeypatch.setattr(loops, "sgd_step", no_memory)
    expected = (
        r"training scratch, epoch 1: ran out of memory .*lower "
        r"train\.batch_size \(now 8\) or data\.image_size \(now 32\)"
    )
    with pytest.raises(loops.OutOfMemory, match=expected):
        train.main(["--init", "scratch"])
    assert not (tiny_project / "models/scratch/last.pt").exists()


# --- seeds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 2**63, 2**64 - 1, 2**64, 2**100])
def test_every_seed_drives_the_samplers_and_augmentation(seed):
    assert 0 <= torch_seed(seed) < 2**64 and (seed >= 2**64 or torch_seed(seed) == seed)
    samplers = (EpochShuffleSampler(10, seed, Process()), BalancedSampler([0, 1, 2] * 4, seed, Process()))
    for sampler in samplers:
        sampler.set_epoch(3)
        assert len(list(sampler)) == len(sampler)
    Augment(tiny_augment(), seed).draw(2, epoch=3, step=5)


def tiny_augment() -> AugmentParams:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["augment"].update(flip=True, rotate=10)
    return parse_params(params).augment


# --- the resume store and the checkpoint pair --------------------------------------------------


def test_the_resume_store_removes_only_its_own_files(tmp_path):
    files = Layout(models=tmp_path / "models").arm("scratch")
    store = CheckpointStore.of(tmp_path / "models", files, "abc", "test_accuracy", with_val=False)
    store.folder.mkdir(parents=True)
    store.last.write_bytes(b"last")
    store.best.write_bytes(b"best")
    other = store.folder.parent / "def" / "last.pt"  # another run's
    other.parent.mkdir()
    other.write_bytes(b"other")
    store.publish()
    assert os.path.samefile(store.last, tmp_path / "models/scratch/last.pt")  # a link, not a copy
    store.remove()
    assert not store.folder.exists() and other.read_bytes() == b"other"
    assert (tmp_path / "models/scratch/last.pt").read_bytes() == b"last"


@pytest.mark.slow
def test_a_kill_between_the_two_checkpoint_writes_leaves_a_pair_that_resumes(
    tiny_project, monkeypatch, capsys
):
    real = checkpoint.save_atomic

    def killed_before_best(state, path):
        if path.name == "best.pt" and ".resume" in path.parts:
            raise KeyboardInterrupt  # the kill: last.pt of epoch 1 is written, its best.pt not
        real(state, path)

    monkeypatch.setattr(checkpoint, "save_atomic", killed_before_best)
    with pytest.raises(KeyboardInterrupt):
        run_arm(tiny_project)
    monkeypatch.setattr(checkpoint, "save_atomic", real)
    [last] = stored(tiny_project)
    assert checkpoint.load(last, "last").epoch == 1 and not last.with_name("best.pt").exists()

    status = run_arm(tiny_project)  # rebuilds best.pt of epoch 1 from last.pt, goes on
    assert "resuming after epoch 1 of 2" in capsys.readouterr().err
    best = checkpoint.load(tiny_project / "models/scratch/best.pt", "best")
    assert isinstance(status, TrainingStatus)
    assert best.epoch == status.best_epoch and best.fingerprint == status.fingerprint
    assert not (tiny_project / "models/.resume").exists()
    params = load_params(tiny_project / "params.yaml")
    assert evaluate.evaluate_arm(params, "scratch").metrics["epoch"] == status.best_epoch

    # best.pt of a later epoch than status.json knows (the old order's kill): a clear error, no IndexError.
    checkpoint.save(dataclasses.replace(best, epoch=3), tiny_project / "models/scratch/best.pt")
    with pytest.raises(
        RetinopathyError,
        match=r"best\.pt: holds epoch 3 .*status\.json says the best epoch "
        r".*run `dvc repro train@scratch`",
    ):
        evaluate.evaluate_arm(params, "scratch")

    # Out of memory while evaluating: what to lower.
    checkpoint.save(best, tiny_project / "models/scratch/best.pt")

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(loops, "_predict", no_memory)
    with pytest.raises(
        loops.OutOfMemory,
        match=r"evaluating scratch.*ran out of GPU memory.*lower "
        r"train\.batch_size in params\.yaml \(now 8;",
    ):
        evaluate.evaluate_arm(params, "scratch")


# --- a second command changes params.yaml under a run ------------------------------------------


@pytest.mark.slow
def test_params_changed_mid_run_stop_training_and_the_run_resumes_when_they_are_back(
    tiny_project, monkeypatch, capsys
):
    monkeypatch.setattr(loops, "PLAIN_EVERY", 0.0)  # a progress line after every batch
    real = CheckpointStore.save

    def second_exp_run_rewrites_params(*args, **kwargs):
        improved = real(*args, **kwargs)
        write_params(tiny_project, train={"lr": 0.02})  # what `dvc exp run -S train.lr=0.02` does first
        return improved

    monkeypatch.setattr(CheckpointStore, "save", second_exp_run_rewrites_params)
    with pytest.raises(
        RetinopathyError,
        match=r"params\.yaml: changed while training the scratch arm "
        r"\(train\.lr: 0\.01 -> 0\.02\).*stopped after epoch 1.*"
        r"dvc exp run --queue",
    ):
        train.main(["--init", "scratch"])
    err = capsys.readouterr().err
    assert "scratch: training resnet18 for 2 epochs on cpu (40 train, 12 test images at 32 px" in err
    assert "scratch epoch 1/2 training: 8/40 images" in err and "ETA" in err, err  # not silent
    assert "scratch epoch 1/2 training: 40/40 images" in err
    [last] = stored(tiny_project)
    assert checkpoint.load(last, "last").epoch == 1  # the last good checkpoint is kept
    assert checkpoint.load(tiny_project / "models/scratch/last.pt", "last").epoch == 1

    monkeypatch.setattr(CheckpointStore, "save", real)
    write_params(tiny_project)  # the settings are back
    assert train.main(["--init", "scratch"]) == 0
    assert "resuming after epoch 1 of 2" in capsys.readouterr().err
    assert json.loads((tiny_project / "models/scratch/status.json").read_text())["epochs"] == 2


# --- `dvc exp run` killed, another experiment, the same command again --------------------------


def run(folder: Path, *command: str) -> str:
    result = subprocess.run(
        command, cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture()
def dvc_project(tmp_path) -> Path:
    """A git + DVC copy of the project on tiny data (the train@scratch stage and what it needs)."""
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copytree(REPO / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, folder)
    (folder / "models").mkdir()
    shutil.copy(REPO / "models/.gitignore", folder / "models")
    params = tiny_params()
    params["train"]["epochs"] = 3
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(folder, "git", "init", "-q")
    run(folder, "git", "config", "user.email", "test@example.com")
    run(folder, "git", "config", "user.name", "test")
    run(folder, "dvc", "init", "-q")
    run(folder, "git", "add", "-A")
    run(folder, "git", "commit", "-qm", "tiny project")
    return folder


@pytest.mark.slow
def test_a_killed_dvc_exp_run_resumes_after_another_experiment(dvc_project):
    command = ["dvc", "exp", "run", "train@scratch", "-S", "train.seed=0", "-S", "train.epochs=3"]
    child = subprocess.Popen(
        command,
        cwd=dvc_project,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in child.stdout:  # kill DVC and the stage (its process group) once epoch 1 is saved
        seen.append(line)
        if line.startswith("scratch epoch 1/3:"):
            os.killpg(child.pid, signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert any(line.startswith("scratch epoch 1/3:") for line in seen), "".join(seen)
    time.sleep(0.5)  # the process group is gone
    [last] = stored(dvc_project)
    killed_after = checkpoint.load(last, "last").epoch
    assert 1 <= killed_after < 3

    # Another experiment in between: its models/scratch is what dvc.lock records now.
    run(dvc_project, "dvc", "exp", "run", "train@scratch", "-S", "train.seed=1", "-S", "train.epochs=1")
    other = checkpoint.load(dvc_project / "models/scratch/last.pt", "last")
    assert other.config["train"]["seed"] == 1

    # The same command again: DVC checks the other experiment's files out, training resumes anyway.
    output = run(dvc_project, *command)
    assert f"resuming after epoch {killed_after} of 3" in output, output
    assert "made with other settings" not in output
    status = json.loads((dvc_project / "models/scratch/status.json").read_text())
    assert [row["epoch"] for row in status["history"]] == [1, 2, 3]
    assert not (dvc_project / "models/.resume").exists()
    assert "models/.resume" not in run(dvc_project, "git", "status", "--porcelain", "--ignored=no")
