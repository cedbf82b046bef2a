"""The machine a run measured on, and how busy other processes kept it."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_machine(device: torch.device) -> dict[str, object]:
    """CPU model, cores, library versions, torch threads and the CUDA device, if any."""
    import torchvision

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cuda = device.type == "cuda"
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_device": torch.cuda.get_device_name(device) if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        "load_average_start": load_average(),
    }


def load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes have used, CPU seconds this process and its reaped children
    have used), from /proc/stat; None where there is no /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # minus idle, iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


def other_load(start: tuple[float, float] | None, seconds: float) -> float | None:
    """Cores' worth of CPU that other processes used on average since ``start``."""
    end = cpu_seconds()
    if start is None or end is None or seconds <= 0:
        return None
    return round(max((end[0] - start[0]) - (end[1] - start[1]), 0.0) / seconds, 2)


def machine_line(machine: dict[str, object]) -> str:
    """The machine in one line: CPU, cores, library versions, threads and GPU."""
    gpu = (
        f"CUDA {machine['cuda_device']} (CUDA {machine['cuda_version']})"
        if machine.get("cuda_device")
        else "no CUDA device used"
    )
    return (
        f"{machine['cpu']}, {machine['logical_cores']} logical cores "
        f"({machine['usable_cores']} usable), torch {machine['torch']} "
        f"({machine['torch_threads']} thread(s)), torchvision {machine['torchvision']}, "
        f"Python {machine['python']}, {gpu}"
    )


def load_warning(machine: dict[str, object]) -> str | None:
    """A caution when other processes competed for the CPU during the run."""
    other = machine.get("other_processes_cores")
    if not isinstance(other, float | int) or other < 0.25:
        return None
    text = (
        f"other processes kept {other:g} of {machine['logical_cores']} cores busy during "
        "this run, so the figures are noisy (see each ratio's per-round range)"
    )
    threads = machine["torch_threads"]
    if machine.get("cuda_device") is None and isinstance(threads, int) and threads > 1:
        text += (
            f"; with {threads} torch threads, CPU operators wait for a thread whose core is "
            "taken, which can slow them several-fold and unequally: rerun on an idle machine "
            "or with --threads 1"
        )
    return text
