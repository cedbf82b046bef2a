"""DVC experiments, read through DVC's own Python API: their params and each arm's results.

``dvc.api.exp_show`` lists the workspace, the current commit (the baseline:
named by its branch, e.g. ``main``, or its short hash) and the experiments of
that commit (names and revisions); any other git revision (a branch, a tag,
a commit) can be named too. ``dvc.api.params_show`` gives each one's params,
typed and nested; ``dvc.api.read`` reads each arm's metrics, info and history
files as that revision committed them (the workspace's from disk), and
:func:`retinopathy.reporting.results.load_arm` checks them as the report does. No
``dvc exp save`` is needed: what ``dvc repro`` left in the workspace is read
as it is.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retinopathy.core.contract import ARMS, Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.reporting.escape import md_code, md_prose

if TYPE_CHECKING:  # the readers (pandas) are imported where they read, so that compare --help is instant
    from retinopathy.reporting.results import Arm

WORKSPACE = "workspace"
FINISHED = (None, "Success")  # exp_show's State of experiments whose files are complete


@dataclass
class Experiment:
    """One experiment (or the workspace): its name, revision, params and the results of both arms."""

    name: str
    rev: str | None  # None: the working tree
    params: dict[str, Any]
    arms: dict[str, Arm]
    kind: str = field(default="experiment")  # workspace | baseline | experiment | revision


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


def _listed(repo: str) -> list[tuple[str, str | None, str]]:
    """(name, revision, kind) of the workspace, the current commit and each finished experiment of it."""
    import dvc.api  # heavy: only this command needs it

    found: list[tuple[str, str | None, str]] = []
    for row in dvc.api.exp_show(repo=repo):
        if row.get("typ") == "baseline":
            if row.get("rev") == WORKSPACE:
                found.append((WORKSPACE, None, WORKSPACE))
            elif row.get("rev"):  # the current commit: its branch's name, or its short hash
                found.append((str(row["rev"]), str(row["rev"]), "baseline"))
        elif row.get("Experiment") and row.get("State") in FINISHED:
            found.append((row["Experiment"], row["rev"], "experiment"))
    if not any(kind == WORKSPACE for *_, kind in found):
        found.insert(0, (WORKSPACE, None, WORKSPACE))
    return found


def _git_revision(repo: str, name: str) -> str | None:
    """The commit that ``name`` (a branch, tag or commit) names in ``repo``'s git, or None."""
    if name.startswith("-"):
        return None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _read(repo: str, rev: str | None):
    import dvc.api

    from retinopathy.reporting.results import read_working_tree

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


def _choose(
    names: list[str], listed: list[tuple[str, str | None, str]], repo: str
) -> list[tuple[str, str | None, str]]:
    chosen = []
    for name in names:
        match = [
            (n, rev, kind)
            for n, rev, kind in listed
            if n == name or (kind == "experiment" and rev and name and rev.startswith(name))
        ]
        if match:
            chosen.append(match[0])
            continue
        commit = _git_revision(repo, name)
        if commit is None:
            known = ", ".join(n for n, *_ in listed)
            raise RetinopathyError(
                f"{name!r} is neither an experiment of the current commit ({known}) "
                "nor a git revision (branch, tag or commit) of this repository: "
                "`dvc exp show` lists the experiments, `git log --oneline` the commits"
            )
        chosen.append((name, commit, "revision"))
    return chosen


def load_experiments(names: list[str] | None = None, repo: str = ".") -> tuple[list[Experiment], list[str]]:
    """The workspace, the current commit and every finished experiment of it, or those ``names``.

    A name is an experiment's name, a prefix of its revision, ``workspace``, the
    current commit's branch, or any git revision (branch, tag, commit).

    Returns:
        The experiments, and a note for each one left out of the default listing
        because it has no results (e.g. a commit from before the first ``dvc repro``).

    Raises:
        RetinopathyError: for a name that is neither (listing those there are), or
            results of a named one that are missing or malformed (naming the file).
    """
    import dvc.api

    from retinopathy.reporting.results import load_arm

    listed = _listed(repo)
    chosen = _choose(names, listed, repo) if names else listed
    experiments: list[Experiment] = []
    left_out: list[str] = []
    layout = Layout()
    for name, rev, kind in chosen:
        read = _read(repo, rev)
        try:
            params = dvc.api.params_show(repo=repo, rev=rev)
            arms = {arm: load_arm(layout, arm, read) for arm in ARMS}
        except RetinopathyError as error:
            if names:
                raise RetinopathyError(f"{name}: {error}") from None
            left_out.append(f"{md_code(name)} is left out: {md_prose(error)}")  # a line of compare.md
            continue
        experiments.append(Experiment(name, rev, params, arms, kind))
    return experiments, left_out


def differing_params(experiments: list[Experiment]) -> list[str]:
    """The params (dotted) whose values differ between ``experiments``, ``model`` first."""
    flat = [flatten(e.params) for e in experiments]
    keys = sorted({key for f in flat for key in f})
    differ = [key for key in keys if len({repr(f.get(key)) for f in flat}) > 1]
    return sorted(differ, key=lambda key: (key != "model", key))


def same_results(a: Experiment, b: Experiment) -> bool:
    """Whether two experiments have the same params and the same metrics for every arm."""
    return a.params == b.params and all(a.arms[arm].metrics == b.arms[arm].metrics for arm in ARMS)


SEED_KEY = "train.seed"  # the param that only redraws the run's randomness


@dataclass(frozen=True)
class SeedGroup:
    """Experiments whose params differ only in :data:`SEED_KEY`: one setting, run with several seeds.

    Attributes:
        members: The experiments, one per seed, in the order given.
        seeds: Their seeds, in the same order.
        left_out: Names of experiments with the same params and a seed already in the group
            (a repeated run, e.g. the workspace beside the experiment it applied): not counted twice.
    """

    members: tuple[Experiment, ...]
    seeds: tuple[Any, ...]
    left_out: tuple[str, ...] = ()


def seed_groups(experiments: list[Experiment]) -> list[SeedGroup]:
    """The groups of two or more experiments that differ only in ``train.seed``, in order of first member."""
    groups: dict[str, list[Experiment]] = {}
    for experiment in experiments:
        rest = {key: value for key, value in flatten(experiment.params).items() if key != SEED_KEY}
        groups.setdefault(repr(sorted(rest.items())), []).append(experiment)
    out = []
    for members in groups.values():
        kept: dict[str, Experiment] = {}
        left_out = []
        for experiment in members:
            seed = repr(flatten(experiment.params).get(SEED_KEY))
            if seed in kept:
                left_out.append(experiment.name)
            else:
                kept[seed] = experiment
        if len(kept) >= 2:
            chosen = tuple(kept.values())
            out.append(
                SeedGroup(chosen, tuple(flatten(e.params).get(SEED_KEY) for e in chosen), tuple(left_out))
            )
    return out
