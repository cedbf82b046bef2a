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
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retinopathy.core import portable
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import atomic_file, remove_stale_temporaries
from retinopathy.models.grader import Grader, GraderSpec, load_grader
from retinopathy.pipeline import codedeps

# Settings that change how fast training runs but not what it computes (where the
# decoded pixels live; whether the step is compiled: its kernels may round
# differently, but the math is the same), so a
# run may resume across them; and train.epochs, so that raising it continues a
# run (except under a cosine schedule, whose every step depends on the total).
# Everything else in params is fingerprinted, but for the sections training
# never reads (demo reaches it only through the index; evaluate and fuse not at all).
NOT_FINGERPRINTED = {("data", "num_workers"), ("data", "cache_dir"), ("data", "max_pixels"),
                     ("data", "on_device"), ("train", "compile"), ("train", "epochs")}
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
            if isinstance(values, dict) else values
        )
        for section, values in params.items()
        if section not in NOT_FINGERPRINTED_SECTIONS
    }


def fingerprint_inputs(params: dict[str, Any], init: str, weights_sha: str | None,
                       index_sha: str, world_size: int, decoder: str) -> dict[str, Any]:
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
    "model": dict, "spec": dict, "optimizer": dict, "scheduler": dict, "epoch": int, "history": list,
    "rng": dict, "fingerprint": str, "fingerprint_inputs": dict, "config": dict,
}
BEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": dict, "spec": dict, "epoch": int, "fingerprint": str,
}
KINDS = {"last": LAST_FIELDS, "best": BEST_FIELDS}


def last_state(*, model: dict[str, Any], spec: dict[str, Any], optimizer: dict[str, Any],
               scheduler: dict[str, Any], epoch: int, history: list[dict[str, float]], rng: dict[str, Any],
               fingerprint: str, fingerprint_inputs: dict[str, Any],
               config: dict[str, Any]) -> dict[str, Any]:
    """A ``last.pt``: everything to resume after ``epoch`` (:data:`LAST_FIELDS`, in that order)."""
    return {"model": model, "spec": spec, "optimizer": optimizer, "scheduler": scheduler, "epoch": epoch,
            "history": history, "rng": rng, "fingerprint": fingerprint,
            "fingerprint_inputs": fingerprint_inputs, "config": config}


def best_of_last(last: dict[str, Any], select_by: str) -> dict[str, Any]:
    """A ``best.pt`` of the epoch of the ``last.pt`` state ``last`` (:data:`BEST_FIELDS`).

    It also records the history's figure ``select_by`` (the column that selected the
    epoch, e.g. ``test_accuracy``) of that epoch: :func:`selected_figures` reads it back.
    """
    row = last["history"][last["epoch"] - 1]
    return {"model": last["model"], "spec": last["spec"], "epoch": last["epoch"],
            select_by: row[select_by], "fingerprint": last["fingerprint"]}


def selected_figures(best: dict[str, Any]) -> dict[str, float]:
    """The figures a ``best.pt`` records of its epoch besides :data:`BEST_FIELDS` (what selected it)."""
    return {key: value for key, value in best.items()
            if key not in BEST_FIELDS and isinstance(value, int | float) and not isinstance(value, bool)}


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

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise damaged("not found") from None
    except Exception as error:  # torch raises many types for a truncated or foreign file
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise damaged(f"not a readable checkpoint, truncated or damaged ({reason})") from None
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
    broken = [key for key, tensor in tensors.items()
              if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if broken:
        raise damaged(f"its weights hold NaN or infinite numbers ({len(broken)} of {len(tensors)} tensors, "
                      f"the first `{broken[0]}`): the training that wrote it diverged, or the file was "
                      "altered, and no grade can come from it")
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
