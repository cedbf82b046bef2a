"""Timing several workloads fairly: warm-up, then alternating rounds."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Measurement:
    """One side of a comparison: images processed and seconds taken, per round."""

    label: str
    images: list[int]
    seconds: list[float]

    @property
    def rate(self) -> float:
        """Images per second over all rounds."""
        return sum(self.images) / sum(self.seconds)

    @property
    def round_rates(self) -> list[float]:
        return [n / s for n, s in zip(self.images, self.seconds, strict=True)]

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "images_per_s": self.rate,
            "images": sum(self.images),
            "seconds": sum(self.seconds),
            "round_images_per_s": self.round_rates,
        }


def relabel(measurement: Measurement, label: str) -> None:
    measurement.label = label


def sync_for(device: torch.device) -> Callable[[], None]:
    """What to call before each timer read on ``device``: CUDA runs asynchronously."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def alternate(
    units: dict[str, Callable[[], int]],
    *,
    seconds: float,
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, Measurement]:
    """Time several workloads fairly: warm each up, then alternate them in rounds.

    Each round gives every workload about ``seconds / rounds`` (at least one
    unit); the side that goes first rotates from round to round, so a burst of
    load from another process falls on all of them alike.

    Args:
        units: Name -> a callable doing one unit of work and returning the number
            of images it processed (> 0).
        seconds: Time budget of each workload, over all rounds.
        rounds: Number of rounds (>= 1).
        warmup: Untimed units of each workload before the first round.
        sync: Called before each timer read (``torch.cuda.synchronize`` on CUDA).

    Returns:
        Name -> its :class:`Measurement` (labelled with the name).
    """
    if rounds < 1 or seconds <= 0:
        raise ValueError(f"need rounds >= 1 and seconds > 0, got {rounds} and {seconds}")
    names = list(units)
    for name in names:
        for _ in range(warmup):
            units[name]()
    sync()
    images = {name: [0] * rounds for name in names}
    elapsed = {name: [0.0] * rounds for name in names}
    budget = seconds / rounds
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            done, spent = 0, 0.0
            while done == 0 or spent < budget:
                sync()
                start = time.perf_counter()
                count = units[name]()
                sync()
                spent += time.perf_counter() - start
                if count <= 0:
                    raise ValueError(f"workload {name!r} processed no images")
                done += count
            images[name][r], elapsed[name][r] = done, spent
    return {name: Measurement(name, images[name], elapsed[name]) for name in names}
