"""The decoded-pixel cache returns exactly the decoded pixels, and decodes each image once."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from torch.utils.data import DataLoader

from retinopathy.core.errors import RetinopathyError
from retinopathy.data.cache import DecodedCache
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.labels import image_path
from retinopathy.engine.batches import collate_images
from retinopathy.stages.demo_data import write_demo_dataset


@pytest.fixture()
def demo(tmp_path):
    root = tmp_path / "demo"
    write_demo_dataset(root, seed=1, train_size=12, test_size=10, image_size=64, variation=True)
    return root


def test_cached_pixels_equal_decoded_pixels_and_survive_the_jpegs(demo, tmp_path):
    plain = RetinopathyDataset(demo, "train", 32, dtype=torch.uint8)
    cached = DecodedCache(RetinopathyDataset(demo, "train", 32, dtype=torch.uint8), tmp_path / "cache")
    first = [cached[i] for i in range(len(cached))]
    for (image, label), (expected, expected_label) in zip(
        first, (plain[i] for i in range(len(plain))), strict=True
    ):
        assert torch.equal(image, expected) and label == expected_label and image.shape == (3, 32, 32)
    for record in plain.records:  # from now on only the cache can answer
        image_path(demo, record.image).unlink()
    second = [cached[i] for i in range(len(cached))]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


@pytest.mark.slow
def test_cache_works_in_dataloader_workers(demo, tmp_path):
    dataset = DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), tmp_path / "cache")
    batches = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_images)
    from_workers = torch.cat([images for images, _ in batches])  # fills the cache from 2 processes
    assert dataset._open()[1].sum() == len(dataset)
    direct = torch.stack([dataset[i][0] for i in range(len(dataset))])  # all read from the cache
    assert torch.equal(from_workers, direct)


@pytest.mark.slow
def test_a_different_size_gets_a_different_file_and_size_is_required(demo, tmp_path):
    small = DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), tmp_path / "cache")
    large = DecodedCache(RetinopathyDataset(demo, "test", 48, dtype=torch.uint8), tmp_path / "cache")
    assert small.pixels_name != large.pixels_name
    with pytest.raises(RetinopathyError, match="data.cache_dir needs data.image_size"):
        DecodedCache(RetinopathyDataset(demo, "test", None, dtype=torch.uint8), tmp_path / "cache")
    with pytest.raises(RetinopathyError, match="stores uint8 pixels.*torch.float32"):
        DecodedCache(RetinopathyDataset(demo, "test", 32), tmp_path / "cache")


@pytest.mark.slow
def test_the_cache_lives_in_a_private_folder_per_user(demo, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), shared)
    own = shared / f"uid-{os.getuid()}"
    assert own.is_dir() and stat.S_IMODE(own.stat().st_mode) == 0o700
    assert {p.parent for p in shared.rglob("*.u8")} == {own}


@pytest.mark.slow
def test_a_folder_open_to_others_or_a_link_is_refused(demo, tmp_path):
    shared = tmp_path / "shared"
    planted = shared / f"uid-{os.getuid()}"
    planted.mkdir(parents=True, mode=0o777)
    planted.chmod(0o777)  # as another user could have left it, with files of theirs inside
    with pytest.raises(RetinopathyError, match="open to other users.*delete it"):
        DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), shared)
    planted.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    planted.symlink_to(elsewhere)
    with pytest.raises(RetinopathyError, match="not a folder"):
        DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), shared)


@pytest.mark.slow
def test_a_planted_symbolic_link_is_never_followed(demo, tmp_path):
    cache = DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), tmp_path / "cache")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (cache.folder / cache.pixels_name).unlink()
    (cache.folder / cache.pixels_name).symlink_to(victim)
    with pytest.raises(RetinopathyError, match="cannot open it"):
        DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), tmp_path / "cache")
    assert victim.read_text() == "precious"


@pytest.mark.slow
def test_pixels_written_for_other_records_are_not_used(demo, tmp_path):
    dataset = RetinopathyDataset(demo, "test", 32, dtype=torch.uint8)
    cache = DecodedCache(dataset, tmp_path / "cache")
    expected = [cache[i][0] for i in range(len(cache))]  # fills the cache
    # Someone rewrites the files: other pixels, every flag set, but not our header.
    pixels = cache.folder / cache.pixels_name
    pixels.write_bytes(b"\xff" * pixels.stat().st_size)
    flags = cache.folder / cache.done_name
    flags.write_bytes(b"other header".ljust(len(cache.header), b"\n") + b"\x01" * len(dataset))
    again = DecodedCache(RetinopathyDataset(demo, "test", 32, dtype=torch.uint8), tmp_path / "cache")
    assert again._open()[1].sum() == 0  # nothing trusted: every image is decoded again
    assert all(torch.equal(again[i][0], image) for i, image in enumerate(expected))
