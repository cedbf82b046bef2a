"""The generated JPEGs, the lab's reference loader, and (a): loading throughput, ours against it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from retinopathy.commands.bench.results import Comparison
from retinopathy.commands.bench.timing import alternate, sync_for
from retinopathy.core.contract import COURSE_IMAGE_SIZE, NUM_GRADES
from retinopathy.data.cache import DecodedCache
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.labels import Record, image_path
from retinopathy.data.synthetic import render_fundus
from retinopathy.engine.batches import loader
from retinopathy.engine.runtime import Runtime, make_runtime

SOURCE_SIZE = COURSE_IMAGE_SIZE  # the course's images are 512x512
JPEG_QUALITY = 95
INPUT_BATCH = 4  # the lab's batch size
INPUT_TARGET = 3.0  # ours >= 3x the reference loader at 512 px
SPLIT = "bench"  # records are passed in, so no CSVs are read for this split
REFERENCE_LOADER = (
    "the lab's loader: PIL.Image.open -> np.asarray(img) / 255 (float64) -> "
    "transpose(2, 0, 1) -> torch.from_numpy; DataLoader, no workers"
)
OUR_LOADER = (
    "RetinopathyDataset(dtype=torch.uint8) (libjpeg-turbo via simplejpeg) through engine.batches.loader"
)


def write_bench_images(
    folder: str | Path, count: int, *, size: int = SOURCE_SIZE, seed: int = 0
) -> list[Record]:
    """Write ``count`` synthetic fundus JPEGs (quality 95) named ``bench_NNNNN.jpeg``.

    Returns:
        Their records, grades cycling 0-4.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        record = Record(f"bench_{i:05d}", i % NUM_GRADES)
        pixels = render_fundus(record.label, np.random.default_rng([seed, i]), size)
        Image.fromarray(pixels, "RGB").save(image_path(folder, record.image), "JPEG", quality=JPEG_QUALITY)
        records.append(record)
    return records


class ReferenceDataset(Dataset):
    """The lab's loader: PIL -> ``np.asarray(img) / 255`` (float64) -> CHW tensor.

    ``size`` resizes with Pillow (bilinear) before the scaling, as a lab loader
    would have to for a smaller input; None keeps the stored size, as the lab did.
    """

    def __init__(self, root: str | Path, records: Sequence[Record], size: int | None = None) -> None:
        self.root, self.records, self.size = Path(root), list(records), size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        record = self.records[index]
        with Image.open(image_path(self.root, record.image)) as img:
            if self.size is not None:
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
            array = np.asarray(img) / 255
        return torch.from_numpy(array.transpose(2, 0, 1)), record.label


def _epoch_indices(size: int, epoch_images: int) -> list[int]:
    """The dataset's indices, cycled to at least ``epoch_images`` (one timed pass)."""
    return [i % size for i in range(max(size, epoch_images))]


def _loader_pass(loader: DataLoader) -> Callable[[], int]:
    def run() -> int:
        count = 0
        for images, _ in loader:
            count += images.shape[0]
        return count

    return run


def bench_input(
    root: str | Path,
    records: Sequence[Record],
    device: torch.device,
    *,
    source_size: int = SOURCE_SIZE,
    seconds: float,
    rounds: int,
    workers: int | str = "auto",
    batch: int = INPUT_BATCH,
    epoch_images: int = 256,
) -> list[Comparison]:
    """Images/s of our uint8 loader against the lab's reference loader.

    Compares at ``source_size`` (no workers on either side: like for like),
    at ``source_size // 2`` (where our decoder scales in the DCT and the
    reference must resize), and, if ``workers`` resolves to more than 0, our
    loader with those workers against the same reference.

    Returns:
        The comparisons, the first being the one with the 3x target.
    """
    half = max(source_size // 2, 1)
    sync = sync_for(device)
    no_workers = make_runtime(device, num_workers=0)
    with_workers = make_runtime(device, num_workers=workers)
    indices = _epoch_indices(len(records), epoch_images)

    def ours(size: int, runtime: Runtime) -> DataLoader:
        dataset = RetinopathyDataset(root, SPLIT, size, records=records, dtype=torch.uint8)
        return loader(dataset, batch, indices, runtime)  # a list of indices serves as sampler

    def reference(size: int | None) -> DataLoader:
        return DataLoader(ReferenceDataset(root, records, size), batch_size=batch, sampler=indices)

    # alternate() labels each measurement with its key, so the keys are the table's labels.
    n = with_workers.num_workers
    workers_label = f"ours, {n} worker{'s' * (n > 1)}"
    full = {"reference": reference(None), "ours": ours(source_size, no_workers)}
    if n > 0:
        full[workers_label] = ours(source_size, with_workers)
    timed = alternate(
        {k: _loader_pass(v) for k, v in full.items()}, seconds=seconds, rounds=rounds, sync=sync
    )
    del full  # shuts the worker processes down before the next measurement
    scaled = alternate(
        {
            "reference+resize": _loader_pass(reference(half)),
            "ours, DCT-scaled": _loader_pass(ours(half, no_workers)),
        },
        seconds=seconds,
        rounds=rounds,
        sync=sync,
    )

    comparisons = [
        Comparison(
            "input",
            f"{source_size} px, 0 workers",
            timed["reference"],
            timed["ours"],
            INPUT_TARGET,
            "like for like: both decode in the main process",
        ),
        Comparison(
            "input",
            f"{half} px, 0 workers",
            scaled["reference+resize"],
            scaled["ours, DCT-scaled"],
            note=f"ours decodes at {half} px by DCT scaling; the reference decodes "
            f"{source_size} px and resizes (Pillow, bilinear)",
        ),
    ]
    # Epochs after the first with data.cache_dir set: the pixels are read back, not decoded.
    with tempfile.TemporaryDirectory(prefix="retinopathy-bench-cache-") as folder:
        cached = DecodedCache(
            RetinopathyDataset(root, SPLIT, source_size, records=records, dtype=torch.uint8), folder
        )
        for index in range(len(cached)):
            cached[index]  # fill the cache: the first epoch's work
        decoding = _loader_pass(ours(source_size, no_workers))
        from_cache = _loader_pass(loader(cached, batch, indices, no_workers))
        reused = alternate(
            {"ours, decoding": decoding, "ours, from cache": from_cache},
            seconds=seconds,
            rounds=rounds,
            sync=sync,
        )
    comparisons.append(
        Comparison(
            "input",
            f"{source_size} px, decoded cache",
            reused["ours, decoding"],
            reused["ours, from cache"],
            note="data.cache_dir: after the first epoch the uint8 pixels are read back from a "
            "memory-mapped file instead of decoded; 0 workers on both sides",
        )
    )
    if workers_label in timed:
        comparisons.append(
            Comparison(
                "input",
                f"{source_size} px, ours with workers",
                timed["reference"],
                timed[workers_label],
                note=f"engine.batches.loader with {n} worker process(es), "
                f"pin_memory={with_workers.pin_memory}; the reference still has none",
            )
        )
    return comparisons
