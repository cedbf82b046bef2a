"""The device-resident data path: decoded once, the same batches and the same training as streaming."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import run_arm, write_params
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.data.index import read_index
from retinopathy.engine import loops
from retinopathy.engine.batches import loader
from retinopathy.engine.distributed import EpochShuffleSampler, Process
from retinopathy.engine.resident import TURBO, ResidentBatches, decode_split, use_resident
from retinopathy.engine.runtime import COMPILE_PAYS_FROM, compile_wanted, make_runtime, plain_runtime
from retinopathy.models.head import Head
from test_train import read_history

CPU = torch.device("cpu")


def test_resident_batches_are_the_dataloaders_batches(tiny_project):
    records = read_index(tiny_project / "data/prepared/index.csv")["train"]
    runtime = make_runtime(CPU, num_workers=0)
    split = decode_split(tiny_project / "data/demo", records, 32, runtime)
    assert split.decoders == {TURBO: len(records)} and split.images.shape == (len(records), 32, 32, 3)
    sampler = EpochShuffleSampler(len(records), seed=3, process=Process())
    sampler.set_epoch(2)
    dataset = RetinopathyDataset(tiny_project / "data/demo", "train", 32, records=records, dtype=torch.uint8)
    streamed = list(loader(dataset, 8, sampler, runtime))
    resident = list(ResidentBatches(split, sampler, 8))
    assert len(resident) == len(streamed) == len(ResidentBatches(split, sampler, 8))
    for (images, labels), (expected, expected_labels) in zip(resident, streamed, strict=True):
        assert torch.equal(images, expected) and torch.equal(labels, expected_labels)
        assert images.is_contiguous(memory_format=torch.channels_last)  # as the collate lays batches out


@pytest.mark.slow
def test_training_from_device_memory_gives_the_history_of_streaming(tiny_project, scratch_dir):
    twin = scratch_dir / "twin"
    shutil.copytree(tiny_project, twin)
    write_params(tiny_project, data={"on_device": "off"})
    run_arm(tiny_project)
    write_params(twin, data={"on_device": "on"})
    status = run_arm(twin)
    assert status.resident is True and status.decoder == TURBO
    assert read_history(twin) == read_history(tiny_project)


def test_on_device_auto_streams_on_a_cpu_and_on_needs_an_image_size():
    runtime = plain_runtime(CPU)
    assert use_resident("auto", runtime, 512, 1) is False
    assert use_resident("on", runtime, 512, 10**12) is True and use_resident("off", runtime, 512, 1) is False
    with pytest.raises(RetinopathyError, match="data.on_device `on` needs data.image_size"):
        use_resident("on", runtime, None, 1)


def test_compile_auto_only_for_long_cuda_runs():
    cpu = plain_runtime(CPU)
    assert not compile_wanted("auto", cpu, 10 * COMPILE_PAYS_FROM)
    assert compile_wanted("on", cpu, 1) and not compile_wanted("off", cpu, 10**9)
    cuda = make_runtime(torch.device("cuda", 0), num_workers=0)  # describes a device; none is touched
    assert compile_wanted("auto", cuda, COMPILE_PAYS_FROM) and not compile_wanted("auto", cuda, 1000)


class Counting(torch.nn.Module):
    """A model that counts the batch sizes it is called with."""

    def __init__(self, inner: torch.nn.Module, seen: list[int]) -> None:
        super().__init__()
        self.inner, self.seen = inner, seen

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(len(images))
        return self.inner(images.float().flatten(1))


def test_the_last_smaller_batch_runs_on_the_eager_model_so_nothing_compiles_again():
    torch.manual_seed(0)
    inner = torch.nn.Linear(3 * 4 * 4, 5)
    compiled_sizes, eager_sizes = [], []
    model, eager = Counting(inner, compiled_sizes), Counting(inner, eager_sizes)
    batches = [
        (torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8), torch.zeros(n, dtype=torch.int64))
        for n in (4, 4, 3)
    ]
    optimizer = torch.optim.SGD(inner.parameters(), lr=0.1)
    loops.train_epoch(
        loops.Learner(model, optimizer, Head("cross_entropy"), eager=eager), batches, plain_runtime(CPU)
    )
    assert compiled_sizes == [4, 4] and eager_sizes == [3]


def test_the_batched_decoder_fills_every_slot_and_leaves_non_jpegs_to_the_cpu(tiny_project, monkeypatch):
    from PIL import Image

    from retinopathy.data.images import decode_image
    from retinopathy.engine import resident

    monkeypatch.setattr(resident, "GPU_DECODE_BATCH", 4)  # several batches of the CPU build of the same call
    records = read_index(tiny_project / "data/prepared/index.csv")["test"]
    paths = [tiny_project / "data/demo" / f"{r.image}.jpeg" for r in records]
    Image.open(paths[5]).save(paths[5], "PNG")  # a PNG under a .jpeg name
    out = torch.zeros((len(paths), 64, 64, 3), dtype=torch.uint8)
    left = resident.decode_batched(paths, 64, out)
    assert left == [5]
    for i in (0, 4, len(paths) - 1):  # as stored: libjpeg's pixels, a level or two from turbo's
        difference = (out[i].int() - torch.from_numpy(decode_image(paths[i])).int()).abs()
        assert difference.max() <= 3 and out[i].float().mean() > 5
    smaller = torch.zeros((len(paths), 32, 32, 3), dtype=torch.uint8)
    resident.decode_batched(paths, 32, smaller)  # resized on the device
    close = (smaller[0].float() - torch.from_numpy(decode_image(paths[0], 32)).float()).abs().mean()
    assert close < 4
