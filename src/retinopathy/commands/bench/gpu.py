"""(d) feeding the GPU, (e) compiling its step: what `data.on_device` and `train.compile` choose between.

Feed, at the training size, images/s delivered to the device as uint8 batches:

- *streaming*: our DataLoader, workers decoding with libjpeg-turbo, pinned, copied;
- *bytes + nvJPEG* (option a): workers only read the files, each batch travelling
  as one byte buffer and offsets (not hundreds of small tensors, which ran out of
  file descriptors), decoded by ``torchvision.io.decode_jpeg(list, device="cuda")``
  in the training process;
- *resident* (option b): every image decoded once into device memory, then each
  batch an ``index_select`` there (the one-time decode is reported in the note).

Step: a training step (forward, backward, fused SGD) eager against
``torch.compile``d, same weights and batches; the compile time is in the note.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from retinopathy.commands.bench.inputs import SPLIT
from retinopathy.commands.bench.results import Comparison
from retinopathy.commands.bench.timing import alternate, sync_for
from retinopathy.commands.bench.training import SGD, fast_flags, grader, train_step_unit
from retinopathy.core.contract import NUM_GRADES
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.images import read_image_file
from retinopathy.data.labels import Record, image_path
from retinopathy.engine.batches import loader
from retinopathy.engine.optim import make_optimizer
from retinopathy.engine.resident import ResidentBatches, decode_split, describe_decoders, synchronize
from retinopathy.engine.runtime import Runtime, compiled, make_runtime
from retinopathy.models.build import new_model


class BytesDataset(Dataset):
    """The files' bytes and grades, undecoded: what option (a)'s workers do."""

    def __init__(self, root: str | Path, records: Sequence[Record]) -> None:
        self.paths = [image_path(root, r.image) for r in records]
        self.labels = [r.label for r in records]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        return read_image_file(self.paths[index]), self.labels[index]


def collate_bytes(batch: list[tuple[bytes, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """One uint8 buffer of all the files, their end offsets, and the labels: three tensors per batch."""
    data, labels = zip(*batch, strict=True)
    buffer = torch.frombuffer(bytearray(b"".join(data)), dtype=torch.uint8)
    ends = torch.tensor([len(d) for d in data], dtype=torch.int64).cumsum(0)
    return buffer, ends, torch.tensor(labels)


def nvjpeg_batch(buffer: Tensor, ends: Tensor, size: int, device: torch.device) -> Tensor:
    """Decode one collated batch on the GPU into uint8 [B, 3, size, size] (channels_last)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    starts = torch.cat([ends.new_zeros(1), ends[:-1]]).tolist()
    pieces = [buffer[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]
    synchronize(device)  # the decoder writes on its own stream (vision PR 9606)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(pieces, mode=ImageReadMode.RGB, device=device)
    synchronize(device)
    batch = torch.stack(images)
    if batch.shape[-1] != size:
        batch = (
            torch.nn.functional.interpolate(batch.float(), size=(size, size), mode="bilinear", antialias=True)
            .round_()
            .clamp_(0, 255)
            .to(torch.uint8)
        )
    return batch.contiguous(memory_format=torch.channels_last)


def _pass(batches: Callable[[], Iterable[Any]], to_device: Callable[[Any], Tensor]) -> Callable[[], int]:
    def run() -> int:
        count = 0
        for item in batches():
            count += to_device(item).shape[0]
        return count

    return run


def bench_feed(
    root: str | Path,
    records: Sequence[Record],
    device: torch.device,
    *,
    batch: int,
    size: int,
    seconds: float,
    rounds: int,
    workers: int | str,
    epoch_images: int,
) -> list[Comparison]:
    """Images/s to the device: streaming CPU decode, against bytes + nvJPEG and against resident."""
    runtime = make_runtime(device, num_workers=workers)
    indices = [i % len(records) for i in range(max(len(records), epoch_images))]
    dataset = RetinopathyDataset(root, SPLIT, size, records=records, dtype=torch.uint8)
    streamed = loader(dataset, batch, indices, runtime)
    raw = DataLoader(
        BytesDataset(root, records),
        batch_size=batch,
        sampler=indices,
        collate_fn=collate_bytes,
        num_workers=runtime.num_workers,
        persistent_workers=runtime.num_workers > 0,
        prefetch_factor=4 if runtime.num_workers else None,
    )
    started = time.perf_counter()
    split = decode_split(root, records, size, runtime)
    synchronize(device)
    decode_rate = len(records) / (time.perf_counter() - started)
    resident = ResidentBatches(split, indices, batch)
    units = {
        "streaming": _pass(lambda: streamed, lambda item: item[0].to(device, non_blocking=True)),
        "bytes + nvJPEG": _pass(lambda: raw, lambda item: nvjpeg_batch(item[0], item[1], size, device)),
        "resident": _pass(lambda: resident, lambda item: item[0]),
    }
    timed = alternate(units, seconds=seconds, rounds=rounds, sync=sync_for(device))
    name = f"{size} px, batch {batch}, {runtime.num_workers} workers"
    return [
        Comparison(
            "feed",
            name,
            timed["streaming"],
            timed["bytes + nvJPEG"],
            note="option (a): workers read bytes (one buffer + offsets per batch); batched nvJPEG "
            "in the training process",
        ),
        Comparison(
            "feed",
            name,
            timed["streaming"],
            timed["resident"],
            note=f"option (b): decoded once into GPU memory ({describe_decoders([split])}; "
            f"{decode_rate:.0f} img/s for the one-time decode of {len(records)} files), then "
            "index_select per batch",
        ),
    ]


def bench_compile(
    batches: Sequence[tuple[Tensor, Tensor]],
    device: torch.device,
    *,
    model_name: str,
    seconds: float,
    rounds: int,
) -> Comparison:
    """Training images/s of the eager step against the compiled one (bf16, channels_last, fused SGD)."""
    runtime: Runtime = make_runtime(device, num_workers=0)
    torch.manual_seed(0)
    eager = grader(new_model(model_name, NUM_GRADES), model_name, runtime)
    twin = grader(copy.deepcopy(eager.net), model_name, runtime)
    flags = fast_flags(runtime)
    units = {
        "eager": train_step_unit(eager, make_optimizer(eager, runtime, **SGD), batches, runtime, flags),
        "compiled": train_step_unit(
            compiled(twin), make_optimizer(twin, runtime, **SGD), batches, runtime, flags
        ),
    }
    started = time.perf_counter()
    units["compiled"]()  # the first call compiles
    synchronize(device)
    compile_seconds = time.perf_counter() - started
    timed = alternate(units, seconds=seconds, rounds=rounds, warmup=3, sync=sync_for(device))
    images = batches[0][0]
    return Comparison(
        "compile",
        f"{model_name}, batch {images.shape[0]}, {images.shape[-1]} px",
        timed["eager"],
        timed["compiled"],
        note=f"torch.compile (default mode) took {compile_seconds:.0f} s on its first call "
        "(Inductor's cache was as this machine left it)",
    )
