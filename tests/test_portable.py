"""Portable mode (train.portable): the same bits whatever the processor, simulated with outside settings.

One machine cannot be several processors, but the choices that differ between
processors can be forced from outside: ``ATEN_CPU_CAPABILITY`` and
``ONEDNN_MAX_CPU_ISA`` select the kernels an AVX2-only processor gets (Zen 2,
Haswell), and ``OMP_NUM_THREADS`` sets the intra-op threads that another core
count would give. The same tiny training runs in a fresh ``retinopathy``
process under each setting, without the mode and with it.

Without the mode at least the thread count changes the weights (measured here:
the ISA does too on an AVX-512 machine); with it, every setting gives the same
history, metrics and weights, bit for bit. The mode's pins replace the ISA
variables, as they replace the processor's own choice; the threads it pins
with ``torch.set_num_threads``, whatever ``OMP_NUM_THREADS`` says.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_project, subprocess_env, write_params
from retinopathy.core import portable
from retinopathy.core.contract import Layout

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# Other processors, as the settings torch and oneDNN would pick there.
PROCESSORS = {
    "this machine": {},
    "an AVX2-only processor": AVX2_ONLY,
    "another core count": {"OMP_NUM_THREADS": "1" if CPUS > 1 else "2"},
}
# A child's environment without this process's own pins (an earlier in-process command may have set them).
CLEAN = (*portable.ENVIRONMENT, portable.DECISION, "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# `retinopathy train` (then `retinopathy evaluate`) in one fresh process: cli.main is what DVC's stages run.
TRAIN = "import sys; from retinopathy.cli import main; sys.exit(main(['train', '--init', 'scratch'])"
EVALUATE = " or main(['evaluate', '--init', 'scratch'])"


def _run(project: Path, settings: dict[str, str], evaluate: bool) -> dict[str, str]:
    """Train (and evaluate) the scratch arm in a fresh process; digests of what it wrote, then clear it."""
    env = {k: v for k, v in subprocess_env().items() if k not in CLEAN} | settings
    code = TRAIN + (EVALUATE if evaluate else "") + ")"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "portable mode:" not in done.stderr, done.stderr  # no pin failed
    files = Layout().arm("scratch")
    state = torch.load(project / files.last, map_location="cpu", weights_only=False)
    weights = hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in state["model"].values()))
    out = {
        "weights": weights.hexdigest(),
        "history": (project / files.history).read_text(),
        "numerics": json.dumps(state["fingerprint_inputs"]["numerics"], sort_keys=True),
    }
    if evaluate:
        out["metrics"] = (project / files.metrics).read_text()
        out["info"] = (project / files.info).read_text()
    for folder in (files.model_dir, files.history.parent.parent):  # models/scratch, metrics/
        shutil.rmtree(project / folder)
    return out


def _overrides(mode: str) -> dict:
    return {
        "demo": {"train_size": 16, "test_size": 10},
        "train": {"epochs": 1, "precise_bn_images": 8, "portable": mode},
    }


def _write_params(project: Path, mode: str) -> None:
    write_params(project, **_overrides(mode))


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    """Smaller still than conftest's tiny project: two steps of 8 images, 10 test images."""
    monkeypatch.chdir(tmp_path)
    return make_tiny_project(tmp_path, **_overrides("auto"))


@pytest.mark.slow
def test_portable_mode_gives_the_same_bits_under_every_simulated_processor(project):
    _write_params(project, "off")
    fast = {name: _run(project, settings, evaluate=False) for name, settings in PROCESSORS.items()}
    _write_params(project, "auto")  # auto: portable on CPU (the project trains on CPU)
    pinned = {name: _run(project, settings, evaluate=True) for name, settings in PROCESSORS.items()}

    # Without the mode the simulated processors really do change the bits (the thread count at least),
    # so the agreement below is the mode's doing, not a test that cannot fail.
    differing = [name for name, run in fast.items() if run["weights"] != fast["this machine"]["weights"]]
    assert differing, "no simulated processor changed the weights without portable mode"
    assert "another core count" in differing
    assert json.loads(fast["this machine"]["numerics"]) == {"portable": False}

    reference = pinned["this machine"]
    for name, run in pinned.items():
        assert run == reference, f"portable mode on {name} differs from this machine"
    numerics = json.loads(reference["numerics"])
    assert numerics["portable"] is True and numerics["threads"] == portable.THREADS
    assert json.loads(reference["info"])["numerics"] == numerics


@pytest.fixture()
def environment(monkeypatch):
    """prepare() writes os.environ: start without its variables, and restore them after the test."""
    for key in (*portable.ENVIRONMENT, portable.DECISION):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("train", "decision", "pinned"),
    [
        ({"portable": "auto", "device": "cpu"}, "auto", True),
        ({"portable": "auto", "device": "auto"}, "auto", True),  # CUDA or not is known only once torch runs
        ({"portable": "auto", "device": "cuda"}, "off", False),  # the fast path on the GPU
        ({"portable": True, "device": "cuda"}, "on", True),  # YAML reads `on` as true
        ({"portable": "off", "device": "cpu"}, "off", False),
    ],
)
def test_prepare_sets_the_pins_from_params_before_torch_starts(
    tmp_path, environment, train, decision, pinned
):
    write_params(tmp_path, train=train)
    portable.prepare(["--init", "scratch", "--params", str(tmp_path / "params.yaml")])
    assert os.environ[portable.DECISION] == decision
    if portable.has_avx2():
        assert all((os.environ.get(k) == v) == pinned for k, v in portable.ENVIRONMENT.items())


def test_a_missing_params_file_leaves_the_mode_to_the_command(tmp_path, environment):
    environment.chdir(tmp_path)  # no params.yaml here: the command itself will say so
    portable.prepare(["--init", "scratch"])
    assert os.environ[portable.DECISION] == "auto"


def test_the_dispatcher_does_not_import_torch():
    # The pins only work if nothing has imported torch before cli.main sets them.
    code = "import sys, retinopathy.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=subprocess_env(), timeout=60).returncode == 0
