"""The `train` stage: train one arm (scratch or pretrained), resuming where it stopped.

``retinopathy train --init scratch|pretrained`` builds the model (random init,
or the weights its manifest names), then for each epoch trains over the
training split and evaluates on the whole test split (and the validation split
when there is one). After every epoch it writes, in this order:

1. ``last.pt`` (model, optimizer, epoch, history, RNG state and the config
   fingerprint) into the run's resume store,
   ``models/.resume/<arm>/<fingerprint>/`` (:class:`retinopathy.engine.checkpoint.ResumeStore`),
   which no DVC command touches;
2. ``best.pt`` there, when the epoch is the best so far;
3. both into ``models/<arm>/``, DVC's output (hard links: no copy);
4. ``metrics/history/<arm>.csv``: the per-epoch history, for `dvc plots`.

Each write is atomic, and the order makes a kill at any moment safe: the store
always holds a consistent pair (a ``best.pt`` one epoch behind a ``last.pt``
whose epoch is the best is rebuilt from it), a resumed run repeats at most the
unfinished epoch and, because batches depend only on (seed, epoch), produces
the same history as an uninterrupted run. A resume looks in the store first, so
it survives `dvc exp run` and `dvc checkout` restoring another experiment's
``models/<arm>/`` in between. When the run finishes, ``status.json`` is written
last (evaluate checks that it and ``best.pt`` name the same run and epoch) and
the store entry is removed. The history CSV is rewritten from the checkpoint
each epoch rather than appended by a logger such as DVCLive, so it can never
hold an epoch the checkpoint lacks.

Between epochs training reads the params file again: when another command
(a second `dvc exp run -S ...`) has changed a setting under it, it stops, the
last good checkpoint kept.

Runs under ``torchrun --nproc_per_node=N`` as DistributedDataParallel: every
process trains on its share of each batch, accuracies are summed over all
processes, and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from retinopathy.core import records
from retinopathy.core.config import Params, load_params
from retinopathy.core.contract import ARMS, HISTORY_COLUMNS, VAL_COLUMNS, ArmFiles, Layout
from retinopathy.core.errors import RetinopathyError, note, warn
from retinopathy.core.files import (
    check_writable,
    exclusive_lock,
    remove_stale_temporaries,
    sha256_of,
    write_csv_atomic,
)
from retinopathy.data.index import read_index
from retinopathy.engine import checkpoint, loops, recipe
from retinopathy.engine.augment import Augment
from retinopathy.engine.batches import batches, eval_batches, open_sources, resident_wanted
from retinopathy.engine.distributed import EpochShuffleSampler, ShardSampler, sum_over_processes, torch_seed
from retinopathy.engine.optim import make_optimizer, make_scheduler
from retinopathy.engine.resident import ResidentBatches, planned_decoder
from retinopathy.engine.runtime import Runtime, compile_wanted, compiled, start, stop
from retinopathy.models.build import build_model
from retinopathy.models.grader import Grader, GraderSpec
from retinopathy.models.head import Head
from retinopathy.models.manifest import (
    RandomInit,
    Unavailable,
    WeightsFile,
    read_manifest,
    verify_weights,
    weights_argument,
)
from retinopathy.pipeline.paramkeys import restrict

# The params keys this stage reads (retinopathy.pipeline.paramkeys: reading any other is an error);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = (
    "model",
    "data.root",
    "data.image_size",
    "data.val_fraction",
    "data.on_device",
    "data.preprocess",
    "train.epochs",
    "train.batch_size",
    "train.lr",
    "train.momentum",
    "train.weight_decay",
    "train.seed",
    "train.precise_bn_images",
    "train.device",
    "train.normalize",
    "train.precision",
    "train.channels_last",
    "train.compile",
    "train.portable",
    "train.schedule",
    "train.warmup_epochs",
    "train.nesterov",
    "train.zero_init_residual",
    "train.loss",
    "train.tune_thresholds",
    "train.class_balance",
    "train.select_by",
    "augment",
)


def write_history(rows: list[dict[str, float]], path: Path, with_val: bool) -> None:
    """Write the per-epoch history CSV atomically (header only when there are no rows)."""
    fields = list(HISTORY_COLUMNS) + (list(VAL_COLUMNS) if with_val else [])
    write_csv_atomic(
        path, fields, ([row[k] if k == "epoch" else f"{row[k]:.6f}" for k in fields] for row in rows)
    )


@dataclass
class Run:
    """One arm's training run: what it is (its settings, files and fingerprint) and the epochs done."""

    files: ArmFiles
    params: Params
    runtime: Runtime
    manifest: RandomInit | WeightsFile
    epochs: int
    with_val: bool
    resident: bool  # the splits decoded once into the device's memory (data.on_device)
    decoder: str  # which decoder makes the pixels: it changes them by a few levels
    inputs: dict[str, Any]  # what the fingerprint hashes, to say what changed
    fingerprint: str
    store: checkpoint.ResumeStore  # this run's checkpoints, where DVC never writes
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return recipe.selection_column(self.with_val, self.params.train.select_by)

    @property
    def best(self) -> float:
        return max((row[self.key] for row in self.history), default=-math.inf)


@dataclass(frozen=True)
class Model:
    """The network and its optimizer state: what a checkpoint saves and a resume restores."""

    grader: Grader  # the network itself: saved, BatchNorm-recalibrated
    head: Head  # the loss and the grading (regression thresholds may be tuned each epoch)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # the learning rate per batch
    net: nn.Module  # the grader as trained: wrapped in DDP and compiled when asked
    eager: nn.Module  # the same, never compiled: evaluation and a last smaller batch (no recompiles)

    def spec(self) -> dict[str, Any]:
        """The grader's spec as it grades now (with this epoch's thresholds)."""
        thresholds = list(self.head.thresholds) if self.head.thresholds is not None else None
        return dataclasses.replace(self.grader.spec, thresholds=thresholds).to_dict()

    def learner(self) -> loops.Learner:
        """What a training pass steps."""
        return loops.Learner(self.net, self.optimizer, self.head, scheduler=self.scheduler, eager=self.eager)


@dataclass(frozen=True)
class Feed:
    """The data of every epoch: the batches of every split, in an order and with changes set by the seed."""

    sampler: EpochShuffleSampler  # told the epoch, so the order depends on (seed, epoch) only
    train: DataLoader | ResidentBatches  # a DataLoader, or batches from the device's memory
    evaluation: dict[str, DataLoader | ResidentBatches]  # val (when held out) first, then test
    batchnorm: DataLoader | ResidentBatches | None  # train.precise_bn_images of the training images
    augment: Augment | None  # changes training batches per (seed, epoch, step)


def skip(files: ArmFiles, params: Params, skipped: records.Skipped) -> None:
    """Record that the pretrained arm cannot be trained; keep any earlier checkpoints."""
    records.write_status(files.status, skipped)
    write_history([], files.history, with_val=params.data.val_fraction > 0)
    warn(f"{files.arm} arm skipped: {skipped.reason}\n  fix: {skipped.fix}")


def build(
    params: Params, files: ArmFiles, layout: Layout, manifest: RandomInit | WeightsFile, runtime: Runtime
) -> Run:
    """The run: its settings, how its pixels are decoded, and its fingerprint and resume store."""
    train = params.train
    if train.batch_size % runtime.process.world_size:
        raise RetinopathyError(
            f"params.yaml: train.batch_size {train.batch_size} is the global batch and must "
            f"divide by the {runtime.process.world_size} processes; change it or --nproc_per_node"
        )
    splits = read_index(layout.index)
    resident = resident_wanted(params, runtime, splits, params.data.image_size)
    decoder = planned_decoder(resident, runtime)
    inputs = checkpoint.fingerprint_inputs(
        params.to_dict(),
        files.arm,
        manifest.sha256 if isinstance(manifest, WeightsFile) else None,
        sha256_of(layout.index),
        runtime.process.world_size,
        decoder,
    )
    runtime.configure_backends()
    fingerprint = checkpoint.fingerprint(inputs)
    store = checkpoint.ResumeStore.of(layout.models, files.arm, fingerprint)
    return Run(
        files,
        params,
        runtime,
        manifest,
        train.epochs_for(params.model),
        bool(splits["val"]),
        resident,
        decoder,
        inputs,
        fingerprint,
        store,
    )


def make_model(run: Run, layout: Layout, feed: Feed) -> Model:
    """The network (random, or the manifest's weights), its head and optimizer, wrapped (and, if it
    pays, compiled) for training, and the learning rate per batch of ``feed``'s training batches."""
    runtime, params, train = run.runtime, run.params, run.params.train
    splits = read_index(layout.index)
    head = recipe.make_head(params, [r.label for r in splits["train"]])
    torch.manual_seed(torch_seed(train.seed))  # model init (scratch) and the new head (pretrained)
    net = build_model(
        params.model,
        num_classes=head.num_outputs,
        weights=weights_argument(run.manifest),
        zero_init_residual=train.zero_init_for(params.model),
    )
    spec = GraderSpec(
        model=params.model,
        image_size=params.data.image_size,
        normalize=train.normalize,
        preprocess=params.data.preprocess,
        loss=train.loss,
        thresholds=list(head.thresholds) if head.thresholds else None,
    )
    grader = runtime.place(Grader(net, spec))
    optimizer = make_optimizer(
        grader,
        runtime,
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.nesterov,
    )
    eager: nn.Module = grader
    if runtime.process.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        eager = DistributedDataParallel(eager, device_ids=device_ids)
    images = run.epochs * len(splits["train"])
    wrapped = compiled(eager) if compile_wanted(train.compile, runtime, images) else eager
    steps = len(feed.train)  # per epoch, on every process
    scheduler = make_scheduler(optimizer, train.schedule, train.warmup_epochs * steps, run.epochs * steps)
    return Model(grader, head, optimizer, scheduler, wrapped, eager)


def best_of(run: Run, history: list[dict[str, float]]) -> int:
    """The selected epoch of ``history``: the first among ties, as :func:`save` writes best.pt."""
    return int(max(history, key=lambda row: row[run.key])["epoch"])


def matching_best(run: Run, state: dict[str, Any], path: Path) -> tuple[dict[str, Any] | None, bool]:
    """The best.pt at ``path`` if it holds the selected epoch of the last.pt ``state``, and False.

    Else, when that epoch is ``state``'s own (a kill between the two writes),
    one rebuilt from ``state``, and True; else None: the selected epoch's weights are gone.
    """
    wanted = best_of(run, state["history"])
    try:
        best = checkpoint.load(path, "best") if path.exists() else None
    except checkpoint.DamagedCheckpoint:
        best = None
    if best is not None and best["fingerprint"] == run.fingerprint and best["epoch"] == wanted:
        return best, False
    return (checkpoint.best_of_last(state, run.key), True) if wanted == state["epoch"] else (None, False)


def candidates(run: Run, say: Any) -> list[tuple[Path, dict[str, Any], Path]]:
    """The last.pt files this run may resume from, as (last.pt, its state, the best.pt beside it).

    The resume store's comes first: the run's own, whatever DVC did to ``models/<arm>/``
    since. Then ``models/<arm>/last.pt``: a finished run's, continued when train.epochs rises.
    """
    store, last = run.store, run.files.last
    found = []
    if store.last.exists():
        state = checkpoint.load(store.last, "last", fix=f"move {store.folder} away to train from the start")
        if state["fingerprint"] != run.fingerprint:
            raise checkpoint.DamagedCheckpoint(
                f"{store.last}: made by another run than its folder's name says; "
                f"move {store.folder} away to train from the start"
            )
        if state["epoch"] > run.epochs:
            raise RetinopathyError(
                f"{store.last}: an unfinished run of these settings has {state['epoch']} epochs, more "
                f"than train.epochs={run.epochs}; set train.epochs to {state['epoch']} or more in "
                f"params.yaml to continue it, or move {store.folder} away to train {run.epochs} epochs "
                "from the start"
            )
        found.append((store.last, state, store.best))
    if last.exists():
        fix = (
            f"restore it with `dvc checkout {run.files.model_dir}` (DVC keeps every finished run's "
            f"checkpoints), or move it away (`mv {last} {last}.damaged`) to train the arm from the start"
        )
        state = checkpoint.read(last, fix)
        if state["fingerprint"] != run.fingerprint:  # other params, data or code (another version's too)
            if not found:
                changes = checkpoint.describe_difference(state.get("fingerprint_inputs", {}), run.inputs)
                say(
                    f"{last}: made with other settings, not resuming from it "
                    f"({'; '.join(changes) or 'unknown difference'}); training from the start"
                )
        elif checkpoint.check(state, last, "last", fix)["epoch"] > run.epochs:
            if not found:
                say(
                    f"{last}: has {state['epoch']} epochs, more than train.epochs={run.epochs}; "
                    "training from the start"
                )
        else:
            found.append((last, state, run.files.best))
    return found


def resume(run: Run, model: Model) -> None:
    """Continue from the furthest checkpoint of this run's settings, code and data (else say why not).

    Afterwards the resume store holds the pair resumed from (hard links where it came from
    ``models/<arm>/``), so DVC restoring another run's files there loses nothing.
    """
    say = note if run.runtime.process.is_main else (lambda _: None)  # once, not once per process
    if run.runtime.process.is_main:
        for path in run.store.remove_stale_temporaries():
            note(f"{path}: removed, a temporary file left by a killed run")
    found = candidates(run, say)
    if not found:
        return
    path, state, best_path = max(found, key=lambda item: item[1]["epoch"])  # the store's among ties
    best, rebuilt = matching_best(run, state, best_path)
    if best is None:
        say(
            f"{best_path}: does not hold epoch {best_of(run, state['history'])}, the selected epoch of "
            f"{path}; training from the start"
        )
        return
    say(f"{path}: resuming after epoch {state['epoch']} of {run.epochs}")
    model.grader.net.load_state_dict(state["model"])
    model.optimizer.load_state_dict(state["optimizer"])
    model.scheduler.load_state_dict(state["scheduler"])
    run.history = state["history"]
    torch.set_rng_state(state["rng"]["torch"])
    if run.runtime.process.is_main:  # the store's best.pt first: a kill between leaves the older pair
        if rebuilt:
            checkpoint.save_atomic(best, run.store.best)
        else:
            checkpoint.publish(best_path, run.store.best)
        checkpoint.publish(path, run.store.last)


def feed(run: Run, layout: Layout) -> Feed:
    """The batches of every split (decoding them into the device's memory first, when resident)."""
    runtime, params, train = run.runtime, run.params, run.params.train
    splits = read_index(layout.index)
    started = time.perf_counter()
    if runtime.process.is_main:
        count = sum(len(split) for split in splits.values())
        note(
            f"{run.files.arm}: decoding {count} images into {runtime.device.type} memory ..."
            if run.resident
            else f"{run.files.arm}: {count} images from {params.data.root}, decoded batch by batch"
        )
    sources, decoder = open_sources(params, runtime, splits, params.data.image_size, run.resident)
    if run.resident and runtime.process.is_main:
        count, seconds = sum(len(split) for split in splits.values()), time.perf_counter() - started
        note(
            f"decoded {count} images into {runtime.device.type} memory in {seconds:.1f} s "
            f"({count / seconds:.0f} img/s): {decoder}"
        )
    run.decoder = decoder  # what made the pixels, for status.json (a PNG among JPEGs: both decoders)
    per_process = train.batch_size // runtime.process.world_size
    sampler = recipe.make_sampler(params, [r.label for r in splits["train"]], runtime.process)
    training = batches(sources["train"], sampler, per_process, runtime)
    evaluation: dict[str, DataLoader | ResidentBatches] = {
        name: eval_batches(sources[name], per_process, runtime) for name in ("val", "test") if name in sources
    }
    batchnorm = None
    if train.precise_bn_images:
        # The same training images every epoch, chosen by the seed alone.
        size = len(splits["train"])
        order = torch.randperm(size, generator=torch.Generator().manual_seed(torch_seed(train.seed)))
        subset = ShardSampler(size, runtime.process, order[: train.precise_bn_images].tolist())
        batchnorm = batches(sources["train"], subset, per_process, runtime)
    return Feed(sampler, training, evaluation, batchnorm, recipe.make_augment(params, runtime.process))


@dataclass(frozen=True)
class Speed:
    """How fast one epoch went."""

    train: float  # img/s, the whole training pass
    evaluate: float  # img/s, evaluation of every split
    first_batch: float  # seconds to the end of the first training step: start-up and any compiling


def one_epoch(run: Run, model: Model, batches: Feed, epoch: int) -> tuple[dict[str, float], Speed]:
    """Train one epoch, then evaluate: the history row, and how fast it went."""
    batches.sampler.set_epoch(epoch)
    augment = None
    if (transform := batches.augment) is not None:

        def augment(images: torch.Tensor, step: int) -> torch.Tensor:
            return transform(images, epoch, step)

    train = run.params.train
    kept = (
        f"the last good checkpoint {run.store.last} (epoch {len(run.history)}) is kept"
        if run.history
        else "no epoch had finished"
    )
    lower = (
        f"train.batch_size (now {train.batch_size}) or data.image_size "
        f"(now {run.params.data.image_size}) in params.yaml; {kept}"
    )
    with loops.memory_guard(f"training {run.files.arm}, epoch {epoch}", lower):
        return _one_epoch(run, model, batches, epoch, augment)


def _one_epoch(
    run: Run, model: Model, batches: Feed, epoch: int, augment: Any
) -> tuple[dict[str, float], Speed]:
    started = time.perf_counter()
    try:
        fit = loops.train_epoch(
            model.learner(),
            batches.train,
            run.runtime,
            f"{run.files.arm} epoch {epoch}/{run.epochs} training",
            augment=augment,
        )
    except loops.NonFiniteLoss as where:
        raise RetinopathyError(
            f"training {run.files.arm}: the loss became NaN or infinite in epoch {epoch} "
            f"({where}); lower train.lr (now {run.params.train.lr}) in params.yaml. The last good "
            f"checkpoint {run.files.last} (epoch {len(run.history)}) is kept"
        ) from None
    rate = fit.count / (time.perf_counter() - started)  # train_epoch ends by reading its totals: synced
    if batches.batchnorm is not None:
        loops.recalibrate_batchnorm(model.grader, batches.batchnorm, run.runtime)
    started = time.perf_counter()
    tune = run.params.train.tune_thresholds
    row: dict[str, float] = {
        "epoch": epoch,
        **recipe.train_row(fit),
        **recipe.evaluate_splits(model.eager, batches.evaluation, run.runtime, model.head, tune),
    }
    # This process's images: every evaluation sampler is a ShardSampler (eval_batches), which has a length.
    shard = sum(len(cast(Sized, split.sampler)) for split in batches.evaluation.values())
    seconds = time.perf_counter() - started  # evaluate_splits ends by reading its totals: synced
    return row, Speed(rate, shard * run.runtime.process.world_size / seconds, fit.first_batch)


def save(run: Run, model: Model, row: dict[str, float]) -> bool:
    """Append ``row``; write last.pt, best.pt (if the epoch is the best) into the store, then publish.

    The order keeps the store's pair consistent after a kill at any moment (see
    :func:`matching_best`); ``models/<arm>/`` then gets hard links to both, and the
    history is rewritten.

    Returns:
        Whether the epoch is the best so far.
    """
    improved = row[run.key] > run.best
    run.history.append(row)
    if not run.runtime.process.is_main:
        return improved
    last = checkpoint.last_state(
        model=model.grader.net.state_dict(),
        spec=model.spec(),
        optimizer=model.optimizer.state_dict(),
        scheduler=model.scheduler.state_dict(),
        epoch=int(row["epoch"]),
        history=run.history,
        rng={"torch": torch.get_rng_state()},
        fingerprint=run.fingerprint,
        fingerprint_inputs=run.inputs,
        config=run.params.to_dict(),
    )
    checkpoint.save_atomic(last, run.store.last)
    if improved:
        checkpoint.save_atomic(checkpoint.best_of_last(last, run.key), run.store.best)
    publish(run)
    write_history(run.history, run.files.history, run.with_val)
    return improved


def publish(run: Run) -> None:
    """Put the store's pair into ``models/<arm>/``, DVC's output: best.pt, then last.pt."""
    checkpoint.publish(run.store.best, run.files.best)
    checkpoint.publish(run.store.last, run.files.last)


def finish(run: Run) -> records.TrainingStatus:
    """Publish the checkpoints, write ``status.json`` (the best epoch and the history, for evaluate), last.

    Then the run's resume store is removed: ``models/<arm>/`` holds the finished run, and
    DVC's cache keeps it once the stage ends.
    """
    best_row = max(run.history, key=lambda r: r[run.key])  # first epoch among ties, as best.pt
    status = records.TrainingStatus(
        model=run.params.model,
        init=run.files.arm,
        epochs=run.epochs,
        best_epoch=int(best_row["epoch"]),
        selection="validation" if run.with_val else "test",
        select_by=run.params.train.select_by,
        decoder=run.decoder,
        resident=run.resident,  # evaluate decodes the test split the same way
        weights=run.manifest.description,
        fingerprint=run.fingerprint,
        history=run.history,  # evaluate reads it here, not from the much larger last.pt
    )
    if run.runtime.process.is_main:
        publish(run)  # also when nothing was left to train: DVC may have restored other files
        write_history(run.history, run.files.history, run.with_val)
        records.write_status(run.files.status, status)
        run.store.remove()
    return status


@contextmanager
def guard(files: ArmFiles, runtime: Runtime) -> Iterator[None]:
    """Before any work: the outputs are writable, no other run trains this arm, no stale temporaries.

    Only the main process writes, so only it checks and holds the lock.
    """
    if not runtime.process.is_main:
        yield
        return
    check_writable(files.model_dir, "checkpoints")
    check_writable(files.history.parent, "the training history")
    with exclusive_lock(files.lock, f"training of the {files.arm} arm"):
        for target in (files.last, files.best, files.status, files.history):
            for path in remove_stale_temporaries(target):
                note(f"{path}: removed, a temporary file left by a killed run")
        yield


# What a run compares in the params file between epochs: what it fingerprints, and its length.
WATCHED = frozenset({("train", "epochs")})


def changed_settings(run: Run, path: Path) -> list[str]:
    """How the params file at ``path`` now differs from the run's params, in the settings training uses."""
    try:
        now = load_params(path).to_dict()
    except RetinopathyError as error:
        return [f"it no longer reads ({error})"]
    except OSError as error:
        return [f"it no longer reads ({error.strerror})"]
    return checkpoint.describe_difference(
        checkpoint.training_params(run.params.to_dict(), WATCHED), checkpoint.training_params(now, WATCHED)
    )


def check_params(run: Run, path: Path, epochs_done: int) -> None:
    """Stop when another command has changed ``path`` under the run (all processes together).

    A second `dvc exp run -S key=value` writes params.yaml before it fails on DVC's lock;
    the running experiment would go on with settings it did not start with, and DVC
    would record them as its own.

    Raises:
        RetinopathyError: what changed, that the last good checkpoint is kept, and what to do.
    """
    changes = changed_settings(run, path)
    flag = torch.tensor([float(bool(changes))], device=run.runtime.device)
    if not sum_over_processes(flag, run.runtime.process).item():
        return
    kept = (
        f"the checkpoint of epoch {epochs_done} is kept in {run.store.folder} and resumes when "
        "the settings are back"
        if epochs_done
        else "no epoch had finished"
    )
    what = "; ".join(changes) or "on another process"
    raise RetinopathyError(
        f"{path}: changed while training the {run.files.arm} arm ({what}), "
        f"so this run would go on, and be recorded, with settings it did not start with; stopped after "
        f"epoch {epochs_done}, {kept}. Another command (a second `dvc exp run -S ...`?) wrote it: run one "
        "experiment at a time, and queue more with `dvc exp run --queue -S key=value`, then "
        "`dvc exp run --run-all`"
    )


MAX_STALE_LISTED = 5  # stale runs named one by one in training's note; the rest are counted


def mention_stale_runs(run: Run, layout: Layout) -> None:
    """Name this arm's unfinished runs of other settings in the resume store, their size, and the fix.

    Such a run resumes only if its settings come back, and nothing else ever removes it
    (hundreds of MB for ResNet50); `retinopathy resume prune` does, when asked.
    """
    # What is not of the store's own form is listed by `retinopathy resume list`, never pruned.
    stale = [
        stored
        for stored in checkpoint.stored_runs(layout.models)
        if stored.arm == run.files.arm and stored.fingerprint != run.fingerprint and not stored.problem
    ]
    if not stale:
        return
    lines = []
    for stored in stale[-MAX_STALE_LISTED:]:  # the newest
        # The params first: a changed setting says more than a changed hash of the code or data.
        changes = [
            change if len(change) <= 100 else f"{change[:100]}..."
            for change in sorted(
                checkpoint.describe_difference(stored.inputs, run.inputs),
                key=lambda change: not change.startswith("params."),
            )[:3]
        ]
        lines.append(
            f"  {stored.describe()}" + (f" (its settings -> these: {'; '.join(changes)})" if changes else "")
        )
    if len(stale) > MAX_STALE_LISTED:
        lines.insert(0, f"  ... and {len(stale) - MAX_STALE_LISTED} older ones (`retinopathy resume list`)")
    size = checkpoint.megabytes(sum(stored.size for stored in stale))
    # By name: `--all` would take this run's own entry too, were it unfinished.
    how = (
        f"remove them with `retinopathy resume prune {' '.join(s.name for s in stale)}`"
        if len(stale) <= MAX_STALE_LISTED
        else "remove them with `retinopathy resume prune RUN...` (`retinopathy resume list` names them)"
    )
    note(
        f"note: {layout.models / checkpoint.RESUME_FOLDER / run.files.arm} holds {len(stale)} unfinished "
        f"run{'s' if len(stale) > 1 else ''} of other settings ({size}), which resume only if their "
        "settings come back:\n" + "\n".join(lines) + f"\n  {how}, or those older than N days with "
        "`retinopathy resume prune --older-than N`"
    )


def announce(run: Run, layout: Layout) -> None:
    """Say at once what is being trained, where and on what (the first pass can take minutes)."""
    splits = read_index(layout.index)
    sizes = ", ".join(f"{len(records)} {name}" for name, records in splits.items() if records)
    size = f"{run.params.data.image_size} px" if run.params.data.image_size else "their own size"
    note(
        f"{run.files.arm}: training {run.params.model} for {run.epochs} epochs on {run.runtime.device.type} "
        f"({sizes} images at {size}, batch {run.params.train.batch_size})"
    )


def train_arm(
    params: Params, arm: str, layout: Layout | None = None, params_path: Path | None = None
) -> records.TrainingStatus | records.Skipped:
    """Train (or resume, or skip) one arm; returns the record written to ``status.json``.

    Args:
        params: The settings.
        arm: ``scratch`` or ``pretrained``.
        layout: Where the files are (default: the project's).
        params_path: The file ``params`` came from: read again before every epoch and at
            the end, to stop when another command changes it (see :func:`check_params`).
    """
    layout = layout or Layout()
    files = layout.arm(arm)
    runtime = start(params)
    try:
        manifest = read_manifest(layout.manifest(arm))
        if manifest.model != params.model:
            raise RetinopathyError(
                f"{layout.manifest(arm)}: written for {manifest.model}, but params.yaml has "
                f"model {params.model}; run `dvc repro` (or `retinopathy weights`)"
            )
        with guard(files, runtime):
            if isinstance(manifest, Unavailable):
                skipped = records.Skipped(
                    model=params.model, init=arm, reason=manifest.reason, fix=manifest.fix
                )
                if runtime.process.is_main:
                    skip(files, params, skipped)
                return skipped
            verify_weights(manifest, layout.manifest(arm))
            run = build(params, files, layout, manifest, runtime)
            if runtime.process.is_main:
                run.store.check()  # before any epoch: `models/.resume` a file would fail the first save
                mention_stale_runs(run, layout)
                announce(run, layout)
            batches = feed(run, layout)
            model = make_model(run, layout, batches)
            resume(run, model)
            first = len(run.history) + 1
            for epoch in range(first, run.epochs + 1):
                if params_path is not None:
                    check_params(run, params_path, epoch - 1)
                started = time.perf_counter()
                row, speed = one_epoch(run, model, batches, epoch)
                improved = save(run, model, row)
                if runtime.process.is_main:
                    extra = f" val {row['val_accuracy']:.2%}" if run.with_val else ""
                    # The first epoch of a process pays the start-up (workers, cuDNN's autotuning, compiling).
                    start_up = (
                        f", of which {speed.first_batch:.1f} s the first batch"
                        f"{' (compiling)' if model.net is not model.eager else ''}"
                        if epoch == first
                        else ""
                    )
                    print(
                        f"{arm} epoch {epoch}/{run.epochs}: train {row['train_accuracy']:.2%} (loss "
                        f"{row['train_loss']:.4f}) test {row['test_accuracy']:.2%} kappa "
                        f"{row['test_kappa']:.3f}{extra}{' *' if improved else ''}  [{speed.train:.1f} "
                        f"img/s training, {speed.evaluate:.1f} img/s evaluating, "
                        f"{time.perf_counter() - started:.1f} s for the epoch{start_up}]",
                        flush=True,
                    )
            if params_path is not None:
                check_params(run, params_path, len(run.history))
            return finish(run)
    finally:
        stop(runtime)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy train --init scratch|pretrained [--params params.yaml]``."""
    parser = argparse.ArgumentParser(prog="retinopathy train", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--init",
        choices=ARMS,
        required=True,
        help="The arm: scratch (random initialisation) or pretrained (train.weights).",
    )
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="The parameters file (default: params.yaml)."
    )
    args = parser.parse_args(argv)
    train_arm(restrict(load_params(args.params), PARAMS, __name__), args.init, params_path=Path(args.params))
    return 0
