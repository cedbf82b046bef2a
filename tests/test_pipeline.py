"""End to end with DVC, on tiny data in a temporary copy of the project.

Offline `dvc repro` trains the scratch arm and reports the pretrained arm as
skipped; pointing `train.weights` at a state-dict file that this test writes
itself (random torchvision weights, never called ImageNet) reruns only the
pretrained arm and what follows; then `dvc metrics show`, `dvc plots diff`,
`dvc exp run -S model=resnet50` and `dvc exp show` work.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
import yaml
from PIL import Image

from conftest import REPO, subprocess_env, tiny_params
from retinopathy.reporting.escape import md_prose

pytestmark = pytest.mark.slow


def run(folder: Path, *command: str, stdout_only: bool = False) -> str:
    result = subprocess.run(
        command, cwd=folder, env=subprocess_env(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout if stdout_only else result.stdout + result.stderr


def ran(output: str) -> set[str]:
    """Stages DVC ran, from its "Running stage 'x':" lines."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture()
def project(tmp_path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copytree(REPO / "src", folder / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", folder)
    (folder / "models").mkdir()
    shutil.copy(REPO / "models/.gitignore", folder / "models")  # run locks are not committed
    params = tiny_params()
    params["train"]["epochs"] = {"resnet18": 2, "resnet50": 1}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(folder, "git", "init", "-q")
    run(folder, "git", "config", "user.email", "test@example.com")
    run(folder, "git", "config", "user.name", "test")
    run(folder, "dvc", "init", "-q")
    shutil.copy(REPO / ".dvcignore", folder)  # keeps temporaries of killed writes out of outputs
    run(folder, "git", "add", "-A")
    run(folder, "git", "commit", "-qm", "tiny project")
    return folder


def commit(folder: Path, message: str) -> None:
    run(folder, "git", "add", "-A")
    run(folder, "git", "commit", "-qm", message)


def test_dvc_pipeline_end_to_end(project, tmp_path):
    # 1. Offline: scratch trained, pretrained skipped with the reason and the fix.
    output = run(project, "dvc", "repro")
    assert {
        "demo-data",
        "prepare",
        "quality",
        "weights",
        "train@scratch",
        "train@pretrained",
        "evaluate@scratch",
        "evaluate@pretrained",
        "fuse@scratch",
        "fuse@pretrained",
        "explain@scratch",
        "explain@pretrained",
        "report",
    } <= ran(output)
    assert "warning: pretrained arm skipped" in output
    scratch = json.loads((project / "metrics/scratch.info.json").read_text())
    skipped = json.loads((project / "metrics/pretrained.info.json").read_text())
    assert scratch["status"] == "trained" and scratch["model"] == "resnet18"
    assert skipped["status"] == "skipped" and "train.weights" in skipped["fix"]
    assert json.loads((project / "metrics/pretrained.json").read_text()) == {}  # a row of dashes
    report = (project / "plots/report.md").read_text()
    assert "skipped" in report and md_prose(skipped["fix"]) in report  # its `$TORCH_HOME` escaped: no math
    assert "## Gradability" in report and "| imageability |" in report
    gradability = json.loads((project / "metrics/scratch.screening.json").read_text())["gradability"]
    assert gradability["image"]["n"] == 12 and 0 <= gradability["image"]["imageability"]["value"] <= 1
    commit(project, "offline run")

    # 2. Nothing changed: only the always-changed weights stage runs. A temporary left by a
    #    killed write on another machine of a shared filesystem is no part of the output.
    (project / "models/scratch/.last.pt.elsewhere-1.abcdef.tmp").write_bytes(b"half a checkpoint")
    assert ran(run(project, "dvc", "repro")) == {"weights"}

    # 2b. A setting that fails (no GPU here) stops the first stage, before any output is removed.
    if not torch.cuda.is_available():
        kept = {
            path: (project / path).read_bytes()
            for path in ("metrics/history/scratch.csv", "metrics/scratch.json", "plots/report.md")
        }
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["train"]["device"] = "cuda"
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        failed = subprocess.run(
            ["dvc", "repro"], cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=900
        )
        assert failed.returncode != 0 and "sees no CUDA GPU" in failed.stdout + failed.stderr
        assert ran(failed.stdout + failed.stderr) == {"weights"}
        assert {path: (project / path).read_bytes() for path in kept} == kept
        run(project, "git", "checkout", "params.yaml")

    # 3. Weights from files the test writes: only the pretrained arm and what follows rerun.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert [out["nfiles"] for out in lock["stages"]["train@scratch"]["outs"] if "nfiles" in out] == [3]
    files = {}
    for arch in ("resnet18", "resnet50"):
        files[arch] = str(tmp_path / f"test-written-{arch}.pth")
        torch.save(getattr(tvm, arch)().state_dict(), files[arch])
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["weights"] = files
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run(project, "dvc", "repro")
    assert ran(output) == {
        "weights",
        "train@pretrained",
        "evaluate@pretrained",
        "fuse@pretrained",
        "external@pretrained",  # no set configured (tiny_params): its index alone, again
        "explain@pretrained",
        "report",
    }
    pretrained = json.loads((project / "metrics/pretrained.info.json").read_text())
    assert pretrained["status"] == "trained" and files["resnet18"] in pretrained["weights"]
    assert "imagenet" not in json.dumps(pretrained).lower()
    assert "Skipped arms" not in (project / "plots/report.md").read_text()

    metrics = run(project, "dvc", "metrics", "show", stdout_only=True)
    assert "metrics/scratch.json" in metrics and "metrics/pretrained.json" in metrics
    assert max(len(line) for line in metrics.splitlines()) <= 120, metrics  # reads at a glance
    shown = json.loads(run(project, "dvc", "metrics", "show", "--json", stdout_only=True))
    values = [
        value
        for source in shown.values()
        for file in source["data"].values()
        for value in file["data"].values()
    ]
    assert len(values) >= 2 * 12 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ), shown
    run(project, "dvc", "plots", "diff", "HEAD", "-o", str(tmp_path / "plots-html"))
    assert (tmp_path / "plots-html" / "index.html").is_file()
    commit(project, "pretrained from a file")

    # 4. The experiment switch, exactly as typed by a user.
    output = run(project, "dvc", "exp", "run", "-S", "model=resnet50")
    assert {"train@scratch", "train@pretrained"} <= ran(output)
    shown = run(project, "dvc", "exp", "show", "--no-pager", "--csv")
    assert "resnet50" in shown and "resnet18" in shown
    assert json.loads((project / "metrics/scratch.info.json").read_text())["model"] == "resnet50"

    # 5. One table and one figure across two experiments, read through DVC's Python API.
    run(project, "git", "checkout", "params.yaml")
    run(project, "dvc", "exp", "run", "-S", "model=resnet18", "-n", "r18")
    output = run(project, "retinopathy", "compare", "--out", "compared")
    table = (project / "compared/compare.md").read_text()
    model_row = next(line for line in table.splitlines() if line.startswith("| `model` |"))
    assert "## Every experiment and arm" in table and "resnet18" in model_row and "resnet50" in model_row
    assert "(baseline)" in table  # the current commit is compared too
    rows = [line for line in table.splitlines() if line.startswith("| r18 |") or "| ResNet50 |" in line]
    assert len([r for r in rows if r.startswith("| r18 | ResNet18 |")]) == 2, table  # both arms
    assert "## With and without pretraining" in table and "| ResNet50 |" in table
    assert "The workspace is left out" in table  # it holds r18's results
    with Image.open(project / "compared/compare.png") as figure:
        assert figure.format == "PNG" and figure.width > 1000
    assert "wrote compared/compare.md" in output


def test_a_change_to_the_demo_painter_reruns_only_demo_data_on_other_data(project):
    # The course layout in data/course (images drawn by the demo painter, but not the demo folder).
    from retinopathy.stages.demo_data import write_demo_dataset

    write_demo_dataset(
        project / "data/course", seed=1, train_size=20, test_size=10, image_size=48, variation=True
    )
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["root"] = "data/course"
    params["train"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(project, "dvc", "repro")
    status = json.loads(run(project, "dvc", "status", "--json", stdout_only=True))
    assert status == {"weights": ["always changed"]}

    painter = project / "src/retinopathy/data/synthetic.py"
    painter.write_text(painter.read_text() + "\n# a vessel redrawn\n")
    status = json.loads(run(project, "dvc", "status", "--json", stdout_only=True))
    assert status.pop("weights") == ["always changed"]  # it always runs: weights may appear in a cache
    assert list(status) == ["demo-data"], status
