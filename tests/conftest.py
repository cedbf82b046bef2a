"""Shared fixtures: a tiny project (params, demo data, prepared index, manifests) in tmp_path, and
one trained tiny project per test session for the tests that need a trained grader.

A test that trains a network, or runs DVC end to end, is marked ``slow``: ``pytest -m "not slow"``
is the inner loop (CONTRIBUTING.md). The session's one training run is the exception: it is
shared by every test that needs a trained grader (:func:`trained_once`, :func:`trained_project`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from retinopathy import cli
from retinopathy.core import portable

# As `retinopathy <command>` does, before anything imports torch: in-process runs then get the same
# numerics (train.portable's pins) as the commands the tests run in subprocesses.
portable.prepare(["--params", str(Path(__file__).resolve().parents[1] / "params.yaml")])

from retinopathy.core.config import load_params  # noqa: E402
from retinopathy.core.records import Skipped, TrainingStatus  # noqa: E402
from retinopathy.models.build import NO_DOWNLOAD_ENV  # noqa: E402
from retinopathy.stages import prepare, train, weights  # noqa: E402
from retinopathy.stages.demo_data import write_demo_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_arm(folder: Path, init: str = "scratch") -> TrainingStatus | Skipped:
    """Train one arm with ``folder`` as the working directory (stages use relative paths)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        return train.train_arm(load_params("params.yaml"), init)  # as `retinopathy train` reads them
    finally:
        os.chdir(before)


# Small enough that an epoch of ResNet18 takes about a second on one CPU core.
TINY_PARAMS = {
    "model": "resnet18",
    "data": {"root": "data/demo", "image_size": 32, "num_workers": 0},
    "demo": {"seed": 0, "train_size": 40, "test_size": 12, "image_size": 64, "shifted_size": 10},
    "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "seed": 0, "device": "cpu"},
}


def _overlay(params: dict, sections: dict) -> dict:
    """Update ``params`` section by section: a dict updates that section, a scalar replaces it."""
    for section, values in sections.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    return params


def tiny_params() -> dict:
    """The project's params.yaml with TINY_PARAMS laid over it (DVC wants every key present)."""
    params = _overlay(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    # No external set: the default names the demo's imported shifted set, which only dvc.yaml's
    # demo-shifted stage writes; a test that validates on a set imports its own.
    params["external"] = {}
    return params


def write_params(folder: Path, **overrides: dict) -> Path:
    """Write :func:`tiny_params` (sections updated by ``overrides``) to folder/params.yaml."""
    params = _overlay(tiny_params(), overrides)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _quiet_environment(monkeypatch, tmp_path_factory):
    """No analytics, no downloads, and an empty torch cache for every test."""
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv(NO_DOWNLOAD_ENV, "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))


def pair_names(root: Path) -> None:
    """Rename the demo's images to EyePACS names: consecutive images are one patient's left and right eye.

    The last two test images are two patients' only photographs: ``t6_left`` and ``t7_right``
    (with the tiny 12 test images: patients t0-t4 with both eyes, t6 and t7 with one).
    """
    for split, prefix in (("train", "a"), ("test", "t")):
        listed = root / f"{split}_img.csv"
        names = listed.read_text().split()
        new = [f"{prefix}{i // 2}_{'left' if i % 2 == 0 else 'right'}" for i in range(len(names))]
        if split == "test":
            new[-2:] = ["t6_left", "t7_right"]
        for old, name in zip(names, new, strict=True):
            (root / f"{old}.jpeg").rename(root / f"{name}.jpeg")
        listed.write_text("\n".join(new) + "\n")


def faulted_demo(folder: Path, test_size: int, usable: float = 0.0) -> None:
    """The tiny project's photographs (names, grades, 40 train images at 64 px) painted again in
    ``folder/data/demo`` with a quarter of them spoilt by a camera fault (and ``usable`` mildly),
    with their quality labels, for the quality stage's tests."""
    write_demo_dataset(
        folder / "data/demo",
        seed=0,
        train_size=40,
        test_size=test_size,
        image_size=64,
        variation=True,
        ungradable=0.25,
        usable=usable,
    )


def make_tiny_project(folder: Path, *, paired: bool = False, **overrides: dict) -> Path:
    """Write params.yaml (:func:`write_params` with ``overrides``), the demo data, data/prepared and
    models/init into ``folder``, which must be the working directory (stages use relative paths).

    With ``paired``, the demo's images get EyePACS names first (:func:`pair_names`), so `fuse`
    and `predict` find both eyes of a patient.
    """
    write_params(folder, **overrides)
    params = load_params(folder / "params.yaml")
    write_demo_dataset(
        folder / "data/demo",
        seed=0,
        train_size=params.demo.train_size,
        test_size=params.demo.test_size,
        image_size=params.demo.image_size,
        variation=params.demo.variation,
    )
    if paired:
        pair_names(folder / "data/demo")
    prepare.prepare(params, folder / "data/prepared")
    assert weights.main([]) == 0
    return folder


# The shared trained project's params: TINY_PARAMS with one epoch. A test that rewrites its params.yaml
# passes these too (write_params(project, **TRAINED_OVERRIDES, ...)), so only its own change differs.
TRAINED_OVERRIDES = {"train": {"epochs": 1}}
# As a user runs them, in this process: no torch import per command, the same code as the CLI.
TRAINED_COMMANDS = (
    ["train", "--init", "scratch"],
    ["train", "--init", "pretrained"],  # skipped offline, with its reason: the tests check that too
    ["evaluate", "--init", "scratch"],
    ["evaluate", "--init", "pretrained"],
)


@contextlib.contextmanager
def _session_environment(tmp_path_factory, folder: Path) -> Iterator[None]:
    """What the per-test autouse fixture below sets, for a session fixture, with ``folder`` as cwd."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DVC_NO_ANALYTICS", "1")
        patch.setenv(NO_DOWNLOAD_ENV, "1")
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
        patch.chdir(folder)
        yield


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` -> (size, mtime in ns): enough to see that something wrote there."""
    return {
        str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in folder.rglob("*")
        if not path.is_dir()
    }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a trained grader (:func:`trained_once`) is slow: it trains, or runs the
    commands that load one (each a second or more), so ``pytest -m "not slow"`` stays a quick loop."""
    for item in items:
        if "trained_once" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def trained_once(tmp_path_factory) -> Path:
    """The session's one trained tiny project; READ ONLY (copy it, or use :func:`trained_project`).

    :func:`make_tiny_project` with paired EyePACS names and :data:`TRAINED_OVERRIDES`, then
    :data:`TRAINED_COMMANDS`: the scratch arm trained (1 epoch of 40 images at 32 px) and evaluated,
    the pretrained arm skipped offline and evaluated as skipped; `fuse`, `explain` and `report`
    have not run. A test that uses it is in the slow tier (:func:`pytest_collection_modifyitems`):
    the training and the commands such tests run take seconds each. A test that changes these
    files fails the session at its end.
    """
    folder = tmp_path_factory.mktemp("trained") / "project"
    folder.mkdir()
    with _session_environment(tmp_path_factory, folder):
        make_tiny_project(folder, paired=True, **TRAINED_OVERRIDES)
        for argv in TRAINED_COMMANDS:
            assert cli.main(argv) == 0, f"retinopathy {' '.join(argv)} failed (its error is printed above)"
    before = _files(folder)
    yield folder
    after = _files(folder)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert not changed, f"a test wrote into the shared trained project (use `trained_project`): {changed}"


@pytest.fixture()
def trained_project(trained_once, tmp_path, monkeypatch) -> Path:
    """A fresh copy of :func:`trained_once` that the test may change; cwd set to it."""
    project = tmp_path / "project"
    shutil.copytree(trained_once, project, symlinks=True)
    monkeypatch.chdir(project)
    return project


@pytest.fixture(scope="session")
def _tiny_once(tmp_path_factory) -> Path:
    """:func:`make_tiny_project` once per session; tiny_project copies it (its files hold no path)."""
    folder = tmp_path_factory.mktemp("tiny") / "project"
    folder.mkdir()
    with _session_environment(tmp_path_factory, folder):
        make_tiny_project(folder)
    return folder


@pytest.fixture()
def tiny_project(_tiny_once, tmp_path, monkeypatch) -> Path:
    """A folder with params.yaml, demo data, data/prepared and models/init; cwd set to it."""
    shutil.copytree(_tiny_once, tmp_path, symlinks=True, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def subprocess_env() -> dict[str, str]:
    """The environment for a child process: this one's, with the venv's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture()
def scratch_dir(tmp_path_factory):
    """An empty folder outside tmp_path, removed after the test like tmp_path (checkpoints are large)."""
    path = tmp_path_factory.mktemp("scratch")
    yield path
    shutil.rmtree(path)
