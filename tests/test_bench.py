"""`retinopathy bench` on tiny settings: the structure of what it measures, never its speed."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from retinopathy import cli
from retinopathy.commands.bench.cli import main
from retinopathy.commands.bench.inputs import INPUT_TARGET, ReferenceDataset, bench_input, write_bench_images
from retinopathy.commands.bench.machine import describe_machine, machine_line
from retinopathy.commands.bench.output import format_result
from retinopathy.commands.bench.results import BenchResult, Comparison
from retinopathy.commands.bench.timing import Measurement, alternate
from retinopathy.commands.bench.training import (
    MODEL_TARGET,
    BackendFlags,
    bench_fastpath,
    bench_models,
    image_bank,
)
from retinopathy.data.dataset import RetinopathyDataset
from retinopathy.engine.runtime import make_runtime

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny steps on a shared machine: one intra-op thread avoids OpenMP contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    return folder, write_bench_images(folder, 4, size=64)


def check_comparison(c: Comparison, rounds: int) -> None:
    for side in (c.baseline, c.candidate):
        assert side.label
        assert len(side.images) == len(side.seconds) == rounds
        assert all(n > 0 for n in side.images) and all(s > 0 for s in side.seconds)
        assert side.rate > 0
        assert side.rate == pytest.approx(sum(side.images) / sum(side.seconds))
    assert c.ratio == pytest.approx(c.candidate.rate / c.baseline.rate)
    assert len(c.round_ratios) == rounds
    if c.target is not None:
        assert c.met == (c.ratio >= c.target)


def test_alternate_rotates_and_counts_every_round():
    calls = []

    def unit(name, count):
        def run():
            calls.append(name)
            time.sleep(0.002)  # longer than a round's budget: exactly one unit per round
            return count

        return run

    timed = alternate({"a": unit("a", 2), "b": unit("b", 3)}, seconds=0.003, rounds=3, warmup=1)
    # Warm-up a, b; then one unit per side and round, the first side rotating.
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert timed["a"].images == [2, 2, 2] and timed["b"].images == [3, 3, 3]
    assert all(s >= 0.002 for s in timed["a"].seconds)
    with pytest.raises(ValueError, match="no images"):
        alternate({"a": unit("a", 0)}, seconds=1e-6, rounds=1, warmup=0)


def test_generated_jpegs_are_course_like(jpegs):
    folder, records = jpegs
    assert [r.label for r in records] == [0, 1, 2, 3, 4][: len(records)]
    for record in records:
        assert (folder / f"{record.image}.jpeg").read_bytes()[:2] == b"\xff\xd8"


def test_reference_loader_is_the_labs_float64_and_sees_the_same_pixels(jpegs):
    folder, records = jpegs
    image, label = ReferenceDataset(folder, records)[1]
    assert image.dtype == torch.float64 and image.shape == (3, 64, 64)
    assert image.min() >= 0.0 and image.max() <= 1.0 and label == records[1].label
    ours, _ = RetinopathyDataset(folder, "bench", None, records=records, dtype=torch.uint8)[1]
    # Two JPEG decoders may round differently, but it is the same picture.
    assert np.abs(image.numpy() * 255 - ours.numpy()).mean() < 2.0
    small, _ = ReferenceDataset(folder, records, size=32)[1]
    assert small.shape == (3, 32, 32)


def test_bench_input_measures_both_sides(jpegs):
    folder, records = jpegs
    comparisons = bench_input(
        folder, records, CPU, source_size=64, seconds=0.01, rounds=2, workers=1, epoch_images=8
    )
    assert [c.name for c in comparisons] == [
        "64 px, 0 workers",
        "32 px, 0 workers",
        "64 px, decoded cache",
        "64 px, ours with workers",
    ]
    assert comparisons[0].target == INPUT_TARGET
    assert comparisons[3].baseline is comparisons[0].baseline  # measured once, alternated with both
    for c in comparisons:
        assert c.section == "input"
        check_comparison(c, rounds=2)
    without = bench_input(
        folder, records, CPU, source_size=64, seconds=0.01, rounds=1, workers=0, epoch_images=4
    )
    assert len(without) == 3  # no workers row


@pytest.mark.slow
def test_bench_models_same_weights_both_sides(jpegs):
    folder, records = jpegs
    batches = image_bank(folder, records, 32, 3, CPU)
    assert [b[0].shape for b in batches] == [(3, 3, 32, 32)] * 2  # 4 images cycled to 2 batches
    assert batches[0][0].dtype == torch.uint8
    (c,) = bench_models(batches, CPU, models=("resnet18",), seconds=0.01, rounds=2, warmup=1)
    assert c.section == "models" and c.target == MODEL_TARGET
    assert (c.baseline.label, c.candidate.label) == ("torchvision", "ours")
    check_comparison(c, rounds=2)
    assert c.baseline.images[0] % 3 == 0  # whole training steps of batch 3


@pytest.mark.slow
def test_bench_fastpath_forced_switches_and_flags_restored(jpegs):
    folder, records = jpegs
    batches = image_bank(folder, records, 32, 2, CPU)
    flags = BackendFlags.current()
    runtime = make_runtime(CPU, precision="bf16", channels_last="on", num_workers=0)
    c = bench_fastpath(batches, CPU, seconds=0.01, rounds=1, warmup=1, runtime=runtime)
    assert c.section == "fastpath" and c.target is None
    assert "bf16 autocast" in c.note and "channels_last" in c.note
    check_comparison(c, rounds=1)
    assert BackendFlags.current() == flags


def test_describe_machine():
    machine = describe_machine(CPU)
    assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["usable_cores"] >= 1
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == 1
    assert "cuda_device" in machine and machine["cuda_device"] is None
    assert "Python" in machine_line(machine)


def test_format_result_warns_about_a_busy_machine():
    machine = describe_machine(CPU)
    measured = Measurement("base", [8, 8], [1.0, 2.0])
    doubled = Measurement("cand", [16, 16], [1.0, 2.0])
    comparison = Comparison("models", "resnet18", measured, doubled, target=0.95)
    result = BenchResult(
        machine,
        {
            "images": 4,
            "source_size": 64,
            "jpeg_quality": 95,
            "input_batch": 4,
            "batch": 2,
            "size": 32,
            "seconds": 1,
            "rounds": 2,
        },
        [comparison],
    )
    assert comparison.ratio == pytest.approx(2.0) and comparison.round_ratios == [2.0, 2.0]
    machine.update(other_processes_cores=0.0, torch_threads=2)
    text = format_result(result)
    assert "2.00x" in text and ">= 0.95x met" in text and "WARNING" not in text
    machine.update(other_processes_cores=1.2)
    assert "WARNING" in format_result(result) and "--threads 1" in format_result(result)


@pytest.mark.slow
def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = main(
        [
            "--device",
            "cpu",
            "--source-size",
            "64",
            "--images",
            "4",
            "--size",
            "32",
            "--batch",
            "2",
            "--seconds",
            "0.01",
            "--rounds",
            "1",
            "--workers",
            "0",
            "--models",
            "resnet18",
            "--threads",
            "1",
            "--only",
            "input",
            "--only",
            "models",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    text = capsys.readouterr().out
    assert "machine: " in text and "torch " in text
    assert "(a) input pipeline" in text and "(b) training step" in text
    assert "(c) fast path" not in text
    figures = json.loads(out.read_text())
    assert figures["machine"]["torch"] == torch.__version__
    assert figures["settings"]["sections"] == ["input", "models"]
    assert [c["section"] for c in figures["comparisons"]] == ["input", "input", "input", "models"]
    for c in figures["comparisons"]:
        base, cand = c["baseline"]["images_per_s"], c["candidate"]["images_per_s"]
        assert base > 0 and cand > 0
        assert c["ratio"] == pytest.approx(cand / base)
    assert figures["comparisons"][0]["target_min_ratio"] == 3.0


def test_main_rejects_bad_options():
    with pytest.raises(SystemExit):
        main(["--models", "vgg16"])
    with pytest.raises(SystemExit):
        main(["--seconds", "0"])


def test_the_dispatcher_runs_bench_with_its_options(capsys):
    # `retinopathy bench ...` as a user types it: the dispatcher imports the package and calls its main.
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: retinopathy bench") and "--only" in usage and "--threads" in usage
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "--seconds", "0"])
    assert exit_.value.code == 2 and "--seconds" in capsys.readouterr().err


def test_option_a_travels_as_one_buffer_per_batch_and_decodes_as_a_batch(jpegs):
    from retinopathy.commands.bench.gpu import BytesDataset, collate_bytes, nvjpeg_batch

    folder, records = jpegs
    dataset = BytesDataset(folder, records[:3])
    buffer, ends, labels = collate_bytes([dataset[i] for i in range(3)])
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1 and ends.tolist()[-1] == len(buffer)
    images = nvjpeg_batch(buffer, ends, 32, torch.device("cpu"))  # the same call on the CPU build
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [r.label for r in records[:3]]
