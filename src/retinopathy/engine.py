"""The training and inference loops, the device and its speed switches, and DDP plumbing.

Batches stay uint8 until they reach the device (4x fewer bytes than float32 to
copy); scaling to [0,1] and ImageNet normalisation happen there. On CUDA the
fast path is on by default: bf16 autocast, channels_last, cuDNN autotuning,
fused SGD, non-blocking copies from pinned memory. On CPU these do not help
(or are slower), so ``auto`` leaves them off there.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from retinopathy.config import TrainParams
from retinopathy.errors import RetinopathyError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- processes


@dataclass(frozen=True)
class Process:
    """This process's place in a (possibly single-process) run started by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, history and metrics."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_process(device_pref: str) -> tuple[Process, torch.device]:
    """Join the torchrun process group if there is one, and pick the device.

    torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a
    single process. NCCL on CUDA, gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    process = Process(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_pref, process.local_rank)
    if process.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return process, device


def end_process(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RetinopathyError(
                "params.yaml: train.device is `cuda` but PyTorch sees no CUDA GPU; "
                "set train.device to `auto` or `cpu`"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class ShardSampler(Sampler[int]):
    """Every index exactly once over all processes: rank r takes r, r+W, r+2W, ...

    Unlike DistributedSampler it never pads with repeats, so the test accuracy
    summed over processes counts each test image once. ``indices`` restricts
    it to a subset (default: all of ``range(size)``).
    """

    def __init__(self, size: int, process: Process, indices: list[int] | None = None) -> None:
        every = list(range(size)) if indices is None else indices
        self.indices = every[process.rank :: process.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochShuffleSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), split across processes.

    Seeding each epoch's permutation from the epoch number, not from a running
    generator, is what lets a resumed run see exactly the same batches as an
    uninterrupted one.
    """

    def __init__(self, size: int, seed: int, process: Process) -> None:
        self.size, self.seed, self.process, self.epoch = size, seed, process, 0
        self.per_process = math.ceil(size / process.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        # Pad by wrapping so every process runs the same number of steps (DDP needs it).
        order += order[: self.per_process * self.process.world_size - self.size]
        return iter(order[self.process.rank :: self.process.world_size])

    def __len__(self) -> int:
        return self.per_process


# ---------------------------------------------------------------- speed switches


@dataclass(frozen=True)
class FastPath:
    """The resolved speed switches; see :func:`fast_path`."""

    bf16: bool
    channels_last: bool
    compile: bool
    pin_memory: bool
    num_workers: int


# Every switch off: fp32, contiguous tensors, eager mode, pageable memory, no
# worker processes. The reference the fast path is checked and timed against.
PLAIN_FAST_PATH = FastPath(bf16=False, channels_last=False, compile=False, pin_memory=False, num_workers=0)


def default_workers(device: torch.device) -> int:
    """DataLoader worker processes for ``data.num_workers: auto``.

    On CUDA, decoding JPEGs is the bottleneck: every core but the main one.
    On CPU the model's threads need the cores and decoding is a few percent of
    a training step; a worker process competing with them was measured to
    slow training several-fold on 2 cores (BENCHMARKS.md), so none.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(16, max(cpus - 1, 1)) if device.type == "cuda" else 0


def fast_path(train: TrainParams, device: torch.device, num_workers: int | str) -> FastPath:
    """Resolve ``auto`` switches for ``device``; refuse combinations that cannot work."""
    cuda = device.type == "cuda"
    bf16 = train.precision == "bf16" or (train.precision == "auto" and cuda)
    channels_last = train.channels_last == "on" or (train.channels_last == "auto" and cuda)
    workers = default_workers(device) if num_workers == "auto" else int(num_workers)
    return FastPath(bf16, channels_last, train.compile, pin_memory=cuda, num_workers=workers)


def configure_backends(device: torch.device) -> None:
    """cuDNN autotuning (input sizes are fixed) and TF32 matmuls on CUDA."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def place_model(model: nn.Module, device: torch.device, fast: FastPath) -> nn.Module:
    """Move ``model`` to ``device``, in channels_last layout when the fast path asks for it."""
    model = model.to(device)
    if fast.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_optimizer(model: nn.Module, train: TrainParams, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum and weight decay; the fused CUDA kernel where there is one."""
    fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                           weight_decay=train.weight_decay, **fused)


def collate_images(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Stack [3,H,W] images that are views of decoded HWC arrays, without reordering pixels.

    The default collate copies each view into an NCHW block, a strided copy
    that cost about a quarter of the loader's time at 512 px (BENCHMARKS.md).
    Stacking the HWC arrays is a plain memcpy; the NCHW result is a view with
    channels_last strides, which InputTransform lays out on the device.
    """
    images, labels = zip(*batch, strict=True)
    stacked = torch.stack([image.permute(1, 2, 0) for image in images])
    return stacked.permute(0, 3, 1, 2), torch.tensor(labels)


def loader(dataset: Dataset, batch_size: int, sampler: Sampler[int], fast: FastPath) -> DataLoader:
    """A DataLoader of uint8 batches with pinned memory and persistent workers where they help."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_images,
        num_workers=fast.num_workers,
        pin_memory=fast.pin_memory,
        persistent_workers=fast.num_workers > 0,
        prefetch_factor=4 if fast.num_workers > 0 else None,
    )


def eval_loader(dataset: Dataset, train_batch_size: int, process: Process, fast: FastPath) -> DataLoader:
    """Batches for evaluation: this process's shard of ``dataset``, each image once, in order.

    Batches are twice ``train_batch_size`` (the per-process training batch):
    evaluation keeps no activations for a backward pass.
    """
    return loader(dataset, train_batch_size * 2, ShardSampler(len(dataset), process), fast)


class InputTransform(nn.Module):
    """uint8 [B,3,H,W] on the device -> float in [0,1] -> optional ImageNet normalisation."""

    def __init__(self, normalize: str, channels_last: bool) -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN if normalize == "imagenet" else (0.0, 0.0, 0.0))
        std = torch.tensor(IMAGENET_STD if normalize == "imagenet" else (1.0, 1.0, 1.0))
        # Fold the /255 into the affine map: x * (1/(255 std)) - mean/std, one fused op.
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: Tensor) -> Tensor:
        # Lay the batch out while it is still uint8 (4x fewer bytes than float).
        images = images.contiguous(memory_format=self.memory_format)
        # uint8 from the fast loader; float [0,1] (the Dataset's default contract) is
        # brought back to 0-255 because the /255 is folded into `scale`.
        images = images.float() if images.dtype == torch.uint8 else images * 255.0
        return torch.addcmul(self.shift, images, self.scale).contiguous(memory_format=self.memory_format)


def input_transform(normalize: str, fast: FastPath, device: torch.device) -> InputTransform:
    """The :class:`InputTransform` for ``normalize`` in the fast path's memory layout, on ``device``."""
    return InputTransform(normalize, fast.channels_last).to(device)


def autocast(device: torch.device, fast: FastPath):
    """bf16 autocast on the device when the fast path asks for it."""
    if fast.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


# ---------------------------------------------------------------- loops


@dataclass
class EpochResult:
    """Loss and accuracy over one pass, summed over all processes."""

    loss: float
    accuracy: float
    count: int


def progress(batches: Iterable, description: str, process: Process) -> Iterable:
    """A progress bar on the main process (and only on a terminal); the batches unchanged elsewhere."""
    return tqdm(batches, desc=description, leave=False, disable=None if process.is_main else True,
                mininterval=1.0, dynamic_ncols=True)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; training must stop."""


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
    totals = torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(count)])
    if process.distributed:
        dist.all_reduce(totals)
    total_loss, total_correct, total = totals.tolist()
    if total == 0:
        raise RetinopathyError(f"{what} over an empty split; check the prepared index")
    return EpochResult(total_loss / total, total_correct / total, int(total))


def sgd_step(model: nn.Module, transform: InputTransform, optimizer: torch.optim.Optimizer,
             images: Tensor, labels: Tensor, device: torch.device, fast: FastPath) -> tuple[Tensor, Tensor]:
    """One SGD step on a batch already on ``device``; cross-entropy on raw logits.

    Args:
        model: The network, in training mode.
        transform: Brings the uint8 ``images`` to the model's input.
        optimizer: Steps the model's parameters.
        images: uint8 [B,3,H,W] on ``device``.
        labels: int64 [B] on ``device``.
        device: Where the batch and the model are.
        fast: Its ``bf16`` switch turns on autocast.

    Returns:
        The batch's mean loss (float32, still attached to the graph) and the logits.
    """
    inputs = transform(images)
    with autocast(device, fast):
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def train_epoch(model: nn.Module, batches: Iterable, transform: InputTransform,
                optimizer: torch.optim.Optimizer, device: torch.device, fast: FastPath,
                process: Process, description: str = "train") -> EpochResult:
    """One pass of SGD over ``batches`` (see :func:`sgd_step`).

    Raises:
        NonFiniteLoss: as soon as a (checked) loss is NaN or infinite.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = step = 0
    # Reading the loss forces a GPU sync; on CUDA check every 25 steps instead of each.
    check_every = 25 if device.type == "cuda" else 1
    for step, (images, labels) in enumerate(progress(batches, description, process), start=1):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        loss, logits = sgd_step(model, transform, optimizer, images, labels, device, fast)
        loss_sum += loss.detach().double() * labels.numel()
        correct += (logits.argmax(1) == labels).sum()
        count += labels.numel()
        if step % check_every == 0 and not torch.isfinite(loss_sum):
            raise NonFiniteLoss(f"step {step}")
    if not torch.isfinite(loss_sum):
        raise NonFiniteLoss(f"step {step}")  # the last step: the check above skipped some
    return _pass_result(loss_sum, correct, count, process, "training")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, transform: InputTransform,
                          device: torch.device, fast: FastPath, process: Process) -> None:
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
    for images, _ in progress(batches, "batchnorm", process):
        with autocast(device, fast):
            model(transform(images.to(device, non_blocking=True)))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
        if process.distributed:  # equal shards: the mean of the per-process averages
            for buffer in (norm.running_mean, norm.running_var):
                dist.all_reduce(buffer)
                buffer /= process.world_size


def _eval_logits(model: nn.Module, batches: Iterable, transform: InputTransform,
                 device: torch.device, fast: FastPath, process: Process,
                 description: str) -> Iterator[tuple[Tensor, Tensor]]:
    """Float32 logits on the device, and the labels as the loader gave them, for every batch, in eval mode."""
    model.eval()
    for images, labels in progress(batches, description, process):
        with autocast(device, fast):
            logits = model(transform(images.to(device, non_blocking=True)))
        yield logits.float(), labels


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, transform: InputTransform, device: torch.device,
            fast: FastPath, process: Process, description: str = "test") -> tuple[Tensor, Tensor]:
    """Predicted and true grades of this process's shard (CPU int64 tensors), in eval mode."""
    predicted, actual = [], []
    for logits, labels in _eval_logits(model, batches, transform, device, fast, process, description):
        # Kept on the device until the end: a copy to the host per batch would sync the GPU each time.
        predicted.append(logits.argmax(1))
        actual.append(labels)  # int64 from collate_images, still on the host
    if not predicted:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    return torch.cat(predicted).cpu(), torch.cat(actual)


@torch.no_grad()
def evaluate_epoch(model: nn.Module, batches: Iterable, transform: InputTransform,
                   device: torch.device, fast: FastPath, process: Process,
                   description: str = "test") -> EpochResult:
    """Mean cross-entropy and accuracy over a whole split (all processes together)."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    # Totals stay on the device: reading them per batch would sync the GPU each step.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for logits, labels in _eval_logits(model, batches, transform, device, fast, process, description):
        labels = labels.to(device, non_blocking=True)
        loss_sum += criterion(logits, labels).double()
        correct += (logits.argmax(1) == labels).sum()
        count += labels.numel()
    return _pass_result(loss_sum, correct, count, process, "evaluation")
