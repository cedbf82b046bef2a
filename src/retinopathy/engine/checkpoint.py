"""Checkpoints that survive a kill: atomic writes, a config fingerprint, safe loading.

After every epoch `train` writes ``last.pt`` (model, optimizer, epoch, history,
RNG state, fingerprint, config) through a temporary file and ``os.replace``,
so a run killed at any moment leaves either the previous checkpoint or the new
one, never half of one (the pattern of timm's CheckpointSaver). Loading uses
``weights_only=True``: a checkpoint is data, not code; and :func:`load` checks
what it got, so a truncated, foreign or mixed-up file is an error that names
it and the fix, not a traceback.

An unfinished run keeps its checkpoints in a *resume store*,
``models/.resume/<arm>/<fingerprint>/{last,best}.pt`` (:class:`ResumeStore`),
outside DVC's output ``models/<arm>``: ``dvc exp run`` checks out the outputs
that ``dvc.lock`` records (another experiment's) before it runs a stage, and
``dvc checkout`` replaces everything in a tracked folder, so a partial run kept
only there would be lost. Each epoch's files are written to the store first and
then linked into ``models/<arm>/``, which DVC tracks; the store entry is
removed when its run finishes (DVC's cache then holds the finished run).

An unfinished run of settings that never come back stays in the store: training
names such runs (:func:`stored_runs`), and `retinopathy resume` lists and prunes
them (:func:`prune`), removing only folders that are recognisably the store's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retinopathy.core import portable
from retinopathy.core.contract import ARMS
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import atomic_file, check_writable, remove_stale_temporaries
from retinopathy.core.torchload import load_tensors
from retinopathy.models.grader import Grader, GraderSpec, load_grader
from retinopathy.pipeline import codedeps

# Settings that change how fast training runs but not what it computes (where the
# decoded pixels live; whether the step is compiled: its kernels may round
# differently, but the math is the same), so a
# run may resume across them; and train.epochs, so that raising it continues a
# run (except under a cosine schedule, whose every step depends on the total).
# Everything else in params is fingerprinted, but for the sections training
# never reads (demo reaches it only through the index; evaluate and fuse not at all).
NOT_FINGERPRINTED = {
    ("data", "num_workers"),
    ("data", "cache_dir"),
    ("data", "max_pixels"),
    ("data", "on_device"),
    ("train", "compile"),
    ("train", "epochs"),
}
NOT_FINGERPRINTED_SECTIONS = {"demo", "evaluate", "fuse"}


TRAINING_STAGE = "retinopathy.stages.train"  # "the training code": this module's import closure


def code_digest() -> str:
    """SHA-256 over the training code: the files that dvc.yaml's train stage depends on.

    A checkpoint made by other training code is not resumed from: the same
    code, params and data give the same history, which is what makes a resume
    honest. The files are the import closure of the train stage
    (:func:`retinopathy.pipeline.codedeps.code_deps`), the same list dvc.yaml carries.
    """
    return codedeps.code_digest(TRAINING_STAGE)


def training_params(params: dict[str, Any], keep: frozenset[tuple[str, str]] = frozenset()) -> dict[str, Any]:
    """The params that the fingerprint hashes (and those of ``keep`` it does not), as plain data."""
    if params["train"]["schedule"] == "cosine":
        keep = keep | {("train", "epochs")}
    return {
        section: (
            {k: v for k, v in values.items() if (section, k) not in NOT_FINGERPRINTED or (section, k) in keep}
            if isinstance(values, dict)
            else values
        )
        for section, values in params.items()
        if section not in NOT_FINGERPRINTED_SECTIONS
    }


def fingerprint_inputs(
    params: dict[str, Any], init: str, weights_sha: str | None, index_sha: str, world_size: int, decoder: str
) -> dict[str, Any]:
    """What determines a training run's result, as plain data."""
    return {
        "params": training_params(params),
        "init": init,
        "weights_sha256": weights_sha,
        "index_sha256": index_sha,
        "world_size": world_size,
        "decoder": decoder,  # decoders differ by a few levels per pixel
        "numerics": portable.state(),  # train.portable: pinned CPU kernels and threads, or torch's own
        "code_sha256": code_digest(),
    }


def fingerprint(inputs: dict[str, Any]) -> str:
    """A short stable hash of :func:`fingerprint_inputs`."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _short(value: Any) -> Any:
    return value[:12] + "..." if isinstance(value, str) and len(value) > 16 else value


def describe_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys whose values differ between two fingerprint inputs, e.g. ``params.train.lr: 0.01 -> 0.1``."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes += describe_difference(a, b, name + ".")
        elif a != b:
            changes.append(f"{name}: {_short(a)} -> {_short(b)}")
    return changes


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename over it (``atomic_file``)."""
    with atomic_file(path, "wb") as stream:
        torch.save(obj, stream)


# What each kind of checkpoint holds, and the type of each entry; `load` checks it all.
LAST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "spec": dict,
    "optimizer": dict,
    "scheduler": dict,
    "epoch": int,
    "history": list,
    "rng": dict,
    "fingerprint": str,
    "fingerprint_inputs": dict,
    "config": dict,
}
BEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "spec": dict,
    "epoch": int,
    "fingerprint": str,
}
KINDS = {"last": LAST_FIELDS, "best": BEST_FIELDS}


def last_state(
    *,
    model: dict[str, Any],
    spec: dict[str, Any],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    epoch: int,
    history: list[dict[str, float]],
    rng: dict[str, Any],
    fingerprint: str,
    fingerprint_inputs: dict[str, Any],
    config: dict[str, Any],
) -> dict[str, Any]:
    """A ``last.pt``: everything to resume after ``epoch`` (:data:`LAST_FIELDS`, in that order)."""
    return {
        "model": model,
        "spec": spec,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "epoch": epoch,
        "history": history,
        "rng": rng,
        "fingerprint": fingerprint,
        "fingerprint_inputs": fingerprint_inputs,
        "config": config,
    }


def best_of_last(last: dict[str, Any], select_by: str) -> dict[str, Any]:
    """A ``best.pt`` of the epoch of the ``last.pt`` state ``last`` (:data:`BEST_FIELDS`).

    It also records the history's figure ``select_by`` (the column that selected the
    epoch, e.g. ``test_accuracy``) of that epoch: :func:`selected_figures` reads it back.
    """
    row = last["history"][last["epoch"] - 1]
    return {
        "model": last["model"],
        "spec": last["spec"],
        "epoch": last["epoch"],
        select_by: row[select_by],
        "fingerprint": last["fingerprint"],
    }


def selected_figures(best: dict[str, Any]) -> dict[str, float]:
    """The figures a ``best.pt`` records of its epoch besides :data:`BEST_FIELDS` (what selected it)."""
    return {
        key: value
        for key, value in best.items()
        if key not in BEST_FIELDS and isinstance(value, int | float) and not isinstance(value, bool)
    }


class DamagedCheckpoint(RetinopathyError):
    """A checkpoint file that cannot be read, or holds something other than its kind."""


def _fix(path: Path, fix: str | None) -> str:
    return fix or f"move it away (`mv {path} {path}.damaged`) and train again to start the arm over"


def read(path: Path, fix: str | None = None) -> dict[str, Any]:
    """Read a checkpoint of this project (any version) onto the CPU: tensors only, no pickled code.

    Raises:
        DamagedCheckpoint: naming ``path``, what is wrong and ``fix``, if the file is
            missing, truncated, not a torch file, or not a dict with a run fingerprint.
    """

    def damaged(problem: str) -> DamagedCheckpoint:
        return DamagedCheckpoint(f"{path}: {problem}; {_fix(path, fix)}")

    state = load_tensors(
        path, "a readable checkpoint written by `retinopathy train`", _fix(path, fix), DamagedCheckpoint
    )
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
        kind = type(state).__name__ if not isinstance(state, dict) else "dict without a run fingerprint"
        raise damaged(f"holds a {kind}, not a checkpoint of `retinopathy train`")
    return state


def check(state: dict[str, Any], path: Path, kind: str, fix: str | None = None) -> dict[str, Any]:
    """Check that ``state`` (from :func:`read`) is a complete ``last`` or ``best`` checkpoint.

    Raises:
        DamagedCheckpoint: if an entry is missing or of the wrong type, it is of the other
            kind (a best.pt copied over last.pt), or a weight is NaN or infinite.
    """
    fields = KINDS[kind]

    def damaged(problem: str) -> DamagedCheckpoint:
        return DamagedCheckpoint(f"{path}: {problem}; {_fix(path, fix)}")

    if kind == "last" and "optimizer" not in state and set(BEST_FIELDS) <= set(state):
        raise damaged("is a best.pt (no optimizer state, no history), not a last.pt")
    missing = [key for key in fields if key not in state]
    if missing:
        raise damaged(f"lacks {', '.join(missing)}: not a {kind}.pt of this version of `retinopathy train`")
    wrong = [key for key, kinds in fields.items() if not isinstance(state[key], kinds)]
    if wrong:
        raise damaged(f"has {', '.join(wrong)} of the wrong type: not a {kind}.pt of `retinopathy train`")
    tensors = state["model"]
    if not tensors or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise damaged("its model is not a state dict of tensors")
    # A NaN weight grades every photograph alike (grade 0 with probability "nan"): never use one.
    broken = [
        key
        for key, tensor in tensors.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if broken:
        raise damaged(
            f"its weights hold NaN or infinite numbers ({len(broken)} of {len(tensors)} tensors, "
            f"the first `{broken[0]}`): the training that wrote it diverged, or the file was "
            "altered, and no grade can come from it"
        )
    if state["epoch"] < 1 or (kind == "last" and len(state["history"]) != state["epoch"]):
        raise damaged(f"says epoch {state['epoch']} but is inconsistent with its history")
    return state


def load(path: Path, kind: str, fix: str | None = None) -> dict[str, Any]:
    """:func:`read` and :func:`check` a ``last`` or ``best`` checkpoint.

    Args:
        path: The file.
        kind: ``last`` (everything to resume) or ``best`` (the selected epoch's model).
        fix: What the user should do if it is damaged (default: move it away and train again).

    Raises:
        DamagedCheckpoint: naming ``path``, what is wrong and ``fix``.
    """
    return check(read(path, fix), path, kind, fix)


@dataclass(frozen=True)
class Trained:
    """A trained grader, from a ``best.pt``: the checkpoint's state, its spec, and the network.

    Attributes:
        state: The checked ``best.pt`` (:data:`BEST_FIELDS`), on the CPU.
        spec: Its :class:`~retinopathy.models.grader.GraderSpec`, checked.
        grader: The network with the checkpoint's weights (fp32, on the CPU, eager).
    """

    state: dict[str, Any]
    spec: GraderSpec
    grader: Grader


def load_trained(path: Path, fix: str | None = None) -> Trained:
    """:func:`load` the ``best.pt`` at ``path`` and build its grader: checkpoint, spec, grader.

    Raises:
        DamagedCheckpoint: a damaged or foreign checkpoint, or one whose weights are not all
            finite (:func:`check`), naming ``path`` and ``fix``.
        RetinopathyError: a spec this version cannot use, or weights that do not fit it.
    """
    state = load(path, "best", fix)
    spec = GraderSpec.from_dict(state["spec"], str(path))
    return Trained(state, spec, load_grader(spec, state["model"], str(path)))


RESUME_FOLDER = ".resume"  # under the models folder; git-ignored, and no part of any DVC output


@dataclass(frozen=True)
class ResumeStore:
    """The checkpoints of one unfinished run, keyed by its fingerprint, where DVC never writes.

    Attributes:
        folder: ``models/.resume/<arm>/<fingerprint>``.
    """

    folder: Path

    @classmethod
    def of(cls, models: Path, arm: str, fingerprint: str) -> ResumeStore:
        return cls(Path(models) / RESUME_FOLDER / arm / fingerprint)

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries of killed writes in this store; returns what was deleted."""
        return [path for target in (self.last, self.best) for path in remove_stale_temporaries(target)]

    def remove(self) -> None:
        """Delete the store's two checkpoints, then its folders if that left them empty (nothing else)."""
        for path in (self.last, self.best):
            path.unlink(missing_ok=True)
        for folder in (self.folder, self.folder.parent, self.folder.parent.parent):
            try:
                folder.rmdir()
            except OSError:  # not empty (another run's entry, a user's file) or gone: keep it
                return

    def check(self) -> None:
        """Before any work: the store's folders are folders (or absent) and the store takes new files.

        Raises:
            RetinopathyError: ``models/.resume`` (or a folder below it) is a file, a link to
                nothing or another special file; or it cannot be written.
        """
        root = self.folder.parent.parent
        for folder in (root, self.folder.parent, self.folder):
            if os.path.lexists(folder) and not folder.is_dir():
                raise RetinopathyError(
                    f"{folder}: is {_kind(folder)}, not a folder; training keeps the checkpoints of "
                    f"unfinished runs in {root}/<arm>/<run>/ (the resume store). Move it away "
                    f"(`mv {folder} {folder}.moved`) and train again"
                )
        check_writable(root, "the checkpoints of unfinished runs (the resume store)")


def _kind(path: Path) -> str:
    """What ``path`` is, in words, when it is not a folder."""
    if path.is_symlink() and not path.exists():
        return "a link to nothing"
    mode = os.stat(path).st_mode
    return "a file" if stat.S_ISREG(mode) else "a named pipe" if stat.S_ISFIFO(mode) else "a special file"


# ------------------------------------------------------------------ runs left in the resume store

_FINGERPRINT = re.compile(r"[0-9a-f]{16}")  # :func:`fingerprint`'s form: a store folder's name
# What the store writes into a run's folder: the pair, and the temporaries of their atomic writes
# and links (retinopathy.core.files' naming: `.<name>.<host>-<pid>.<random>.tmp`).
_STORE_FILES = re.compile(r"(?:last|best)\.pt|\.(?:last|best)\.pt\..+-\d+\.[^.]+\.tmp")


@dataclass(frozen=True)
class StoredRun:
    """One run's folder in the resume store, ``models/.resume/<arm>/<fingerprint>``.

    Attributes:
        folder: The folder.
        arm: ``scratch`` or ``pretrained`` (the folder's parent's name).
        fingerprint: The run's fingerprint (the folder's name).
        size: Bytes in its files.
        modified: When its newest file was written (seconds since the epoch).
        epoch: The last finished epoch of its ``last.pt`` (None: none readable).
        model: The architecture it trains (None: unknown).
        inputs: Its ``last.pt``'s fingerprint inputs (what the run was made with), or {}.
        problem: Why it is not recognisably the store's own (then it is never removed), or None.
    """

    folder: Path
    arm: str
    fingerprint: str
    size: int
    modified: float
    epoch: int | None
    model: str | None
    inputs: dict[str, Any]
    problem: str | None

    @property
    def name(self) -> str:
        """``<arm>/<fingerprint>``: how `retinopathy resume` names it."""
        return f"{self.arm}/{self.fingerprint}" if self.arm else self.fingerprint

    def describe(self, now: float | None = None) -> str:
        """One line: its name, model and epoch, size, age, and what is wrong with it, if anything."""
        days = max(0.0, ((now or time.time()) - self.modified) / 86400)
        age = (
            f"{days:.0f} days ago"
            if days >= 2
            else f"{days * 24:.0f} hours ago"
            if days * 24 >= 1
            else "within the hour"
        )
        what = f"{self.model or 'unknown model'}, epoch {self.epoch}" if self.epoch else "no finished epoch"
        line = f"{self.name}: {what}, {megabytes(self.size)}, last written {age}"
        return f"{line}; {self.problem}" if self.problem else line


def megabytes(size: int) -> str:
    """``size`` bytes in words: ``12.3 MB``, ``283 MB``."""
    return f"{size / 1e6:.1f} MB" if size < 10e6 else f"{size / 1e6:,.0f} MB"


def _peek(path: Path) -> dict[str, Any] | None:
    """A checkpoint's entries other than its tensors' contents (memory-mapped: no full read), or None."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for a file that is not one of its own
        return None
    return state if isinstance(state, dict) else None


def _stored_run(folder: Path, arm: str) -> StoredRun:
    """What ``folder`` (an entry of ``models/.resume/<arm>/``) holds, checked against the store's form."""
    problem = None
    if folder.is_symlink() or not folder.is_dir():
        problem = f"is {_kind(folder) if not folder.is_dir() else 'a link'}, not a folder the store made"
    elif arm not in ARMS or not _FINGERPRINT.fullmatch(folder.name):  # (arm "": no arm's folder)
        problem = "its name is not <arm>/<16 hex digits> as the store names its folders"
    entries = [] if problem else sorted(folder.iterdir())
    foreign = [
        entry.name
        for entry in entries
        if not _STORE_FILES.fullmatch(entry.name) or not stat.S_ISREG(entry.lstat().st_mode)
    ]
    if foreign:
        problem = f"holds {', '.join(foreign[:3])}, which the store never writes"
    sizes = [entry.lstat() for entry in entries]
    size = sum(info.st_size for info in sizes)
    modified = max((info.st_mtime for info in sizes), default=folder.lstat().st_mtime)
    epoch: int | None = None
    model: str | None = None
    inputs: dict[str, Any] = {}
    for name in ("last.pt", "best.pt"):  # each checkpoint there must be this run's (its fingerprint)
        if problem or not (folder / name).exists():
            continue
        state = _peek(folder / name)
        if state is None or state.get("fingerprint") != folder.name:
            problem = f"its {name} is not a checkpoint of the run {folder.name}"
        elif name == "last.pt" or epoch is None:
            epoch = state["epoch"] if isinstance(state.get("epoch"), int) else None
            spec = state.get("spec")
            model = spec["model"] if isinstance(spec, dict) and isinstance(spec.get("model"), str) else None
            if isinstance(state.get("fingerprint_inputs"), dict):
                inputs = state["fingerprint_inputs"]
    return StoredRun(folder, arm, folder.name, size, modified, epoch, model, inputs, problem)


def stored_runs(models: Path) -> list[StoredRun]:
    """Every run in the resume store under ``models`` (``models/.resume``), oldest first.

    Raises:
        RetinopathyError: ``models/.resume`` (or an arm's folder in it) is not a folder.
    """
    root = Path(models) / RESUME_FOLDER
    if not os.path.lexists(root):
        return []
    if not root.is_dir():
        raise RetinopathyError(
            f"{root}: is {_kind(root)}, not a folder; training keeps the checkpoints of "
            f"unfinished runs in {root}/<arm>/<run>/ (the resume store). Move it away "
            f"(`mv {root} {root}.moved`)"
        )
    found = []
    for arm in sorted(root.iterdir()):
        if arm.is_dir() and not arm.is_symlink():
            found += [_stored_run(entry, arm.name) for entry in sorted(arm.iterdir())]
        else:  # something where an arm's folder belongs: listed with its problem, never removed
            found.append(_stored_run(arm, ""))
    return sorted(found, key=lambda run: run.modified)


def remove_stored_run(run: StoredRun) -> None:
    """Delete a run's folder from the resume store: only a folder of the store's own form and contents.

    Raises:
        RetinopathyError: ``run`` has a problem (it is not recognisably the store's own).
    """
    again = _stored_run(run.folder, run.arm)  # as it is now, not as it was listed
    if again.problem:
        raise RetinopathyError(
            f"{run.folder}: not removed: {again.problem}; look at it, and remove it by "
            "hand if it is not needed"
        )
    for entry in run.folder.iterdir():
        entry.unlink()
    ResumeStore(run.folder).remove()  # the folder, then its arm's folder and the store's, if left empty


def publish(source: Path, target: Path) -> None:
    """Make ``target`` hold ``source``'s bytes, atomically: a hard link where possible, else a copy.

    The link costs no space and no time; both names then share one file, which
    is safe because every checkpoint write replaces a file (``os.replace``) and
    never writes into one.
    """
    if source == target or (target.exists() and os.path.samefile(source, target)):
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    # The temporaries' naming of retinopathy.core.files, so that a killed run's is found and removed.
    owner = f"{socket.gethostname()}-{os.getpid()}"
    temporary = target.parent / f".{target.name}.{owner}.{secrets.token_hex(4)}.tmp"
    try:
        os.link(source, temporary)
    except OSError:  # another filesystem, or one without hard links
        with atomic_file(target, "wb") as stream, open(source, "rb") as original:
            shutil.copyfileobj(original, stream)
        return
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
