"""Each split decoded once into one uint8 tensor in the device's memory: no loader, no workers.

On a GPU this is what keeps the step fed: the course's 28,100 training images
at 512 px are 22 GB of uint8, which an H100 or H200 holds beside the model, and
nvJPEG decodes them in about 12 s (BENCHMARKS.md); every batch after that is one ``index_select``
on the device, in the sampler's order, so the batches are exactly those the
DataLoader would give. On a CPU the same path holds the CPU decoder's pixels in
RAM (a test checks that it trains exactly as streaming does).

``data.on_device``: ``auto`` (CUDA, when all splits take at most half of the
free GPU memory; else streaming), ``on``, ``off`` (stream from disk through
DataLoader workers, as before).

Decoders: on CUDA, JPEGs are decoded by nvJPEG through
``torchvision.io.decode_jpeg(list, device="cuda")``, batched; torchvision 0.29
deprecates it in favour of TorchCodec, whose CUDA decoder needs a CUDA build of
TorchCodec that PyPI does not ship, so this is the one function to change when
it does. The current stream is synchronised before each batched decode
(torchvision's decoder writes on its own stream; pytorch/vision PR 9606). Images
that are not baseline RGB/YCbCr JPEGs, and every image on a CPU, go through
libjpeg-turbo (:func:`~retinopathy.data.images.decode_image`). Decoded pixels
differ by a few levels between decoders, so the decoder is recorded with the run.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.images import check_pixels, decode_image, jpeg_orientation, read_image_file
from retinopathy.data.labels import Record, image_path
from retinopathy.engine.runtime import Runtime


class Order(Protocol):
    """The indices of a split in the order to batch them, and how many: a sampler with a length, a list."""

    def __iter__(self) -> Iterator[int]: ...

    def __len__(self) -> int: ...


TURBO = "libjpeg-turbo (simplejpeg), on the CPU"
NVJPEG = "nvJPEG (torchvision.io.decode_jpeg), on the GPU"
GPU_DECODE_BATCH = 256  # images per batched nvJPEG call
FREE_SHARE = 0.5  # auto: the splits may take at most this share of the free GPU memory


@dataclass
class ResidentSplit:
    """One split's pixels and grades on the device, and which decoders made them."""

    images: Tensor  # [N, S, S, 3] uint8: NHWC, so a batch is an NCHW view in channels_last layout
    labels: Tensor  # [N] int64
    decoders: dict[str, int]  # decoder -> images it decoded

    def __len__(self) -> int:
        return len(self.labels)


class ResidentBatches:
    """(images [B, 3, S, S] uint8, labels [B]) on the device in the sampler's order: a DataLoader's."""

    def __init__(self, split: ResidentSplit, sampler: Order, batch_size: int) -> None:
        self.split, self.sampler, self.batch_size = split, sampler, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = list(self.sampler)
        device = self.split.images.device
        for start in range(0, len(order), self.batch_size):
            index = torch.tensor(order[start : start + self.batch_size], device=device)
            images = self.split.images.index_select(0, index).permute(0, 3, 1, 2)
            yield images, self.split.labels.index_select(0, index)


def split_bytes(count: int, size: int) -> int:
    """The memory one split of ``count`` images of ``size`` x ``size`` takes on the device."""
    return count * size * size * 3


def use_resident(switch: str, runtime: Runtime, size: int | None, total_bytes: int) -> bool:
    """``data.on_device``: ``on``, ``off``, or ``auto`` (CUDA, and all splits in half the free memory).

    Raises:
        RetinopathyError: ``on`` without ``data.image_size`` (a resident split has one shape).
    """
    if switch == "off":
        return False
    if size is None:
        if switch == "on":
            raise RetinopathyError(
                "params.yaml: data.on_device `on` needs data.image_size set (every "
                "image of a resident split has one shape); set it, or on_device to auto"
            )
        return False
    if switch == "on":
        return True
    if runtime.device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(runtime.device)
    return total_bytes <= FREE_SHARE * free


def _decode_cpu(paths: Sequence[Path], size: int, out: Tensor, indices: Sequence[int]) -> None:
    def one(i: int) -> None:
        out[indices[i]] = torch.from_numpy(decode_image(paths[i], size))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, range(len(paths))))


def _resized(image: Tensor, size: int) -> Tensor:
    """uint8 [3, H, W] -> [3, size, size] on its device (bilinear, anti-aliased when shrinking)."""
    if image.shape[-2:] == (size, size):
        return image
    scaled = torch.nn.functional.interpolate(
        image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return scaled[0].round_().clamp_(0, 255).to(torch.uint8)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_batched(paths: Sequence[Path], size: int, out: Tensor) -> list[int]:
    """torchvision's batched ``decode_jpeg`` on ``out``'s device (nvJPEG on CUDA) into ``out``.

    Returns:
        The indices it left to the CPU decoder: files that are not JPEGs, and every
        image of a batch the decoder refused (a CMYK or corrupt JPEG among them).
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        data = list(pool.map(read_image_file, paths))
    left: list[int] = []
    for start in range(0, len(paths), GPU_DECODE_BATCH):
        chunk = range(start, min(start + GPU_DECODE_BATCH, len(paths)))
        # A JPEG stored rotated (EXIF orientation) goes to the CPU decoder, which turns it upright.
        upright = {i for i in chunk if data[i][:2] == b"\xff\xd8" and jpeg_orientation(data[i]) == 1}
        jpegs = [i for i in chunk if i in upright]
        left += [i for i in chunk if i not in upright]
        for i in jpegs:  # bounded as the CPU decoder is (the others are checked there)
            check_pixels(paths[i], data[i], None)
        encoded = [torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in jpegs]
        synchronize(out.device)  # the decoder writes on its own stream: nothing may still read `out`
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: see the module doc
                decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=out.device)
        except RuntimeError:
            left += jpegs  # a CMYK or corrupt JPEG in the batch: this batch goes to the CPU decoder
            continue
        synchronize(out.device)  # and its writes are done before anything reads them
        for i, image in zip(jpegs, decoded, strict=True):
            out[i] = _resized(image, size).permute(1, 2, 0)
    return left


def decode_split(root: str | Path, records: Sequence[Record], size: int, runtime: Runtime) -> ResidentSplit:
    """Decode every image of ``records`` once into a :class:`ResidentSplit` on the runtime's device.

    Raises:
        RetinopathyError: for an image that cannot be decoded (naming it), or a
            device without the memory for the split.
    """
    paths = [image_path(root, record.image) for record in records]
    device = runtime.device
    try:
        images = torch.empty((len(paths), size, size, 3), dtype=torch.uint8, device=device)
    except torch.OutOfMemoryError:
        gigabytes = split_bytes(len(paths), size) / 1e9
        raise RetinopathyError(
            f"{gigabytes:.1f} GB of decoded images do not fit in {device}'s memory; "
            "set params.yaml data.on_device to auto or off"
        ) from None
    decoders: dict[str, int] = {}
    left = list(range(len(paths)))
    if device.type == "cuda":
        left = decode_batched(paths, size, images)
        decoders[NVJPEG] = len(paths) - len(left)
    if left:
        staging = torch.empty((len(left), size, size, 3), dtype=torch.uint8)
        _decode_cpu([paths[i] for i in left], size, staging, range(len(left)))
        images[torch.tensor(left, device=device)] = staging.to(device)
        decoders[TURBO] = len(left)
    labels = torch.tensor([record.label for record in records], dtype=torch.int64, device=device)
    return ResidentSplit(images, labels, {name: n for name, n in decoders.items() if n})


def planned_decoder(resident: bool, runtime: Runtime) -> str:
    """The decoder of a run's pixels (for its fingerprint and info): nvJPEG only when resident on CUDA."""
    return NVJPEG if resident and runtime.device.type == "cuda" else TURBO


def describe_decoders(splits: Sequence[ResidentSplit]) -> str:
    """Which decoders made the resident pixels, in words, for the run's info."""
    counts: dict[str, int] = {}
    for split in splits:
        for name, count in split.decoders.items():
            counts[name] = counts.get(name, 0) + count
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{name}: {count} images" for name, count in counts.items())
