"""The Dataset of one split: decoded images and grades.

`prepare`'s image checks are in :mod:`retinopathy.data.checks`, and the decoded-pixel
cache that wraps this Dataset for training in :mod:`retinopathy.data.cache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from retinopathy.data.images import decode_image
from retinopathy.data.labels import Record, image_path, read_split


class RetinopathyDataset(Dataset):
    """Fundus images and grades of one split of the course layout.

    ``dataset[i]`` is ``(image, label)``: image a [3, H, W] tensor, float32 in
    [0, 1] (the lab's transform, pixel / 255) or, with ``dtype=torch.uint8``,
    the raw pixels for a pipeline that scales on the GPU; label an int 0-4.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int | None = None,
        *,
        records: Sequence[Record] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        """Create the dataset.

        Args:
            root: Folder of the course layout (images and CSVs).
            split: Split name; used to read the CSVs when ``records`` is None.
            image_size: Resize every image to this square size; None keeps it.
            records: Use these records instead of reading the split's CSVs.
            dtype: ``torch.float32`` (scaled to [0, 1]) or ``torch.uint8`` (raw).
        """
        if dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"dtype must be torch.float32 or torch.uint8, got {dtype}")
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.dtype = dtype
        if records is None:
            records, _ = read_split(self.root, split)
        self.records: list[Record] = list(records)

    @property
    def labels(self) -> list[int]:
        """The grade of every record, in order."""
        return [record.label for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        array = decode_image(image_path(self.root, record.image), self.image_size)
        image = torch.from_numpy(array).permute(2, 0, 1)
        if self.dtype == torch.float32:
            # float32 from the start: the lab's np.asarray(img) / 255 went through float64.
            image = image.float().div_(255)
        return image, record.label
