"""The loops: one training pass, one evaluation pass, prediction, and BatchNorm re-estimation.

Every loop takes the model (a grader: uint8 images in, outputs out), the
batches, the :class:`~retinopathy.engine.runtime.Runtime` and the
:class:`~retinopathy.models.head.Head` that turns outputs into a loss and
grades. Totals stay on the device until the end of a pass: reading them per
batch would make the CPU wait for the GPU at every step.

Every pass shows its progress on the main process (:class:`Progress`): tqdm's
bar with an ETA on a terminal, else (under `dvc repro`, in a log) a plain line
at least every :data:`PLAIN_EVERY` seconds. Running out of memory in a pass is
an :class:`OutOfMemory` error that says what to lower (:func:`memory_guard`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TextIO

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from retinopathy.core.contract import NUM_GRADES
from retinopathy.core.errors import RetinopathyError
from retinopathy.engine.distributed import Process, gather_over_processes, sum_over_processes
from retinopathy.engine.runtime import Runtime
from retinopathy.models.head import Head

# A batch on the device and its step number -> the batch to train on (augmentation).
BatchHook = Callable[[Tensor, int], Tensor]


@dataclass
class EpochResult:
    """Loss, accuracy and the confusion matrix over one pass, summed over all processes.

    ``outputs``/``labels`` (all processes', when asked for) let the caller grade
    the pass again, e.g. with thresholds tuned on it.
    """

    loss: float
    accuracy: float
    count: int
    confusion: np.ndarray  # [5, 5] counts, rows = true grade
    outputs: Tensor | None = None
    labels: Tensor | None = None
    first_batch: float = 0.0  # seconds to the end of the first step (loader start-up, any compiling)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training must stop."""


class OutOfMemory(RetinopathyError):
    """A pass ran out of device or host memory; the message says what to lower."""


def allocation_failure(error: BaseException) -> str | None:
    """Which memory ran out, when ``error`` is an allocator's failure (else None)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "GPU memory"
    if isinstance(error, MemoryError):
        return "memory"
    text = str(error)
    if isinstance(error, RuntimeError):
        if "DefaultCPUAllocator" in text and ("can't allocate" in text or "not enough memory" in text):
            return "memory"
        if "out of memory" in text.lower():  # CUDA's older message, MPS, ROCm
            return "GPU memory"
    return None


@contextmanager
def memory_guard(what: str, lower: str) -> Iterator[None]:
    """Turn an allocation failure in the block into :class:`OutOfMemory`: what ran out, and ``lower``.

    Args:
        what: What was running, e.g. ``training scratch, epoch 2``.
        lower: The settings that would make it fit, e.g. ``train.batch_size (now 64) or ...``.
    """
    try:
        yield
    except (RuntimeError, MemoryError) as error:  # torch.cuda.OutOfMemoryError is a RuntimeError
        kind = allocation_failure(error)
        if kind is None:
            raise
        detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise OutOfMemory(f"{what}: ran out of {kind} ({detail}); lower {lower}") from None


PLAIN_EVERY = 30.0  # seconds between progress lines when the output is not a terminal


def clock_time(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """The batches of a pass, with its progress shown on the main process.

    On a terminal: tqdm's bar, with the rate and an ETA. Elsewhere (a log, `dvc repro`,
    `dvc exp run`): ``<description>: 320/600 images, 41 img/s, ETA 0:09`` on stderr
    whenever :data:`PLAIN_EVERY` seconds have passed since the last line (or the
    start), so a long pass is never silent. Counts are over all processes.

    Args:
        batches: (images, labels) batches; their ``sampler`` (when they have one) gives the total.
        description: What the pass is, e.g. ``scratch epoch 2/4``.
        process: Only the main process shows anything.
        stream: Where lines go (default: stderr).
        clock: Seconds, monotonic (tests pass a fake one).
        every: Seconds between plain lines (default: :data:`PLAIN_EVERY`).
        terminal: Whether ``stream`` is a terminal (default: ask it).
    """

    def __init__(
        self,
        batches: Iterable,
        description: str,
        process: Process,
        *,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
        every: float | None = None,
        terminal: bool | None = None,
    ) -> None:
        self.batches, self.description, self.process = batches, description, process
        self.stream = stream or sys.stderr
        self.clock, self.every = clock, PLAIN_EVERY if every is None else every
        self.terminal = self.stream.isatty() if terminal is None else terminal

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def total(self) -> int | None:
        """Images in the pass over all processes, when the batches know their sampler."""
        sampler = getattr(self.batches, "sampler", None)
        try:
            return len(sampler) * self.process.world_size if sampler is not None else None
        except TypeError:
            return None

    def __iter__(self) -> Iterator:
        if not self.process.is_main:
            yield from self.batches
            return
        if self.terminal:
            yield from tqdm(
                self.batches,
                desc=self.description,
                leave=False,
                mininterval=1.0,
                dynamic_ncols=True,
                file=self.stream,
                unit="batch",
            )
            return
        total, done = self.total(), 0
        started = last = self.clock()
        for batch in self.batches:
            yield batch
            done += len(batch[1]) * self.process.world_size
            now = self.clock()
            if now - last >= self.every:
                last = now
                self.stream.write(self.line(done, total, now - started) + "\n")
                self.stream.flush()

    def line(self, done: int, total: int | None, seconds: float) -> str:
        """``<description>: done/total images, rate img/s, ETA m:ss``."""
        rate = done / seconds if seconds > 0 else 0.0
        if total is None:
            return f"{self.description}: {done} images, {rate:.1f} img/s, {clock_time(seconds)} so far"
        eta = f"ETA {clock_time((total - done) / rate)}" if rate > 0 else "ETA unknown"
        return f"{self.description}: {done}/{total} images, {rate:.1f} img/s, {eta}"


def progress(batches: Iterable, description: str, process: Process) -> Iterable:
    """:class:`Progress` of ``batches``, shown on the main process only."""
    return Progress(batches, description, process)


def _confusion(actual: Tensor, predicted: Tensor) -> Tensor:
    """[5, 5] int64 counts on the device (rows = true grade)."""
    return torch.bincount(actual * NUM_GRADES + predicted, minlength=NUM_GRADES**2)


def _pass_result(loss_sum: Tensor, confusion: Tensor, process: Process, what: str) -> EpochResult:
    """Mean loss, accuracy and the confusion matrix from one pass's totals on the device.

    The totals travel as one tensor: one all-reduce and one read to the host
    (a single GPU sync).

    Args:
        loss_sum: float64 sum of the per-image losses.
        confusion: int64 [25] counts of (true, predicted) pairs.
        process: Sums over all processes when distributed.
        what: ``training`` or ``evaluation``, for the error message.

    Raises:
        RetinopathyError: if the pass saw no images (on any process).
    """
    totals = sum_over_processes(torch.cat([loss_sum.view(1), confusion.double()]), process).tolist()
    matrix = np.array(totals[1:], dtype=np.int64).reshape(NUM_GRADES, NUM_GRADES)
    total = int(matrix.sum())
    if total == 0:
        raise RetinopathyError(f"{what} over an empty split; check the prepared index")
    return EpochResult(totals[0] / total, float(np.trace(matrix)) / total, total, matrix)


def sgd_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    runtime: Runtime,
    head: Head,
) -> tuple[Tensor, Tensor]:
    """One SGD step on a batch already on the device, with the head's (weighted) training loss.

    Args:
        model: The grader (or its DDP/compiled wrapper), in training mode.
        optimizer: Steps the model's parameters.
        images: uint8 [B,3,H,W] on the device.
        labels: int64 [B] on the device.
        runtime: Its ``bf16`` switch turns on autocast.
        head: Cross-entropy on raw logits, or MSE of one output.

    Returns:
        The batch's mean loss (float32, still attached to the graph) and the outputs.
    """
    with runtime.autocast():
        outputs = model(images)
        loss = head.loss(outputs, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, outputs


@dataclass(frozen=True)
class Learner:
    """What a training pass steps: the network, its optimizer, its learning-rate schedule and its head.

    Attributes:
        net: The grader as trained (wrapped in DDP, compiled, when asked).
        optimizer: Steps its parameters.
        head: The (weighted) training loss, and the grades counted.
        scheduler: Stepped after every optimizer step (per-batch learning rates); None: constant.
        eager: The uncompiled ``net``, for a batch smaller than the first (the last one): a
            compiled model would compile again for its shape. None: ``net`` itself.
    """

    net: nn.Module
    optimizer: torch.optim.Optimizer
    head: Head
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    eager: nn.Module | None = None


def train_epoch(
    learner: Learner,
    batches: Iterable,
    runtime: Runtime,
    description: str = "train",
    augment: BatchHook | None = None,
) -> EpochResult:
    """One pass of SGD over ``batches`` (see :func:`sgd_step`).

    Args:
        learner: What is trained, and how each step changes it.
        batches: (uint8 images, grades) batches.
        runtime: The device and its switches.
        description: What the pass is, for its progress line.
        augment: Changes each batch on the device before the step (training only).

    Raises:
        NonFiniteLoss: as soon as a (checked) loss is NaN or infinite.
    """
    model, eager, head, scheduler = learner.net, learner.eager, learner.head, learner.scheduler
    model.train()
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(NUM_GRADES**2, dtype=torch.int64, device=device)
    step = full = 0
    first_batch, started = 0.0, time.perf_counter()
    # Reading the loss forces a GPU sync; on CUDA check every 25 steps instead of each.
    check_every = 25 if device.type == "cuda" else 1
    for step, (images, labels) in enumerate(progress(batches, description, runtime.process), start=1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images, step)
        full = full or len(labels)
        net = eager if eager is not None and len(labels) != full else model
        loss, outputs = sgd_step(net, learner.optimizer, images, labels, runtime, head)
        if scheduler is not None:
            scheduler.step()
        if step == 1:  # one sync per epoch: how long the first batch took, start-up included
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_batch = time.perf_counter() - started
        loss_sum += loss.detach().double() * labels.numel()
        confusion += _confusion(labels, head.grades(outputs.detach()))
        if step % check_every == 0 and not torch.isfinite(loss_sum):
            raise NonFiniteLoss(f"step {step}")
    if not torch.isfinite(loss_sum):
        raise NonFiniteLoss(f"step {step}")  # the last step: the check above skipped some
    return replace(_pass_result(loss_sum, confusion, runtime.process, "training"), first_batch=first_batch)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, runtime: Runtime) -> None:
    """Re-estimate every BatchNorm's running mean and variance with the current weights.

    During a short run from scratch the weights move faster than the running
    averages (momentum 0.1) follow, so eval-mode accuracy can swing from epoch
    to epoch although the model has learned; averaging the batch statistics of
    a pass over training images fixes that ("precise BN": Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm"). Weights and optimizer are untouched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return  # nothing to re-estimate (ConvNeXt normalises with LayerNorm)
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over all batches of the pass
    model.train()
    for images, _ in progress(batches, "batchnorm", runtime.process):
        with runtime.autocast():
            model(images.to(runtime.device, non_blocking=True))
    process = runtime.process
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
        if process.distributed:  # equal shards: the mean of the per-process averages
            for buffer in (norm.running_mean, norm.running_var):
                if buffer is not None:  # None: a norm that keeps no running statistics
                    sum_over_processes(buffer, process).div_(process.world_size)


FLIPS = ((), (3,), (2,), (2, 3))  # identity, left-right, top-bottom, both: the dims of [B, 3, H, W]


def _eval_outputs(
    model: nn.Module, batches: Iterable, runtime: Runtime, description: str
) -> Iterator[tuple[Tensor, Tensor]]:
    """Float32 outputs on the device and the labels as the loader gave them, per batch, in eval mode."""
    model.eval()
    for images, labels in progress(batches, description, runtime.process):
        with runtime.autocast():
            outputs = model(images.to(runtime.device, non_blocking=True))
        yield outputs.float(), labels


@torch.no_grad()
def predict_scores(
    model: nn.Module, images: Tensor, runtime: Runtime, head: Head, tta: bool = False
) -> Tensor:
    """The head's scores of one batch on the device; with ``tta``, their mean over the four flips."""
    views: tuple[tuple[int, ...], ...] = FLIPS if tta else ((),)
    total: Tensor | None = None
    for dims in views:
        with runtime.autocast():
            outputs = model(images.flip(dims) if dims else images)
        scores = head.scores(outputs)
        total = scores if total is None else total + scores
    assert total is not None  # views holds at least the identity
    return total / len(views)


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable,
    runtime: Runtime,
    head: Head,
    description: str = "test",
    tta: bool = False,
    lower: str = "the batch size (--batch-size)",
) -> tuple[Tensor, Tensor, Tensor]:
    """Scores, grades and true grades of this process's shard (CPU tensors), in eval mode.

    Without ``tta`` the grades are exactly those the evaluation passes count
    (the largest logit, or the thresholds of the value).

    Raises:
        OutOfMemory: saying to lower ``lower``.
    """
    with memory_guard(f"grading ({description})", lower):
        return _predict(model, batches, runtime, head, description, tta)


def _predict(
    model: nn.Module, batches: Iterable, runtime: Runtime, head: Head, description: str, tta: bool
) -> tuple[Tensor, Tensor, Tensor]:
    model.eval()
    scores, grades, actual = [], [], []
    for images, labels in progress(batches, description, runtime.process):
        images = images.to(runtime.device, non_blocking=True)
        if tta:
            batch_scores = predict_scores(model, images, runtime, head, tta=True)
            batch_grades = head.grades_of_scores(batch_scores)
        else:
            with runtime.autocast():
                outputs = model(images).float()
            batch_scores, batch_grades = head.scores(outputs), head.grades(outputs)
        # Kept on the device until the end: a copy to the host per batch would sync the GPU each time.
        scores.append(batch_scores)
        grades.append(batch_grades)
        actual.append(labels)  # int64 from collate_images, still on the host
    if not grades:
        empty = torch.empty(0, dtype=torch.int64)
        return torch.empty(0), empty, empty
    return torch.cat(scores).cpu(), torch.cat(grades).cpu(), torch.cat(actual)


@torch.no_grad()
def evaluate_epoch(
    model: nn.Module,
    batches: Iterable,
    runtime: Runtime,
    head: Head,
    description: str = "test",
    keep_outputs: bool = False,
) -> EpochResult:
    """Mean unweighted loss, accuracy and confusion matrix over a whole split (all processes together).

    Args:
        keep_outputs: Also return every image's outputs and label, gathered from all processes.
    """
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    confusion = torch.zeros(NUM_GRADES**2, dtype=torch.int64, device=device)
    kept_outputs, kept_labels = [], []
    for outputs, labels in _eval_outputs(model, batches, runtime, description):
        labels = labels.to(device, non_blocking=True)
        loss_sum += head.loss_sum(outputs, labels).double()
        confusion += _confusion(labels, head.grades(outputs))
        if keep_outputs:
            kept_outputs.append(outputs)
            kept_labels.append(labels)
    result = _pass_result(loss_sum, confusion, runtime.process, "evaluation")
    if keep_outputs:
        result.outputs = gather_over_processes(torch.cat(kept_outputs), runtime.process).cpu()
        result.labels = gather_over_processes(torch.cat(kept_labels), runtime.process).cpu()
    return result
