"""The `train` stage: train one arm (scratch or pretrained), resuming where it stopped.

``retinopathy train --init scratch|pretrained`` builds the model (random init,
or the weights its manifest names), then for each epoch trains over the
training split and evaluates on the whole test split (and the validation split
when there is one). After every epoch it writes, in this order:

1. ``models/<arm>/best.pt`` when the epoch is the best so far;
2. ``models/<arm>/last.pt``: model, optimizer, epoch, history, RNG state and
   the config fingerprint;
3. ``metrics/history/<arm>.csv``: the per-epoch history, for `dvc plots`.

All three are atomic, and the order makes a kill at any moment safe: a resumed
run repeats at most the unfinished epoch and, because batches depend only on
(seed, epoch), produces the same history as an uninterrupted run. The history
CSV is rewritten from the checkpoint each epoch rather than appended by a
logger such as DVCLive, so it can never hold an epoch the checkpoint lacks.

Runs under ``torchrun --nproc_per_node=N`` as DistributedDataParallel: every
process trains on its share of each batch, accuracies are summed over all
processes, and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from retinopathy import checkpoint
from retinopathy.config import Params, load_params
from retinopathy.contract import ARMS, HISTORY_COLUMNS, NUM_GRADES, VAL_COLUMNS, ArmFiles, Layout
from retinopathy.data.dataset import open_dataset
from retinopathy.data.index import read_index
from retinopathy.engine import loops
from retinopathy.engine.batches import eval_loader, loader
from retinopathy.engine.distributed import EpochShuffleSampler, ShardSampler
from retinopathy.engine.optim import make_optimizer
from retinopathy.engine.runtime import Runtime, start, stop
from retinopathy.errors import RetinopathyError, note, warn
from retinopathy.files import (
    check_writable,
    exclusive_lock,
    remove_stale_temporaries,
    sha256_of,
    write_csv_atomic,
    write_json_atomic,
)
from retinopathy.models.build import build_model
from retinopathy.models.grader import Grader, GraderSpec
from retinopathy.models.manifest import read_manifest, verify_weights, weights_argument


def write_history(rows: list[dict[str, float]], path: Path, with_val: bool) -> None:
    """Write the per-epoch history CSV atomically (header only when there are no rows)."""
    fields = list(HISTORY_COLUMNS) + (list(VAL_COLUMNS) if with_val else [])
    write_csv_atomic(path, fields,
                     ([row[k] if k == "epoch" else f"{row[k]:.6f}" for k in fields] for row in rows))


def selection_key(with_val: bool) -> str:
    """The column that picks the best epoch: validation accuracy if held out, else test (the lab's rule)."""
    return "val_accuracy" if with_val else "test_accuracy"


@dataclass
class Run:
    """One arm's training run: what :func:`build` makes and every later step reads."""

    files: ArmFiles
    params: Params
    runtime: Runtime
    manifest: dict[str, Any]
    epochs: int
    with_val: bool
    inputs: dict[str, Any]  # what the fingerprint hashes, to say what changed
    fingerprint: str
    grader: Grader  # the network itself: saved, BatchNorm-recalibrated
    optimizer: torch.optim.Optimizer
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return selection_key(self.with_val)

    @property
    def best(self) -> float:
        return max((row[self.key] for row in self.history), default=-1.0)


@dataclass(frozen=True)
class Feed:
    """What one epoch runs: the network as trained and the batches of every split."""

    net: nn.Module  # the grader, wrapped in DDP and/or compiled when asked
    sampler: EpochShuffleSampler  # told the epoch, so the shuffle depends on (seed, epoch) only
    train: DataLoader
    evaluation: dict[str, DataLoader]  # val (when held out) and test
    batchnorm: DataLoader | None  # train.precise_bn_images of the training images


def skip(files: ArmFiles, params: Params, manifest: dict[str, Any]) -> None:
    """Record that the pretrained arm cannot be trained; keep any earlier checkpoints."""
    status = {"status": "skipped", "model": params.model, "init": files.arm,
              "reason": manifest["reason"], "fix": manifest["fix"]}
    write_json_atomic(files.status, status)
    write_history([], files.history, with_val=params.data.val_fraction > 0)
    warn(f"{files.arm} arm skipped: {manifest['reason']}\n  fix: {manifest['fix']}")


def build(params: Params, files: ArmFiles, layout: Layout, manifest: dict[str, Any],
          runtime: Runtime) -> Run:
    """The network (random, or the manifest's weights), its optimizer and the run's fingerprint."""
    train = params.train
    if train.batch_size % runtime.process.world_size:
        raise RetinopathyError(
            f"params.yaml: train.batch_size {train.batch_size} is the global batch and must "
            f"divide by the {runtime.process.world_size} processes; change it or --nproc_per_node"
        )
    with_val = bool(read_index(layout.index)["val"])
    inputs = checkpoint.fingerprint_inputs(params.to_dict(), files.arm, manifest.get("sha256"),
                                           sha256_of(layout.index), runtime.process.world_size)
    runtime.configure_backends()
    torch.manual_seed(train.seed)  # model init (scratch) and the new fc (pretrained)
    net = build_model(params.model, num_classes=NUM_GRADES, weights=weights_argument(manifest))
    spec = GraderSpec(model=params.model, image_size=params.data.image_size, normalize=train.normalize)
    grader = runtime.place(Grader(net, spec))
    optimizer = make_optimizer(grader, runtime, lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    return Run(files, params, runtime, manifest, train.epochs_for(params.model), with_val, inputs,
               checkpoint.fingerprint(inputs), grader, optimizer)


def resume(run: Run) -> None:
    """Continue from ``last.pt`` when it was made by this run's settings, code and data (else say why)."""
    last = run.files.last
    if not last.exists():
        return
    say = note if run.runtime.process.is_main else (lambda _: None)  # once, not once per process
    state = checkpoint.load(last, "last", fix=(
        f"restore it with `dvc checkout {run.files.model_dir}` (DVC keeps every finished run's "
        f"checkpoints), or move it away (`mv {last} {last}.damaged`) to train the arm from the start"))
    if state.get("fingerprint") != run.fingerprint:
        changes = checkpoint.describe_difference(state.get("fingerprint_inputs", {}), run.inputs)
        say(f"{last}: made with other settings, not resuming from it "
            f"({'; '.join(changes) or 'unknown difference'}); training from the start")
        return
    if state["epoch"] > run.epochs:
        say(f"{last}: has {state['epoch']} epochs, more than train.epochs={run.epochs}; "
            "training from the start")
        return
    say(f"{last}: resuming after epoch {state['epoch']} of {run.epochs}")
    run.grader.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.history = state["history"]
    torch.set_rng_state(state["rng"]["torch"])
    # Otherwise an older best.pt stays until this run's first epoch replaces it
    # (evaluate checks that best.pt and status.json share a fingerprint).


def feed(run: Run, layout: Layout) -> Feed:
    """Wrap the network for DDP and compilation, and open the loaders of every split."""
    runtime, params = run.runtime, run.params
    net: nn.Module = run.grader
    if runtime.process.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = DistributedDataParallel(net, device_ids=device_ids)
    if runtime.compile:
        net = torch.compile(net)
    data = params.data
    datasets = {name: open_dataset(data.root, name, records, data.image_size, data.cache_dir)
                for name, records in read_index(layout.index).items() if records}
    per_process = params.train.batch_size // runtime.process.world_size
    sampler = EpochShuffleSampler(len(datasets["train"]), params.train.seed, runtime.process)
    evaluation = {name: eval_loader(datasets[name], per_process, runtime)
                  for name in ("val", "test") if name in datasets}
    batchnorm = None
    if params.train.precise_bn_images:
        # The same training images every epoch, chosen by the seed alone.
        generator = torch.Generator().manual_seed(params.train.seed)
        order = torch.randperm(len(datasets["train"]), generator=generator)
        subset = order[: params.train.precise_bn_images].tolist()
        batchnorm = loader(datasets["train"], per_process,
                           ShardSampler(len(datasets["train"]), runtime.process, subset), runtime)
    return Feed(net, sampler, loader(datasets["train"], per_process, sampler, runtime), evaluation,
                batchnorm)


def one_epoch(run: Run, batches: Feed, epoch: int) -> tuple[dict[str, float], float]:
    """Train one epoch, then evaluate; returns the history row and the training rate (img/s)."""
    batches.sampler.set_epoch(epoch)
    started = time.perf_counter()
    try:
        fit = loops.train_epoch(batches.net, batches.train, run.optimizer, run.runtime,
                                f"{run.files.arm} epoch {epoch}/{run.epochs}")
    except loops.NonFiniteLoss as where:
        raise RetinopathyError(
            f"training {run.files.arm}: the loss became NaN or infinite in epoch {epoch} "
            f"({where}); lower train.lr (now {run.params.train.lr}) in params.yaml. The last good "
            f"checkpoint {run.files.last} (epoch {len(run.history)}) is kept"
        ) from None
    rate = fit.count / (time.perf_counter() - started)  # train_epoch ends by reading its totals: synced
    if batches.batchnorm is not None:
        loops.recalibrate_batchnorm(run.grader, batches.batchnorm, run.runtime)
    row: dict[str, float] = {"epoch": epoch, "train_loss": fit.loss, "train_accuracy": fit.accuracy}
    for name, split in batches.evaluation.items():
        result = loops.evaluate_epoch(batches.net, split, run.runtime, name)
        row[f"{name}_loss"], row[f"{name}_accuracy"] = result.loss, result.accuracy
    return row, rate


def save(run: Run, row: dict[str, float]) -> bool:
    """Append ``row`` and write best.pt (if it is the best epoch), last.pt and the history, in that order.

    Returns:
        Whether the epoch is the best so far.
    """
    improved = row[run.key] > run.best
    run.history.append(row)
    if not run.runtime.process.is_main:
        return improved
    model, spec = run.grader.net.state_dict(), run.grader.spec.to_dict()
    if improved:
        checkpoint.save_atomic({"model": model, "spec": spec, "epoch": row["epoch"],
                                run.key: row[run.key], "fingerprint": run.fingerprint}, run.files.best)
    checkpoint.save_atomic({
        "model": model,
        "spec": spec,
        "optimizer": run.optimizer.state_dict(),
        "epoch": row["epoch"],
        "history": run.history,
        "rng": {"torch": torch.get_rng_state()},
        "fingerprint": run.fingerprint,
        "fingerprint_inputs": run.inputs,
        "config": run.params.to_dict(),
    }, run.files.last)
    write_history(run.history, run.files.history, run.with_val)
    return improved


def finish(run: Run) -> dict[str, Any]:
    """Write ``status.json``: the best epoch and the history, for evaluate."""
    status: dict[str, Any] = {"status": "trained", "model": run.params.model, "init": run.files.arm}
    if run.runtime.process.is_main:
        write_history(run.history, run.files.history, run.with_val)  # also when nothing was left to train
        best_row = max(run.history, key=lambda r: r[run.key])  # first epoch among ties, as best.pt
        status.update({
            "epochs": run.epochs,
            "best_epoch": int(best_row["epoch"]),
            "selection": "validation" if run.with_val else "test",
            "weights": run.manifest["description"],
            "fingerprint": run.fingerprint,
            "history": run.history,  # evaluate reads it here, not from the much larger last.pt
        })
        write_json_atomic(run.files.status, status)
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


def train_arm(params: Params, arm: str, layout: Layout | None = None) -> dict[str, Any]:
    """Train (or resume, or skip) one arm; returns the status written to ``status.json``."""
    layout = layout or Layout()
    files = layout.arm(arm)
    train = params.train
    runtime = start(train.device, precision=train.precision, channels_last=train.channels_last,
                    compile=train.compile, num_workers=params.data.num_workers)
    try:
        manifest = read_manifest(layout.manifest(arm))
        if manifest["model"] != params.model:
            raise RetinopathyError(
                f"{layout.manifest(arm)}: written for {manifest['model']}, but params.yaml has "
                f"model {params.model}; run `dvc repro` (or `retinopathy weights`)"
            )
        with guard(files, runtime):
            if not manifest["available"]:
                if runtime.process.is_main:
                    skip(files, params, manifest)
                return {"status": "skipped"}
            verify_weights(manifest, layout.manifest(arm))
            run = build(params, files, layout, manifest, runtime)
            resume(run)
            batches = feed(run, layout)
            for epoch in range(len(run.history) + 1, run.epochs + 1):
                started = time.perf_counter()
                row, rate = one_epoch(run, batches, epoch)
                improved = save(run, row)
                if runtime.process.is_main:
                    extra = f" val {row['val_accuracy']:.2%}" if run.with_val else ""
                    print(f"{arm} epoch {epoch}/{run.epochs}: train {row['train_accuracy']:.2%} (loss "
                          f"{row['train_loss']:.4f}) test {row['test_accuracy']:.2%}{extra}"
                          f"{' *' if improved else ''}  [{rate:.1f} img/s training, "
                          f"{time.perf_counter() - started:.1f} s for the epoch]", flush=True)
            return finish(run)
    finally:
        stop(runtime)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy train --init scratch|pretrained [--params params.yaml]``."""
    parser = argparse.ArgumentParser(prog="retinopathy train", description=__doc__.split("\n")[0])
    parser.add_argument("--init", choices=ARMS, required=True,
                        help="scratch: random initialisation; pretrained: train.weights")
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    train_arm(load_params(args.params), args.init)
    return 0
