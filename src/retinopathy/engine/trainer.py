"""The trainer: one arm's training run, from its settings to its finished checkpoints.

:func:`train` trains (or resumes, or skips) one arm. It starts the runtime (joining
torchrun's process group when there is one), checks the arm's weights manifest, takes
the arm's lock, and hands the run to a :class:`Trainer`, which builds the model (random
init, or the weights its manifest names), then for each epoch trains over the training
split, re-estimates the BatchNorm statistics when asked, and evaluates on the whole
test split (and the validation split when there is one). Its
:class:`~retinopathy.engine.store.CheckpointStore` writes the checkpoints after every
epoch and owns the resume protocol: a killed run continues where it stopped, with the
same history as an uninterrupted one.

Between epochs training reads the params file again: when another command (a second
`dvc exp run -S ...`) has changed a setting under it, it stops, the last good
checkpoint kept.

Under ``torchrun --nproc_per_node=N`` (and ``--nnodes=M``) it is DistributedDataParallel:
every process trains on its share of each batch, accuracies are summed over all processes,
and only global rank 0 reads the checkpoint to resume from, writes files and prints; the
processes of every node must agree on the run's fingerprint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from retinopathy.core import records
from retinopathy.core.config import AugmentParams, load_params
from retinopathy.core.contract import ArmFiles, Layout
from retinopathy.core.errors import RetinopathyError, note, warn
from retinopathy.core.files import check_writable, exclusive_lock, remove_stale_temporaries, sha256_of
from retinopathy.data.index import read_index
from retinopathy.engine import checkpoint, loops, recipe
from retinopathy.engine.augment import Augment
from retinopathy.engine.batches import batches, eval_batches, open_sources, resident_wanted
from retinopathy.engine.distributed import (
    EpochShuffleSampler,
    ShardSampler,
    differing_processes,
    from_main,
    sum_over_processes,
    torch_seed,
)
from retinopathy.engine.optim import make_optimizer, make_scheduler
from retinopathy.engine.resident import ResidentBatches, planned_decoder
from retinopathy.engine.runtime import Runtime, Switches, compile_wanted, compiled, start, stop
from retinopathy.engine.store import CheckpointStore, write_history
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

Batches = DataLoader | ResidentBatches  # a DataLoader, or batches from the device's memory


@dataclass(frozen=True)
class TrainSettings:
    """What a training run is made of: the values the `train` stage read from params.yaml.

    The stage reads (and declares) every params key; the trainer sees only these fields,
    each named after its key (``train.lr`` is ``lr``, ``data.root`` is ``root``).
    """

    model: str
    epochs: int  # train.epochs for this model
    batch_size: int  # the global batch, over all processes
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    schedule: str  # constant | cosine, per batch
    warmup_epochs: int
    seed: int  # the model's initialisation, the order of the batches, the augmentation
    loss: str  # cross_entropy | regression
    class_balance: str  # none | weighted_loss | sampler
    select_by: str  # the figure that picks the epoch: accuracy | kappa
    tune_thresholds: bool  # regression, with a validation split
    precise_bn_images: int  # 0: off
    zero_init_residual: bool  # for this model
    normalize: str
    compile: str
    augment: AugmentParams  # the whole section
    root: str  # data.root
    image_size: int | None  # data.image_size (None: the files' own)
    preprocess: str  # data.preprocess
    on_device: str  # data.on_device
    cache_dir: str | None  # data.cache_dir (speed only)
    val_fraction: float  # data.val_fraction
    switches: Switches  # train.device, train.precision, train.channels_last, data.num_workers
    # All of params.yaml as plain data (Params.to_dict): the fingerprint hashes what training
    # uses of it, and last.pt keeps it.
    config: dict[str, Any]


def train(
    settings: TrainSettings, arm: str, layout: Layout, params_path: Path | None = None
) -> records.TrainingStatus | records.Skipped:
    """Train (or resume, or skip) one arm; returns the record written to ``status.json``.

    Args:
        settings: The run's settings.
        arm: ``scratch`` or ``pretrained``.
        layout: Where the files are.
        params_path: The file the settings came from: read again before every epoch and at
            the end, to stop when another command changes it (see :meth:`Trainer.watch`).
    """
    files = layout.arm(arm)
    runtime = start(settings.switches)
    try:
        manifest = read_manifest(layout.manifest(arm))
        if manifest.model != settings.model:
            raise RetinopathyError(
                f"{layout.manifest(arm)}: written for {manifest.model}, but params.yaml has "
                f"model {settings.model}; run `dvc repro` (or `retinopathy weights`)"
            )
        with guard(files, runtime):
            if isinstance(manifest, Unavailable):
                skipped = records.Skipped(
                    model=settings.model, init=arm, reason=manifest.reason, fix=manifest.fix
                )
                if runtime.process.is_main:  # record it; keep any earlier checkpoints
                    records.write_status(files.status, skipped)
                    write_history([], files.history, with_val=settings.val_fraction > 0)
                    warn(f"{arm} arm skipped: {skipped.reason}\n  fix: {skipped.fix}")
                return skipped
            verify_weights(manifest, layout.manifest(arm))
            return Trainer(settings, files, layout, manifest, runtime).fit(params_path)
    finally:
        stop(runtime)


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


@dataclass(frozen=True)
class Model:
    """The network and its optimizer state: what a checkpoint saves and a resume restores."""

    grader: Grader  # the network itself: saved, BatchNorm-recalibrated
    head: Head  # the loss and the grading (regression thresholds may be tuned each epoch)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # the learning rate per batch
    net: nn.Module  # the grader as trained: wrapped in DDP and compiled when asked
    eager: nn.Module  # the same, never compiled: evaluation and a last smaller batch (no recompiles)


@dataclass(frozen=True)
class Feed:
    """The data of every epoch: the batches of every split, in an order and with changes set by the seed."""

    sampler: EpochShuffleSampler  # told the epoch, so the order depends on (seed, epoch) only
    train: Batches
    evaluation: dict[str, Batches]  # val (when held out) first, then test
    batchnorm: Batches | None  # train.precise_bn_images of the training images
    augment: Augment | None  # changes training batches per (seed, epoch, step)


@dataclass(frozen=True)
class Speed:
    """How fast one epoch went."""

    train: float  # img/s, the whole training pass
    evaluate: float  # img/s, evaluation of every split
    first_batch: float  # seconds to the end of the first training step: start-up and any compiling


# What a run compares in the params file between epochs: what it fingerprints, and its length.
WATCHED = frozenset({("train", "epochs")})


class Trainer:
    """One arm's training run: its fingerprint and checkpoint store, its data, its model, its epochs.

    Building it reads the prepared index, decides where the pixels are decoded, and
    fingerprints the run; :meth:`fit` does the rest.
    """

    def __init__(
        self,
        settings: TrainSettings,
        files: ArmFiles,
        layout: Layout,
        manifest: RandomInit | WeightsFile,
        runtime: Runtime,
    ) -> None:
        world = runtime.process.world_size
        if settings.batch_size % world:
            raise RetinopathyError(
                f"params.yaml: train.batch_size {settings.batch_size} is the global batch and must "
                f"divide by the {world} processes; change it or --nproc_per_node"
            )
        self.settings, self.files, self.manifest, self.runtime = settings, files, manifest, runtime
        self.main = runtime.process.is_main
        self.splits = read_index(layout.index)
        self.resident = resident_wanted(settings.on_device, runtime, self.splits, settings.image_size)
        # What makes the pixels: decoders differ by a few levels, so it is fingerprinted.
        self.decoder = planned_decoder(self.resident, runtime)
        self.inputs = checkpoint.fingerprint_inputs(
            settings.config,
            files.arm,
            manifest.sha256 if isinstance(manifest, WeightsFile) else None,
            sha256_of(layout.index),
            world,
            self.decoder,
        )
        runtime.configure_backends()
        self.fingerprint = checkpoint.fingerprint(self.inputs)
        # Across nodes each node has its own checkout, params.yaml and data: one that differs
        # would train a model nobody asked for under rank 0's fingerprint.
        differ = differing_processes(self.fingerprint, runtime.process)
        if differ:
            raise RetinopathyError(
                f"training the {files.arm} arm: the run's fingerprint (code, params.yaml, "
                f"{layout.index}, weights) is {self.fingerprint} on rank 0 but differs on "
                f"{', '.join(differ)}; "
                "check out the same commit and run `dvc pull` (or `dvc checkout`) on every node"
            )
        self.with_val = bool(self.splits["val"])
        self.column = checkpoint.selection_column(self.with_val, settings.select_by)
        self.store = CheckpointStore.of(layout.models, files, self.fingerprint, self.column, self.with_val)
        self.history: list[dict[str, float]] = []

    def fit(self, params_path: Path | None = None) -> records.TrainingStatus:
        """Resume or start, train the epochs left, and finish: the record written to ``status.json``."""
        arm, epochs = self.files.arm, self.settings.epochs
        if self.main:
            self.store.check()  # before any epoch: `models/.resume` a file would fail the first save
            stale = self.store.stale_note(self.inputs)
            if stale:
                note(stale)
            self.announce()
        feed = self.make_feed()
        model = self.make_model(feed)
        self.resume(model)
        first = len(self.history) + 1
        for epoch in range(first, epochs + 1):
            if params_path is not None:
                self.watch(params_path, epoch - 1)
            started = time.perf_counter()
            row, speed = self.run_epoch(model, feed, epoch)
            self.history.append(row)
            if not self.main:
                continue
            improved = self.store.save(self.last_checkpoint(model, epoch))
            extra = f" val {row['val_accuracy']:.2%}" if self.with_val else ""
            # The first epoch of a process pays the start-up (workers, cuDNN's autotuning, compiling).
            start_up = (
                f", of which {speed.first_batch:.1f} s the first batch"
                f"{' (compiling)' if model.net is not model.eager else ''}"
                if epoch == first
                else ""
            )
            print(
                f"{arm} epoch {epoch}/{epochs}: train {row['train_accuracy']:.2%} (loss "
                f"{row['train_loss']:.4f}) test {row['test_accuracy']:.2%} kappa "
                f"{row['test_kappa']:.3f}{extra}{' *' if improved else ''}  [{speed.train:.1f} "
                f"img/s training, {speed.evaluate:.1f} img/s evaluating, "
                f"{time.perf_counter() - started:.1f} s for the epoch{start_up}]",
                flush=True,
            )
        if params_path is not None:
            self.watch(params_path, len(self.history))
        return self.finish()

    def announce(self) -> None:
        """Say at once what is being trained, where and on what (the first pass can take minutes)."""
        settings = self.settings
        sizes = ", ".join(f"{len(split)} {name}" for name, split in self.splits.items() if split)
        size = f"{settings.image_size} px" if settings.image_size else "their own size"
        note(
            f"{self.files.arm}: training {settings.model} for {settings.epochs} epochs on "
            f"{self.runtime.device.type} ({sizes} images at {size}, batch {settings.batch_size})"
        )

    def make_feed(self) -> Feed:
        """The batches of every split (decoding them into the device's memory first, when resident)."""
        settings, runtime, splits = self.settings, self.runtime, self.splits
        started = time.perf_counter()
        count = sum(len(split) for split in splits.values())
        if self.main:
            note(
                f"{self.files.arm}: decoding {count} images into {runtime.device.type} memory ..."
                if self.resident
                else f"{self.files.arm}: {count} images from {settings.root}, decoded batch by batch"
            )
        sources, decoder = open_sources(
            settings.root, splits, settings.image_size, self.resident, runtime, settings.cache_dir
        )
        if self.resident and self.main:
            seconds = time.perf_counter() - started
            note(
                f"decoded {count} images into {runtime.device.type} memory in {seconds:.1f} s "
                f"({count / seconds:.0f} img/s): {decoder}"
            )
        self.decoder = decoder  # what made the pixels, for status.json (a PNG among JPEGs: both decoders)
        per_process = settings.batch_size // runtime.process.world_size
        labels = [record.label for record in splits["train"]]
        sampler = recipe.make_sampler(settings.class_balance, settings.seed, labels, runtime.process)
        evaluation: dict[str, Batches] = {
            name: eval_batches(sources[name], per_process, runtime)
            for name in ("val", "test")
            if name in sources
        }
        batchnorm = None
        if settings.precise_bn_images:
            # The same training images every epoch, chosen by the seed alone.
            size = len(splits["train"])
            order = torch.randperm(size, generator=torch.Generator().manual_seed(torch_seed(settings.seed)))
            subset = ShardSampler(size, runtime.process, order[: settings.precise_bn_images].tolist())
            batchnorm = batches(sources["train"], subset, per_process, runtime)
        return Feed(
            sampler,
            batches(sources["train"], sampler, per_process, runtime),
            evaluation,
            batchnorm,
            recipe.make_augment(settings.augment, settings.seed, runtime.process),
        )

    def make_model(self, feed: Feed) -> Model:
        """The network (random, or the manifest's weights), its head and optimizer, wrapped (and, if it
        pays, compiled) for training, and the learning rate per batch of ``feed``'s training batches."""
        settings, runtime = self.settings, self.runtime
        labels = [record.label for record in self.splits["train"]]
        head = recipe.make_head(settings.loss, settings.class_balance, labels)
        torch.manual_seed(torch_seed(settings.seed))  # model init (scratch) and the new head (pretrained)
        net = build_model(
            settings.model,
            num_classes=head.num_outputs,
            weights=weights_argument(self.manifest),
            zero_init_residual=settings.zero_init_residual,
        )
        spec = GraderSpec(
            model=settings.model,
            image_size=settings.image_size,
            normalize=settings.normalize,
            preprocess=settings.preprocess,
            loss=settings.loss,
            thresholds=list(head.thresholds) if head.thresholds else None,
        )
        grader = runtime.place(Grader(net, spec))
        optimizer = make_optimizer(
            grader,
            runtime,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            nesterov=settings.nesterov,
        )
        eager: nn.Module = grader
        if runtime.process.distributed:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            eager = DistributedDataParallel(eager, device_ids=device_ids)
        images = settings.epochs * len(labels)
        net_trained = compiled(eager) if compile_wanted(settings.compile, runtime, images) else eager
        steps = len(feed.train)  # per epoch, on every process
        scheduler = make_scheduler(
            optimizer, settings.schedule, settings.warmup_epochs * steps, settings.epochs * steps
        )
        return Model(grader, head, optimizer, scheduler, net_trained, eager)

    def resume(self, model: Model) -> None:
        """Continue from the furthest checkpoint of this run's settings, code and data (else say why not).

        Only rank 0 reads the store and sends what it resumes from to the others: every
        process then starts at the same epoch from the same state, and across nodes only
        rank 0's node needs the checkpoints on disk.
        """
        found = self.store.resume(self.settings.epochs, self.inputs, self.main) if self.main else None
        state = from_main(found, self.runtime.process)
        if state is None:
            return
        model.grader.net.load_state_dict(state.model)
        model.optimizer.load_state_dict(state.optimizer)
        model.scheduler.load_state_dict(state.scheduler)
        self.history = state.history
        torch.set_rng_state(state.rng["torch"])

    def run_epoch(self, model: Model, feed: Feed, epoch: int) -> tuple[dict[str, float], Speed]:
        """Train one epoch, then evaluate: the history row, and how fast it went.

        Raises:
            loops.OutOfMemory: naming the settings to lower.
            RetinopathyError: the loss became NaN or infinite.
        """
        settings, arm = self.settings, self.files.arm
        feed.sampler.set_epoch(epoch)
        augment = None
        if (transform := feed.augment) is not None:

            def augment(images: torch.Tensor, step: int) -> torch.Tensor:
                return transform(images, epoch, step)

        kept = (
            f"the last good checkpoint {self.store.last} (epoch {len(self.history)}) is kept"
            if self.history
            else "no epoch had finished"
        )
        lower = (
            f"train.batch_size (now {settings.batch_size}) or data.image_size "
            f"(now {settings.image_size}) in params.yaml; {kept}"
        )
        with loops.memory_guard(f"training {arm}, epoch {epoch}", lower):
            started = time.perf_counter()
            try:
                fit = loops.train_epoch(
                    loops.Learner(
                        model.net, model.optimizer, model.head, scheduler=model.scheduler, eager=model.eager
                    ),
                    feed.train,
                    self.runtime,
                    f"{arm} epoch {epoch}/{settings.epochs} training",
                    augment=augment,
                )
            except loops.NonFiniteLoss as where:
                raise RetinopathyError(
                    f"training {arm}: the loss became NaN or infinite in epoch {epoch} "
                    f"({where}); lower train.lr (now {settings.lr}) in params.yaml. The last good "
                    f"checkpoint {self.files.last} (epoch {len(self.history)}) is kept"
                ) from None
            rate = fit.count / (time.perf_counter() - started)  # train_epoch ends by reading its totals
            if feed.batchnorm is not None:
                loops.recalibrate_batchnorm(model.grader, feed.batchnorm, self.runtime)
            started = time.perf_counter()
            row: dict[str, float] = {
                "epoch": epoch,
                **recipe.train_row(fit),
                **recipe.evaluate_splits(
                    model.eager, feed.evaluation, self.runtime, model.head, settings.tune_thresholds
                ),
            }
        # This process's images: every evaluation sampler is a ShardSampler (eval_batches): it has a length.
        shard = sum(len(cast(Sized, split.sampler)) for split in feed.evaluation.values())
        seconds = time.perf_counter() - started  # evaluate_splits ends by reading its totals: synced
        return row, Speed(rate, shard * self.runtime.process.world_size / seconds, fit.first_batch)

    def last_checkpoint(self, model: Model, epoch: int) -> checkpoint.LastCheckpoint:
        """The ``last.pt`` after ``epoch``: everything to resume from it."""
        head = model.head
        thresholds = list(head.thresholds) if head.thresholds is not None else None
        return checkpoint.LastCheckpoint(
            model=model.grader.net.state_dict(),
            # The grader's spec as it grades now (with this epoch's thresholds).
            spec=dataclasses.replace(model.grader.spec, thresholds=thresholds).to_dict(),
            optimizer=model.optimizer.state_dict(),
            scheduler=model.scheduler.state_dict(),
            epoch=epoch,
            history=self.history,
            rng={"torch": torch.get_rng_state()},
            fingerprint=self.fingerprint,
            fingerprint_inputs=self.inputs,
            config=self.settings.config,
        )

    def watch(self, path: Path, epochs_done: int) -> None:
        """Stop when another command has changed ``path`` under the run (all processes together).

        A second `dvc exp run -S key=value` writes params.yaml before it fails on DVC's lock;
        the running experiment would go on with settings it did not start with, and DVC
        would record them as its own.

        Raises:
            RetinopathyError: what changed, that the last good checkpoint is kept, and what to do.
        """
        try:
            now = load_params(path).to_dict()
        except RetinopathyError as error:
            changes = [f"it no longer reads ({error})"]
        except OSError as error:
            changes = [f"it no longer reads ({error.strerror})"]
        else:
            changes = checkpoint.describe_difference(
                checkpoint.training_params(self.settings.config, WATCHED),
                checkpoint.training_params(now, WATCHED),
            )
        flag = torch.tensor([float(bool(changes))], device=self.runtime.device)
        if not sum_over_processes(flag, self.runtime.process).item():
            return
        kept = (
            f"the checkpoint of epoch {epochs_done} is kept in {self.store.folder} and resumes when "
            "the settings are back"
            if epochs_done
            else "no epoch had finished"
        )
        what = "; ".join(changes) or "on another process"
        raise RetinopathyError(
            f"{path}: changed while training the {self.files.arm} arm ({what}), "
            "so this run would go on, and be recorded, with settings it did not start with; stopped after "
            f"epoch {epochs_done}, {kept}. Another command (a second `dvc exp run -S ...`?) wrote it: "
            "run one experiment at a time, and queue more with `dvc exp run --queue -S key=value`, then "
            "`dvc exp run --run-all`"
        )

    def finish(self) -> records.TrainingStatus:
        """The run's record; on the main process, written as ``status.json`` after the checkpoints."""
        settings = self.settings
        status = records.TrainingStatus(
            model=settings.model,
            init=self.files.arm,
            epochs=settings.epochs,
            best_epoch=checkpoint.selected_epoch(self.history, self.column),  # first among ties, as best.pt
            selection="validation" if self.with_val else "test",
            select_by=settings.select_by,
            decoder=self.decoder,
            resident=self.resident,  # evaluate decodes the test split the same way
            weights=self.manifest.description,
            fingerprint=self.fingerprint,
            history=self.history,  # evaluate reads it here, not from the much larger last.pt
        )
        if self.main:
            self.store.finish(status)
        return status
