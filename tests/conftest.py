"""Shared fixtures: a tiny project (params, demo data, prepared index, manifests) in tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from retinopathy.core import portable

# As `retinopathy <command>` does, before anything imports torch: in-process runs then get the same
# numerics (train.portable's pins) as the commands the tests run in subprocesses.
portable.prepare(["--params", str(Path(__file__).resolve().parents[1] / "params.yaml")])

from retinopathy.core.config import load_params  # noqa: E402
from retinopathy.core.records import Skipped, TrainingStatus  # noqa: E402
from retinopathy.models.build import NO_DOWNLOAD_ENV  # noqa: E402
from retinopathy.pipeline.paramkeys import restrict  # noqa: E402
from retinopathy.stages import prepare, train, weights  # noqa: E402
from retinopathy.stages.demo_data import write_demo_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_arm(folder: Path, init: str = "scratch") -> TrainingStatus | Skipped:
    """Train one arm with ``folder`` as the working directory (stages use relative paths)."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        # As `retinopathy train` reads them: a key that train.PARAMS lacks fails the test.
        return train.train_arm(restrict(load_params("params.yaml"), train.PARAMS, train.__name__), init)
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
    return _overlay(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)


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


def make_tiny_project(folder: Path, **overrides: dict) -> Path:
    """Write params.yaml (:func:`write_params` with ``overrides``), the demo data, data/prepared and
    models/init into ``folder``, which must be the working directory (stages use relative paths)."""
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
    prepare.prepare(restrict(params, prepare.PARAMS, prepare.__name__), folder / "data/prepared")
    assert weights.main([]) == 0
    return folder


@pytest.fixture()
def tiny_project(tmp_path, monkeypatch) -> Path:
    """A folder with params.yaml, demo data, data/prepared and models/init; cwd set to it."""
    monkeypatch.chdir(tmp_path)
    return make_tiny_project(tmp_path)


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
