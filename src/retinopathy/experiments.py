"""DVC experiments, read through DVC's own Python API: their params and each arm's results.

``dvc.api.exp_show`` lists the workspace and the experiments of the current
commit (names and revisions); ``dvc.api.params_show`` gives each one's
params, typed and nested; ``dvc.api.read`` reads each arm's metrics, info and
history files as that experiment committed them, and
:func:`retinopathy.results.load_arm` checks them as the report does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retinopathy.contract import ARMS, Layout
from retinopathy.errors import RetinopathyError
from retinopathy.results import Arm, load_arm, read_working_tree

WORKSPACE = "workspace"
FINISHED = (None, "Success")  # exp_show's State of experiments whose files are complete


@dataclass
class Experiment:
    """One experiment (or the workspace): its name, revision, params and the results of both arms."""

    name: str
    rev: str | None  # None: the working tree
    params: dict[str, Any]
    arms: dict[str, Arm]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.01}}`` -> ``{"train.lr": 0.01}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _listed(repo: str) -> list[tuple[str, str | None]]:
    """(name, revision) of the workspace and of each finished experiment of the current commit."""
    import dvc.api  # heavy: only this command needs it

    found: list[tuple[str, str | None]] = [(WORKSPACE, None)]
    for row in dvc.api.exp_show(repo=repo):
        if row.get("Experiment") and row.get("State") in FINISHED:
            found.append((row["Experiment"], row["rev"]))
    return found


def _read(repo: str, rev: str | None):
    import dvc.api

    if rev is None:
        return lambda path: read_working_tree(Path(repo) / path)

    def read(path: Path) -> str:
        try:
            return dvc.api.read(str(path), repo=repo, rev=rev)
        except Exception as error:  # DVC raises its own types for a path missing at a revision
            if "not exist" in str(error) or isinstance(error, FileNotFoundError):
                raise FileNotFoundError(str(path)) from None
            raise
    return read


def load_experiments(names: list[str] | None = None, repo: str = ".") -> list[Experiment]:
    """The workspace and every finished experiment of the current commit, or those ``names``.

    A name is an experiment's name, a prefix of its revision, or ``workspace``.

    Raises:
        RetinopathyError: for a name that is no experiment of the current commit (listing
            those there are), or results that are missing or malformed (naming the file).
    """
    import dvc.api

    listed = _listed(repo)
    if names:
        chosen = []
        for name in names:
            match = [(n, r) for n, r in listed if n == name or (r and name and r.startswith(name))]
            if not match:
                known = ", ".join(n for n, _ in listed)
                raise RetinopathyError(f"{name!r} is no experiment of the current commit; there are: {known} "
                                       "(`dvc exp show` lists them; `dvc exp run` makes one)")
            chosen.append(match[0])
    else:
        chosen = listed
    experiments = []
    layout = Layout()
    for name, rev in chosen:
        read = _read(repo, rev)
        params = dvc.api.params_show(repo=repo, rev=rev)
        arms = {arm: load_arm(layout, arm, read) for arm in ARMS}
        experiments.append(Experiment(name, rev, params, arms))
    return experiments


def differing_params(experiments: list[Experiment]) -> list[str]:
    """The params (dotted) whose values differ between ``experiments``, ``model`` first."""
    flat = [flatten(e.params) for e in experiments]
    keys = sorted({key for f in flat for key in f})
    differ = [key for key in keys if len({repr(f.get(key)) for f in flat}) > 1]
    return sorted(differ, key=lambda key: (key != "model", key))


def same_results(a: Experiment, b: Experiment) -> bool:
    """Whether two experiments have the same params and the same metrics for every arm."""
    return a.params == b.params and all(a.arms[arm].metrics == b.arms[arm].metrics for arm in ARMS)
