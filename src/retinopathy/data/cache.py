"""A cache of decoded images, so that every epoch after the first skips JPEG decoding.

It is for machines where the DataLoader workers' JPEG decoding is what the
GPU waits for (few CPU cores per GPU). On an H100 with 16 cores it changed
nothing (BENCHMARKS.md, "The decoded cache on the H100"), so it is opt-in.
With ``data.cache_dir`` set, the first epoch decodes each image once and
stores its uint8 pixels in a memory-mapped file there (28,100 course images at
512 px: 22 GB; a RAM-backed folder such as ``/dev/shm`` makes later reads run
at memory speed); later epochs read the pixels back. It changes only speed:
the cached pixels are the decoded pixels, byte for byte.

Each entry is written before its "done" flag, so a run killed while filling
the cache leaves entries that are either complete or decoded again. The
file's name is a hash of everything that decides its content (image paths,
file sizes and modification times, the image size), so a changed image or
setting gets a new file rather than stale pixels.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from retinopathy.data.labels import image_path
from retinopathy.errors import RetinopathyError

if TYPE_CHECKING:  # dataset.py imports this module
    from retinopathy.data.dataset import RetinopathyDataset


def cache_key(dataset: RetinopathyDataset) -> str:
    """A hash of what decides the cached pixels: each image file's identity and the size."""
    digest = hashlib.sha256(f"{dataset.image_size}".encode())
    for record in dataset.records:
        path = image_path(dataset.root, record.image).resolve()
        stat = path.stat()
        digest.update(f"\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


class DecodedCache(Dataset):
    """Wrap a uint8 :class:`RetinopathyDataset` so that each image is decoded at most once.

    Safe with DataLoader workers: each process opens the memory map itself,
    and different indices touch different bytes of the file.
    """

    def __init__(self, dataset: RetinopathyDataset, folder: str | Path) -> None:
        if dataset.dtype != torch.uint8:
            raise RetinopathyError(
                f"the decoded cache stores uint8 pixels, but the {dataset.split} dataset gives "
                f"{dataset.dtype}; open it with dtype=torch.uint8"
            )
        if dataset.image_size is None:
            raise RetinopathyError(
                "params.yaml: data.cache_dir needs data.image_size set (every cached image has "
                "one shape); set data.image_size (e.g. 512) or data.cache_dir to null"
            )
        self.dataset = dataset
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{dataset.split}-{cache_key(dataset)}"
        self.pixels_path, self.done_path = stem.with_suffix(".u8"), stem.with_suffix(".done")
        side = dataset.image_size
        self.shape = (len(dataset), side, side, 3)
        for path, size in ((self.pixels_path, int(np.prod(self.shape))), (self.done_path, len(dataset))):
            if not path.exists() or path.stat().st_size != size:
                with open(path, "wb") as stream:
                    stream.truncate(size)  # sparse: reserves no memory or disk until written
        self._pixels: np.memmap | None = None
        self._done: np.memmap | None = None
        self._pid = -1  # the process that opened the maps

    def _open(self) -> tuple[np.memmap, np.memmap]:
        if self._pixels is None or self._done is None or self._pid != os.getpid():
            self._pixels = np.memmap(self.pixels_path, np.uint8, "r+", shape=self.shape)
            self._done = np.memmap(self.done_path, np.uint8, "r+", shape=(self.shape[0],))
            self._pid = os.getpid()
        return self._pixels, self._done

    def __getstate__(self) -> dict:
        # A worker process opens its own maps; never pickle the mapped bytes.
        state = dict(self.__dict__)
        state["_pixels"] = state["_done"] = None
        return state

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels, done = self._open()
        if done[index]:
            image = torch.from_numpy(np.array(pixels[index]))  # a copy: the map stays read-only to torch
            return image.permute(2, 0, 1), self.dataset.records[index].label
        image, label = self.dataset[index]
        pixels[index] = image.permute(1, 2, 0).numpy()
        done[index] = 1  # after the pixels: a kill in between only costs a decode
        return image, label
