"""What a hostile but fair tester tried: each ends in a clear error naming the file or key, or works.

Damaged and foreign checkpoints, unwritable outputs, temporaries left by a
kill, two runs of one arm at once, image entries that are not files or are
absurdly large, a download that never answers, weights swapped after they were
hashed, and a bad setting caught before any output is removed. (Non-finite
params: tests/test_config.py; the shared pixel cache: tests/test_cache.py.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from PIL import Image

from conftest import run_arm, write_params
from retinopathy.core.config import load_params
from retinopathy.core.contract import Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import exclusive_lock, remove_stale_temporaries, write_text_atomic
from retinopathy.data.images import decode_image
from retinopathy.engine import checkpoint
from retinopathy.engine.trainer import Trainer
from retinopathy.models import manifest as manifests
from retinopathy.stages import evaluate, prepare, weights


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # gone, and not reused this quickly


# ----------------------------------------------------------------- 1. damaged or foreign checkpoints


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_a_checkpoint(path: Path) -> None:
    path.write_text('{"epoch": 3}\n')


def _tensor_only(path: Path) -> None:
    torch.save(torch.zeros(3), path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (_truncate, "not a readable checkpoint"),
        (_not_a_checkpoint, "not a readable checkpoint"),
        (_tensor_only, "holds a Tensor, not a checkpoint"),
        ("best over last", "is a best.pt"),
    ],
)
def test_a_damaged_or_foreign_last_checkpoint_is_named_with_the_fix(trained_project, damage, words):
    # The shared project's scratch arm was trained for 1 epoch.
    files = Layout().arm("scratch")
    last = trained_project / files.last
    if damage == "best over last":
        shutil.copy(trained_project / files.best, last)
    else:
        damage(last)
    before = last.read_bytes()
    write_params(trained_project, train={"epochs": 2})
    with pytest.raises(RetinopathyError) as caught:
        run_arm(trained_project)
    message = str(caught.value)
    assert str(files.last) in message and words in message
    assert "dvc checkout models/scratch" in message and "mv models/scratch/last.pt" in message
    assert last.read_bytes() == before, "the damaged file is left for the user to look at"


def test_a_damaged_best_checkpoint_stops_evaluate_with_the_fix(trained_project):
    best = trained_project / "models/scratch/best.pt"  # the shared project's, trained for 1 epoch
    _truncate(best)
    metrics_before = sorted(p.name for p in (trained_project / "metrics").rglob("*"))
    with pytest.raises(
        RetinopathyError,
        match=r"models/scratch/best.pt: not a readable checkpoint.*"
        r"dvc checkout models/scratch",
    ):
        evaluate.evaluate_arm(load_params("params.yaml"), "scratch")
    assert sorted(p.name for p in (trained_project / "metrics").rglob("*")) == metrics_before


def test_load_checks_every_field_and_the_history(tmp_path):
    path = tmp_path / "last.pt"
    row = {"epoch": 1, "train_loss": 1.5, "train_accuracy": 0.5, "train_kappa": 0.1}
    row |= {"test_loss": 1.4, "test_accuracy": 0.6, "test_kappa": 0.2}
    good = {
        "model": {"w": torch.zeros(1)},
        "spec": {},
        "optimizer": {},
        "scheduler": {},
        "epoch": 1,
        "history": [row],
        "rng": {},
        "fingerprint": "f",
        "fingerprint_inputs": {
            "params": {},
            "init": "scratch",
            "weights_sha256": None,
            "index_sha256": "0" * 64,
            "world_size": 1,
            "decoder": "Pillow",
            "numerics": {},
            "code_sha256": "0" * 64,
        },
        "config": {},
    }
    torch.save(good, path)
    assert checkpoint.load(path, "last").history == [row]  # a last.pt as this version writes it
    torch.save({**good, "epoch": "1"}, path)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="'epoch' is \"1\", not of type int: not a last"):
        checkpoint.load(path, "last")
    torch.save({**good, "history": [{"epoch": 1}]}, path)
    with pytest.raises(checkpoint.DamagedCheckpoint, match=r"'history\[0\]' lacks 'train_loss'"):
        checkpoint.load(path, "last")
    torch.save({**good, "epoch": 2}, path)  # says epoch 2, has one epoch of history
    with pytest.raises(checkpoint.DamagedCheckpoint, match="inconsistent with its history"):
        checkpoint.load(path, "last")


# ----------------------------------------------------------------- 2. outputs that cannot be written


@pytest.mark.slow
@pytest.mark.parametrize("blocked", ["models/scratch", "metrics/history"])
def test_unwritable_outputs_stop_training_before_the_first_epoch(tiny_project, blocked, monkeypatch):
    target = tiny_project / blocked
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("a file where the folder belongs\n")  # fails for root too, unlike chmod
    epochs = []
    monkeypatch.setattr(Trainer, "run_epoch", lambda *args: epochs.append(1))
    with pytest.raises(RetinopathyError, match=rf"{blocked}: cannot write .* there"):
        run_arm(tiny_project)
    assert epochs == [], "no epoch may start before the outputs are known to be writable"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_models_folder_stops_training_at_once(tiny_project):
    models = tiny_project / "models"
    (models / "scratch").mkdir(parents=True, exist_ok=True)
    (models / "scratch").chmod(0o555)
    try:
        with pytest.raises(RetinopathyError, match=r"models/scratch: cannot write checkpoints there"):
            run_arm(tiny_project)
    finally:
        (models / "scratch").chmod(0o755)


# ----------------------------------------------------------------- 3. temporaries left by a kill


def test_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "last.pt"
    host = socket.gethostname()
    dead = tmp_path / f".last.pt.{host}-{dead_pid()}.abc123.tmp"
    live = tmp_path / f".last.pt.{host}-{os.getpid()}.def456.tmp"
    other_host = tmp_path / f".last.pt.elsewhere-{dead_pid()}.ghi789.tmp"
    folder = tmp_path / f".last.pt.tmp-{host}-{dead_pid()}-xyz"
    for path in (dead, live, other_host):
        path.write_bytes(b"half a checkpoint")
    folder.mkdir()
    write_text_atomic(target, "new")  # every write cleans up after killed writers of its target
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["last.pt", live.name, other_host.name])
    assert remove_stale_temporaries(target) == []


@pytest.mark.slow
def test_training_removes_a_temporary_left_by_a_killed_checkpoint_write(tiny_project, capsys):
    write_params(tiny_project, train={"epochs": 1})
    stale = tiny_project / f"models/scratch/.last.pt.{socket.gethostname()}-{dead_pid()}.a1b2c3.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"\0" * 1000)
    run_arm(tiny_project)
    assert not stale.exists() and "removed, a temporary file left by a killed run" in capsys.readouterr().err
    assert sorted(p.name for p in (tiny_project / "models/scratch").iterdir()) == [
        "best.pt",
        "last.pt",
        "status.json",
    ]


def test_the_project_keeps_temporaries_out_of_dvc_outputs():
    patterns = (Path(__file__).parents[1] / ".dvcignore").read_text().split()
    assert ".*.tmp" in patterns  # names of files.atomic_file's temporaries


# ----------------------------------------------------------------- 4. two runs of one arm at once


@pytest.mark.slow
def test_a_second_training_of_the_same_arm_fails_at_once_naming_the_first(tiny_project):
    lock = tiny_project / Layout().arm("scratch").lock
    already = rf"training of the scratch arm is already running \(process {os.getpid()} on "
    # The first run, as far as flock is concerned, is this process.
    with exclusive_lock(lock, "training of the scratch arm"), pytest.raises(RetinopathyError, match=already):
        run_arm(tiny_project)
    assert not (tiny_project / "models/scratch/last.pt").exists()
    run_arm(tiny_project)  # the lock is free again, and a killed holder frees it too (flock)


def test_the_lock_of_a_killed_run_is_free():
    lock = Path(os.environ.get("TMPDIR", "/tmp")) / f"retinopathy-test-{os.getpid()}.lock"
    code = (
        "import os, sys; from retinopathy.core.files import exclusive_lock\n"
        f"with exclusive_lock({str(lock)!r}, 'x'):\n    os.kill(os.getpid(), 9)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    with exclusive_lock(lock, "x"):
        pass
    lock.unlink()


# ----------------------------------------------------------------- 5. entries that are not images


def test_a_named_pipe_listed_as_an_image_is_refused_without_waiting(tiny_project):
    root = tiny_project / "data/demo"
    first = (root / "train_img.csv").read_text().split()[0]
    (root / f"{first}.jpeg").unlink()
    os.mkfifo(root / f"{first}.jpeg")
    result: list = []
    worker = threading.Thread(target=lambda: result.append(_prepare_error(tiny_project)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert result, "prepare hung on a named pipe"
    assert f"{first}.jpeg: is a named pipe, not a regular file" in result[0]
    assert "train_img.csv:1" in result[0]


def _prepare_error(folder: Path) -> str:
    try:
        prepare.prepare(load_params(folder / "params.yaml"), folder / "data/prepared-again")
    except RetinopathyError as error:
        return str(error)
    return ""


def huge_header_jpeg(path: Path, side: int = 20000) -> None:
    """A small JPEG whose frame header claims ``side`` x ``side`` pixels."""
    Image.new("RGB", (16, 16), (120, 40, 20)).save(path, "JPEG", quality=90)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")  # baseline frame: length(2) precision(1) height(2) width(2)
    data[sof + 5 : sof + 9] = side.to_bytes(2, "big") * 2
    path.write_bytes(bytes(data))


def test_an_image_whose_header_is_absurdly_large_is_refused_before_decoding(tiny_project):
    root = tiny_project / "data/demo"
    first = (root / "test_img.csv").read_text().split()[0]
    huge_header_jpeg(root / f"{first}.jpeg")
    message = _prepare_error(tiny_project)
    assert f"{first}.jpeg: 20000x20000 is 400 megapixels, over the limit of 40" in message
    assert "data.max_pixels" in message
    with pytest.raises(RetinopathyError, match="over the limit of 0.001"):
        decode_image(root / f"{first}.jpeg", max_pixels=1000)


def test_a_file_too_big_for_any_image_under_the_limit_is_not_read(tmp_path):
    path = tmp_path / "big.jpeg"
    with open(path, "wb") as stream:
        stream.truncate(10 << 20)  # sparse: costs no disk
    with pytest.raises(RetinopathyError, match="MB is more than an image of 1 megapixels can take"):
        decode_image(path, max_pixels=1_000_000)


# ----------------------------------------------------------------- 8. a download that never answers


@pytest.mark.slow
def test_a_download_behind_a_silent_proxy_times_out_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    described = manifests.describe_pretrained("resnet18", "imagenet", download=True, timeout=1)
    server.close()
    # The cause is this machine's: it is told on stderr, not written into the manifest.
    assert described.available is False and "no answer within 1 s" in capsys.readouterr().err
    checkpoints = tmp_path / "torch/hub/checkpoints"
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []


# ----------------------------------------------------------------- 9. weights swapped after hashing


def test_training_refuses_weights_changed_after_the_weights_stage(tiny_project):
    path = tiny_project / "test-written.pth"
    torch.manual_seed(0)
    torch.save(tvm.resnet18().state_dict(), path)
    write_params(tiny_project, train={"weights": str(path), "epochs": 1})
    os.chdir(tiny_project)
    assert weights.main([]) == 0
    torch.manual_seed(1)
    torch.save(tvm.resnet18().state_dict(), path)  # another file under the same name
    with pytest.raises(
        RetinopathyError,
        match=r"test-written.pth: changed after the `weights` stage "
        r"hashed it .* run `dvc repro`",
    ):
        run_arm(tiny_project, "pretrained")
    assert not (tiny_project / "models/pretrained/last.pt").exists()


# ----------------------------------------------------------------- 10. a bad setting stops the first stage


def test_the_weights_stage_refuses_a_missing_gpu_before_train_can_remove_anything(tiny_project):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    write_params(tiny_project, train={"device": "cuda"})
    os.chdir(tiny_project)
    with pytest.raises(RetinopathyError, match="train.device is `cuda` but PyTorch sees no CUDA GPU"):
        weights.main([])


@pytest.mark.slow
def test_a_checkpoint_of_an_older_version_is_not_resumed_but_not_called_damaged(tiny_project, capsys):
    write_params(tiny_project, train={"epochs": 1})
    last = tiny_project / "models/scratch/last.pt"
    last.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3, "fingerprint": "0123456789abcdef"}, last)
    run_arm(tiny_project)  # other code made it: trained from the start, as for other params
    assert "made with other settings, not resuming from it" in capsys.readouterr().err
    assert checkpoint.load(last, "last").epoch == 1
