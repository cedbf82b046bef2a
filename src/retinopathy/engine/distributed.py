"""Processes under torchrun and the samplers that split the data between them.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them a run is a single
process. RANK and WORLD_SIZE count every process on every node: they split the
data and pick the one writer (rank 0). LOCAL_RANK counts this node's processes
and picks only the GPU. The samplers depend only on (seed, epoch), never on a
running random generator, which is what lets a resumed run see exactly the
batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

T = TypeVar("T")


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


def process_from_environment() -> Process:
    """This process as torchrun describes it (a single process without torchrun)."""
    return Process(
        int(os.environ.get("RANK", "0")),
        int(os.environ.get("WORLD_SIZE", "1")),
        int(os.environ.get("LOCAL_RANK", "0")),
    )


def join(process: Process, device: torch.device) -> None:
    """Join torchrun's process group: NCCL on CUDA, gloo on CPU (nothing for a single process)."""
    if process.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def leave(process: Process) -> None:
    """Leave the process group, if this process joined one."""
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_processes(tensor: Tensor, process: Process) -> Tensor:
    """``tensor`` summed over all processes, in place (unchanged for a single process)."""
    if process.distributed:
        dist.all_reduce(tensor)
    return tensor


def from_main(value: T | None, process: Process) -> T:
    """Rank 0's ``value`` on every process (``value`` itself for a single process).

    What only rank 0 may read (the checkpoint it resumes from: across nodes, only
    its node need hold the files) reaches the others this way, pickled over the
    process group. Every process must call it; the others pass None.
    """
    if not process.distributed:
        return cast(T, value)  # a single process is rank 0: it passed a T
    box: list[object] = [value]
    dist.broadcast_object_list(box, src=0)
    return cast(T, box[0])


def differing_processes(value: str, process: Process) -> list[str]:
    """The processes whose ``value`` differs from rank 0's, as ``rank R on HOST (VALUE)`` (none if single).

    Every process must call it, and every process gets the same answer, so all can
    stop together.
    """
    if not process.distributed:
        return []
    mine = (value, socket.gethostname())
    every: list[tuple[str, str] | None] = [None] * process.world_size
    dist.all_gather_object(every, mine)
    main = every[0]
    return [
        f"rank {rank} on {entry[1]} ({entry[0]})"
        for rank, entry in enumerate(every)
        if entry is not None and main is not None and entry[0] != main[0]
    ]


def torch_seed(value: int) -> int:
    """``value`` as torch's generators take it: any int, folded into [0, 2**64) (unchanged there)."""
    return value % 2**64


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
        generator = torch.Generator().manual_seed(torch_seed(self.seed * 100_003 + self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        # Pad by wrapping so every process runs the same number of steps (DDP needs it).
        order += order[: self.per_process * self.process.world_size - self.size]
        return iter(order[self.process.rank :: self.process.world_size])

    def __len__(self) -> int:
        return self.per_process


class BalancedSampler(EpochShuffleSampler):
    """Like :class:`EpochShuffleSampler`, but draws with replacement so every grade is equally likely.

    Each image is drawn with probability proportional to 1 / (count of its grade)
    (``train.class_balance: sampler``); an epoch is still ``size`` draws. The draws
    depend only on (seed, epoch), so a resumed run sees the same batches.
    """

    def __init__(self, labels: list[int], seed: int, process: Process) -> None:
        super().__init__(len(labels), seed, process)
        counts = torch.bincount(torch.tensor(labels))
        self.weights = 1.0 / counts[torch.tensor(labels)].double()

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(torch_seed(self.seed * 100_003 + self.epoch))
        order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist()
        order += order[: self.per_process * self.process.world_size - self.size]
        return iter(order[self.process.rank :: self.process.world_size])


def gather_over_processes(tensor: Tensor, process: Process) -> Tensor:
    """The tensors of all processes concatenated along dim 0, in rank order (this one alone if single).

    Shards may differ in length by one (:class:`ShardSampler`), so each is
    padded to the longest for the all-gather and trimmed again.
    """
    if not process.distributed:
        return tensor
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(process.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(n.item() for n in lengths))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(process.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, lengths, strict=True)])
