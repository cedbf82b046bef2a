"""The checkpoint store: where a training run keeps its checkpoints, and the whole resume protocol.

A run's checkpoints are kept in ``models/.resume/<arm>/<fingerprint>/{last,best}.pt``
(:class:`CheckpointStore`), outside DVC's output ``models/<arm>/``: ``dvc exp run``
checks out the outputs that ``dvc.lock`` records (another experiment's) before it runs a
stage, and ``dvc checkout`` replaces everything in a tracked folder, so a partial run kept
only there would be lost. After every epoch :meth:`CheckpointStore.save` writes, in this
order:

1. ``last.pt`` into the store;
2. ``best.pt`` there, when the epoch is the best so far;
3. both into ``models/<arm>/``, DVC's output (hard links: no copy; :func:`publish`);
4. ``metrics/history/<arm>.csv``: the per-epoch history, for `dvc plots`.

Each write is atomic, and the order makes a kill at any moment safe: the store always
holds a consistent pair (a ``best.pt`` one epoch behind a ``last.pt`` whose epoch is the
best is rebuilt from it), a resumed run repeats at most the unfinished epoch and, because
batches depend only on (seed, epoch), produces the same history as an uninterrupted run.
:meth:`CheckpointStore.resume` looks in the store first, so a run survives `dvc exp run`
and `dvc checkout` restoring another experiment's ``models/<arm>/`` in between; then in
``models/<arm>/last.pt``, a finished run's, continued when train.epochs rises. When the
run finishes, :meth:`CheckpointStore.finish` writes ``status.json`` last (evaluate checks
that it and ``best.pt`` name the same run and epoch) and removes the store entry: DVC's
cache then holds the finished run. The history CSV is rewritten from the checkpoint each
epoch rather than appended by a logger such as DVCLive, so it can never hold an epoch the
checkpoint lacks.

An unfinished run of settings that never come back stays in the store: training names
such runs (:meth:`CheckpointStore.stale_note`), and `retinopathy resume` lists
(:func:`stored_runs`) and prunes them (:func:`remove_stored_run`), removing only folders
that are recognisably the store's own.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from retinopathy.core import records
from retinopathy.core.contract import ARMS, HISTORY_COLUMNS, VAL_COLUMNS, ArmFiles
from retinopathy.core.errors import RetinopathyError, note
from retinopathy.core.files import atomic_file, check_writable, remove_stale_temporaries, write_csv_atomic
from retinopathy.engine import checkpoint
from retinopathy.engine.checkpoint import (
    BestCheckpoint,
    DamagedCheckpoint,
    LastCheckpoint,
    RunInputs,
    selected_epoch,
)

RESUME_FOLDER = ".resume"  # under the models folder; git-ignored, and no part of any DVC output
MAX_STALE_LISTED = 5  # stale runs named one by one in training's note; the rest are counted


def write_history(rows: list[dict[str, float]], path: Path, with_val: bool) -> None:
    """Write the per-epoch history CSV atomically (header only when there are no rows)."""
    fields = list(HISTORY_COLUMNS) + (list(VAL_COLUMNS) if with_val else [])
    write_csv_atomic(
        path, fields, ([row[k] if k == "epoch" else f"{row[k]:.6f}" for k in fields] for row in rows)
    )


@dataclass(frozen=True)
class CheckpointStore:
    """One training run's checkpoints: kept where DVC never writes, published into DVC's output.

    Only the main process writes; every process resumes (:meth:`resume`).

    Attributes:
        folder: ``models/.resume/<arm>/<fingerprint>``.
        files: The arm's files: ``models/<arm>/{last,best}.pt`` (DVC's output), ``status.json``
            and the history CSV.
        fingerprint: The run's (:func:`retinopathy.engine.checkpoint.fingerprint`).
        column: The history column that selects the epoch of ``best.pt``
            (:func:`retinopathy.engine.checkpoint.selection_column`).
        with_val: Whether the history has validation columns.
    """

    folder: Path
    files: ArmFiles
    fingerprint: str
    column: str
    with_val: bool

    @classmethod
    def of(
        cls, models: Path, files: ArmFiles, fingerprint: str, column: str, with_val: bool
    ) -> CheckpointStore:
        """The store of the run ``fingerprint`` of the arm of ``files``, under the folder ``models``."""
        return cls(
            Path(models) / RESUME_FOLDER / files.arm / fingerprint, files, fingerprint, column, with_val
        )

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    @property
    def best(self) -> Path:
        return self.folder / "best.pt"

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

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries of killed writes in this store; returns what was deleted."""
        return [path for target in (self.last, self.best) for path in remove_stale_temporaries(target)]

    def remove(self) -> None:
        """Delete the store's two checkpoints, then its folders if that left them empty (nothing else)."""
        for path in (self.last, self.best):
            path.unlink(missing_ok=True)
        _remove_folders(self.folder)

    # ---------------------------------------------------------------- resuming

    def resume(self, epochs: int, inputs: RunInputs, main: bool) -> LastCheckpoint | None:
        """The furthest ``last.pt`` of this run to continue from (else None, and say why not).

        Afterwards the store holds the pair resumed from (hard links where it came from
        ``models/<arm>/``), so DVC restoring another run's files there loses nothing.

        Args:
            epochs: train.epochs: a checkpoint with more finished epochs is not continued.
            inputs: This run's fingerprint inputs, to say what differs in another run's checkpoint.
            main: Whether this is the main process: it alone speaks and writes.

        Raises:
            DamagedCheckpoint: the store's ``last.pt`` is damaged, or another run's; or
                ``models/<arm>/last.pt`` of this run is damaged.
            RetinopathyError: the store's run has more epochs than ``epochs``.
        """
        say: Callable[[str], None] = note if main else (lambda _: None)  # once, not once per process
        if main:
            for path in self.remove_stale_temporaries():
                note(f"{path}: removed, a temporary file left by a killed run")
        found = self._candidates(epochs, inputs, say)
        if not found:
            return None
        path, state, best_path = max(found, key=lambda item: item[1].epoch)  # the store's among ties
        best, rebuilt = self._matching_best(state, best_path)
        if best is None:
            say(
                f"{best_path}: does not hold epoch {selected_epoch(state.history, self.column)}, the "
                f"selected epoch of {path}; training from the start"
            )
            return None
        say(f"{path}: resuming after epoch {state.epoch} of {epochs}")
        if main:  # the store's best.pt first: a kill between leaves the older pair
            if rebuilt:
                checkpoint.save(best, self.best)
            else:
                publish(best_path, self.best)
            publish(path, self.last)
        return state

    def _candidates(
        self, epochs: int, inputs: RunInputs, say: Callable[[str], None]
    ) -> list[tuple[Path, LastCheckpoint, Path]]:
        """The last.pt files this run may resume from, as (last.pt, its state, the best.pt beside it).

        The store's comes first: the run's own, whatever DVC did to ``models/<arm>/``
        since. Then ``models/<arm>/last.pt``: a finished run's, continued when train.epochs rises.
        """
        found = []
        if self.last.exists():
            state = checkpoint.load(self.last, "last", fix=f"move {self.folder} away to train from the start")
            if state.fingerprint != self.fingerprint:
                raise DamagedCheckpoint(
                    f"{self.last}: made by another run than its folder's name says; "
                    f"move {self.folder} away to train from the start"
                )
            if state.epoch > epochs:
                raise RetinopathyError(
                    f"{self.last}: an unfinished run of these settings has {state.epoch} epochs, more "
                    f"than train.epochs={epochs}; set train.epochs to {state.epoch} or more in "
                    f"params.yaml to continue it, or move {self.folder} away to train {epochs} epochs "
                    "from the start"
                )
            found.append((self.last, state, self.best))
        last = self.files.last
        if last.exists():
            fix = (
                f"restore it with `dvc checkout {self.files.model_dir}` (DVC keeps every finished run's "
                f"checkpoints), or move it away (`mv {last} {last}.damaged`) to train the arm from the start"
            )
            raw = checkpoint.read(last, fix)
            if raw["fingerprint"] != self.fingerprint:  # other params, data or code (another version's too)
                if not found:
                    theirs = raw.get("fingerprint_inputs")
                    changes = checkpoint.describe_difference(
                        theirs if isinstance(theirs, dict) else {}, inputs.to_dict()
                    )
                    say(
                        f"{last}: made with other settings, not resuming from it "
                        f"({'; '.join(changes) or 'unknown difference'}); training from the start"
                    )
            elif (published := checkpoint.check(raw, last, "last", fix)).epoch > epochs:
                if not found:
                    say(
                        f"{last}: has {published.epoch} epochs, more than train.epochs={epochs}; "
                        "training from the start"
                    )
            else:
                found.append((last, published, self.files.best))
        return found

    def _matching_best(self, state: LastCheckpoint, path: Path) -> tuple[BestCheckpoint | None, bool]:
        """The best.pt at ``path`` if it holds the selected epoch of the last.pt ``state``, and False.

        Else, when that epoch is ``state``'s own (a kill between the two writes),
        one rebuilt from ``state``, and True; else None: the selected epoch's weights are gone.
        """
        wanted = selected_epoch(state.history, self.column)
        try:
            best = checkpoint.load(path, "best") if path.exists() else None
        except DamagedCheckpoint:
            best = None
        if best is not None and best.fingerprint == self.fingerprint and best.epoch == wanted:
            return best, False
        return (state.best(self.column), True) if wanted == state.epoch else (None, False)

    # ---------------------------------------------------------------- writing (the main process)

    def save(self, last: LastCheckpoint) -> bool:
        """Write an epoch's checkpoints: last.pt, best.pt (if the epoch is the best so far), into the
        store; then publish both and rewrite the history CSV. Returns whether the epoch is the best.

        The order keeps the store's pair consistent after a kill at any moment (see
        :meth:`resume`).
        """
        improved = selected_epoch(last.history, self.column) == last.epoch  # the first among ties
        checkpoint.save(last, self.last)
        if improved:
            checkpoint.save(last.best(self.column), self.best)
        self.publish()
        write_history(last.history, self.files.history, self.with_val)
        return improved

    def publish(self) -> None:
        """Put the store's pair into ``models/<arm>/``, DVC's output: best.pt, then last.pt."""
        publish(self.best, self.files.best)
        publish(self.last, self.files.last)

    def finish(self, status: records.TrainingStatus) -> None:
        """Publish the checkpoints, write ``status.json`` (the best epoch and the history, for
        evaluate) last, and remove the store entry: ``models/<arm>/`` holds the finished run, and
        DVC's cache keeps it once the stage ends."""
        self.publish()  # also when nothing was left to train: DVC may have restored other files
        write_history(status.history, self.files.history, self.with_val)
        records.write_status(self.files.status, status)
        self.remove()

    # ---------------------------------------------------------------- the other runs of the arm

    def stale_note(self, inputs: RunInputs) -> str | None:
        """The note naming this arm's unfinished runs of other settings, their size, and the fix.

        Such a run resumes only if its settings come back, and nothing else ever removes it
        (hundreds of MB for ResNet50); `retinopathy resume prune` does, when asked. None: none.
        """
        arm_folder = self.folder.parent
        # What is not of the store's own form is listed by `retinopathy resume list`, never pruned.
        stale = [
            stored
            for stored in stored_runs(arm_folder.parent.parent)
            if stored.arm == self.files.arm and stored.fingerprint != self.fingerprint and not stored.problem
        ]
        if not stale:
            return None
        lines = []
        for stored in stale[-MAX_STALE_LISTED:]:  # the newest
            # The params first: a changed setting says more than a changed hash of the code or data.
            changes = [
                change if len(change) <= 100 else f"{change[:100]}..."
                for change in sorted(
                    checkpoint.describe_difference(stored.inputs, inputs.to_dict()),
                    key=lambda change: not change.startswith("params."),
                )[:3]
            ]
            lines.append(
                f"  {stored.describe()}"
                + (f" (its settings -> these: {'; '.join(changes)})" if changes else "")
            )
        if len(stale) > MAX_STALE_LISTED:
            lines.insert(
                0, f"  ... and {len(stale) - MAX_STALE_LISTED} older ones (`retinopathy resume list`)"
            )
        size = megabytes(sum(stored.size for stored in stale))
        # By name: `--all` would take this run's own entry too, were it unfinished.
        how = (
            f"remove them with `retinopathy resume prune {' '.join(s.name for s in stale)}`"
            if len(stale) <= MAX_STALE_LISTED
            else "remove them with `retinopathy resume prune RUN...` (`retinopathy resume list` names them)"
        )
        return (
            f"note: {arm_folder} holds {len(stale)} unfinished "
            f"run{'s' if len(stale) > 1 else ''} of other settings ({size}), which resume only if their "
            "settings come back:\n" + "\n".join(lines) + f"\n  {how}, or those older than N days with "
            "`retinopathy resume prune --older-than N`"
        )


def _remove_folders(folder: Path) -> None:
    """Remove a run's folder, then its arm's folder and the store's, while each is empty."""
    for each in (folder, folder.parent, folder.parent.parent):
        try:
            each.rmdir()
        except OSError:  # not empty (another run's entry, a user's file) or gone: keep it
            return


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
    inputs: dict[str, object]
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


def _peek(path: Path) -> dict[str, object] | None:
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
    inputs: dict[str, object] = {}
    for name in ("last.pt", "best.pt"):  # each checkpoint there must be this run's (its fingerprint)
        if problem or not (folder / name).exists():
            continue
        state = _peek(folder / name)
        if state is None or state.get("fingerprint") != folder.name:
            problem = f"its {name} is not a checkpoint of the run {folder.name}"
        elif name == "last.pt" or epoch is None:
            found, spec, made_with = state.get("epoch"), state.get("spec"), state.get("fingerprint_inputs")
            epoch = found if isinstance(found, int) else None
            model = spec["model"] if isinstance(spec, dict) and isinstance(spec.get("model"), str) else None
            if isinstance(made_with, dict):
                inputs = made_with
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
    _remove_folders(run.folder)  # the folder, then its arm's folder and the store's, if left empty


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
