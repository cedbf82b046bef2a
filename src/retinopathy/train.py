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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from retinopathy import checkpoint, engine
from retinopathy.cache import DecodedCache
from retinopathy.config import ARMS, Params, load_params
from retinopathy.data import NUM_CLASSES, RetinopathyDataset
from retinopathy.errors import RetinopathyError
from retinopathy.files import sha256_of, write_csv_atomic, write_json_atomic
from retinopathy.prepare import read_index
from retinopathy.weights import build_model, manifest_path, read_manifest

HISTORY_FIELDS = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy"]
VAL_FIELDS = ["val_loss", "val_accuracy"]


@dataclass(frozen=True)
class Paths:
    """Where one arm's inputs and outputs live (all relative to the project root by default)."""

    init: str
    prepared: Path = Path("data/prepared")
    manifests: Path = Path("models/init")
    models: Path = Path("models")
    history: Path = Path("metrics/history")

    @property
    def model_dir(self) -> Path:
        return self.models / self.init

    @property
    def last(self) -> Path:
        return self.model_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.model_dir / "best.pt"

    @property
    def status(self) -> Path:
        return self.model_dir / "status.json"

    @property
    def history_csv(self) -> Path:
        return self.history / f"{self.init}.csv"


def write_history(rows: list[dict[str, float]], path: Path, with_val: bool) -> None:
    """Write the per-epoch history CSV atomically (header only when there are no rows)."""
    fields = HISTORY_FIELDS + (VAL_FIELDS if with_val else [])
    write_csv_atomic(path, fields,
                     ([row[k] if k == "epoch" else f"{row[k]:.6f}" for k in fields] for row in rows))


def selection_key(with_val: bool) -> str:
    """The column that picks the best epoch: validation accuracy if held out, else test (the lab's rule)."""
    return "val_accuracy" if with_val else "test_accuracy"


def skip(paths: Paths, params: Params, manifest: dict[str, Any]) -> None:
    """Record that the pretrained arm cannot be trained; keep any earlier checkpoints."""
    status = {"status": "skipped", "model": params.model, "init": paths.init,
              "reason": manifest["reason"], "fix": manifest["fix"]}
    write_json_atomic(paths.status, status)
    write_history([], paths.history_csv, with_val=params.data.val_fraction > 0)
    print(f"warning: {paths.init} arm skipped: {manifest['reason']}\n  fix: {manifest['fix']}")


def resume_state(paths: Paths, inputs: dict[str, Any], fingerprint: str,
                 epochs: int) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None (saying why) to start afresh.

    Args:
        paths: The arm's files; ``paths.last`` is the candidate.
        inputs: This run's :func:`checkpoint.fingerprint_inputs`, to say what changed.
        fingerprint: Their :func:`checkpoint.fingerprint`.
        epochs: The epochs this run trains in all.
    """
    if not paths.last.exists():
        return None
    state = checkpoint.load(paths.last)
    if state.get("fingerprint") != fingerprint:
        changes = checkpoint.describe_difference(state.get("fingerprint_inputs", {}), inputs)
        print(f"{paths.last}: made with other settings, not resuming from it "
              f"({'; '.join(changes) or 'unknown difference'}); training from the start")
        return None
    if state["epoch"] > epochs:
        print(f"{paths.last}: has {state['epoch']} epochs, more than train.epochs={epochs}; "
              "training from the start")
        return None
    print(f"{paths.last}: resuming after epoch {state['epoch']} of {epochs}")
    return state


def train_arm(params: Params, paths: Paths) -> dict[str, Any]:
    """Train (or resume, or skip) one arm; returns the status written to ``status.json``."""
    process, device = engine.start_process(params.train.device)
    try:
        return _train_arm(params, paths, process, device)
    finally:
        engine.end_process(process)


def _train_arm(params: Params, paths: Paths, process: engine.Process,
               device: torch.device) -> dict[str, Any]:
    manifest = read_manifest(paths.init, paths.manifests)
    if manifest["model"] != params.model:
        raise RetinopathyError(
            f"{manifest_path(paths.init, paths.manifests)}: written for {manifest['model']}, "
            f"but params.yaml has model {params.model}; run `dvc repro` (or `retinopathy weights`)"
        )
    if not manifest["available"]:
        if process.is_main:
            skip(paths, params, manifest)
        return {"status": "skipped"}

    train_cfg = params.train
    if train_cfg.batch_size % process.world_size:
        raise RetinopathyError(
            f"params.yaml: train.batch_size {train_cfg.batch_size} is the global batch and must "
            f"divide by the {process.world_size} processes; change it or --nproc_per_node"
        )
    epochs = train_cfg.epochs_for(params.model)
    index = paths.prepared / "index.csv"
    splits = read_index(index)
    with_val = bool(splits["val"])
    key = selection_key(with_val)
    config = params.to_dict()
    inputs = checkpoint.fingerprint_inputs(config, paths.init, manifest.get("sha256"),
                                           sha256_of(index), process.world_size)
    fingerprint = checkpoint.fingerprint(inputs)

    fast = engine.fast_path(train_cfg, device, params.data.num_workers)
    engine.configure_backends(device)
    torch.manual_seed(train_cfg.seed)  # model init (scratch) and the new fc (pretrained)
    weights = None if paths.init == "scratch" else _weights_source(manifest)
    model = engine.place_model(build_model(params.model, num_classes=NUM_CLASSES, weights=weights),
                               device, fast)
    optimizer = engine.make_optimizer(model, train_cfg, device)

    state = resume_state(paths, inputs, fingerprint, epochs)
    history: list[dict[str, float]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = state["history"]
        torch.set_rng_state(state["rng"]["torch"])
    # Otherwise an older best.pt stays until this run's first epoch replaces it
    # (evaluate checks that best.pt and status.json share a fingerprint).

    net: nn.Module = model
    if process.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if fast.compile:
        net = torch.compile(net)

    datasets = {name: open_dataset(params, name, records) for name, records in splits.items() if records}
    per_process = train_cfg.batch_size // process.world_size
    sampler = engine.EpochShuffleSampler(len(datasets["train"]), train_cfg.seed, process)
    train_batches = engine.loader(datasets["train"], per_process, sampler, fast)
    eval_batches = {
        name: engine.eval_loader(datasets[name], per_process, process, fast)
        for name in ("val", "test") if name in datasets
    }
    transform = engine.input_transform(train_cfg.normalize, fast, device)
    bn_batches = None
    if train_cfg.precise_bn_images:
        # The same training images every epoch, chosen by the seed alone.
        generator = torch.Generator().manual_seed(train_cfg.seed)
        order = torch.randperm(len(datasets["train"]), generator=generator)
        subset = order[: train_cfg.precise_bn_images].tolist()
        bn_batches = engine.loader(datasets["train"], per_process,
                                   engine.ShardSampler(len(datasets["train"]), process, subset), fast)

    best = max((row[key] for row in history), default=-1.0)
    for epoch in range(len(history) + 1, epochs + 1):
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        try:
            fit = engine.train_epoch(net, train_batches, transform, optimizer, device, fast,
                                     process, f"{paths.init} epoch {epoch}/{epochs}")
        except engine.NonFiniteLoss as where:
            raise RetinopathyError(
                f"training {paths.init}: the loss became NaN or infinite in epoch {epoch} "
                f"({where}); lower train.lr (now {train_cfg.lr}) in params.yaml. The last good "
                f"checkpoint {paths.last} (epoch {len(history)}) is kept"
            ) from None
        train_seconds = time.perf_counter() - started  # train_epoch ends by reading its totals: synced
        if bn_batches is not None:
            engine.recalibrate_batchnorm(model, bn_batches, transform, device, fast, process)
        row: dict[str, float] = {"epoch": epoch, "train_loss": fit.loss, "train_accuracy": fit.accuracy}
        for name, batches in eval_batches.items():
            result = engine.evaluate_epoch(net, batches, transform, device, fast, process, name)
            row[f"{name}_loss"], row[f"{name}_accuracy"] = result.loss, result.accuracy
        history.append(row)
        if process.is_main:
            improved = row[key] > best
            if improved:
                best = row[key]
                checkpoint.save_atomic({"model": model.state_dict(), "epoch": epoch,
                                        key: row[key], "fingerprint": fingerprint},
                                       paths.best)
            checkpoint.save_atomic({
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": history,
                "rng": {"torch": torch.get_rng_state()},
                "fingerprint": fingerprint,
                "fingerprint_inputs": inputs,
                "config": config,
            }, paths.last)
            write_history(history, paths.history_csv, with_val)
            mark = " *" if improved else ""
            extra = f" val {row['val_accuracy']:.2%}" if with_val else ""
            print(f"{paths.init} epoch {epoch}/{epochs}: train {fit.accuracy:.2%} (loss "
                  f"{fit.loss:.4f}) test {row['test_accuracy']:.2%}{extra}{mark}  "
                  f"[{fit.count / train_seconds:.1f} img/s training, "
                  f"{time.perf_counter() - started:.1f} s for the epoch]", flush=True)

    status: dict[str, Any] = {"status": "trained", "model": params.model, "init": paths.init}
    if process.is_main:
        write_history(history, paths.history_csv, with_val)  # also when nothing was left to train
        best_row = max(history, key=lambda r: r[key])  # first epoch among ties, as best.pt
        status.update({
            "epochs": epochs,
            "best_epoch": int(best_row["epoch"]),
            "selection": "validation" if with_val else "test",
            "weights": manifest["description"],
            "fingerprint": fingerprint,
            "history": history,  # evaluate reads it here, not from the much larger last.pt
        })
        write_json_atomic(paths.status, status)
    return status


def open_dataset(params: Params, split: str, records: list) -> Dataset:
    """The uint8 dataset of ``records``, behind the decoded-pixel cache when ``data.cache_dir`` is set."""
    dataset = RetinopathyDataset(params.data.root, split, params.data.image_size, records=records,
                                 dtype=torch.uint8)
    return DecodedCache(dataset, params.data.cache_dir) if params.data.cache_dir else dataset


def _weights_source(manifest: dict[str, Any]) -> str:
    return "imagenet" if manifest["source"] == "imagenet" else manifest["file"]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy train --init scratch|pretrained [--params params.yaml]``."""
    parser = argparse.ArgumentParser(prog="retinopathy train", description=__doc__.split("\n")[0])
    parser.add_argument("--init", choices=ARMS, required=True,
                        help="scratch: random initialisation; pretrained: train.weights")
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    train_arm(params, Paths(args.init))
    return 0
