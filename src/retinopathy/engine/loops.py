"""The loops: one training pass, one evaluation pass, prediction, and BatchNorm re-estimation.

Every loop takes the model (a grader: uint8 images in, scores out), the
batches and the :class:`~retinopathy.engine.runtime.Runtime`. Totals stay on
the device until the end of a pass: reading them per batch would make the CPU
wait for the GPU at every step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from retinopathy.engine.distributed import Process, sum_over_processes
from retinopathy.engine.runtime import Runtime
from retinopathy.errors import RetinopathyError


@dataclass
class EpochResult:
    """Loss and accuracy over one pass, summed over all processes."""

    loss: float
    accuracy: float
    count: int


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training must stop."""


def progress(batches: Iterable, description: str, process: Process) -> Iterable:
    """A progress bar on the main process (and only on a terminal); the batches unchanged elsewhere."""
    return tqdm(batches, desc=description, leave=False, disable=None if process.is_main else True,
                mininterval=1.0, dynamic_ncols=True)


def _pass_result(loss_sum: Tensor, correct: Tensor, count: int, process: Process, what: str) -> EpochResult:
    """Mean loss and accuracy from one pass's totals on the device, summed over all processes.

    The totals travel as one tensor: one all-reduce and one read to the host
    (a single GPU sync).

    Args:
        loss_sum: float64 sum of the per-image losses.
        correct: int64 count of correct predictions.
        count: Images seen by this process.
        process: Sums over all processes when distributed.
        what: ``training`` or ``evaluation``, for the error message.

    Raises:
        RetinopathyError: if the pass saw no images (on any process).
    """
    totals = sum_over_processes(torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(count)]),
                                process)
    total_loss, total_correct, total = totals.tolist()
    if total == 0:
        raise RetinopathyError(f"{what} over an empty split; check the prepared index")
    return EpochResult(total_loss / total, total_correct / total, int(total))


def sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
             runtime: Runtime) -> tuple[Tensor, Tensor]:
    """One SGD step on a batch already on the device; cross-entropy on raw logits.

    Args:
        model: The grader (or its DDP/compiled wrapper), in training mode.
        optimizer: Steps the model's parameters.
        images: uint8 [B,3,H,W] on the device.
        labels: int64 [B] on the device.
        runtime: Its ``bf16`` switch turns on autocast.

    Returns:
        The batch's mean loss (float32, still attached to the graph) and the logits.
    """
    with runtime.autocast():
        logits = model(images)
        loss = nn.functional.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def train_epoch(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                runtime: Runtime, description: str = "train") -> EpochResult:
    """One pass of SGD over ``batches`` (see :func:`sgd_step`).

    Raises:
        NonFiniteLoss: as soon as a (checked) loss is NaN or infinite.
    """
    model.train()
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = step = 0
    # Reading the loss forces a GPU sync; on CUDA check every 25 steps instead of each.
    check_every = 25 if device.type == "cuda" else 1
    for step, (images, labels) in enumerate(progress(batches, description, runtime.process), start=1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss, logits = sgd_step(model, optimizer, images, labels, runtime)
        loss_sum += loss.detach().double() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        count += labels.numel()
        if step % check_every == 0 and not torch.isfinite(loss_sum):
            raise NonFiniteLoss(f"step {step}")
    if not torch.isfinite(loss_sum):
        raise NonFiniteLoss(f"step {step}")  # the last step: the check above skipped some
    return _pass_result(loss_sum, correct, count, runtime.process, "training")


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
                sum_over_processes(buffer, process).div_(process.world_size)


def _eval_outputs(model: nn.Module, batches: Iterable, runtime: Runtime,
                  description: str) -> Iterator[tuple[Tensor, Tensor]]:
    """Float32 outputs on the device and the labels as the loader gave them, per batch, in eval mode."""
    model.eval()
    for images, labels in progress(batches, description, runtime.process):
        with runtime.autocast():
            outputs = model(images.to(runtime.device, non_blocking=True))
        yield outputs.float(), labels


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, runtime: Runtime,
            description: str = "test") -> tuple[Tensor, Tensor]:
    """Predicted and true grades of this process's shard (CPU int64 tensors), in eval mode."""
    predicted, actual = [], []
    for logits, labels in _eval_outputs(model, batches, runtime, description):
        # Kept on the device until the end: a copy to the host per batch would sync the GPU each time.
        predicted.append(logits.argmax(1))
        actual.append(labels)  # int64 from collate_images, still on the host
    if not predicted:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return torch.cat(predicted).cpu(), torch.cat(actual)


@torch.no_grad()
def evaluate_epoch(model: nn.Module, batches: Iterable, runtime: Runtime,
                   description: str = "test") -> EpochResult:
    """Mean cross-entropy and accuracy over a whole split (all processes together)."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    device = runtime.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for logits, labels in _eval_outputs(model, batches, runtime, description):
        labels = labels.to(device, non_blocking=True)
        loss_sum += criterion(logits, labels).double()
        correct += (logits.argmax(1) == labels).sum()
        count += labels.numel()
    return _pass_result(loss_sum, correct, count, runtime.process, "evaluation")
