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

``data.cache_dir`` may be a shared folder such as ``/dev/shm``, so nothing in
it is trusted: the cache lives in a private subfolder per user
(``<cache_dir>/uid-<uid>``, mode 0700, refused unless it is a real folder
owned by this user and closed to others); its files are opened relative to
that folder, never through a symbolic link; and the flags file starts with a
header naming this project, the format and the full hash of the records, so
pixels are used only for the records they were written for.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.labels import Record, image_path

MAGIC = b"retinopathy decoded-pixel cache v1\n"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def cache_key(dataset: RetinopathyDataset) -> str:
    """A hash of what decides the cached pixels: each image file's identity and the size."""
    digest = hashlib.sha256(f"{dataset.image_size}".encode())
    for record in dataset.records:
        path = image_path(dataset.root, record.image).resolve()
        stat_ = path.stat()
        digest.update(f"\0{path}\0{stat_.st_size}\0{stat_.st_mtime_ns}".encode())
    return digest.hexdigest()


def private_folder(base: str | Path) -> Path:
    """``<base>/uid-<uid>``, made if missing: a folder only this user can enter.

    Raises:
        RetinopathyError: if it is a link, not a folder, owned by someone else or
            open to others (anything there may have been planted).
    """
    folder = Path(base) / f"uid-{os.getuid()}"
    try:
        Path(base).mkdir(parents=True, exist_ok=True)
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise RetinopathyError(
            f"{folder}: cannot create the pixel cache there ({error.strerror}); "
            "set params.yaml `data.cache_dir` to a folder you can write"
        ) from None
    _check_private(folder, os.lstat(folder))
    return folder


def _check_private(folder: Path, info: os.stat_result) -> None:
    problem = None
    if not stat.S_ISDIR(info.st_mode):
        problem = "is not a folder (a symbolic link?)"
    elif info.st_uid != os.getuid():
        problem = f"belongs to user id {info.st_uid}, not to you ({os.getuid()})"
    elif info.st_mode & 0o077:
        problem = f"is open to other users (mode {stat.S_IMODE(info.st_mode):o})"
    if problem:
        raise RetinopathyError(
            f"{folder}: the private pixel cache folder {problem}, so its files cannot be trusted; "
            "delete it (it is rebuilt), or set params.yaml `data.cache_dir` to another folder"
        )


def _open_in(folder_fd: int, name: str, flags: int) -> int:
    """Open ``name`` inside the folder ``folder_fd``, never through a symbolic link."""
    try:
        return os.open(name, flags | _NOFOLLOW, 0o600, dir_fd=folder_fd)
    except OSError as error:
        raise RetinopathyError(
            f"{name} in the pixel cache: cannot open it ({error.strerror}); "
            "delete the cache folder (it is rebuilt)"
        ) from None


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
        self.folder = private_folder(folder)
        key = cache_key(dataset)
        side = dataset.image_size
        self.shape = (len(dataset), side, side, 3)
        stem = f"{dataset.split}-{key[:20]}"
        self.pixels_name, self.done_name = f"{stem}.u8", f"{stem}.done"
        # The flags file: the header, then one byte per image (1 once its pixels are written).
        self.header = MAGIC + f"{key} {self.shape}\n".encode()
        self._create()
        self._pixels: np.memmap | None = None
        self._done: np.memmap | None = None
        self._pid = -1  # the process that opened the maps

    def _folder_fd(self) -> int:
        fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW)
        _check_private(self.folder, os.fstat(fd))  # the folder itself, not whatever its path names now
        return fd

    def _create(self) -> None:
        """Make both files, fresh, unless both are this cache's own (right header and sizes)."""
        folder_fd = self._folder_fd()
        try:
            sizes = {
                self.pixels_name: int(np.prod(self.shape)),
                self.done_name: len(self.header) + len(self.dataset),
            }
            fds = {name: _open_in(folder_fd, name, os.O_RDWR | os.O_CREAT) for name in sizes}
            try:
                intact = all(os.fstat(fd).st_size == sizes[name] for name, fd in fds.items())
                if not intact or os.pread(fds[self.done_name], len(self.header), 0) != self.header:
                    for name, fd in fds.items():  # start over: no flag may point at unwritten pixels
                        os.ftruncate(fd, 0)
                        os.ftruncate(fd, sizes[name])  # sparse: reserves no memory or disk until written
                    os.pwrite(fds[self.done_name], self.header, 0)
            finally:
                for fd in fds.values():
                    os.close(fd)
        finally:
            os.close(folder_fd)

    def _open(self) -> tuple[np.memmap, np.memmap]:
        if self._pixels is None or self._done is None or self._pid != os.getpid():
            folder_fd = self._folder_fd()
            try:
                maps = []
                for name, shape, offset in (
                    (self.pixels_name, self.shape, 0),
                    (self.done_name, (self.shape[0],), len(self.header)),
                ):
                    with os.fdopen(_open_in(folder_fd, name, os.O_RDWR), "r+b") as stream:
                        maps.append(np.memmap(stream, np.uint8, "r+", offset=offset, shape=shape))
            finally:
                os.close(folder_fd)
            self._pixels, self._done = maps
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


def open_dataset(
    root: str | Path,
    split: str,
    records: Sequence[Record],
    image_size: int | None,
    cache_dir: str | None = None,
) -> RetinopathyDataset | DecodedCache:
    """The uint8 dataset of ``records``, behind the decoded-pixel cache when ``cache_dir`` is set."""
    dataset = RetinopathyDataset(root, split, image_size, records=records, dtype=torch.uint8)
    return DecodedCache(dataset, cache_dir) if cache_dir else dataset
