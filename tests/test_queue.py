"""Queued experiments run two at a time give what plain runs of the same settings give (tiny data).

`dvc exp run --queue` twice (the committed settings, and another training seed), then
`dvc queue start -j 2`: DVC runs each in a temporary copy of the repository, side by side
(DVC calls parallel workers experimental). Each experiment's metrics must equal those of a
plain `dvc repro` of its setting in a separate project (its own DVC cache, so DVC's run cache
cannot hand back a result instead of running it). Per-arm locks (models/<arm>.lock) and DVC's
cache are per workspace or shared safely, so the two runs do not meet. (DVC never restores a
stage with a `persist` output from its run cache, and train and evaluate have such outputs.)
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import subprocess_env
from test_remote import commit, new_project, run

pytestmark = pytest.mark.slow

TARGET = "evaluate@scratch"  # train and evaluate one arm: what the queue must keep apart
SETTINGS = {"qa": {}, "qb": {"train.seed": 1}}


def set_params(folder: Path, settings: dict) -> None:
    params = yaml.safe_load((folder / "params.yaml").read_text())
    for key, value in settings.items():
        section, name = key.split(".")
        params[section][name] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def experiment_metrics(shown: list, name: str) -> dict:
    """metrics/scratch.json of the experiment called ``name`` in `dvc exp show --json`."""
    for entry in shown:
        for experiment in entry.get("experiments") or []:
            if experiment.get("name") == name:
                (revision,) = experiment["revs"]
                return revision["data"]["metrics"]["metrics/scratch.json"]["data"]
    raise AssertionError(f"no experiment {name!r} in {json.dumps(shown)[:3000]}")


def wait_for_queue(folder: Path, timeout: float = 1200) -> str:
    """`dvc queue status` once nothing is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        shown = run(folder, "dvc", "queue", "status")
        if not any(word in shown for word in ("Queued", "Running")):
            return shown
        assert time.monotonic() < deadline, f"the queue did not finish in {timeout} s:\n{shown}"
        time.sleep(5)


def test_two_queued_experiments_side_by_side_match_plain_runs(tmp_path):
    plain = {}
    alone = new_project(tmp_path / "plain", epochs=1)
    for name, settings in SETTINGS.items():
        set_params(alone, settings)
        run(alone, "dvc", "repro", TARGET)
        plain[name] = json.loads((alone / "metrics/scratch.json").read_text())
    assert plain["qa"] != plain["qb"]  # the seeds give runs that can be told apart

    queued = new_project(tmp_path / "queued", epochs=1)
    commit(queued, "tiny project")
    for name, settings in SETTINGS.items():
        run(
            queued,
            "dvc",
            "exp",
            "run",
            "--queue",
            "-n",
            name,
            *[f"-S{key}={value}" for key, value in settings.items()],
            TARGET,
        )
    try:
        run(queued, "dvc", "queue", "start", "-j", "2")
        shown = wait_for_queue(queued)
    finally:
        subprocess.run(
            ["dvc", "queue", "stop"], cwd=queued, env=subprocess_env(), capture_output=True, timeout=120
        )
    assert shown.count("Success") == 2, shown + run(queued, "dvc", "queue", "logs", "qb")
    experiments = json.loads(run(queued, "dvc", "exp", "show", "--json", "--no-pager", stdout_only=True))
    for name in SETTINGS:
        assert experiment_metrics(experiments, name) == plain[name], name
