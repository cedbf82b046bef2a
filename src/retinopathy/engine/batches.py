"""Batches of uint8 images, for training and evaluation: streamed by a DataLoader, or from device memory.

A split's *source* is either a Dataset (decoded by DataLoader workers, batch by
batch) or a :class:`~retinopathy.engine.resident.ResidentSplit` (decoded once
into the device's memory); :func:`batches` gives the same batches from either.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from retinopathy.data.cache import DecodedCache, open_dataset
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.labels import Record
from retinopathy.engine.distributed import ShardSampler
from retinopathy.engine.resident import (
    Order,
    ResidentBatches,
    ResidentSplit,
    decode_split,
    describe_decoders,
    planned_decoder,
    split_bytes,
    use_resident,
)
from retinopathy.engine.runtime import Runtime

Source = RetinopathyDataset | DecodedCache | ResidentSplit


def collate_images(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Stack [3,H,W] images that are views of decoded HWC arrays, without reordering pixels.

    The default collate copies each view into an NCHW block, a strided copy
    that cost about a quarter of the loader's time at 512 px (BENCHMARKS.md).
    Stacking the HWC arrays is a plain memcpy; the NCHW result is a view with
    channels_last strides, which the grader lays out on the device.
    """
    images, labels = zip(*batch, strict=True)
    stacked = torch.stack([image.permute(1, 2, 0) for image in images])
    return stacked.permute(0, 3, 1, 2), torch.tensor(labels)


def loader(dataset: Dataset, batch_size: int, sampler: Order, runtime: Runtime) -> DataLoader:
    """A DataLoader of uint8 batches with pinned memory and persistent workers where they help."""
    workers = runtime.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_images,
        num_workers=workers,
        pin_memory=runtime.pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def resident_wanted(
    on_device: str, runtime: Runtime, records: dict[str, list[Record]], size: int | None
) -> bool:
    """Whether ``data.on_device`` (``on_device``) puts these splits at ``size`` px in the device's memory."""
    total = sum(split_bytes(len(split), size) for split in records.values()) if size else 0
    return use_resident(on_device, runtime, size, total)


def open_sources(
    root: str | Path,
    records: dict[str, list[Record]],
    size: int | None,
    resident: bool,
    runtime: Runtime,
    cache_dir: str | None = None,
) -> tuple[dict[str, Source], str]:
    """Each non-empty split's source at ``size`` px, and the decoder that makes its pixels (in words).

    Args:
        root: ``data.root``, the folder of the images.
        records: The splits' records (the prepared index).
        size: The side the images are resized to (None: their own).
        resident: Decode each split once into the device's memory (:func:`resident_wanted`).
        runtime: The device and its switches.
        cache_dir: ``data.cache_dir``: a folder for decoded pixels when streaming (None: none).
    """
    chosen = {name: split for name, split in records.items() if split}
    if resident:
        assert size is not None  # resident_wanted: no resident split without data.image_size
        sources = {name: decode_split(root, split, size, runtime) for name, split in chosen.items()}
        return dict(sources), describe_decoders(list(sources.values()))
    return (
        {name: open_dataset(root, name, split, size, cache_dir) for name, split in chosen.items()},
        planned_decoder(False, runtime),
    )


def batches(
    source: Source, sampler: Order, batch_size: int, runtime: Runtime
) -> DataLoader | ResidentBatches:
    """The batches of ``source`` in the order of ``sampler``."""
    if isinstance(source, ResidentSplit):
        return ResidentBatches(source, sampler, batch_size)
    return loader(source, batch_size, sampler, runtime)


def eval_batches(source: Source, train_batch_size: int, runtime: Runtime) -> DataLoader | ResidentBatches:
    """Batches for evaluation: this process's shard of ``source``, each image once, in order.

    Batches are twice ``train_batch_size`` (the per-process training batch):
    evaluation keeps no activations for a backward pass.
    """
    return batches(source, ShardSampler(len(source), runtime.process), train_batch_size * 2, runtime)
