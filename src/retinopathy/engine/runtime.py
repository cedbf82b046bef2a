"""The runtime: where the tensors run and with which speed switches, resolved once per run.

Batches stay uint8 until they reach the device (4x fewer bytes than float32 to
copy); the grader scales and normalises them there. On CUDA the fast path is on
by default: bf16 autocast, channels_last, cuDNN autotuning, fused SGD,
non-blocking copies from pinned memory. On CPU these do not help (or are
slower), so ``auto`` leaves them off there.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import torch
from torch import nn

from retinopathy.core.errors import RetinopathyError
from retinopathy.core.portable import pin
from retinopathy.engine.distributed import Process, join, leave, process_from_environment

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Runtime:
    """This process, its device and the resolved speed switches: the one context the loops take.

    Attributes:
        device: Where the model and the batches live.
        process: This process's place in a torchrun run.
        bf16: bf16 autocast around the forward pass.
        channels_last: The model (and so its input) in channels_last layout.
        pin_memory: DataLoader batches in pinned memory (CUDA).
        num_workers: DataLoader worker processes.
    """

    device: torch.device
    process: Process
    bf16: bool
    channels_last: bool
    pin_memory: bool
    num_workers: int

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast on the device when the fast path asks for it."""
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def place(self, model: ModuleT) -> ModuleT:
        """Move ``model`` to the device, in channels_last layout when the fast path asks for it."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def configure_backends(self) -> None:
        """cuDNN autotuning (input sizes are fixed) and TF32 matmuls on CUDA."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def check_device(preference: str) -> None:
    """Raise unless the device ``preference`` (params.yaml ``train.device``) exists here."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RetinopathyError(
            "params.yaml: train.device is `cuda` but PyTorch sees no CUDA GPU; "
            "set train.device to `auto` or `cpu`"
        )


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    check_device(preference)
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    pin("cpu")  # train.portable: a fixed number of threads (see retinopathy.core.portable)
    return torch.device("cpu")


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes for ``data.num_workers: auto``.

    On CUDA, decoding JPEGs is the bottleneck: every core but the main one.
    On CPU the model's threads need the cores and decoding is a few percent of
    a training step; a worker process competing with them was measured to
    slow training several-fold on 2 cores (BENCHMARKS.md), so none.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(16, max(cpus - 1, 1)) if device.type == "cuda" else 0


def make_runtime(
    device: torch.device,
    *,
    precision: str = "auto",
    channels_last: str = "auto",
    num_workers: int | str = "auto",
    process: Process | None = None,
) -> Runtime:
    """Resolve the ``auto`` switches for ``device`` (params.yaml's train.precision, ...)."""
    cuda = device.type == "cuda"
    return Runtime(
        device=device,
        process=process or Process(),
        bf16=precision == "bf16" or (precision == "auto" and cuda),
        channels_last=channels_last == "on" or (channels_last == "auto" and cuda),
        pin_memory=cuda,
        num_workers=default_workers(device) if num_workers == "auto" else int(num_workers),
    )


def plain_runtime(device: torch.device) -> Runtime:
    """Every switch off: fp32, contiguous, eager, pageable memory, no workers (the reference)."""
    return Runtime(device, Process(), bf16=False, channels_last=False, pin_memory=False, num_workers=0)


@dataclass(frozen=True)
class Switches:
    """Where to run and the speed switches, as params.yaml sets them (the stage reads them; see
    :func:`runtime_of`).

    Attributes:
        device: ``train.device``: ``auto``, ``cpu`` or ``cuda``.
        precision: ``train.precision``: ``auto``, ``fp32`` or ``bf16``.
        channels_last: ``train.channels_last``: ``auto``, ``on`` or ``off``.
        num_workers: ``data.num_workers``: a count, or ``auto``.
    """

    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    num_workers: int | str = "auto"


def runtime_of(switches: Switches, process: Process | None = None) -> Runtime:
    """The runtime that ``switches`` ask for (of one process, unless ``process`` is given)."""
    device = resolve_device(switches.device, process.local_rank if process is not None else 0)
    return make_runtime(
        device,
        precision=switches.precision,
        channels_last=switches.channels_last,
        num_workers=switches.num_workers,
        process=process,
    )


def start(switches: Switches) -> Runtime:
    """:func:`runtime_of`, after joining torchrun's process group if there is one.

    Call :func:`stop` at the end.
    """
    process = process_from_environment()
    runtime = runtime_of(switches, process)
    join(process, runtime.device)
    return runtime


# torch.compile repays its compile time (about 35 s for ResNet18, 65 s for ResNet50
# on an H200, 10 s for ResNet18 once Inductor's cache holds its kernels) only over a
# long run: auto compiles CUDA runs that train on at least this many images.
COMPILE_PAYS_FROM = 250_000


def compile_wanted(switch: str, runtime: Runtime, images: int) -> bool:
    """``train.compile``: ``on``, ``off``, or ``auto`` (CUDA, training on >= COMPILE_PAYS_FROM images)."""
    if switch == "auto":
        return runtime.device.type == "cuda" and images >= COMPILE_PAYS_FROM
    return switch == "on"


def compiled(model: nn.Module) -> nn.Module:
    """``torch.compile(model)``, with Inductor's caches on and kept in a folder that outlives the run.

    Inductor caches compiled kernels and graphs (FX graph and AOTAutograd caches,
    both on here), so the second arm, a resumed run and the next experiment load
    them instead of compiling again; TORCHINDUCTOR_CACHE_DIR picks the folder
    (default here: ~/.cache/retinopathy/inductor, not /tmp, which a reboot empties).
    """
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "retinopathy" / "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    # torch.compile of a Module returns an OptimizedModule (a Module); its stub says a callable.
    return cast(nn.Module, torch.compile(model))


def stop(runtime: Runtime) -> None:
    """Leave the process group that :func:`start` joined."""
    leave(runtime.process)
