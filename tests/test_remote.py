"""Outputs travel through a DVC remote, on tiny data.

One machine runs `dvc repro` (one epoch), `dvc push`es to a local-folder remote and pushes git;
a fresh `git clone` + `dvc pull` elsewhere (another folder, another torch cache) then has nothing
to rerun: `dvc status` lists only the always-running `weights` stage, `dvc repro` runs only it,
and it changes nothing that git tracks. `retinopathy predict` grades images with the pulled
checkpoint, `retinopathy export` writes it as TorchScript, and raising `train.epochs` resumes
the pulled arm after its first epoch instead of training it again. (Another torch cache: the
skipped pretrained arm's manifest must say the same on every machine, or that arm reruns.)
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, subprocess_env, tiny_params

pytestmark = pytest.mark.slow


def run(folder: Path, *command: str, env: dict | None = None, stdout_only: bool = False) -> str:
    result = subprocess.run(
        command, cwd=folder, env=env or subprocess_env(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout if stdout_only else result.stdout + result.stderr


def ran(output: str) -> set[str]:
    """Stages DVC ran, from its "Running stage 'x':" lines."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def new_project(folder: Path, epochs: int) -> Path:
    """A git + DVC copy of the project (code, dvc.yaml, ignore files) with tiny params."""
    folder.mkdir()
    shutil.copytree(REPO / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", folder)
    (folder / "models").mkdir()
    shutil.copy(REPO / "models/.gitignore", folder / "models")
    params = tiny_params()
    params["train"]["epochs"] = epochs
    # The default external set (the demo's shifted set, which dvc.yaml's demo-shifted stage imports),
    # as a newcomer's clone has it. With `external: {}` the external stages' headline folders are
    # empty, git keeps no empty folder, and a clone's `dvc repro` reruns those two stages (README).
    params["external"] = yaml.safe_load((REPO / "params.yaml").read_text())["external"]
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(folder, "git", "init", "-q", "-b", "main")
    run(folder, "git", "config", "user.email", "test@example.com")
    run(folder, "git", "config", "user.name", "test")
    run(folder, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvcignore", folder)
    return folder


def commit(folder: Path, message: str) -> None:
    run(folder, "git", "add", "-A")
    run(folder, "git", "commit", "-qm", message)


def status(folder: Path, env: dict | None = None) -> dict:
    return json.loads(
        subprocess.run(
            ["dvc", "status", "--json"],
            cwd=folder,
            env=env or subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
    )


def history(folder: Path) -> list[dict]:
    with open(folder / "metrics/history/scratch.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def test_push_clone_pull_reruns_nothing_and_resumes(tmp_path):
    # Machine A: one epoch, pushed. The remote is a plain folder (SSH and S3 remotes work alike).
    origin = new_project(tmp_path / "a", epochs=1)
    run(origin, "dvc", "repro")
    run(origin, "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    commit(origin, "one epoch")
    pushed = run(origin, "dvc", "push")
    assert "pushed" in pushed
    first_epoch = history(origin)
    assert [row["epoch"] for row in first_epoch] == ["1"]

    # Machine B: another folder and another torch cache.
    env = subprocess_env()
    env["TORCH_HOME"] = str(tmp_path / "torch-home-b")
    run(tmp_path, "git", "clone", "-q", str(origin), "b")
    clone = tmp_path / "b"
    assert not (clone / "models/scratch/last.pt").exists()
    run(clone, "dvc", "pull", env=env)
    for path in ("models/scratch/last.pt", "models/scratch/best.pt", "data/prepared", "data/demo"):
        assert (clone / path).exists(), path
    assert status(clone, env) == {"weights": ["always changed"]}
    assert ran(run(clone, "dvc", "repro", env=env)) == {"weights"}
    assert run(clone, "git", "status", "--porcelain") == ""
    assert status(clone, env) == {"weights": ["always changed"]}

    # The pulled checkpoint grades images and exports.
    images = sorted((clone / "data/demo").glob("*.jpeg"))[:3]
    assert images
    run(
        clone, "retinopathy", "predict", *map(str, images), "--arm", "scratch", "--out", "graded.csv", env=env
    )
    with open(clone / "graded.csv", newline="") as stream:
        graded = list(csv.DictReader(stream))
    assert [Path(row["image"]).name for row in graded] == [image.name for image in images]
    assert all(row["grade"] in "01234" and not row["error"] for row in graded), graded
    run(
        clone,
        "retinopathy",
        "export",
        "--arm",
        "scratch",
        "--format",
        "torchscript",
        "--out",
        "grader.pt",
        env=env,
    )
    assert (clone / "grader.pt").stat().st_size > 1_000_000

    # Raising the epochs resumes the pulled arm after epoch 1: the first row is kept as it was.
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["epochs"] = 2
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run(clone, "dvc", "repro", "train@scratch", env=env)
    assert "resuming after epoch 1 of 2" in output, output
    rows = history(clone)
    assert [row["epoch"] for row in rows] == ["1", "2"] and rows[0] == first_epoch[0]
