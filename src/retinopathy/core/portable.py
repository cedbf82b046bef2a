"""Portable mode (params.yaml ``train.portable``): the same CPU results, bit for bit, on any x86-64 with AVX2.

PyTorch picks its CPU kernels per processor, and a few hundred SGD steps
amplify their different roundings into different accuracies. Measured on a
tiny ResNet18 run (tests/test_portable.py repeats it), these change the weights:

- oneDNN's instruction set: its convolutions use AVX-512 kernels where the
  processor has them and AVX2 ones where not (``ONEDNN_MAX_CPU_ISA``);
- MKL's code path for the final Linear layer (``MKL_CBWR``, MKL's Conditional
  Numerical Reproducibility switch; any value also turns off a small-matrix path);
- the number of intra-op threads: 1, 2, 3 and 4 all differ (each thread sums
  its share of a reduction, e.g. oneDNN's weight gradients);
- ATen's vectorised kernels (``ATEN_CPU_CAPABILITY``): ``default`` (no AVX)
  differs; ``avx2`` and ``avx512`` gave the same bits, pinned anyway.

These did not: ``torch.use_deterministic_algorithms`` (CPU kernels already are)
and libjpeg-turbo's SIMD paths (its integer IDCT, scaled or not, is exact).

Portable mode pins all four: AVX2 kernels in ATen, oneDNN and MKL (strict CNR,
so MKL's sums do not depend on its threads either), and :data:`THREADS`
intra-op threads whatever the core count. The environment variables must be
set before torch first dispatches a kernel, so :func:`prepare` runs at the very
start of ``retinopathy.cli.main`` (the entry of DVC's stages, ``python -m
retinopathy`` and torchrun), before any stage module imports torch; the choice
travels to :func:`pin` (called when the device is resolved) and to child
processes in ``RETINOPATHY_PORTABLE``. ``auto`` is portable on CPU and the
fast path (torch's own choices) on CUDA, whose GPU kernels these do not touch.

Not covered: other torch, oneDNN, MKL or libjpeg-turbo versions (other
kernels); processors without AVX2 and ARM64 (other kernels: only the threads
are pinned there, with a warning); GPUs (cuDNN's autotuned kernels). oneDNN
may size some blocks from the cache sizes it reads from the processor; no
setting simulates that, so only a run on another processor model can rule it out.

This module imports torch only inside :func:`pin` and :func:`state`: cli.py
imports it, and ``retinopathy --help`` must stay fast.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from retinopathy.core.errors import warn

MODES = ("auto", "on", "off")
THREADS = 2  # intra-op threads in portable mode, on any machine (the demo's machines have 2 cores)
ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2,STRICT",
}
DECISION = "RETINOPATHY_PORTABLE"  # on | auto | off, as prepare resolved it; unset: prepare did not run
_pinned = False  # pin() set the threads in this process (for this command)


def _switch(value: Any) -> str | None:
    """``train.portable`` as written (YAML reads on/off as booleans), or None when it is not a mode."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value if value in MODES else None


def _params_file(args: list[str]) -> Path:
    """The ``--params`` file a command line names (default params.yaml)."""
    for i, arg in enumerate(args):
        if arg == "--params" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--params="):
            return Path(arg.split("=", 1)[1])
    return Path("params.yaml")


def read_mode(args: list[str]) -> tuple[str, str]:
    """``(train.portable, train.device)`` from the params file of a command line.

    A missing, unreadable or invalid file gives ``("auto", "auto")``: the
    command itself then reads the file and reports what is wrong with it. The
    file is read as every command reads it (:func:`retinopathy.core.config.read_yaml`),
    so a named pipe, an alias bomb or thousands of nested brackets cannot hang
    or crash this first look before the command's own message.
    """
    from retinopathy.core.config import read_yaml  # here, not at the top: `--help` need not load YAML
    from retinopathy.core.errors import RetinopathyError

    try:
        raw = read_yaml(_params_file(args))
        train = raw["train"]
        mode, device = _switch(train.get("portable", "auto")), train.get("device", "auto")
    except (RetinopathyError, KeyError, TypeError, AttributeError):
        return "auto", "auto"
    return mode or "auto", device if isinstance(device, str) else "auto"


@functools.cache
def has_avx2() -> bool:
    """Whether this processor is x86-64 with AVX2 and FMA (what the pinned kernels need)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return {"avx2", "fma"} <= flags
        return False
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.leaf7_features", "machdep.cpu.features"],
                capture_output=True,
                text=True,
                check=False,
                timeout=5,
            ).stdout.upper()
        except OSError:
            return False
        return "AVX2" in out and "FMA" in out
    return False


def prepare(args: list[str]) -> None:
    """Before torch initialises: set the pins when ``train.portable`` may be on, and record the choice.

    ``auto`` with ``train.device: auto`` pins too (torch cannot be asked about
    CUDA yet); the pins change only CPU kernels, and :func:`pin` then leaves the
    threads alone on CUDA. An earlier call in the same process (a test running
    several commands) is redone: the last command's params decide.
    """
    global _pinned
    _pinned = False
    mode, device = read_mode(args)
    if mode == "off" or (mode == "auto" and device == "cuda"):
        os.environ[DECISION] = "off"
        return
    if has_avx2():
        os.environ.update(ENVIRONMENT)
    os.environ[DECISION] = mode


def threads() -> int:
    """Intra-op threads per process in portable mode: :data:`THREADS` shared by torchrun's processes."""
    return max(1, THREADS // int(os.environ.get("WORLD_SIZE", "1")))


def pin(device_type: str) -> None:
    """Once the device is known: :func:`threads` intra-op threads on CPU in portable mode.

    Does nothing on CUDA, in fast mode, or when the process did not start
    through ``retinopathy.cli.main`` (a library call keeps torch's defaults).
    """
    global _pinned
    if device_type != "cpu" or os.environ.get(DECISION) not in ("on", "auto"):
        return
    import torch

    torch.set_num_threads(threads())
    _pinned = True
    capability = torch.backends.cpu.get_cpu_capability()
    if not has_avx2():
        warn(
            f"portable mode: this processor ({platform.machine()}) is not x86-64 with AVX2, so only "
            f"the threads are pinned ({threads()}); results match other machines of this kind at most"
        )
    elif capability != "AVX2":
        warn(
            f"portable mode: torch chose its CPU kernels ({capability}) before retinopathy could pin "
            "them to AVX2, so results may differ between processors; run the command as "
            "`retinopathy <command>` in a fresh process"
        )


def state() -> dict[str, str | int | bool]:
    """The numerics in effect, for ``metrics/<arm>.info.json`` and the checkpoint's fingerprint.

    ``portable`` is true only when every pin holds. The same on every AVX2
    machine in portable mode, so the recorded file is too.
    """
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    pinned = (
        _pinned
        and torch.get_num_threads() == threads()
        and capability == "AVX2"
        and all(os.environ.get(k) == v for k, v in ENVIRONMENT.items())
    )
    numerics: dict[str, str | int | bool] = {"portable": pinned}
    if pinned:
        numerics.update(
            {
                "cpu_capability": capability,
                "threads": threads(),
                **{k.lower(): v for k, v in ENVIRONMENT.items() if k != "ATEN_CPU_CAPABILITY"},
            }
        )
    return numerics
