"""One run: generate the JPEGs, measure the chosen sections, return what they measured."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from retinopathy.commands.bench.gpu import bench_compile, bench_feed
from retinopathy.commands.bench.inputs import (
    INPUT_BATCH,
    JPEG_QUALITY,
    SOURCE_SIZE,
    bench_input,
    write_bench_images,
)
from retinopathy.commands.bench.machine import cpu_seconds, describe_machine, load_average, other_load
from retinopathy.commands.bench.results import SECTIONS, BenchResult
from retinopathy.commands.bench.training import bench_fastpath, bench_models, image_bank
from retinopathy.core.registry import OWN_MODELS
from retinopathy.engine.runtime import make_runtime, resolve_device


@dataclass(frozen=True)
class Settings:
    """Resolved options of one run."""

    device: str = "auto"
    images: int = 64
    source_size: int = SOURCE_SIZE
    batch: int | None = None  # None: 8 on CPU, 64 on CUDA
    size: int | None = None  # None: 128 on CPU, 512 on CUDA
    seconds: float | None = None  # None: 12 on CPU, 10 on CUDA
    rounds: int = 6
    workers: int | str = "auto"
    models: tuple[str, ...] = OWN_MODELS
    fastpath_model: str = "resnet18"
    precision: str = "auto"
    channels_last: str = "auto"
    sections: tuple[str, ...] = SECTIONS
    epoch_images: int = 256  # images per timed loader pass (the JPEGs cycled)
    threads: int | None = None  # torch intra-op threads; None: torch's default

    def resolve(self, device: torch.device) -> Settings:
        """Fill the per-device defaults."""
        cuda = device.type == "cuda"
        return Settings(
            **{
                **self.__dict__,
                "batch": self.batch or (64 if cuda else 8),
                "size": self.size or (SOURCE_SIZE if cuda else 128),
                "seconds": self.seconds or (10.0 if cuda else 12.0),
            }
        )


def run(settings: Settings, log: Callable[[str], None] = lambda _: None) -> BenchResult:
    """Generate the JPEGs, run the chosen sections and return what they measured.

    Also records the run's wall time, the load average at its end and how many
    cores' worth of CPU other processes took meanwhile.
    """
    start, cpu = time.perf_counter(), cpu_seconds()
    device = resolve_device(settings.device)
    settings = settings.resolve(device)
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        result = _run(settings, device, log)
    finally:
        torch.set_num_threads(threads)
    wall = time.perf_counter() - start
    result.settings["wall_seconds"] = round(wall, 1)
    result.machine["load_average_end"] = load_average()
    result.machine["other_processes_cores"] = other_load(cpu, wall)
    return result


def _run(settings: Settings, device: torch.device, log: Callable[[str], None]) -> BenchResult:
    assert settings.seconds is not None and settings.size is not None and settings.batch is not None
    result = BenchResult(
        describe_machine(device),
        {
            **settings.__dict__,
            "device": str(device),
            "jpeg_quality": JPEG_QUALITY,
            "input_batch": INPUT_BATCH,
        },
    )
    with tempfile.TemporaryDirectory(prefix="retinopathy-bench-") as folder:
        log(
            f"writing {settings.images} synthetic {settings.source_size}x{settings.source_size} "
            f"JPEGs (quality {JPEG_QUALITY}) to {folder}"
        )
        records = write_bench_images(folder, settings.images, size=settings.source_size)
        if "input" in settings.sections:
            log("(a) input pipeline")
            result.comparisons += bench_input(
                folder,
                records,
                device,
                source_size=settings.source_size,
                seconds=settings.seconds,
                rounds=settings.rounds,
                workers=settings.workers,
                epoch_images=settings.epoch_images,
            )
        cuda = device.type == "cuda"
        if {"feed", "compile"} & set(settings.sections) and not cuda:
            log("(d) and (e) skipped: they measure nvJPEG and torch.compile on CUDA")
        if "feed" in settings.sections and cuda:
            log("(d) feeding the GPU")
            result.comparisons += bench_feed(
                folder,
                records,
                device,
                batch=settings.batch,
                size=settings.size,
                seconds=settings.seconds,
                rounds=settings.rounds,
                workers=settings.workers,
                epoch_images=max(settings.epoch_images, 8 * settings.batch),
            )
        if {"models", "fastpath"} & set(settings.sections) or ("compile" in settings.sections and cuda):
            batches = image_bank(folder, records, settings.size, settings.batch, device)
            # The training batch is image_bank's; --precision and --channels-last apply to (c) only.
            if "models" in settings.sections:
                log(f"(b) models: {', '.join(settings.models)}")
                result.comparisons += bench_models(
                    batches, device, models=settings.models, seconds=settings.seconds, rounds=settings.rounds
                )
            if "compile" in settings.sections and cuda:
                for name in settings.models:
                    log(f"(e) compiled step: {name}")
                    result.comparisons.append(
                        bench_compile(
                            batches, device, model_name=name, seconds=settings.seconds, rounds=settings.rounds
                        )
                    )
            if "fastpath" in settings.sections:
                log(f"(c) fast path: {settings.fastpath_model}")
                result.comparisons.append(
                    bench_fastpath(
                        batches,
                        device,
                        model_name=settings.fastpath_model,
                        seconds=settings.seconds,
                        rounds=settings.rounds,
                        runtime=make_runtime(
                            device,
                            precision=settings.precision,
                            channels_last=settings.channels_last,
                            num_workers=0,
                        ),
                    )
                )
    return result
