"""Issue 26, hardening round three: params files, the resume store, and names at the file-name limit.

Each test does what the hostile tester did, through the real CLI (``retinopathy.cli.main`` in this
process, or ``retinopathy`` in a subprocess where a hang must end the test rather than the suite),
and checks the exit status, the message on stderr and the files on disk.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, subprocess_env
from retinopathy import cli
from retinopathy.core import config

SHIPPED = (REPO / "params.yaml").read_text(encoding="utf-8")


def run(argv: list[str], capsys) -> tuple[int, str]:
    """``retinopathy ARGV`` in this process: (exit status, stderr)."""
    code = cli.main(argv)
    return code, capsys.readouterr().err


def ran(argv: list[str], capsys) -> tuple[int, str, str]:
    """``retinopathy ARGV`` in this process: (exit status, stdout, stderr)."""
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refused(argv: list[str], capsys) -> str:
    """The error of ``retinopathy ARGV`` (after any notes), which must exit 2 without a traceback."""
    code, err = run(argv, capsys)
    assert code == 2, err
    assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    return err


def shipped_with(tmp_path: Path, old: str, new: str, name: str = "params.yaml") -> Path:
    """The project's params.yaml with the text ``old`` (which must be there once) replaced by ``new``."""
    assert SHIPPED.count(old) == 1, old
    path = tmp_path / name
    path.write_text(SHIPPED.replace(old, new), encoding="utf-8")
    return path


# ----------------------------------------------------------------- 1. params files: shape and size


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["yaml flow", "yaml block", "json"])
def test_params_nested_thousands_of_levels_deep_are_refused_naming_the_file_and_line(tmp_path, capsys, kind):
    depth = 1000 if kind == "yaml block" else 5000  # a block level costs its indentation: 1000 fit in 1 MiB
    if kind == "yaml flow":
        text = SHIPPED.replace("model: resnet18", "model: " + "[" * depth + "]" * depth)
    elif kind == "yaml block":  # mappings in mappings, by indentation
        text = SHIPPED.replace(
            "model: resnet18",
            "model:\n"
            + "".join(f"{' ' * (level + 1)}k{level}:\n" for level in range(depth))
            + " " * (depth + 1)
            + "x: 1",
        )
    else:  # a params file written as JSON is read as YAML, as DVC reads it
        text = json.dumps({"model": "resnet18"})[:-1] + ', "train": ' + "[" * depth + "]" * depth + "}"
    path = tmp_path / ("params.json" if kind == "json" else "params.yaml")
    path.write_text(text)
    for command in (["prepare"], ["train", "--init", "scratch"], ["evaluate", "--init", "scratch"]):
        err = refused([*command, "--params", str(path)], capsys)
        assert f"{path}:" in err and f"nested more than {config.MAX_DEPTH} levels deep" in err
        assert "git checkout params.yaml" in err and len(err) < 400


def test_unknown_keys_of_mixed_types_are_named_in_one_message(tmp_path, capsys):
    top = shipped_with(tmp_path, "model: resnet18", "model: resnet18\n1: x\nfoo: y\nnull: z")
    err = refused(["prepare", "--params", str(top)], capsys)
    assert "`1` is not a known key (a number, not a name); allowed here: model, data" in err
    inner = shipped_with(
        tmp_path, "  lr: 0.01", "  lr: 0.01\n  2.5: x\n  batchsize: 4\n  true: z", "inner.yaml"
    )
    err = refused(["prepare", "--params", str(inner)], capsys)
    assert "`train.2.5` is not a known key (a number, not a name); allowed here: epochs, batch_size" in err
    per_model = shipped_with(
        tmp_path, "    default: false ", "    default: false\n    7: true\n    z: 1 ", "per_model.yaml"
    )
    err = refused(["prepare", "--params", str(per_model)], capsys)
    assert "`train.zero_init_residual.7` is not a model's name" in err


def test_a_long_unknown_key_or_value_is_quoted_as_a_short_excerpt(tmp_path, capsys):
    # An explicit key (`? key`): YAML limits a plain one to 1024 characters.
    key = shipped_with(tmp_path, "model: resnet18", "model: resnet18\n? " + "k" * 100_000 + "\n: 1")
    err = refused(["prepare", "--params", str(key)], capsys)
    assert "is not a known key" in err and len(err) < 400
    value = shipped_with(tmp_path, "model: resnet18", "model: " + "x" * 100_000, "value.yaml")
    err = refused(["prepare", "--params", str(value)], capsys)
    assert "`model` must be one of resnet18" in err and "xxx' (100,000 characters)" in err
    assert len(err) < 400, len(err)


# Each numeric key just above its bound, with the words its message must say. Every one used to be
# unbounded (fuse.hidden: a blend of billions of units; evaluate.bootstrap: a loop of days).
ABOVE_BOUNDS = [
    ("fuse", "hidden", config.MAX_HIDDEN + 1, "must be an integer >= 0 and at most 4,096 units"),
    (
        "evaluate",
        "bootstrap",
        config.MAX_RESAMPLES + 1,
        "must be an integer >= 0 and at most 100,000 resamples",
    ),
    ("train", "epochs", config.MAX_EPOCHS + 1, "must be an integer >= 1 and at most 1,000"),
    ("train", "batch_size", config.MAX_BATCH + 1, "must be an integer >= 1 and at most 16,384"),
    ("train", "lr", 11, "must be >= 0.0 and at most 10.0"),
    ("train", "lr", 10**400, "must be >= 0.0 and at most 10.0"),  # beyond every float
    ("train", "weight_decay", 1.5, "must be >= 0.0 and at most 1.0"),
    ("train", "precise_bn_images", config.MAX_IMAGES + 1, "at most 1,000,000"),
    ("train", "warmup_epochs", config.MAX_EPOCHS + 1, "at most 1,000"),
    ("data", "image_size", 4097, "must be at most 4096"),
    ("data", "num_workers", config.MAX_WORKERS + 1, "at most 1,024 (or auto)"),
    ("data", "max_pixels", 10**9 + 1, "at most 1,000,000,000"),
    ("demo", "train_size", config.MAX_IMAGES + 2, "at most 1,000,000"),
    ("demo", "image_size", 4097, "at most 4,096"),
    ("fuse", "epochs", config.MAX_FUSE_EPOCHS + 1, "at most 10,000"),
    ("fuse", "batch_size", config.MAX_FUSE_BATCH + 1, "at most 65,536"),
    ("fuse", "lr", 2, "must be >= 0.0 and at most 1.0 (Adam's"),
    ("fuse", "weight_decay", 2, "at most 1.0"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    ABOVE_BOUNDS,
    ids=[f"{s}.{k}={str(v)[:8]}" for s, k, v, _ in ABOVE_BOUNDS],
)
def test_every_number_has_an_upper_bound_that_the_message_states(
    tmp_path, capsys, section, key, value, words
):
    raw = yaml.safe_load(SHIPPED)
    raw[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    err = refused(["prepare", "--params", str(path)], capsys)
    assert f"{path}: `{section}.{key}` must be" in err and words in err and len(err) < 400


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("fuse", "hidden", config.MAX_HIDDEN),
        ("evaluate", "bootstrap", config.MAX_RESAMPLES),
        ("train", "epochs", config.MAX_EPOCHS),
        ("train", "batch_size", config.MAX_BATCH),
        ("train", "lr", config.MAX_LR),
        ("fuse", "lr", config.MAX_FUSE_LR),
        ("data", "num_workers", 64),
        ("fuse", "batch_size", config.MAX_FUSE_BATCH),
        ("data", "max_pixels", 10**9),
    ],
)
def test_the_bounds_themselves_are_accepted(tmp_path, section, key, value):
    raw = yaml.safe_load(SHIPPED)
    raw[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert getattr(getattr(config.load_params(path), section), key) == value


@pytest.mark.slow
@pytest.mark.parametrize("command", [["prepare"], ["train", "--init", "scratch"], ["report"]])
def test_a_named_pipe_as_the_params_file_is_refused_at_once(tmp_path, command):
    fifo = tmp_path / "params.yaml"
    os.mkfifo(fifo)
    # A subprocess with a timeout: a hang (the bug) fails this test instead of blocking the suite.
    # `report` reads no params, but every command looks at ./params.yaml first (train.portable).
    done = subprocess.run(
        ["retinopathy", *command],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    if command != ["report"]:
        assert "error: params.yaml: is a named pipe, not a params file; pass --params PATH" in done.stderr


@pytest.mark.parametrize("what", ["folder", "device", "missing"])
def test_a_folder_a_device_or_nothing_as_the_params_file_is_refused_with_the_fix(tmp_path, capsys, what):
    path = {
        "folder": tmp_path / "params.yaml",
        "device": Path("/dev/zero"),
        "missing": tmp_path / "nothere.yaml",
    }[what]
    if what == "folder":
        path.mkdir()
    err = refused(["prepare", "--params", str(path)], capsys)
    words = {
        "folder": "is a folder, not a params file",
        "device": "is a character device, not a params file",
        "missing": "not found; run from the project root or pass --params PATH",
    }[what]
    assert f"error: {path}: {words}" in err


def test_a_params_file_far_larger_than_any_is_refused_unread(tmp_path, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(SHIPPED + "# " + "x" * config.MAX_PARAMS_BYTES + "\n")
    err = refused(["prepare", "--params", str(path)], capsys)
    assert "is larger than 1024 KiB" in err


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("  lr: 0.01", "  lr: 0.01\n  lr: 0.1", "lr"),
        ("model: resnet18", "model: resnet18\nmodel: resnet50", "model"),
        ("    resnet50: true ", "    resnet50: true\n    resnet50: false ", "resnet50"),
    ],
)
def test_a_key_set_twice_is_refused_with_both_line_numbers(tmp_path, capsys, old, new, key):
    path = shipped_with(tmp_path, old, new)
    first, second = [
        number
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip().startswith(f"{key}:")
    ][:2]
    err = refused(["prepare", "--params", str(path)], capsys)
    assert f"{path}:{second}: `{key}` is set twice in one mapping, at lines {first} and {second}" in err
    assert "DVC refuses the file. Delete one of them" in err


def test_an_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path, capsys):
    laughs = ['  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level, name in enumerate("bcdefgh"):
        previous = "abcdefgh"[level]
        laughs.append(f"  {name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    # Hidden where only a value is checked: the bomb is model's value (9**8 items once expanded).
    path = shipped_with(tmp_path, "model: resnet18", "model:\n" + "\n".join(laughs))
    b = path.read_text().splitlines().index(laughs[1]) + 1  # the line of the first alias, `*a`
    started = time.monotonic()
    err = refused(["prepare", "--params", str(path)], capsys)
    assert time.monotonic() - started < 30
    assert (
        f"{path}:{b}: its YAML aliases `*a` (line {b}), `*b` (line {b + 1}), `*c` (line {b + 2}) and 4 "
        f"more expand to more than {config.MAX_VALUES:,} values" in err
    )
    assert "Write the values out instead of the aliases" in err and len(err) < 500
    loop = shipped_with(tmp_path, "model: resnet18", "model: &loop [*loop]", "loop.yaml")
    line = next(
        number
        for number, text in enumerate(loop.read_text().splitlines(), 1)
        if text.startswith("model: &loop")
    )
    assert f"its YAML aliases `*loop` (line {line})" in refused(["prepare", "--params", str(loop)], capsys)


def test_a_few_aliases_as_dvc_reads_them_still_work(tmp_path):
    path = shipped_with(tmp_path, "  seed: 0\n  precise_bn_images", "  seed: &seed 7\n  precise_bn_images")
    text = path.read_text()
    assert text.count("  seed: 0                  # seeds the bootstrap") == 1
    path.write_text(text.replace("  seed: 0                  # seeds the bootstrap", "  seed: *seed"))
    params = config.load_params(path)
    assert params.train.seed == 7 and params.evaluate.seed == 7


def test_an_integer_of_thousands_of_digits_is_refused_naming_its_line(tmp_path, capsys):
    path = shipped_with(tmp_path, "  batch_size: 16", "  batch_size: " + "9" * 5000)
    line = path.read_text().splitlines().index("  batch_size: " + "9" * 5000) + 1
    err = refused(["prepare", "--params", str(path)], capsys)
    assert f"{path}:{line}: a number of 5,000 digits" in err and len(err) < 300


def test_a_weights_manifest_nested_thousands_deep_is_refused_by_its_reader_and_its_writer(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(SHIPPED)
    manifest = tmp_path / "models/init/scratch.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("[" * 100_000 + "]" * 100_000)
    err = refused(["train", "--init", "scratch"], capsys)
    assert "models/init/scratch.json: not valid JSON (it is nested too deeply to read" in err
    # The weights stage would replace it: it is no manifest it wrote, so it is kept and named.
    err = refused(["weights"], capsys)
    assert "models/init/scratch.json: exists and was not written by `retinopathy weights`" in err
    assert manifest.read_text().startswith("[[[")


# ----------------------------------------------------------------- 2. the resume store


def test_a_file_where_the_resume_store_belongs_stops_training_before_the_first_epoch(tiny_project, capsys):
    store = tiny_project / "models/.resume"
    if store.exists():
        store.rmdir()
    store.write_text("my notes\n")
    code, err = run(["train", "--init", "scratch"], capsys)
    assert code == 2 and "Traceback" not in err
    assert (
        "error: models/.resume: is a file, not a folder; training keeps the checkpoints of unfinished "
        "runs in models/.resume/<arm>/<run>/ (the resume store). Move it away (`mv models/.resume "
        "models/.resume.moved`) and train again" in err
    )
    assert "epoch 1/" not in capsys.readouterr().out + err and store.read_text() == "my notes\n"
    assert not (tiny_project / "models/scratch/last.pt").exists()
    # One level down too: an arm's folder of the store that is a link to nothing.
    store.unlink()
    store.mkdir()
    (store / "scratch").symlink_to(tiny_project / "gone")
    code, err = run(["train", "--init", "scratch"], capsys)
    assert code == 2 and "error: models/.resume/scratch: is a link to nothing, not a folder" in err


def stored_run(
    models: Path,
    name: str,
    epoch: int = 2,
    megabytes: int = 1,
    *,
    fingerprint: str | None = None,
    age_days: float = 0.0,
    inputs: dict | None = None,
) -> Path:
    """A run in the resume store as training leaves it: ``last.pt`` (a :class:`checkpoint.LastCheckpoint`)."""
    from retinopathy.engine import checkpoint

    arm, run_id = name.split("/")
    folder = models / ".resume" / arm / run_id
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save(
        checkpoint.LastCheckpoint(
            model={"w": torch.zeros(megabytes * 250_000)},
            spec={"model": "resnet50"},
            optimizer={},
            scheduler={},
            epoch=epoch,
            history=[{}] * epoch,
            rng={},
            fingerprint=fingerprint or run_id,
            fingerprint_inputs=checkpoint.RunInputs(
                params=(inputs or {"params": {"train": {"lr": 0.1}}})["params"],
                init=arm,
                weights_sha256=None,
                index_sha256="0" * 64,
                world_size=1,
                decoder="Pillow",
                numerics={},
                code_sha256="0" * 64,
            ),
            config={},
        ),
        folder / "last.pt",
    )
    if age_days:
        then = time.time() - age_days * 86400
        for path in (folder / "last.pt", folder):
            os.utime(path, (then, then))
    return folder


@pytest.fixture()
def store(tmp_path, monkeypatch) -> Path:
    """A project folder whose resume store holds two runs, and five entries that are not the store's own."""
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    stored_run(models, "scratch/0123456789abcdef", epoch=2, megabytes=3, age_days=40)
    stored_run(models, "pretrained/fedcba9876543210", epoch=1, megabytes=2, age_days=1)
    foreign = stored_run(models, "scratch/aaaaaaaaaaaaaaaa")
    (foreign / "notes.txt").write_text("mine\n")  # a user's file in a run's folder
    stored_run(models, "scratch/bbbbbbbbbbbbbbbb", fingerprint="cccccccccccccccc")  # another run's checkpoint
    stored_run(models, "scratch/not-a-run")  # not the store's name
    (models / ".resume/pretrained/dddddddddddddddd").symlink_to(tmp_path)  # a link, not the store's folder
    (models / ".resume/readme.txt").write_text("mine\n")  # where an arm's folder belongs
    return models / ".resume"


FOREIGN = [
    "scratch/aaaaaaaaaaaaaaaa",
    "scratch/bbbbbbbbbbbbbbbb",
    "scratch/not-a-run",
    "pretrained/dddddddddddddddd",
    "readme.txt",
]


def test_resume_list_names_each_run_its_size_and_age_and_what_is_not_the_store_s(store, capsys):
    code, out, err = ran(["resume"], capsys)  # `list` is the default
    assert code == 0 and not err
    # the store's two runs, oldest first, with their size (3 MB and 2 MB of tensors) and age
    assert (
        "models/.resume: 2 unfinished runs, 5.0 MB, oldest first:\n"
        "  scratch/0123456789abcdef: resnet50, epoch 2, 3.0 MB, last written 40 days ago\n"
        "  pretrained/fedcba9876543210: resnet50, epoch 1, 2.0 MB, last written 24 hours ago\n" in out
    )
    assert "holds notes.txt, which the store never writes" in out
    assert "its last.pt is not a checkpoint of the run bbbbbbbbbbbbbbbb" in out
    assert "its name is not <arm>/<16 hex digits>" in out and "is a link, not a folder the store made" in out
    assert "models/.resume/readme.txt: is a file, not a folder the store made" in out


def test_resume_prune_removes_only_what_the_store_made(store, capsys):
    code, out, err = ran(["resume", "prune", "--all"], capsys)
    assert code == 0, err
    assert "removed models/.resume/scratch/0123456789abcdef (3.0 MB)" in out and "freed 5.0 MB" in out
    assert not (store / "scratch/0123456789abcdef").exists()
    assert not (store / "pretrained/fedcba9876543210").exists()
    for name in FOREIGN:  # each kept, and named
        assert os.path.lexists(store / name), name
        assert f"left alone: {store.relative_to(store.parent.parent) / name}" in err
    assert (store / "scratch/aaaaaaaaaaaaaaaa/notes.txt").read_text() == "mine\n"
    assert (store / "scratch/aaaaaaaaaaaaaaaa/last.pt").is_file()  # not half removed either


def test_resume_prune_by_name_and_by_age(store, capsys):
    code, err = run(["resume", "prune", "--older-than", "30"], capsys)
    assert code == 0, err
    assert not (store / "scratch/0123456789abcdef").exists()
    assert (store / "pretrained/fedcba9876543210").is_dir()  # a day old
    code, err = run(["resume", "prune", "pretrained/fedcba9876543210"], capsys)
    assert code == 0, err
    assert not (store / "pretrained/fedcba9876543210").exists() and os.path.lexists(store / FOREIGN[3])
    code, out, err = ran(["resume", "prune", "--all", "--arm", "pretrained"], capsys)
    assert code == 0 and "models/.resume: nothing to prune" in out


@pytest.mark.parametrize("name", FOREIGN[:3] + ["scratch/eeeeeeeeeeeeeeee"])
def test_resume_prune_of_a_folder_that_is_not_the_store_s_run_is_refused_and_removes_nothing(
    store, capsys, name
):
    before = sorted(str(path) for path in store.rglob("*"))
    err = refused(["resume", "prune", "scratch/0123456789abcdef", name], capsys)
    assert name in err and ("not removed" in err or "no such run in the resume store" in err)
    assert sorted(str(path) for path in store.rglob("*")) == before


def test_resume_prune_waits_for_no_training_it_refuses_while_the_arm_trains(store, capsys):
    from retinopathy.core.contract import Layout
    from retinopathy.core.files import exclusive_lock

    with exclusive_lock(Layout().arm("scratch").lock, "training of the scratch arm"):
        err = refused(["resume", "prune", "--all"], capsys)
    assert "training of the scratch arm is already running" in err
    assert (store / "scratch/0123456789abcdef/last.pt").is_file()
    assert (store / "pretrained/fedcba9876543210/last.pt").is_file()  # nothing at all removed


@pytest.mark.parametrize(
    "argv",
    [
        ["resume", "prune"],
        ["resume", "list", "--all"],
        ["resume", "prune", "scratch/0123456789abcdef", "--all"],
    ],
)
def test_resume_asks_what_to_prune_rather_than_guessing(store, capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and "retinopathy resume: error:" in capsys.readouterr().err
    assert (store / "scratch/0123456789abcdef/last.pt").is_file()


@pytest.mark.slow
def test_training_names_the_unfinished_runs_of_other_settings_and_the_prune_removes_them(
    tiny_project, capsys
):
    from retinopathy.core.config import load_params
    from retinopathy.engine import checkpoint

    # A run killed in epoch 4 with train.lr 0.1, where the project now has 0.01.
    params = checkpoint.training_params(load_params("params.yaml").to_dict())
    params["train"]["lr"] = 0.1
    stale = stored_run(
        tiny_project / "models", "scratch/0123456789abcdef", epoch=3, megabytes=4, inputs={"params": params}
    )
    code, err = run(["train", "--init", "scratch"], capsys)
    assert code == 0, err
    assert (
        "note: models/.resume/scratch holds 1 unfinished run of other settings (4.0 MB), which resume "
        "only if their settings come back:\n  scratch/0123456789abcdef: resnet50, epoch 3, 4.0 MB, "
        "last written within the hour (its settings -> these: params.train.lr: 0.1 -> 0.01; " in err
    )
    command = "retinopathy resume prune scratch/0123456789abcdef"
    assert f"remove them with `{command}`" in err
    assert stale.is_dir()  # training only names it
    code, err = run(command.split()[1:], capsys)
    assert code == 0 and not stale.exists() and not (tiny_project / "models/.resume").exists()


# ----------------------------------------------------------------- 3. names at the file-name limit


def tiny_checkpoint(path: Path) -> Path:
    """A ``best.pt`` as training writes one (an untrained ResNet18 at 32 px): enough to grade and export."""
    from retinopathy.models.build import build_model
    from retinopathy.models.grader import GraderSpec

    torch.manual_seed(0)
    net = build_model("resnet18", num_classes=5, weights=None)
    spec = GraderSpec(
        model="resnet18",
        image_size=32,
        normalize="imagenet",
        preprocess="none",
        loss="cross_entropy",
        thresholds=None,
    )
    torch.save(
        {
            "model": net.state_dict(),
            "spec": spec.to_dict(),
            "epoch": 1,
            "fingerprint": "0" * 16,
            "test_accuracy": 0.5,
        },
        path,
    )
    return path


@pytest.fixture()
def user(tmp_path, monkeypatch) -> Path:
    """A user's folder: params.yaml, a checkpoint, a photo, Kaggle's labels and images; cwd set to it."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(SHIPPED)
    tiny_checkpoint(tmp_path / "best.pt")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 64), (120, 40, 20)).save(tmp_path / "photos/eye_left.png")
    (tmp_path / "trainLabels.csv").write_text("image,level\n10_left,0\n")
    (tmp_path / "train").mkdir()
    return tmp_path


OUTPUTS = {  # each command that takes an output path, with OUT where it goes
    "predict": ["predict", "photos", "--checkpoint", "best.pt", "--out", "OUT"],
    "predict --explain": ["predict", "photos", "--checkpoint", "best.pt", "--explain", "OUT"],
    "export": ["export", "--checkpoint", "best.pt", "--format", "torchscript", "--out", "OUT"],
    "bench": ["bench", "--json", "OUT"],
    "weights": ["weights", "--no-download", "--out", "OUT"],
    "prepare": ["prepare", "--out", "OUT"],
    "compare": ["compare", "--out", "OUT"],
    "demo-data": ["demo-data", "--out", "OUT"],
    "report": ["report", "--metrics", str(REPO / "metrics"), "--out", "OUT"],
    "import-kaggle": ["import-kaggle", "--labels", "trainLabels.csv", "--images", "train", "--out", "OUT"],
}


# Folders that are only filled, never replaced as a whole: a name that fits is fine, temporaries or not.
CONTAINERS = ("predict --explain", "weights", "report")


@pytest.mark.slow
@pytest.mark.parametrize("length", [240, 300])  # fits alone but not with a temporary; fits nowhere
@pytest.mark.parametrize("command", OUTPUTS)
def test_an_output_name_at_or_over_the_limit_is_refused_before_any_work(
    user, capsys, monkeypatch, command, length
):
    # bench imports its measuring code after parsing and checking --json: patched where it lives
    monkeypatch.setattr(
        "retinopathy.commands.bench.runner.run",
        lambda *a, **k: pytest.fail("measured before checking --json"),
    )
    name = "o" * length
    before = sorted(path.name for path in user.iterdir())
    argv = [name if arg == "OUT" else arg for arg in OUTPUTS[command]]
    limit = os.pathconf(user, "PC_NAME_MAX")
    if length <= limit and command in CONTAINERS:
        code, err = run(argv, capsys)
        assert code == 0 and (user / name).is_dir(), err  # no limit where none applies
        return
    err = refused(argv, capsys)
    if length > limit:
        assert f"is {length} bytes, over this filesystem's limit of {limit} bytes per file name" in err
    else:  # the name with its temporary
        assert f"'{'o' * 28}...{'o' * 28}' is {length} bytes; it is written under a temporary name " in err
        assert (
            "bytes longer first (`.<name>.<host>-<pid>.<random>.tmp`), which is over this filesystem's "
            f"limit of {limit} bytes per file name. Choose a name of at most" in err
        )
    assert len(err.splitlines()[-1]) < 600
    assert sorted(path.name for path in user.iterdir()) == before  # nothing written, not even a folder


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "LONG.png", "--checkpoint", "best.pt"],
        ["predict", "photos", "--checkpoint", "LONG.pt"],
        ["import-kaggle", "--labels", "trainLabels.csv", "--images", "LONG", "--out", "kaggle"],
        ["report", "--metrics", "LONG", "--out", "plots"],
        ["prepare", "--params", "LONG.yaml"],
    ],
)
def test_an_input_path_over_the_limit_is_a_clear_error(user, capsys, argv):
    long = "i" * 300
    err = refused([arg.replace("LONG", long) for arg in argv], capsys)
    assert "i" * 40 in err and ("over the filesystem's limit" in err or "File name too long" in err)
    assert not (user / "kaggle").exists() and not (user / "plots").exists()


def test_an_input_named_near_the_limit_gives_no_output_named_after_it(user, capsys):
    photo = user / "photos" / ("p" * 250 + ".png")
    (user / "photos/eye_left.png").rename(photo)  # 254 bytes: a file, but its heat map's temporary cannot be
    err = refused(["predict", str(photo), "--checkpoint", "best.pt", "--explain", "heat"], capsys)
    assert "heat/ppp" in err and "is 254 bytes; it is written under a temporary name" in err
    assert not (user / "heat").exists() and not (user / "predictions.csv").exists()


@pytest.mark.parametrize("where", ["import-kaggle", "predict list", "prepare"])
def test_an_image_name_whose_file_cannot_exist_is_refused_with_its_line(user, capsys, where):
    name = "1" * 250 + "_left"  # <name>.jpeg: 260 bytes
    if where == "import-kaggle":
        (user / "trainLabels.csv").write_text(f"image,level\n10_left,0\n{name},1\n")
        argv, listed = OUTPUTS["import-kaggle"][:-1] + ["kaggle"], "trainLabels.csv:3"
    elif where == "predict list":
        (user / "photos/list.csv").write_text(f"eye_left\n{name}\n")
        argv, listed = ["predict", "photos/list.csv", "--checkpoint", "best.pt"], "photos/list.csv:2"
    else:
        course = user / "course"
        course.mkdir()
        for split in ("train", "test"):
            (course / f"{split}_img.csv").write_text(f"{split}1_left\n{name if split == 'test' else 'a'}\n")
            (course / f"{split}_label.csv").write_text("0\n1\n")
        (user / "params.yaml").write_text(SHIPPED.replace("root: data/demo", "root: course"))
        argv, listed = ["prepare"], "course/test_img.csv:2"
    err = refused(argv, capsys)
    assert (
        f"{listed}: '{'1' * 40}... (255 characters)' is too long an image name: its file <name>.jpeg "
        "would be 260 bytes, over the limit of 255 bytes per file name; shorten it (at most 250 "
        "bytes)" in err
    )
