"""Checkpoints that survive a kill: their format, a config fingerprint, safe and typed loading.

After every epoch `train` writes ``last.pt`` (:class:`LastCheckpoint`: model, optimizer,
epoch, history, RNG state, fingerprint, config) and, when the epoch is the best so far,
``best.pt`` (:class:`BestCheckpoint`: the model of that epoch), each through a temporary
file and ``os.replace`` (:func:`save`), so a run killed at any moment leaves either the
previous checkpoint or the new one, never half of one (the pattern of timm's
CheckpointSaver). On disk each is a plain dict of tensors and plain values
(:meth:`LastCheckpoint.to_dict`). Loading uses ``weights_only=True``: a checkpoint is
data, not code; and :func:`load` checks what it got, the plain entries through the
project's typed record reader (:func:`retinopathy.core.schema.parse`) and the
tensors here, so a truncated, foreign or mixed-up file is an error that names it and
the fix, not a traceback.

The fingerprint (:func:`fingerprint`) hashes what decides a run's result: the params
training uses, the arm, its initial weights, the prepared index, the processes, the
decoder, the CPU numerics and the training code. Only a checkpoint of the same
fingerprint is resumed from. Where a run's checkpoints live and in which order they are
written is :mod:`retinopathy.engine.store`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, cast, overload

import torch
from torch import Tensor
from torch.optim.optimizer import StateDict as OptimizerState

from retinopathy.core import portable
from retinopathy.core.contract import HISTORY_COLUMNS, SELECT_BY, VAL_COLUMNS
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import atomic_file
from retinopathy.core.records import Epoch
from retinopathy.core.schema import Keys, parse
from retinopathy.core.torchload import load_tensors
from retinopathy.models.grader import Grader, GraderSpec, load_grader
from retinopathy.pipeline import codedeps

# Settings that change how fast training runs but not what it computes (where the
# decoded pixels live; whether the step is compiled: its kernels may round
# differently, but the math is the same), so a
# run may resume across them; and train.epochs, so that raising it continues a
# run (except under a cosine schedule, whose every step depends on the total).
# Everything else in params is fingerprinted, but for the sections training
# never reads (demo reaches it only through the index; evaluate, fuse, external and quality
# not at all: a quality threshold changed mid-run must not stop the run from resuming).
NOT_FINGERPRINTED = {
    ("data", "num_workers"),
    ("data", "cache_dir"),
    ("data", "max_pixels"),
    ("data", "on_device"),
    ("train", "compile"),
    ("train", "epochs"),
}
NOT_FINGERPRINTED_SECTIONS = {"demo", "evaluate", "fuse", "external", "quality"}


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


@dataclass(frozen=True)
class RunInputs:
    """What decides a training run's result: its fingerprint hashes them (:func:`fingerprint`).

    ``last.pt`` keeps them (as plain data), so that a run can say how another run's settings differ.

    Attributes:
        params: What training uses of params.yaml (:func:`training_params`).
        init: The arm.
        weights_sha256: The initial weights' SHA-256 (None: random initialisation).
        index_sha256: The prepared index's SHA-256.
        world_size: The processes (each trains on its share of a batch).
        decoder: What decodes the pixels (decoders differ by a few levels per pixel).
        numerics: ``portable.state()``: pinned CPU kernels and threads (train.portable), or torch's own.
        code_sha256: The training code's (:func:`code_digest`).
    """

    params: dict[str, Any]
    init: str
    weights_sha256: str | None
    index_sha256: str
    world_size: int
    decoder: str
    numerics: dict[str, Any]
    code_sha256: str

    def to_dict(self) -> dict[str, object]:
        """As plain data, in the order of the fields (as ``last.pt`` keeps it)."""
        return dataclasses.asdict(self)


def fingerprint_inputs(
    config: dict[str, Any], init: str, weights_sha: str | None, index_sha: str, world_size: int, decoder: str
) -> RunInputs:
    """What determines a training run's result; ``config`` is all of params.yaml as plain data."""
    return RunInputs(
        params=training_params(config),
        init=init,
        weights_sha256=weights_sha,
        index_sha256=index_sha,
        world_size=world_size,
        decoder=decoder,
        numerics=portable.state(),
        code_sha256=code_digest(),
    )


def fingerprint(inputs: RunInputs) -> str:
    """A short stable hash of :func:`fingerprint_inputs`."""
    canonical = json.dumps(inputs.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _short(value: object) -> object:
    return value[:12] + "..." if isinstance(value, str) and len(value) > 16 else value


def describe_difference(old: Mapping[str, object], new: Mapping[str, object], prefix: str = "") -> list[str]:
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


def save(state: LastCheckpoint | BestCheckpoint, path: Path) -> None:
    """Write ``state`` to ``path`` in the checkpoint format (:func:`save_atomic` of its ``to_dict``)."""
    save_atomic(state.to_dict(), path)


def selection_column(with_val: bool, select_by: str) -> str:
    """The history column that picks the epoch: validation if held out, else test (the lab's rule)."""
    return f"{'val' if with_val else 'test'}_{'kappa' if select_by == 'kappa' else 'accuracy'}"


# Every column that can select the epoch: a best.pt records its epoch's figure under that name.
SELECTION_COLUMNS = tuple(
    selection_column(with_val, select_by) for with_val in (True, False) for select_by in SELECT_BY
)
HistoryRow = Annotated[dict[str, float], Keys(HISTORY_COLUMNS, HISTORY_COLUMNS + VAL_COLUMNS)]


def selected_epoch(history: list[dict[str, float]], column: str) -> int:
    """The epoch of ``history`` with the highest ``column``: the first among ties, as best.pt holds it."""
    return int(max(history, key=lambda row: row[column])["epoch"])


@dataclass(frozen=True)
class BestFacts:
    """What a ``best.pt`` holds besides its weights, as the typed record reader checks it.

    Attributes:
        spec: The grader's spec (:meth:`GraderSpec.to_dict`; :func:`load_trained` checks it).
        epoch: The selected epoch.
        fingerprint: The run's fingerprint (:func:`fingerprint`).
        selected: The history figure that selected the epoch, under its column's name
            (e.g. ``{"test_accuracy": 0.8}``); on disk, a top-level entry. Train always writes it.
    """

    spec: dict[str, Any]
    epoch: Epoch
    fingerprint: str
    # One figure (none in a best.pt written by hand, as tests and users do: it loads, as it always did).
    selected: Annotated[dict[str, float], Keys((), *((column,) for column in SELECTION_COLUMNS))]


@dataclass(frozen=True)
class BestCheckpoint(BestFacts):
    """A ``best.pt``: the selected epoch's weights (``model``, a state dict) and :class:`BestFacts`."""

    model: dict[str, Tensor]

    def to_dict(self) -> dict[str, object]:
        """The file's dict: model, spec, epoch, the selecting figure, fingerprint (in that order)."""
        return {
            "model": self.model,
            "spec": self.spec,
            "epoch": self.epoch,
            **self.selected,
            "fingerprint": self.fingerprint,
        }


@dataclass(frozen=True)
class LastFacts:
    """What a ``last.pt`` holds besides its tensors and optimizer state, as the typed record reader checks it.

    Attributes:
        spec: The grader's spec as it graded after ``epoch`` (regression thresholds tuned then).
        epoch: The last finished epoch.
        history: One row per epoch (``contract.HISTORY_COLUMNS``, then ``VAL_COLUMNS``).
        fingerprint: The run's fingerprint (:func:`fingerprint`).
        fingerprint_inputs: What it hashes, to say what changed.
        config: All of params.yaml, as plain data.
    """

    spec: dict[str, Any]
    epoch: Epoch
    history: list[HistoryRow]
    fingerprint: str
    fingerprint_inputs: RunInputs
    config: dict[str, Any]


@dataclass(frozen=True)
class LastCheckpoint(LastFacts):
    """A ``last.pt``: everything to resume after ``epoch`` (:class:`LastFacts` and the state torch saves).

    Attributes:
        model: The network's state dict.
        optimizer: The optimizer's state dict, as torch saves it.
        scheduler: The learning-rate scheduler's state dict, as torch saves it.
        rng: ``{"torch": torch.get_rng_state()}`` after the epoch.
    """

    model: dict[str, Tensor]
    optimizer: OptimizerState
    scheduler: OptimizerState
    rng: dict[str, Tensor]

    def to_dict(self) -> dict[str, object]:
        """The file's dict, in :data:`LAST_KEYS`' order (tensors, and plain data)."""
        entries = {key: getattr(self, key) for key in LAST_KEYS}
        return {**entries, "fingerprint_inputs": self.fingerprint_inputs.to_dict()}

    def best(self, column: str) -> BestCheckpoint:
        """The ``best.pt`` of this epoch, recording its figure ``column`` (the one that selects)."""
        return BestCheckpoint(
            spec=self.spec,
            epoch=self.epoch,
            fingerprint=self.fingerprint,
            selected={column: self.history[self.epoch - 1][column]},
            model=self.model,
        )


# Each kind's entries on disk (a best.pt's selecting figure comes after them); the tensors and
# torch's own state dicts are checked here, the rest (the facts) by the typed record reader.
LAST_KEYS = (
    "model",
    "spec",
    "optimizer",
    "scheduler",
    "epoch",
    "history",
    "rng",
    "fingerprint",
    "fingerprint_inputs",
    "config",
)
BEST_KEYS = ("model", "spec", "epoch", "fingerprint")
_TORCH_STATES = ("optimizer", "scheduler", "rng")  # of a last.pt, besides its model


class DamagedCheckpoint(RetinopathyError):
    """A checkpoint file that cannot be read, or holds something other than its kind."""


def _fix(path: Path, fix: str | None) -> str:
    return fix or f"move it away (`mv {path} {path}.damaged`) and train again to start the arm over"


def read(path: Path, fix: str | None = None) -> dict[str, object]:
    """Read a checkpoint of this project (any version) onto the CPU: tensors only, no pickled code.

    Only its run fingerprint is checked: a checkpoint of another version, whose
    fingerprint differs, is another run's, not a damaged file. :func:`check` checks the rest.

    Raises:
        DamagedCheckpoint: naming ``path``, what is wrong and ``fix``, if the file is
            missing, truncated, not a torch file, or not a dict with a run fingerprint.
    """
    state = load_tensors(
        path, "a readable checkpoint written by `retinopathy train`", _fix(path, fix), DamagedCheckpoint
    )
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), str):
        kind = type(state).__name__ if not isinstance(state, dict) else "dict without a run fingerprint"
        raise DamagedCheckpoint(
            f"{path}: holds a {kind}, not a checkpoint of `retinopathy train`; {_fix(path, fix)}"
        )
    return state


@overload
def check(
    state: dict[str, object], path: Path, kind: Literal["last"], fix: str | None = None
) -> LastCheckpoint: ...
@overload
def check(
    state: dict[str, object], path: Path, kind: Literal["best"], fix: str | None = None
) -> BestCheckpoint: ...
def check(
    state: dict[str, object], path: Path, kind: Literal["last", "best"], fix: str | None = None
) -> LastCheckpoint | BestCheckpoint:
    """The complete ``last`` or ``best`` checkpoint that ``state`` (from :func:`read`) holds.

    Raises:
        DamagedCheckpoint: if an entry is missing or not what it should be, it is of the other
            kind (a best.pt copied over last.pt), or a weight is NaN or infinite.
    """

    def damaged(problem: str) -> DamagedCheckpoint:
        return DamagedCheckpoint(f"{path}: {problem}; {_fix(path, fix)}")

    keys = LAST_KEYS if kind == "last" else BEST_KEYS
    if kind == "last" and "optimizer" not in state and set(BEST_KEYS) <= set(state):
        raise damaged("is a best.pt (no optimizer state, no history), not a last.pt")
    missing = [key for key in keys if key not in state]
    if missing:
        raise damaged(f"lacks {', '.join(missing)}: not a {kind}.pt of this version of `retinopathy train`")
    tensors = state["model"]
    if (
        not isinstance(tensors, dict)
        or not tensors
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items())
    ):
        raise damaged("its model is not a state dict of tensors")
    wrong = [key for key in _TORCH_STATES if kind == "last" and not isinstance(state[key], dict)]
    rng = state.get("rng")
    if kind == "last" and isinstance(rng, dict) and not all(isinstance(v, Tensor) for v in rng.values()):
        wrong.append("rng")
    if wrong:
        raise damaged(f"has {', '.join(wrong)} of the wrong type: not a {kind}.pt of `retinopathy train`")
    facts = {key: state[key] for key in keys if key != "model" and key not in _TORCH_STATES}
    if kind == "best":  # the figure that selected the epoch: the one entry besides the best's own
        facts["selected"] = {key: value for key, value in state.items() if key not in BEST_KEYS}
    try:
        checked = parse(LastFacts, facts) if kind == "last" else parse(BestFacts, facts)
    except ValueError as error:
        raise damaged(f"{error}: not a {kind}.pt of `retinopathy train`") from None
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
    values = {field.name: getattr(checked, field.name) for field in dataclasses.fields(checked)}
    if isinstance(checked, BestFacts):
        return BestCheckpoint(**values, model=tensors)
    if len(checked.history) != checked.epoch:
        raise damaged(f"says epoch {checked.epoch} but is inconsistent with its history")
    return LastCheckpoint(  # torch's own state dicts, as torch saved them (each checked to be one above)
        **values,
        model=tensors,
        optimizer=cast(OptimizerState, state["optimizer"]),
        scheduler=cast(OptimizerState, state["scheduler"]),
        rng=cast("dict[str, Tensor]", rng),
    )


@overload
def load(path: Path, kind: Literal["last"], fix: str | None = None) -> LastCheckpoint: ...
@overload
def load(path: Path, kind: Literal["best"], fix: str | None = None) -> BestCheckpoint: ...
def load(
    path: Path, kind: Literal["last", "best"], fix: str | None = None
) -> LastCheckpoint | BestCheckpoint:
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
    """A trained grader, from a ``best.pt``: the checkpoint, its spec, and the network.

    Attributes:
        state: The checked ``best.pt``, on the CPU.
        spec: Its :class:`~retinopathy.models.grader.GraderSpec`, checked.
        grader: The network with the checkpoint's weights (fp32, on the CPU, eager).
    """

    state: BestCheckpoint
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
    spec = GraderSpec.from_dict(state.spec, str(path))
    return Trained(state, spec, load_grader(spec, state.model, str(path)))
