"""The decoded-pixel cache returns exactly the decoded pixels, and decodes each image once."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from retinopathy.data.cache import DecodedCache
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.labels import image_path
from retinopathy.engine.batches import collate_images
from retinopathy.errors import RetinopathyError
from retinopathy.stages.demo_data import write_demo_dataset


@pytest.fixture()
def demo(tmp_path):
    root = tmp_path / "demo"
    write_demo_dataset(root, seed=1, train_size=12, test_size=5, image_size=64)
    return root


def test_cached_pixels_equal_decoded_pixels_and_survive_the_jpegs(demo, tmp_path):
    plain = RetinopathyDataset(demo, "train", 32, dtype=torch.uint8)
    cached = DecodedCache(RetinopathyDataset(demo, "train", 32, dtype=torch.uint8), tmp_path / "cache")
    first = [cached[i] for i in range(len(cached))]
    for (image, label), (expected, expected_label) in zip(first, (plain[i] for i in range(len(plain))),
                                                         strict=True):
        assert torch.equal(image, expected) and label == expected_label and image.shape == (3, 32, 32)
    for record in plain.records:  # from now on only the cache can answer
        image_path(demo, record.image).unlink()
    second = [cached[i] for i in range(len(cached))]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


def test_cache_works_in_dataloader_workers(demo, tmp_path):
    dataset = DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), tmp_path / "cache")
    batches = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_images)
    from_workers = torch.cat([images for images, _ in batches])  # fills the cache from 2 processes
    assert dataset._open()[1].sum() == len(dataset)
    direct = torch.stack([dataset[i][0] for i in range(len(dataset))])  # all read from the cache
    assert torch.equal(from_workers, direct)


def test_a_different_size_gets_a_different_file_and_size_is_required(demo, tmp_path):
    small = DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), tmp_path / "cache")
    large = DecodedCache(RetinopathyDataset(demo, "test", 48, dtype=torch.uint8), tmp_path / "cache")
    assert small.pixels_path != large.pixels_path
    with pytest.raises(RetinopathyError, match="data.cache_dir needs data.image_size"):
        DecodedCache(RetinopathyDataset(demo, "test", None, dtype=torch.uint8), tmp_path / "cache")
    with pytest.raises(RetinopathyError, match="stores uint8 pixels.*torch.float32"):
        DecodedCache(RetinopathyDataset(demo, "test", 32), tmp_path / "cache")
