"""The commands as a newcomer meets them: `compare` out of the box, CLI manners (--help, --version)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import subprocess_env
from retinopathy import cli
from retinopathy.core.contract import ARMS, Layout
from retinopathy.reporting.results import load_arm

# A pipeline that "trains" in no time: it writes each arm's files as train and evaluate
# would, from params.yaml. ResNet18 learns; ResNet50 sits at the majority baseline.
FAKE_STAGE = """
import json, pathlib, yaml
params = yaml.safe_load(open("params.yaml"))
model = params["model"]
good = model == "resnet18"
root = pathlib.Path("metrics")
(root / "history").mkdir(parents=True, exist_ok=True)
(root / "confusion").mkdir(exist_ok=True)
counts = [[140, 5, 2, 0, 0], [4, 8, 2, 0, 0], [1, 2, 27, 0, 0], [0, 0, 1, 2, 0], [0, 0, 1, 1, 4]]
if not good:
    counts = [[147, 0, 0, 0, 0], [14, 0, 0, 0, 0], [30, 0, 0, 0, 0], [3, 0, 0, 0, 0], [6, 0, 0, 0, 0]]
for arm in ("scratch", "pretrained"):
    header = "epoch,train_loss,train_accuracy,train_kappa,test_loss,test_accuracy,test_kappa"
    if arm == "pretrained":
        info = {"version": 1, "status": "skipped", "model": model, "init": arm, "reason": "offline",
                "fix": "get weights"}
        metrics, rows, table = {}, [], []
    else:
        acc = 0.905 if good else 0.735
        kappa = 0.89 if good else 0.0
        info = {"version": 1, "status": "trained", "model": model, "init": arm, "weights": "random",
                "data": "data/demo", "synthetic": True, "selection": "test", "select_by": "accuracy",
                "selection_rule": "epoch with the highest test accuracy", "tta": "none", "epochs": 3,
                "test_size": 200, "decoder": "pillow", "trained_with_decoder": "pillow",
                "fingerprint": "0123456789abcdef", "numerics": {"portable": False},
                "patients": {"split": "lists", "named_by_patient": True,
                             "count": {"train": 1, "val": 0, "test": 1}, "test_and_train": 0,
                             "test_images": 0, "test_share": 0.0, "val_and_train": 0, "val_images": 0,
                             "val_share": 0.0, "train_pairs": {"pairs": 0, "same_grade": None,
                                                               "differences": [0, 0, 0, 0, 0]}}}
        metrics = {"acc": acc, "bacc": 0.8 if good else 0.2, "base": 0.735, "epoch": 2,
                   "kappa": kappa, "train": 0.9}
        rows = [f"{e},1.0,0.8,0.5,1.0,{acc - 0.05 * (e != 2):.3f},{max(kappa - 0.1 * (e != 2), 0):.3f}"
                for e in (1, 2, 3)]
        table = counts
    (root / f"{arm}.json").write_text(json.dumps(metrics))
    (root / f"{arm}.info.json").write_text(json.dumps(info))
    (root / "history" / f"{arm}.csv").write_text("\\n".join([header, *rows]) + "\\n")
    for kind in ("counts", "normalized"):
        lines = ["actual,0,1,2,3,4"]
        for grade, row in enumerate(table):
            cells = row if kind == "counts" else [c / sum(row) for c in row]
            lines.append(",".join(map(str, [grade, *cells])))
        (root / "confusion" / f"{arm}_{kind}.csv").write_text("\\n".join(lines) + "\\n")
"""


def sh(folder: Path, *command: str) -> str:
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture()
def dvc_project(tmp_path, monkeypatch) -> Path:
    """A git + DVC project whose only stage writes both arms' results; `dvc repro` committed on main."""
    monkeypatch.setenv("GIT_AUTHOR_NAME", "t")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "t@example.org")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "t")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "t@example.org")
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"model": "resnet18", "train": {"lr": 0.01}}))
    (project / "fake.py").write_text(FAKE_STAGE)
    (project / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "fake": {
                        "cmd": f"{sys.executable} fake.py",
                        "deps": ["fake.py"],
                        "params": ["model", "train.lr"],
                        "outs": [{"metrics": {"cache": False}}],
                    }
                }
            }
        )
    )
    sh(project, "git", "init", "-q", "-b", "main")
    sh(project, "dvc", "init", "-q")
    sh(project, "dvc", "repro", "-q")
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "baseline")
    monkeypatch.chdir(project)
    return project


@pytest.mark.slow
def test_compare_out_of_the_box_shows_main_and_every_experiment_and_takes_revisions(dvc_project, capsys):
    sh(dvc_project, "dvc", "exp", "run", "-q", "-n", "r50", "-S", "model=resnet50")  # no `dvc exp save`
    assert cli.main(["compare", "--out", "compared"]) == 0
    text = (dvc_project / "compared/compare.md").read_text()
    assert "Compared: `main` (baseline), `r50`." in text
    assert "The workspace is left out: it holds the same params and results as `r50`." in text
    rows = [line for line in text.splitlines() if line.startswith("| main |") or line.startswith("| r50 |")]
    good = "ResNet18 | scratch | 2 | test accuracy | 90.5% | 0.890"
    assert any(good in r and "| above |" in r for r in rows)
    flagged = [r for r in rows if "ResNet50 | scratch" in r]
    assert len(flagged) == 1 and "**AT BASELINE** (kappa 0.000 <= 0.05)" in flagged[0]
    assert "> **At the majority baseline**" in text and "`r50` scratch" in text
    with Image.open(dvc_project / "compared/compare.png") as figure:
        assert figure.format == "PNG" and figure.width > 1000

    # Revisions: the branch, a tag, a commit, HEAD and the workspace, named.
    sh(dvc_project, "git", "tag", "v1")
    commit = sh(dvc_project, "git", "rev-parse", "--short", "HEAD").strip()
    assert cli.main(["compare", "main", "r50", "--out", "named"]) == 0
    assert "Compared: `main` (baseline), `r50`." in (dvc_project / "named/compare.md").read_text()
    assert cli.main(["compare", "v1", commit, "workspace", "--out", "revisions"]) == 0
    text = (dvc_project / "revisions/compare.md").read_text()
    assert f"Compared: `v1` (revision), `{commit}` (revision), `workspace` (workspace)." in text
    assert "| `model` | `resnet18` | `resnet18` | `resnet50` |" in text
    assert cli.main(["compare", "no-such-thing", "--out", "bad"]) == 2
    assert "neither an experiment of the current commit (workspace, main, r50)" in capsys.readouterr().err
    assert not (dvc_project / "bad").exists()


def _arms(folder: Path) -> list:
    """Both arms of the fake stage's results, written into ``folder``."""
    subprocess.run([sys.executable, "-c", FAKE_STAGE], cwd=folder, check=True)
    return [load_arm(Layout(metrics=folder / "metrics"), arm) for arm in ARMS]


@pytest.mark.slow
def test_the_compare_figure_labels_lines_by_name_model_and_init_with_one_legend_outside(
    tmp_path, monkeypatch
):
    from retinopathy.reporting import figures

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"model": "resnet18"}))
    runs = [("main", arm) for arm in _arms(tmp_path)]
    shown = {}
    saved = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (shown.update(fig=fig), saved(fig, path)))
    figures.plot_curves(runs, "1 experiment", tmp_path / "compare.png")
    fig = shown["fig"]
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels == ["main: ResNet18 scratch", "always grade 0 (73.5%)", "selected epoch (evaluated)"]
    legend_box = fig.legends[0].get_window_extent()
    for ax in fig.axes:  # outside the panels: it covers no data
        assert not legend_box.overlaps(ax.get_window_extent())
    for ax in fig.axes:  # the selected epoch (2) is starred on both panels
        stars = [line for line in ax.get_lines() if line.get_marker() == "*"]
        assert len(stars) == 1 and list(stars[0].get_xdata()) == [2]
    with Image.open(tmp_path / "compare.png") as image:
        assert image.format == "PNG"


# --- CLI manners -----------------------------------------------------------------------------------


def test_bare_retinopathy_prints_the_usage_and_exits_0(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: retinopathy") and "predict" in out and "--version" in out


def test_version_prints_the_installed_version(capsys):
    from importlib import metadata

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"retinopathy {metadata.version('retinopathy')}"


def _parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser that ``retinopathy <command>`` builds, caught as it parses (nothing runs)."""
    import importlib

    caught = {}

    class Caught(Exception):
        pass

    def catch(parser, *args, **kwargs):
        caught["parser"] = parser
        raise Caught

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    with pytest.raises(Caught):
        importlib.import_module(cli.module_of(command)).main([])
    monkeypatch.undo()
    return caught["parser"]


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_option_has_help_in_one_style(command, monkeypatch):
    """Sentence case, a full stop, and a default shown as "(default: X)" wherever there is one."""
    parser = _parser_of(command, monkeypatch)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = action.help or ""
        assert text and text[0].isupper() and text.endswith("."), f"{command} {name}: {text!r}"
        assert "(default " not in text, f"{command} {name}: write defaults as '(default: X)'"
        has_default = action.default not in (None, False, argparse.SUPPRESS) and not action.required
        if has_default and action.option_strings:
            assert "(default: " in text, f"{command} {name}: the default {action.default!r} is not shown"


# The commands whose --help must not wait for torch (about 3 s here), nor for pandas, scikit-learn,
# matplotlib or DVC (about 3 s together): every one but train, whose options are built from the
# training code (its --help is the training engine's to make light).
LIGHT_HELP = tuple(command for command in cli.COMMANDS if command != "train")
HEAVY = ("torch", "pandas", "sklearn", "matplotlib", "dvc")


@pytest.mark.slow
def test_help_does_not_import_torch():
    code = (
        "import sys\nfrom retinopathy import cli\n"
        f"for command in {LIGHT_HELP!r}:\n"
        "    try:\n        cli.main([command, '--help'])\n    except SystemExit as exit:\n"
        "        assert exit.code == 0, command\n"
        f"    heavy = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "    assert not heavy, f'{command} --help imports {heavy}'\n"
        "print('light')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0 and done.stdout.strip().endswith("light"), done.stderr
