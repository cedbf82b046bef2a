"""The checkpoint store on its own, with small fake checkpoints: no network is trained here.

It owns the resume protocol (retinopathy.engine.store): the order of an epoch's writes, which
checkpoint a run resumes from, a best.pt rebuilt after a kill between the two writes, the
refusals (a damaged file, another run's, more epochs than asked for), publishing by hard
link, and removing the run's folder when it finishes. And the checkpoint format it writes
(retinopathy.engine.checkpoint): the same dict on disk as before it was typed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
from pathlib import Path

import pytest
import torch

from retinopathy.core.contract import HISTORY_COLUMNS, ArmFiles, Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import TrainingStatus, read_status
from retinopathy.engine import checkpoint, store
from retinopathy.engine.checkpoint import DamagedCheckpoint, LastCheckpoint, RunInputs
from retinopathy.engine.store import CheckpointStore

RUN = "0123456789abcdef"  # this run's fingerprint
OTHER = "fedcba9876543210"  # another run's
INPUTS = RunInputs(
    params={"train": {"lr": 0.01}},
    init="scratch",
    weights_sha256=None,
    index_sha256="1" * 64,
    world_size=1,
    decoder="Pillow",
    numerics={},
    code_sha256="c0de",
)
COLUMN = "test_accuracy"


def row(epoch: int, accuracy: float) -> dict[str, float]:
    figures = {name: 0.5 for name in HISTORY_COLUMNS[1:]}
    return {**figures, "epoch": epoch, COLUMN: accuracy}


def last(accuracies: list[float], fingerprint: str = RUN, inputs: RunInputs = INPUTS) -> LastCheckpoint:
    """A last.pt after ``len(accuracies)`` epochs with these test accuracies; its weight is the epoch."""
    epoch = len(accuracies)
    return LastCheckpoint(
        spec={"model": "resnet18"},
        epoch=epoch,
        history=[row(number, value) for number, value in enumerate(accuracies, 1)],
        fingerprint=fingerprint,
        fingerprint_inputs=inputs,
        config={"train": {"epochs": 3}},
        model={"w": torch.full((2,), float(epoch))},
        optimizer={"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        scheduler={"last_epoch": epoch},
        rng={"torch": torch.get_rng_state()},
    )


def files_in(folder: Path) -> ArmFiles:
    return Layout(models=folder / "models", metrics=folder / "metrics").arm("scratch")


def store_of(folder: Path, fingerprint: str = RUN) -> CheckpointStore:
    return CheckpointStore.of(folder / "models", files_in(folder), fingerprint, COLUMN, with_val=False)


def train(run: CheckpointStore, accuracies: list[float]) -> list[bool]:
    """Save one epoch after another, as the trainer does; whether each was the best so far."""
    return [run.save(last(accuracies[:epoch], run.fingerprint)) for epoch in range(1, len(accuracies) + 1)]


def history_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


# ------------------------------------------------------------------ the writes of an epoch


@pytest.fixture()
def writes(monkeypatch):
    """Every write of the store in order, as (what, file name); ``writes.kill_after = n`` raises
    KeyboardInterrupt at the write after the n-th, as a kill would stop the run there."""

    class Writes(list):
        kill_after: int | None = None

        def wrap(self, what, real):
            def write(*args, **kwargs):
                if self.kill_after is not None and len(self) == self.kill_after:
                    raise KeyboardInterrupt
                path = args[1]  # save_atomic(state, path), publish(source, target), write_history(rows, path)
                self.append((what, f"{Path(path).parent.name}/{Path(path).name}"))
                return real(*args, **kwargs)

            return write

    seen = Writes()
    monkeypatch.setattr(checkpoint, "save_atomic", seen.wrap("save", checkpoint.save_atomic))
    monkeypatch.setattr(store, "publish", seen.wrap("link", store.publish))
    monkeypatch.setattr(store, "write_history", seen.wrap("history", store.write_history))
    return seen


def test_an_epoch_writes_last_then_best_into_the_store_then_links_them_then_the_history(tmp_path, writes):
    run = store_of(tmp_path)
    assert train(run, [0.5, 0.4, 0.6]) == [True, False, True]
    epoch = [
        ("save", f"{RUN}/last.pt"),
        ("save", f"{RUN}/best.pt"),
        ("link", "scratch/best.pt"),
        ("link", "scratch/last.pt"),
        ("history", "history/scratch.csv"),
    ]
    not_best = [write for write in epoch if write != ("save", f"{RUN}/best.pt")]
    assert writes == epoch + not_best + epoch
    assert checkpoint.load(run.best, "best").epoch == 3 and checkpoint.load(run.last, "last").epoch == 3
    assert [int(line["epoch"]) for line in history_csv(run.files.history)] == [1, 2, 3]
    assert float(history_csv(run.files.history)[1][COLUMN]) == 0.4


def test_the_first_epoch_among_ties_is_the_best(tmp_path):
    run = store_of(tmp_path)
    assert train(run, [0.5, 0.5]) == [True, False]
    best = checkpoint.load(run.files.best, "best")
    assert best.epoch == 1 and best.selected == {COLUMN: 0.5} and best.fingerprint == RUN


@pytest.mark.parametrize("improved", [True, False])
@pytest.mark.parametrize("kill_after", range(6))
def test_a_kill_after_any_write_of_an_epoch_leaves_a_pair_that_resumes(
    tmp_path, writes, kill_after, improved
):
    run = store_of(tmp_path)
    train(run, [0.5])
    writes.clear()
    writes.kill_after = kill_after
    second = [0.5, 0.6 if improved else 0.4]
    killed = kill_after < (5 if improved else 4)  # the writes of an epoch: 5, or 4 without a best.pt
    with pytest.raises(KeyboardInterrupt) if killed else contextlib.nullcontext():
        run.save(last(second))
    writes.kill_after = None

    again = store_of(tmp_path)  # the next run of the same settings
    state = again.resume(epochs=3, inputs=INPUTS, main=True)
    assert state is not None
    wrote_last = kill_after >= 1
    assert state.epoch == (2 if wrote_last else 1) and state.history == last(second[: state.epoch]).history
    assert torch.equal(state.model["w"], torch.full((2,), float(state.epoch)))
    # The store's pair is consistent: its best.pt holds the selected epoch of its last.pt.
    best = checkpoint.load(again.best, "best")
    assert best.epoch == checkpoint.selected_epoch(state.history, COLUMN) and best.fingerprint == RUN
    assert checkpoint.load(again.last, "last").epoch == state.epoch


# ------------------------------------------------------------------ which checkpoint a run resumes from


def test_a_fresh_run_has_nothing_to_resume(tmp_path, capsys):
    assert store_of(tmp_path).resume(epochs=3, inputs=INPUTS, main=True) is None
    assert capsys.readouterr().err == ""


def test_the_published_run_is_continued_when_train_epochs_rises_and_linked_into_the_store(tmp_path, capsys):
    run = store_of(tmp_path)
    train(run, [0.5, 0.6])
    run.remove()  # finished: only models/scratch/ holds it
    again = store_of(tmp_path)
    state = again.resume(epochs=3, inputs=INPUTS, main=True)
    assert state is not None and state.epoch == 2
    assert f"{run.files.last}: resuming after epoch 2 of 3" in capsys.readouterr().err
    assert os.path.samefile(again.last, run.files.last) and os.path.samefile(again.best, run.files.best)


def test_the_store_s_own_run_comes_first_among_equals(tmp_path, capsys):
    run = store_of(tmp_path)
    train(run, [0.5, 0.6])
    # DVC restored a copy of the same epoch into models/scratch/ (no longer the store's file).
    run.files.last.unlink()
    checkpoint.save(last([0.5, 0.6]), run.files.last)
    state = store_of(tmp_path).resume(epochs=3, inputs=INPUTS, main=True)
    assert state is not None and state.epoch == 2
    assert f"{run.last}: resuming after epoch 2 of 3" in capsys.readouterr().err


def test_the_furthest_checkpoint_wins(tmp_path, capsys):
    run = store_of(tmp_path)
    train(run, [0.5])
    # models/scratch/ holds epoch 2 of the same run (the store's folder was an epoch behind).
    for path in (run.files.last, run.files.best):
        path.unlink()
    checkpoint.save(last([0.5, 0.6]), run.files.last)
    checkpoint.save(last([0.5, 0.6]).best(COLUMN), run.files.best)
    state = store_of(tmp_path).resume(epochs=3, inputs=INPUTS, main=True)
    assert state is not None and state.epoch == 2
    assert f"{run.files.last}: resuming after epoch 2 of 3" in capsys.readouterr().err


def test_another_run_s_published_checkpoint_is_not_resumed_and_the_difference_is_said(tmp_path, capsys):
    other = store_of(tmp_path, OTHER)
    train(other, [0.5, 0.6])
    other.remove()
    changed = dataclasses.replace(INPUTS, params={"train": {"lr": 0.1}})
    assert store_of(tmp_path).resume(epochs=3, inputs=changed, main=True) is None
    err = capsys.readouterr().err
    assert f"{other.files.last}: made with other settings, not resuming from it" in err
    assert "(params.train.lr: 0.01 -> 0.1); training from the start" in err


def test_only_the_main_process_speaks_and_links(tmp_path, capsys):
    run = store_of(tmp_path)
    train(run, [0.5, 0.6])
    run.remove()
    again = store_of(tmp_path)
    state = again.resume(epochs=3, inputs=INPUTS, main=False)
    assert state is not None and state.epoch == 2  # every process loads it
    assert capsys.readouterr().err == "" and not again.folder.exists()


def test_the_store_s_run_is_resumed_over_another_run_s_published_files(tmp_path, capsys):
    other = store_of(tmp_path, OTHER)
    train(other, [0.5, 0.6, 0.7])  # `dvc exp run` checked another experiment out into models/scratch
    other.remove()
    run = store_of(tmp_path)
    run.folder.mkdir(parents=True)
    checkpoint.save(last([0.5]), run.last)
    checkpoint.save(last([0.5]).best(COLUMN), run.best)
    state = run.resume(epochs=3, inputs=INPUTS, main=True)
    assert state is not None and state.epoch == 1
    assert capsys.readouterr().err == f"{run.last}: resuming after epoch 1 of 3\n"  # no word of the other


# ------------------------------------------------------------------ what is refused


def test_a_damaged_store_checkpoint_is_an_error_naming_it_and_the_fix(tmp_path):
    run = store_of(tmp_path)
    run.folder.mkdir(parents=True)
    run.last.write_bytes(b"not a torch file")
    with pytest.raises(
        DamagedCheckpoint, match=rf"{run.last}: not a readable checkpoint.*move {run.folder} away"
    ):
        run.resume(epochs=3, inputs=INPUTS, main=True)


def test_a_damaged_published_checkpoint_is_an_error_naming_dvc_checkout(tmp_path):
    run = store_of(tmp_path)
    run.files.model_dir.mkdir(parents=True)
    torch.save({"model": {"w": torch.zeros(1)}, "fingerprint": RUN}, run.files.last)  # truncated in kind
    with pytest.raises(DamagedCheckpoint, match=r"lacks spec, optimizer.*dvc checkout .*models/scratch"):
        run.resume(epochs=3, inputs=INPUTS, main=True)


def test_a_foreign_file_is_another_run_s_checkpoint_not_a_damaged_one(tmp_path, capsys):
    run = store_of(tmp_path)
    run.files.model_dir.mkdir(parents=True)
    # An older version's checkpoint: another fingerprint, and fields this version does not know.
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3, "fingerprint": OTHER}, run.files.last)
    assert run.resume(epochs=3, inputs=INPUTS, main=True) is None
    err = capsys.readouterr().err
    assert "made with other settings, not resuming from it (code_sha256: None -> c0de; decoder: None" in err
    run.files.last.write_bytes(b"\x80\x02junk")
    with pytest.raises(DamagedCheckpoint, match="not a readable checkpoint written by `retinopathy train`"):
        run.resume(epochs=3, inputs=INPUTS, main=True)


def test_another_run_s_checkpoint_in_this_run_s_folder_is_refused(tmp_path):
    run = store_of(tmp_path)
    run.folder.mkdir(parents=True)
    checkpoint.save(last([0.5], fingerprint=OTHER), run.last)
    with pytest.raises(DamagedCheckpoint, match="made by another run than its folder's name says"):
        run.resume(epochs=3, inputs=INPUTS, main=True)


def test_a_damaged_best_is_rebuilt_when_its_epoch_is_the_last_s_and_else_the_run_starts_over(
    tmp_path, capsys
):
    run = store_of(tmp_path)
    train(run, [0.5, 0.6])
    run.best.write_bytes(b"damaged")
    state = store_of(tmp_path).resume(epochs=3, inputs=INPUTS, main=True)
    assert state is not None and state.epoch == 2
    assert checkpoint.load(run.best, "best").epoch == 2  # rebuilt from last.pt

    train(run, [0.5, 0.6, 0.4])  # epoch 2 stays the best
    run.best.write_bytes(b"damaged")
    run.files.best.unlink()
    assert store_of(tmp_path).resume(epochs=3, inputs=INPUTS, main=True) is None
    assert (
        f"{run.best}: does not hold epoch 2, the selected epoch of {run.last}; training from the start"
        in (capsys.readouterr().err)
    )


def test_more_epochs_than_train_epochs(tmp_path, capsys):
    run = store_of(tmp_path)
    train(run, [0.5, 0.6, 0.7])
    with pytest.raises(
        RetinopathyError, match="has 3 epochs, more than train.epochs=2; set train.epochs to 3"
    ):
        run.resume(epochs=2, inputs=INPUTS, main=True)
    run.remove()  # finished: a published run of more epochs is not continued but trained anew
    assert store_of(tmp_path).resume(epochs=2, inputs=INPUTS, main=True) is None
    assert "has 3 epochs, more than train.epochs=2; training from the start" in capsys.readouterr().err


def test_a_checkpoint_of_the_other_kind_or_with_nan_weights_is_damaged(tmp_path):
    run = store_of(tmp_path)
    train(run, [0.5])
    run.files.last.unlink()
    os.link(run.files.best, run.files.last)  # a best.pt copied over last.pt
    with pytest.raises(
        DamagedCheckpoint, match=r"is a best.pt \(no optimizer state, no history\), not a last.pt"
    ):
        checkpoint.load(run.files.last, "last")
    broken = last([0.5])
    broken.model["w"][0] = float("nan")
    checkpoint.save(broken, run.last)
    with pytest.raises(DamagedCheckpoint, match="weights hold NaN or infinite numbers"):
        checkpoint.load(run.last, "last")


# ------------------------------------------------------------------ publishing and finishing


def test_publishing_links_each_epoch_s_files_and_leaves_the_earlier_ones_whole(tmp_path):
    run = store_of(tmp_path)
    train(run, [0.5])
    first = run.files.last.read_bytes()
    kept = tmp_path / "kept.pt"
    os.link(run.files.last, kept)  # e.g. DVC's cache holding epoch 1
    train(run, [0.5, 0.6])
    assert os.path.samefile(run.last, run.files.last) and os.path.samefile(run.best, run.files.best)
    assert kept.read_bytes() == first  # a new epoch replaces the files; it never writes into one
    assert checkpoint.load(run.files.last, "last").epoch == 2


def test_finishing_writes_the_status_last_and_removes_only_the_run_s_folder(tmp_path):
    run, other = store_of(tmp_path), store_of(tmp_path, OTHER)
    train(other, [0.3])
    train(run, [0.5, 0.6])
    history = checkpoint.load(run.last, "last").history
    status = TrainingStatus(
        model="resnet18",
        init="scratch",
        epochs=2,
        best_epoch=2,
        selection="test",
        select_by="accuracy",
        decoder="Pillow",
        resident=False,
        weights="random initialisation",
        fingerprint=RUN,
        history=history,
    )
    run.finish(status)
    assert read_status(run.files.status, "scratch") == status
    assert not run.folder.exists() and other.last.is_file()  # another run's entry is left alone
    assert checkpoint.load(run.files.best, "best").epoch == 2
    other.remove()
    assert not (tmp_path / "models/.resume").exists()  # empty folders go too


def test_the_stale_note_names_the_arm_s_other_runs_and_how_to_remove_them(tmp_path):
    other = store_of(tmp_path, OTHER)
    other.save(last([0.5], OTHER, dataclasses.replace(INPUTS, params={"train": {"lr": 0.1}})))
    note = store_of(tmp_path).stale_note(INPUTS)
    assert note is not None
    assert note.startswith(
        f"note: {tmp_path / 'models/.resume/scratch'} holds 1 unfinished run of other settings"
    )
    assert f"scratch/{OTHER}: resnet18, epoch 1" in note and "params.train.lr: 0.1 -> 0.01" in note
    assert f"retinopathy resume prune scratch/{OTHER}" in note
    assert other.stale_note(INPUTS) is None  # its own folder is no stale run


def test_the_store_refuses_a_file_where_its_folder_belongs(tmp_path):
    run = store_of(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models/.resume").write_text("not a folder")
    with pytest.raises(RetinopathyError, match=r"models/.resume: is a file, not a folder.*Move it away"):
        run.check()


# ------------------------------------------------------------------ the format on disk


def test_the_typed_checkpoints_are_the_same_dicts_on_disk(tmp_path):
    state = last([0.5, 0.7])
    path = tmp_path / "last.pt"
    checkpoint.save(state, path)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(checkpoint.LAST_KEYS)  # model, spec, optimizer, ... config: as ever
    assert raw["epoch"] == 2 and raw["history"] == state.history and raw["rng"]["torch"].dtype == torch.uint8
    checkpoint.save(state.best("test_accuracy"), path)
    raw = torch.load(path, weights_only=True)
    assert (
        list(raw) == ["model", "spec", "epoch", "test_accuracy", "fingerprint"]
        and raw["test_accuracy"] == 0.7
    )
    # A file of that layout, written as a plain dict (as this version wrote them before), loads.
    torch.save({**raw, "epoch": 2}, path)
    loaded = checkpoint.load(path, "best")
    assert loaded.selected == {"test_accuracy": 0.7} and loaded.epoch == 2
    assert dataclasses.replace(loaded, model={}) == dataclasses.replace(state.best("test_accuracy"), model={})
