"""`retinopathy bench`: input-pipeline and training throughput, ours against references.

Three comparisons, each measured in one process on the same generated 512x512
JPEGs (synthetic fundus photographs, Pillow quality 95, written to a temporary
folder and removed afterwards):

(a) input: our uint8 loader (libjpeg-turbo with DCT scaling, through
    ``engine.loader``) against the lab's reference loader (``PIL.Image.open`` ->
    ``np.asarray(img) / 255`` in float64 -> transpose -> ``torch.from_numpy``,
    DataLoader batch 4, no workers). Loading only, no model.
(b) models: a training step (forward, backward, SGD) of our ResNet18/ResNet50
    against torchvision's, with the same weights, the same batches and the
    device's fast-path switches on both sides.
(c) fast path: the same model with ``engine.fast_path``'s switches (bf16
    autocast, channels_last, cuDNN autotuning, fused/foreach SGD) against a plain
    fp32 loop.

Machine noise (other processes on a shared CPU) is the enemy of a benchmark,
so the sides of a comparison are never run one after the other: after a
warm-up, they alternate in several short rounds, the starting side rotating
each round, and a rate is the images over the seconds of all its rounds. The
spread of the per-round ratios is printed next to each ratio; a wide spread
means the machine was busy. The run also reports how much CPU other processes
took meanwhile: on a shared CPU, torch's intra-op threads (one per core by
default) stall whenever another process holds a core, so use ``--threads 1``
there. On CUDA the timers are read only after ``torch.cuda.synchronize()``.

Usage: ``retinopathy bench`` (about 3-4 minutes on a 2-core CPU);
``retinopathy bench --device cuda --size 512 --batch 128`` on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from retinopathy import engine
from retinopathy.cache import DecodedCache
from retinopathy.config import MODELS, PRECISIONS, SWITCHES, TrainParams
from retinopathy.data import NUM_CLASSES, Record, RetinopathyDataset, image_path
from retinopathy.demo import render_fundus
from retinopathy.resnet import ARCHITECTURES

SECTIONS = ("input", "models", "fastpath")
SOURCE_SIZE = 512  # the course's images are 512x512
JPEG_QUALITY = 95
INPUT_BATCH = 4  # the lab's batch size
INPUT_TARGET = 3.0  # ours >= 3x the reference loader at 512 px
MODEL_TARGET = 0.95  # ours within 5% of torchvision (faster is fine)
SPLIT = "bench"  # records are passed in, so no CSVs are read for this split
REFERENCE_LOADER = ("the lab's loader: PIL.Image.open -> np.asarray(img) / 255 (float64) -> "
                    "transpose(2, 0, 1) -> torch.from_numpy; DataLoader, no workers")
OUR_LOADER = ("RetinopathyDataset(dtype=torch.uint8) (libjpeg-turbo via simplejpeg) through "
              "engine.loader")


# ---------------------------------------------------------------- results


@dataclass
class Measurement:
    """One side of a comparison: images processed and seconds taken, per round."""

    label: str
    images: list[int]
    seconds: list[float]

    @property
    def rate(self) -> float:
        """Images per second over all rounds."""
        return sum(self.images) / sum(self.seconds)

    @property
    def round_rates(self) -> list[float]:
        return [n / s for n, s in zip(self.images, self.seconds, strict=True)]

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "images_per_s": self.rate, "images": sum(self.images),
                "seconds": sum(self.seconds), "round_images_per_s": self.round_rates}


@dataclass
class Comparison:
    """A baseline and a candidate measured alternately; ``ratio`` = candidate / baseline."""

    section: str
    name: str
    baseline: Measurement
    candidate: Measurement
    target: float | None = None  # the smallest acceptable ratio, if there is a target
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.candidate.rate / self.baseline.rate

    @property
    def round_ratios(self) -> list[float]:
        return [c / b for c, b in zip(self.candidate.round_rates, self.baseline.round_rates,
                                      strict=True)]

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target

    def to_dict(self) -> dict[str, object]:
        return {"section": self.section, "name": self.name, "baseline": self.baseline.to_dict(),
                "candidate": self.candidate.to_dict(), "ratio": self.ratio,
                "round_ratios": self.round_ratios, "target_min_ratio": self.target,
                "met": self.met, "note": self.note}


@dataclass
class BenchResult:
    """Everything one run measured, and where."""

    machine: dict[str, object]
    settings: dict[str, object]
    comparisons: list[Comparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"machine": self.machine, "settings": self.settings,
                "comparisons": [c.to_dict() for c in self.comparisons]}


# ---------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_machine(device: torch.device) -> dict[str, object]:
    """CPU model, cores, library versions, torch threads and the CUDA device, if any."""
    import torchvision

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cuda = device.type == "cuda"
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        "load_average_start": _load_average(),
    }


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes have used, CPU seconds this process and its reaped children
    have used), from /proc/stat; None where there is no /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


def _other_load(start: tuple[float, float] | None, seconds: float) -> float | None:
    """Cores' worth of CPU that other processes used on average since ``start``."""
    end = _cpu_seconds()
    if start is None or end is None or seconds <= 0:
        return None
    return round(max((end[0] - start[0]) - (end[1] - start[1]), 0.0) / seconds, 2)


def _machine_line(machine: dict[str, object]) -> str:
    gpu = (f"CUDA {machine['cuda_device']} (CUDA {machine['cuda_version']})"
           if machine.get("cuda_device") else "no CUDA device used")
    return (f"{machine['cpu']}, {machine['logical_cores']} logical cores "
            f"({machine['usable_cores']} usable), torch {machine['torch']} "
            f"({machine['torch_threads']} thread(s)), torchvision {machine['torchvision']}, "
            f"Python {machine['python']}, {gpu}")


# ---------------------------------------------------------------- timing


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def alternate(units: dict[str, Callable[[], int]], *, seconds: float, rounds: int, warmup: int = 1,
              sync: Callable[[], None] = lambda: None) -> dict[str, Measurement]:
    """Time several workloads fairly: warm each up, then alternate them in rounds.

    Each round gives every workload about ``seconds / rounds`` (at least one
    unit); the side that goes first rotates from round to round, so a burst of
    load from another process falls on all of them alike.

    Args:
        units: Name -> a callable doing one unit of work and returning the number
            of images it processed (> 0).
        seconds: Time budget of each workload, over all rounds.
        rounds: Number of rounds (>= 1).
        warmup: Untimed units of each workload before the first round.
        sync: Called before each timer read (``torch.cuda.synchronize`` on CUDA).

    Returns:
        Name -> its :class:`Measurement` (labelled with the name).
    """
    if rounds < 1 or seconds <= 0:
        raise ValueError(f"need rounds >= 1 and seconds > 0, got {rounds} and {seconds}")
    names = list(units)
    for name in names:
        for _ in range(warmup):
            units[name]()
    sync()
    images = {name: [0] * rounds for name in names}
    elapsed = {name: [0.0] * rounds for name in names}
    budget = seconds / rounds
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            done, spent = 0, 0.0
            while done == 0 or spent < budget:
                sync()
                start = time.perf_counter()
                count = units[name]()
                sync()
                spent += time.perf_counter() - start
                if count <= 0:
                    raise ValueError(f"workload {name!r} processed no images")
                done += count
            images[name][r], elapsed[name][r] = done, spent
    return {name: Measurement(name, images[name], elapsed[name]) for name in names}


# ---------------------------------------------------------------- images


def write_bench_images(folder: str | Path, count: int, *, size: int = SOURCE_SIZE, seed: int = 0
                       ) -> list[Record]:
    """Write ``count`` synthetic fundus JPEGs (quality 95) named ``bench_NNNNN.jpeg``.

    Returns:
        Their records, grades cycling 0-4.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        record = Record(f"bench_{i:05d}", i % NUM_CLASSES)
        pixels = render_fundus(record.label, np.random.default_rng([seed, i]), size)
        Image.fromarray(pixels, "RGB").save(image_path(folder, record.image), "JPEG",
                                            quality=JPEG_QUALITY)
        records.append(record)
    return records


class ReferenceDataset(Dataset):
    """The lab's loader: PIL -> ``np.asarray(img) / 255`` (float64) -> CHW tensor.

    ``size`` resizes with Pillow (bilinear) before the scaling, as a lab loader
    would have to for a smaller input; None keeps the stored size, as the lab did.
    """

    def __init__(self, root: str | Path, records: Sequence[Record], size: int | None = None) -> None:
        self.root, self.records, self.size = Path(root), list(records), size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        record = self.records[index]
        with Image.open(image_path(self.root, record.image)) as img:
            if self.size is not None:
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            array = np.asarray(img) / 255
        return torch.from_numpy(array.transpose(2, 0, 1)), record.label


def _epoch_indices(size: int, epoch_images: int) -> list[int]:
    """The dataset's indices, cycled to at least ``epoch_images`` (one timed pass)."""
    return [i % size for i in range(max(size, epoch_images))]


def _loader_pass(loader: DataLoader) -> Callable[[], int]:
    def run() -> int:
        count = 0
        for images, _ in loader:
            count += images.shape[0]
        return count
    return run


# ---------------------------------------------------------------- (a) input


def bench_input(root: str | Path, records: Sequence[Record], device: torch.device, *,
                source_size: int = SOURCE_SIZE, seconds: float, rounds: int,
                workers: int | str = "auto", batch: int = INPUT_BATCH, epoch_images: int = 256
                ) -> list[Comparison]:
    """Images/s of our uint8 loader against the lab's reference loader.

    Compares at ``source_size`` (no workers on either side: like for like),
    at ``source_size // 2`` (where our decoder scales in the DCT and the
    reference must resize), and, if ``workers`` resolves to more than 0, our
    loader with those workers against the same reference.

    Returns:
        The comparisons, the first being the one with the 3x target.
    """
    half = max(source_size // 2, 1)
    sync = _sync_for(device)
    train = TrainParams()
    no_workers = engine.fast_path(train, device, 0)
    with_workers = engine.fast_path(train, device, workers)
    indices = _epoch_indices(len(records), epoch_images)

    def ours(size: int, fast: engine.FastPath) -> DataLoader:
        dataset = RetinopathyDataset(root, SPLIT, size, records=records, dtype=torch.uint8)
        return engine.loader(dataset, batch, indices, fast)  # a list of indices serves as sampler

    def reference(size: int | None) -> DataLoader:
        return DataLoader(ReferenceDataset(root, records, size), batch_size=batch, sampler=indices)

    full = {"reference": reference(None), "ours": ours(source_size, no_workers)}
    if with_workers.num_workers > 0:
        full["ours_workers"] = ours(source_size, with_workers)
    timed = alternate({k: _loader_pass(v) for k, v in full.items()}, seconds=seconds,
                      rounds=rounds, sync=sync)
    del full  # shuts the worker processes down before the next measurement
    scaled = alternate({"reference": _loader_pass(reference(half)),
                        "ours": _loader_pass(ours(half, no_workers))},
                       seconds=seconds, rounds=rounds, sync=sync)

    _relabel(timed["reference"], "reference")
    _relabel(timed["ours"], "ours")
    _relabel(scaled["reference"], "reference+resize")
    _relabel(scaled["ours"], "ours, DCT-scaled")
    comparisons = [
        Comparison("input", f"{source_size} px, 0 workers", timed["reference"], timed["ours"],
                   INPUT_TARGET, "like for like: both decode in the main process"),
        Comparison("input", f"{half} px, 0 workers", scaled["reference"], scaled["ours"],
                   note=f"ours decodes at {half} px by DCT scaling; the reference decodes "
                   f"{source_size} px and resizes (Pillow, bilinear)"),
    ]
    # Epochs after the first with data.cache_dir set: the pixels are read back, not decoded.
    with tempfile.TemporaryDirectory(prefix="retinopathy-bench-cache-") as folder:
        cached = DecodedCache(RetinopathyDataset(root, SPLIT, source_size, records=records,
                                                 dtype=torch.uint8), folder)
        for index in range(len(cached)):
            cached[index]  # fill the cache: the first epoch's work
        reused = alternate({"ours": _loader_pass(ours(source_size, no_workers)),
                            "cached": _loader_pass(engine.loader(cached, batch, indices, no_workers))},
                           seconds=seconds, rounds=rounds, sync=sync)
    _relabel(reused["ours"], "ours, decoding")
    _relabel(reused["cached"], "ours, from cache")
    comparisons.append(Comparison(
        "input", f"{source_size} px, decoded cache", reused["ours"], reused["cached"],
        note="data.cache_dir: after the first epoch the uint8 pixels are read back from a "
        "memory-mapped file instead of decoded; 0 workers on both sides"))
    if "ours_workers" in timed:
        n = with_workers.num_workers
        _relabel(timed["ours_workers"], f"ours, {n} worker{'s' * (n > 1)}")
        comparisons.append(Comparison(
            "input", f"{source_size} px, ours with workers", timed["reference"],
            timed["ours_workers"], note=f"engine.loader with {n} worker process(es), "
            f"pin_memory={with_workers.pin_memory}; the reference still has none"))
    return comparisons


def _relabel(measurement: Measurement, label: str) -> None:
    measurement.label = label


# ---------------------------------------------------------------- (b), (c) training


def image_bank(root: str | Path, records: Sequence[Record], size: int, batch: int,
               device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """Decoded uint8 batches (and labels) already on ``device``, reused by every step.

    The images come from the JPEGs through our Dataset, so the model sees the
    same pixels as in training, but decoding is outside the timed steps.
    """
    dataset = RetinopathyDataset(root, SPLIT, size, records=records, dtype=torch.uint8)
    decoded = [dataset[i] for i in range(len(dataset))]
    count = math.ceil(max(len(decoded), batch) / batch) * batch  # whole batches, cycling the images
    images = torch.stack([decoded[i % len(decoded)][0] for i in range(count)]).to(device)
    labels = torch.tensor([decoded[i % len(decoded)][1] for i in range(count)], device=device)
    return [(images[i:i + batch], labels[i:i + batch]) for i in range(0, count, batch)]


@dataclass(frozen=True)
class _BackendFlags:
    """The global cuDNN/TF32 switches, set before each step of a side."""

    benchmark: bool
    matmul_tf32: bool
    cudnn_tf32: bool

    @classmethod
    def current(cls) -> _BackendFlags:
        return cls(torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                   torch.backends.cudnn.allow_tf32)

    def apply(self) -> None:
        if _BackendFlags.current() != self:
            torch.backends.cudnn.benchmark = self.benchmark
            torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
            torch.backends.cudnn.allow_tf32 = self.cudnn_tf32


def _fast_flags(device: torch.device) -> _BackendFlags:
    """What ``engine.configure_backends`` sets, without leaving it set."""
    before = _BackendFlags.current()
    engine.configure_backends(device)
    fast = _BackendFlags.current()
    before.apply()
    return fast


def train_step_unit(model: nn.Module, optimizer: torch.optim.Optimizer,
                    transform: engine.InputTransform, batches: Sequence[tuple[Tensor, Tensor]],
                    device: torch.device, fast: engine.FastPath, flags: _BackendFlags
                    ) -> Callable[[], int]:
    """One training step per call, as ``engine.train_epoch`` does it, cycling ``batches``."""
    criterion = nn.CrossEntropyLoss()
    model.train()
    step = 0

    def run() -> int:
        nonlocal step
        flags.apply()
        images, labels = batches[step % len(batches)]
        step += 1
        inputs = transform(images)
        with engine.autocast(device, fast):
            logits = model(inputs)
            loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return labels.numel()
    return run


def _switches(fast: engine.FastPath, device: torch.device, optimizer: str) -> str:
    parts = ["bf16 autocast" if fast.bf16 else "fp32",
             "channels_last" if fast.channels_last else "contiguous"]
    if device.type == "cuda":
        parts.append("cudnn.benchmark+TF32")
    return ", ".join([*parts, optimizer])


def _optimizer_kind(device: torch.device) -> str:
    return "fused SGD" if device.type == "cuda" else "foreach SGD"


def bench_models(batches: Sequence[tuple[Tensor, Tensor]], device: torch.device, *,
                 models: Sequence[str] = MODELS, seconds: float, rounds: int, warmup: int = 2,
                 train: TrainParams | None = None, seed: int = 0) -> list[Comparison]:
    """Training images/s of our ResNets against torchvision's, same weights and loop.

    Both sides run with the device's fast-path switches (``train``'s, default
    ``auto``), as training would.
    """
    import torchvision.models

    train = train or TrainParams()
    fast = engine.fast_path(train, device, 0)
    flags = _fast_flags(device)
    transform = engine.InputTransform(train.normalize, fast.channels_last).to(device)
    comparisons = []
    for name in models:
        torch.manual_seed(seed)
        ours = ARCHITECTURES[name](num_classes=NUM_CLASSES)
        theirs = getattr(torchvision.models, name)(weights=None, num_classes=NUM_CLASSES)
        theirs.load_state_dict(ours.state_dict(), strict=True)
        units = {}
        for side, model in (("torchvision", theirs), ("ours", ours)):
            model = model.to(device)
            if fast.channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = engine.make_optimizer(model, train, device)
            units[side] = train_step_unit(model, optimizer, transform, batches, device, fast, flags)
        timed = alternate(units, seconds=seconds, rounds=rounds, warmup=warmup,
                          sync=_sync_for(device))
        _relabel(timed["torchvision"], "torchvision")
        _relabel(timed["ours"], "ours")
        images = batches[0][0]
        comparisons.append(Comparison(
            "models", f"{name}, batch {images.shape[0]}, {images.shape[-1]} px", timed["torchvision"],
            timed["ours"], MODEL_TARGET, f"torchvision.models.{name} loaded with our weights; both "
            f"{_switches(fast, device, _optimizer_kind(device))}"))
        del units, ours, theirs
    return comparisons


def bench_fastpath(batches: Sequence[tuple[Tensor, Tensor]], device: torch.device, *,
                   model_name: str = "resnet18", seconds: float, rounds: int, warmup: int = 2,
                   train: TrainParams | None = None, seed: int = 0) -> Comparison:
    """Training images/s with ``engine.fast_path``'s switches against a plain fp32 loop.

    The plain loop: fp32, contiguous tensors, ``torch.optim.SGD`` with its
    default implementation, PyTorch's default cuDNN/TF32 settings. Both start
    from the same weights and see the same batches.
    """
    train = train or TrainParams()
    fast = engine.fast_path(train, device, 0)
    plain = engine.FastPath(bf16=False, channels_last=False, compile=False, pin_memory=False,
                            num_workers=0)
    default_flags = _BackendFlags.current()
    torch.manual_seed(seed)
    base = ARCHITECTURES[model_name](num_classes=NUM_CLASSES).to(device)
    cand = copy.deepcopy(base)
    if fast.channels_last:
        cand = cand.to(memory_format=torch.channels_last)
    base_opt = torch.optim.SGD(base.parameters(), lr=train.lr, momentum=train.momentum,
                               weight_decay=train.weight_decay)
    cand_opt = engine.make_optimizer(cand, train, device)
    units = {
        "plain": train_step_unit(base, base_opt, engine.InputTransform(train.normalize, False).to(device),
                                 batches, device, plain, default_flags),
        "fast": train_step_unit(cand, cand_opt,
                                engine.InputTransform(train.normalize, fast.channels_last).to(device),
                                batches, device, fast, _fast_flags(device)),
    }
    try:
        timed = alternate(units, seconds=seconds, rounds=rounds, warmup=warmup, sync=_sync_for(device))
    finally:
        default_flags.apply()
    switches = _switches(fast, device, _optimizer_kind(device))
    _relabel(timed["plain"], "plain fp32")
    _relabel(timed["fast"], "fast path")
    same = not fast.bf16 and not fast.channels_last and device.type != "cuda"
    note = f"--precision {train.precision} --channels-last {train.channels_last} -> {switches}"
    if same:
        note += ("; here only the SGD implementation differs from the plain loop, so the ratio "
                 "mostly shows the noise (an A/A check)")
    note += "; plain: fp32, contiguous, torch.optim.SGD's default implementation"
    if device.type == "cuda":
        note += ", PyTorch's default cuDNN/TF32 flags"
    images = batches[0][0]
    return Comparison("fastpath", f"{model_name}, batch {images.shape[0]}, {images.shape[-1]} px",
                      timed["plain"], timed["fast"], note=note)


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Settings:
    """Resolved options of one run."""

    device: str = "auto"
    images: int = 64
    source_size: int = SOURCE_SIZE
    batch: int | None = None  # None: 8 on CPU, 64 on CUDA
    size: int | None = None  # None: 128 on CPU, 512 on CUDA
    seconds: float | None = None  # None: 12 on CPU, 10 on CUDA
    rounds: int = 6
    workers: int | str = "auto"
    models: tuple[str, ...] = MODELS
    fastpath_model: str = "resnet18"
    precision: str = "auto"
    channels_last: str = "auto"
    sections: tuple[str, ...] = SECTIONS
    epoch_images: int = 256  # images per timed loader pass (the JPEGs cycled)
    threads: int | None = None  # torch intra-op threads; None: torch's default

    def resolve(self, device: torch.device) -> Settings:
        """Fill the per-device defaults."""
        cuda = device.type == "cuda"
        return Settings(**{**self.__dict__,
                           "batch": self.batch or (64 if cuda else 8),
                           "size": self.size or (SOURCE_SIZE if cuda else 128),
                           "seconds": self.seconds or (10.0 if cuda else 12.0)})


def run(settings: Settings, log: Callable[[str], None] = lambda _: None) -> BenchResult:
    """Generate the JPEGs, run the chosen sections and return what they measured."""
    device = engine.resolve_device(settings.device)
    settings = settings.resolve(device)
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        return _run(settings, device, log)
    finally:
        torch.set_num_threads(threads)


def _run(settings: Settings, device: torch.device, log: Callable[[str], None]) -> BenchResult:
    assert settings.seconds is not None and settings.size is not None and settings.batch is not None
    result = BenchResult(describe_machine(device), {**settings.__dict__, "device": str(device),
                                                   "jpeg_quality": JPEG_QUALITY,
                                                   "input_batch": INPUT_BATCH})
    train = TrainParams(batch_size=settings.batch, precision=settings.precision,
                        channels_last=settings.channels_last)
    with tempfile.TemporaryDirectory(prefix="retinopathy-bench-") as folder:
        log(f"writing {settings.images} synthetic {settings.source_size}x{settings.source_size} "
            f"JPEGs (quality {JPEG_QUALITY}) to {folder}")
        records = write_bench_images(folder, settings.images, size=settings.source_size)
        if "input" in settings.sections:
            log("(a) input pipeline")
            result.comparisons += bench_input(
                folder, records, device, source_size=settings.source_size,
                seconds=settings.seconds, rounds=settings.rounds, workers=settings.workers,
                epoch_images=settings.epoch_images)
        if "models" in settings.sections or "fastpath" in settings.sections:
            batches = image_bank(folder, records, settings.size, settings.batch, device)
            if "models" in settings.sections:
                log(f"(b) models: {', '.join(settings.models)}")
                result.comparisons += bench_models(batches, device, models=settings.models,
                                                   seconds=settings.seconds, rounds=settings.rounds,
                                                   train=TrainParams(batch_size=settings.batch))
            if "fastpath" in settings.sections:
                log(f"(c) fast path: {settings.fastpath_model}")
                result.comparisons.append(bench_fastpath(
                    batches, device, model_name=settings.fastpath_model, seconds=settings.seconds,
                    rounds=settings.rounds, train=train))
    result.machine["load_average_end"] = _load_average()
    return result


# ---------------------------------------------------------------- output


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_result(result: BenchResult) -> str:
    """The machine, the settings and one table row per comparison."""
    m, s = result.machine, result.settings
    load = f"load average (1 min) {m['load_average_start']} at start"
    if m.get("load_average_end") is not None:
        load += f", {m['load_average_end']} at end"
    if s.get("wall_seconds") is not None:
        load += f"; the run took {s['wall_seconds']:g} s"
    if m.get("other_processes_cores") is not None:
        load += (f"; other processes used {m['other_processes_cores']:g} of "
                 f"{m['logical_cores']} cores on average meanwhile")
    lines = [
        f"machine: {_machine_line(m)}",
        f"         {load}",
        f"data:    {s['images']} synthetic {s['source_size']}x{s['source_size']} JPEGs "
        f"(quality {s['jpeg_quality']}); input batch {s['input_batch']}; training batch "
        f"{s['batch']} at {s['size']} px",
        f"timing:  {s['seconds']:g} s per side in {s['rounds']} alternating rounds after warm-up; "
        "images/s; ratio = candidate / baseline (per-round range)",
        "",
    ]
    titles = {"input": "(a) input pipeline, loading only",
              "models": "(b) training step, ours vs torchvision",
              "fastpath": "(c) fast path vs plain fp32 loop"}
    rows = [["comparison", "baseline", "img/s", "candidate", "img/s", "ratio", "rounds", "target"]]
    notes = []
    for section in SECTIONS:
        chosen = [c for c in result.comparisons if c.section == section]
        if not chosen:
            continue
        rows.append([titles[section], "", "", "", "", "", "", ""])
        for c in chosen:
            spread = c.round_ratios
            target = "" if c.target is None else (
                f">= {c.target:.2f}x {'met' if c.met else 'NOT met'}")
            rows.append([f"  {c.name}", c.baseline.label, f"{c.baseline.rate:.1f}",
                         c.candidate.label, f"{c.candidate.rate:.1f}", f"{c.ratio:.2f}x",
                         f"{min(spread):.2f}-{max(spread):.2f}", target])
            if c.note:
                notes.append(f"  {c.section} / {c.name}: {c.note}")
    lines += _table(rows, right={2, 4, 5, 6})
    if any(c.section == "input" for c in result.comparisons):
        notes += [f"  reference = {REFERENCE_LOADER}", f"  ours = {OUR_LOADER}"]
    if notes:
        lines += ["", "notes:", *notes]
    warning = _load_warning(m)
    if warning:
        lines += ["", f"WARNING: {warning}"]
    return "\n".join(lines)


def _load_warning(machine: dict[str, object]) -> str | None:
    """A caution when other processes competed for the CPU during the run."""
    other = machine.get("other_processes_cores")
    if not isinstance(other, float | int) or other < 0.25:
        return None
    text = (f"other processes kept {other:g} of {machine['logical_cores']} cores busy during "
            "this run, so the figures are noisy (see each ratio's per-round range)")
    threads = machine["torch_threads"]
    if machine.get("cuda_device") is None and isinstance(threads, int) and threads > 1:
        text += (f"; with {threads} torch threads, CPU operators wait for a thread whose core is "
                 "taken, which can slow them several-fold and unequally: rerun on an idle machine "
                 "or with --threads 1")
    return text


# ---------------------------------------------------------------- CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be `auto` or a count >= 0, got {text}")
    return value


def _models(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(MODELS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """CLI ``retinopathy bench [options]``; prints the table, optionally writes JSON."""
    parser = argparse.ArgumentParser(
        prog="retinopathy bench",
        description="Measure input-pipeline and training throughput on generated 512x512 JPEGs: "
        "ours against the lab's loader, torchvision's ResNets and a plain fp32 loop. "
        "Each comparison alternates its two sides in one process.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--images", type=_positive_int, default=64,
                        help="number of generated JPEGs (default 64)")
    parser.add_argument("--source-size", type=_positive_int, default=SOURCE_SIZE,
                        help="side of the generated JPEGs (default 512, the course's)")
    parser.add_argument("--batch", type=_positive_int,
                        help="training batch for (b)/(c) (default 8 on CPU, 64 on CUDA)")
    parser.add_argument("--size", type=_positive_int,
                        help="training image size for (b)/(c) (default 128 on CPU, 512 on CUDA)")
    parser.add_argument("--seconds", type=_positive_float,
                        help="time per side of each comparison (default 12 on CPU, 10 on CUDA)")
    parser.add_argument("--rounds", type=_positive_int, default=6,
                        help="alternating rounds per comparison (default 6)")
    parser.add_argument("--workers", type=_workers, default="auto",
                        help="DataLoader workers for the extra input row (default auto: "
                        "engine's choice; 0 skips the row)")
    parser.add_argument("--models", type=_models, default=MODELS,
                        help="models for (b), comma-separated (default resnet18,resnet50)")
    parser.add_argument("--fastpath-model", choices=MODELS, default="resnet18",
                        help="model for (c) (default resnet18)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="fast-path precision for (c) (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--channels-last", choices=SWITCHES, default="auto",
                        help="fast-path memory format for (c) (auto: on for CUDA, off on CPU)")
    parser.add_argument("--threads", type=_positive_int,
                        help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    settings = Settings(device=args.device, images=args.images, source_size=args.source_size,
                        batch=args.batch, size=args.size, seconds=args.seconds, rounds=args.rounds,
                        workers=args.workers, models=args.models,
                        fastpath_model=args.fastpath_model, precision=args.precision,
                        channels_last=args.channels_last, threads=args.threads,
                        sections=tuple(s for s in SECTIONS if s in (args.only or SECTIONS)))
    start, cpu = time.perf_counter(), _cpu_seconds()
    result = run(settings, log=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    wall = time.perf_counter() - start
    result.settings["wall_seconds"] = round(wall, 1)
    result.machine["other_processes_cores"] = _other_load(cpu, wall)
    print(format_result(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0
