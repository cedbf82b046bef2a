"""Batches: the DataLoader over uint8 images, for training and for evaluation."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from retinopathy.engine.distributed import ShardSampler
from retinopathy.engine.runtime import Runtime


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


def loader(dataset: Dataset, batch_size: int, sampler: Sampler[int] | list[int], runtime: Runtime
           ) -> DataLoader:
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


def eval_loader(dataset: Dataset, train_batch_size: int, runtime: Runtime) -> DataLoader:
    """Batches for evaluation: this process's shard of ``dataset``, each image once, in order.

    Batches are twice ``train_batch_size`` (the per-process training batch):
    evaluation keeps no activations for a backward pass.
    """
    return loader(dataset, train_batch_size * 2, ShardSampler(len(dataset), runtime.process), runtime)
