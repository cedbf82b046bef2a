"""No command may destroy what it did not create (issue 20, the output classes).

Each test does what a user did, through the real CLI (``retinopathy.cli.main``
or a subprocess), on files the test makes: ``--out`` onto a folder that holds
other files, outputs that are inputs, links and device nodes, writes that fail
after the work is done, hostile names in CSV output, and temporaries left by
killed runs. Every command that takes an output path is checked.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, subprocess_env
from retinopathy import cli
from retinopathy.core import files
from retinopathy.core.files import STALE_AFTER, csv_text, write_text_atomic

HOST = socket.gethostname()


@pytest.fixture()
def project(trained_once) -> Path:
    """The session's trained tiny project (conftest.trained_once): read only, the tests copy from it."""
    return trained_once


@pytest.fixture()
def user(tmp_path, monkeypatch, project) -> Path:
    """A user's working folder: params.yaml and their own files; cwd set to it."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(project / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "notes.txt").write_text("my notes\n")
    return tmp_path


def photos(folder: Path, project: Path, names: list[str], fmt: str = "JPEG") -> list[Path]:
    """Copies of demo images as ``folder/<name>``, written in ``fmt``."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((project / "data/demo").glob("*.jpeg"))
    made = []
    for source, name in zip(sources, names, strict=False):
        with Image.open(source) as image:
            image.save(folder / name, fmt)
        made.append(folder / name)
    return made


def checkpoint_args(project: Path) -> list[str]:
    return ["--checkpoint", str(project / "models/scratch/best.pt"), "--params", str(project / "params.yaml")]


def run(argv: list[str], capsys) -> tuple[int, str]:
    """``retinopathy ARGV`` in this process: (exit status, stderr)."""
    code = cli.main(argv)
    return code, capsys.readouterr().err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------- 1. --out onto a folder it did not make

FOLDER_COMMANDS = {
    "prepare": lambda out: ["prepare", "--out", out],
    "compare": lambda out: ["compare", "--out", out],
    "demo-data": lambda out: ["demo-data", "--out", out],
    "import-kaggle": lambda out: [
        "import-kaggle",
        "--labels",
        "trainLabels.csv",
        "--images",
        "train",
        "--out",
        out,
    ],
    "import-external": lambda out: ["import-external", "eyepacs", "--root", ".", "--out", out],
}


def kaggle_inputs(folder: Path) -> None:
    (folder / "trainLabels.csv").write_text("image,level\n10_left,0\n")
    (folder / "train").mkdir()


@pytest.mark.parametrize("command", FOLDER_COMMANDS)
@pytest.mark.parametrize("target", ["data", "."])
def test_out_onto_a_folder_with_other_files_is_refused_and_nothing_is_lost(user, capsys, command, target):
    kaggle_inputs(user)
    (user / "data/splits").mkdir(parents=True)
    (user / "data/splits/train_img.csv").write_text("a\nb\n")
    before = snapshot(user)
    code, err = run(FOLDER_COMMANDS[command](target), capsys)
    assert code == 2 and "Traceback" not in err
    assert snapshot(user) == before, "nothing may be deleted or changed"
    assert f"{target}:" in err and "--out" in err
    assert "refusing" in err or "current folder" in err or "already exists" in err
    assert [p.name for p in user.iterdir() if p.name.startswith(".")] == [], "no temporaries left"


@pytest.mark.parametrize("command", ["prepare", "compare"])
def test_the_refusal_names_what_is_in_the_folder_and_the_fix(user, capsys, command):
    (user / "out").mkdir()
    (user / "out/mine.txt").write_text("mine\n")
    code, err = run(FOLDER_COMMANDS[command]("out"), capsys)
    assert code == 2
    assert f"out: holds files that `retinopathy {command}` did not write (mine.txt)" in err
    assert "Pass another --out (a new or empty folder), or move out away first" in err
    assert (user / "out/mine.txt").read_text() == "mine\n"


def test_prepare_replaces_its_own_earlier_output_and_an_older_version_s(project, user, capsys):
    shutil.copytree(project / "data/demo", user / "data/demo")
    out = user / "data/prepared"
    shutil.copytree(project / "data/prepared", out)  # as an earlier version left it: no marker
    before = snapshot(out)
    assert run(["prepare", "--out", "data/prepared"], capsys)[0] == 0
    assert snapshot(out) == before  # the same data: the same files
    (out / "extra.txt").write_text("a user's file")
    code, err = run(["prepare", "--out", "data/prepared"], capsys)
    assert code == 2 and "(extra.txt, index.csv, summary.json)" in err
    assert (out / "extra.txt").exists()


def test_prepare_refuses_before_it_reads_any_image(user, capsys, monkeypatch):
    (user / "out").mkdir()
    (user / "out/mine.txt").write_text("mine\n")
    import retinopathy.data.checks  # prepare imports its image checker when it runs (a fast --help)

    monkeypatch.setattr(
        retinopathy.data.checks, "check_images", lambda *a, **k: pytest.fail("images read first")
    )
    assert run(["prepare", "--out", "out"], capsys)[0] == 2


# ----------------------------------------------------------------- 2. outputs onto inputs and others' files


@pytest.mark.slow
def test_predict_explain_into_the_folder_of_its_png_inputs_changes_none_of_them(project, user, capsys):
    folder = user / "photos"
    photos(folder, project, ["eye1.png", "eye2.png"], "PNG")
    before = snapshot(folder)
    code, err = run(
        ["predict", "photos", "--explain", "photos", "--out", "out.csv", *checkpoint_args(project)], capsys
    )
    assert code == 2 and "photos/eye1.png: is also an input of `retinopathy predict --explain`" in err
    assert snapshot(folder) == before and not (user / "out.csv").exists()


@pytest.mark.slow
def test_predict_writes_and_rewrites_its_own_heat_maps_beside_jpeg_inputs(project, user, capsys):
    photos(user / "photos", project, ["eye1.jpeg"])
    args = ["predict", "photos", "--explain", "photos", "--out", "out.csv", *checkpoint_args(project)]
    assert run(args, capsys)[0] == 0 and (user / "photos/eye1.png").is_file()
    code, err = run(args, capsys)  # now eye1.png is in photos/, so it is an input too
    assert code == 2 and "photos/eye1.png: is also an input" in err
    args = ["predict", "photos/eye1.jpeg", "--explain", "why", "--out", "out.csv", *checkpoint_args(project)]
    assert run(args, capsys)[0] == 0 and (user / "why/eye1.png").is_file()
    assert run(args, capsys)[0] == 0, "a second run replaces its own heat maps and CSV"


def _foreign_csv(user: Path) -> list[str]:
    (user / "results.csv").write_text("patient,diagnosis\n1,fine\n")
    return ["--out", "results.csv"]


def _input_list(user: Path) -> list[str]:
    return ["--out", "photos/list.csv"]


def _foreign_png(user: Path) -> list[str]:
    Image.new("RGB", (8, 8)).save(user / "eye1.png")  # the user's own picture, named as a heat map
    return ["--out", "out.csv", "--explain", "."]


@pytest.mark.slow
@pytest.mark.parametrize("case", [_foreign_csv, _input_list, _foreign_png])
def test_predict_refuses_to_replace_an_input_or_a_file_it_did_not_write(project, user, capsys, case):
    photos(user / "photos", project, ["eye1.jpeg"])
    (user / "photos/list.csv").write_text("eye1\n")
    extra = case(user)
    before = snapshot(user)
    code, err = run(["predict", "photos/list.csv", *extra, *checkpoint_args(project)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "is also an input" in err or "was not written by `retinopathy predict" in err
    assert snapshot(user) == before


@pytest.mark.parametrize("target", ["checkpoint", "foreign"])
def test_export_refuses_its_own_checkpoint_and_a_file_it_did_not_write(project, user, capsys, target):
    best = user / "best.pt"
    shutil.copy(project / "models/scratch/best.pt", best)
    out = best if target == "checkpoint" else user / "model.pt"
    if target == "foreign":
        out.write_bytes(b"someone else's model")
    before = snapshot(user)
    code, err = run(
        ["export", "--checkpoint", str(best), "--format", "torchscript", "--out", str(out)], capsys
    )
    assert code == 2 and ("is also an input" in err or "was not written by `retinopathy export`" in err)
    assert snapshot(user) == before


@pytest.mark.slow
def test_export_replaces_its_own_earlier_export(project, user, capsys):
    args = [
        "export",
        "--checkpoint",
        str(project / "models/scratch/best.pt"),
        "--format",
        "torchscript",
        "--out",
        "model.pt",
    ]
    assert run(args, capsys)[0] == 0
    assert run(args, capsys)[0] == 0


def test_weights_report_and_bench_refuse_files_they_did_not_write(user, capsys, monkeypatch):
    (user / "init").mkdir()
    (user / "init/scratch.json").write_text('{"my": "settings"}\n')
    (user / "plots").mkdir()
    (user / "plots/report.md").write_text("# My own report\n")
    (user / "bench.json").write_text('{"my": "figures"}\n')
    before = snapshot(user)
    code, err = run(["weights", "--out", "init", "--no-download"], capsys)
    assert code == 2 and "init/scratch.json: exists and was not written by `retinopathy weights`" in err
    code, err = run(["report", "--metrics", str(REPO / "metrics"), "--out", "plots"], capsys)
    assert code == 2 and "plots/report.md: exists and was not written by `retinopathy report`" in err
    # bench imports its measuring code after parsing and checking --json: patched where it lives
    monkeypatch.setattr(
        "retinopathy.commands.bench.runner.run",
        lambda *a, **k: pytest.fail("measured before checking --json"),
    )
    code, err = run(["bench", "--json", "bench.json"], capsys)
    assert code == 2 and "bench.json: exists and was not written by `retinopathy bench`" in err
    assert snapshot(user) == before


# ----------------------------------------------------------------- 3. links and special files


def special_file(folder: Path) -> Path:
    fifo = folder / "pipe"
    os.mkfifo(fifo)
    return fifo


OUTPUT_FILE_COMMANDS = {
    "predict": lambda out, project: ["predict", "photos", "--out", out, *checkpoint_args(project)],
    "export": lambda out, project: [
        "export",
        "--checkpoint",
        str(project / "models/scratch/best.pt"),
        "--format",
        "torchscript",
        "--out",
        out,
    ],
    "bench": lambda out, project: ["bench", "--json", out],
    "weights": lambda out, project: ["weights", "--no-download", "--out", out],
    "prepare": lambda out, project: ["prepare", "--out", out],
    "compare": lambda out, project: ["compare", "--out", out],
    "demo-data": lambda out, project: ["demo-data", "--out", out],
    "report": lambda out, project: ["report", "--metrics", str(REPO / "metrics"), "--out", out],
    "import-kaggle": lambda out, project: [
        "import-kaggle",
        "--labels",
        "trainLabels.csv",
        "--images",
        "train",
        "--out",
        out,
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("command", OUTPUT_FILE_COMMANDS)
@pytest.mark.parametrize("where", ["fifo", "/dev/null"])
def test_an_output_onto_a_device_or_a_pipe_is_refused(project, user, capsys, monkeypatch, command, where):
    photos(user / "photos", project, ["eye1.jpeg"])
    kaggle_inputs(user)
    out = str(special_file(user)) if where == "fifo" else where
    if where == "/dev/null" and not os.path.exists(where):
        pytest.skip("no /dev/null here")
    # bench imports its measuring code after parsing and checking --json: patched where it lives
    monkeypatch.setattr(
        "retinopathy.commands.bench.runner.run",
        lambda *a, **k: pytest.fail("measured before checking --json"),
    )
    before = os.stat(out)
    code, err = run(OUTPUT_FILE_COMMANDS[command](out, project), capsys)
    assert code == 2 and "Traceback" not in err
    assert any(words in err for words in ("named pipe", "character device", "not a folder", "already exists"))
    after = os.stat(out)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), "the node itself is untouched"


def test_predict_writes_through_a_link_and_keeps_it(project, user, capsys):
    photos(user / "photos", project, ["eye1.jpeg"])
    (user / "shared").mkdir()
    (user / "shared/results.csv").write_text("image,grade,value,referable,error\n")  # an earlier run's
    (user / "results.csv").symlink_to("shared/results.csv")
    assert run(["predict", "photos", "--out", "results.csv", *checkpoint_args(project)], capsys)[0] == 0
    assert (user / "results.csv").is_symlink()
    assert (user / "shared/results.csv").read_text().startswith("image,grade,probability_0")


def test_a_link_to_a_read_only_file_is_replaced_not_written_through(tmp_path):
    """DVC links outputs to its read-only cache (cache.type: symlink): the cache must stay intact."""
    cache = tmp_path / "cache-object"
    cache.write_text("cached\n")
    cache.chmod(0o444)
    (tmp_path / "out.json").symlink_to(cache)
    write_text_atomic(tmp_path / "out.json", "new\n")
    assert cache.read_text() == "cached\n" and not (tmp_path / "out.json").is_symlink()
    assert (tmp_path / "out.json").read_text() == "new\n"


def test_a_folder_out_through_a_link_replaces_the_linked_folder_and_keeps_the_link(project, user, capsys):
    shutil.copytree(project / "data/demo", user / "data/demo")
    (user / "elsewhere").mkdir()
    (user / "data/prepared").symlink_to(user / "elsewhere", target_is_directory=True)
    assert run(["prepare", "--out", "data/prepared"], capsys)[0] == 0
    assert (user / "data/prepared").is_symlink() and (user / "elsewhere/index.csv").is_file()


# ----------------------------------------------------------------- 4. results kept when writing fails


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_is_refused_in_its_own_row_and_written(project, user, capsys):
    folder = user / "photos"
    photos(folder, project, ["eye1.jpeg"])
    name = os.fsdecode(b"caf\xe9.jpeg")
    shutil.copy(folder / "eye1.jpeg", folder / name)
    code, _ = run(["predict", "photos", "--out", "out.csv", *checkpoint_args(project)], capsys)
    assert code == 1  # issue 26: a name that is not an image name is refused, not rendered
    with open(user / "out.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["image"] for r in rows] == ["photos/caf\\xe9.jpeg", "photos/eye1.jpeg"]
    assert rows[0]["grade"] == "" and "is not an image name" in rows[0]["error"]
    assert rows[1]["grade"] in "01234" and rows[1]["grade"]


@pytest.mark.parametrize("case", ["a folder", "under a file"])
def test_an_output_that_cannot_be_written_is_refused_before_grading(project, user, capsys, monkeypatch, case):
    photos(user / "photos", project, ["eye1.jpeg"])
    if case == "a folder":
        (user / "out").mkdir()
        out, words = "out", "out: is a folder"
    else:
        (user / "file").write_text("x")
        out, words = "file/out.csv", "file: cannot write the output of `retinopathy predict` there"
    from retinopathy.engine import loops  # predict imports its loop when it runs (a fast --help)

    monkeypatch.setattr(loops, "predict", lambda *a, **k: pytest.fail("graded before the check"))
    code, err = run(["predict", "photos", "--out", out, *checkpoint_args(project)], capsys)
    assert code == 2 and words in err


@pytest.mark.slow
def test_a_full_disk_at_the_end_keeps_the_grades_in_a_file_and_says_where(project, user, capsys, monkeypatch):
    photos(user / "photos", project, ["eye1.jpeg", "eye2.jpeg"])
    (user / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(user / "tmp"))
    real = files.public_mode

    def full(path, folder=False):
        if Path(path).parent == user and not folder:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, folder)

    monkeypatch.setattr(files, "public_mode", full)
    code, err = run(["predict", "photos", "--out", "out.csv", *checkpoint_args(project)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "out.csv: could not be written (No space left on device); free some space" in err
    kept = list((user / "tmp").glob("retinopathy-kept-*-out.csv"))
    assert len(kept) == 1 and f"The grades are not lost: they were kept in {kept[0]}" in err
    assert kept[0].read_text().count("\n") == 3 and not (user / "out.csv").exists()
    assert [p.name for p in user.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_a_file_size_limit_at_the_end_prints_the_grades_rather_than_a_traceback(project, user):
    photos(user / "photos", project, [f"eye{i}.jpeg" for i in range(6)])
    code = (
        "import resource, sys; from retinopathy.cli import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))\n"
        "sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "predict", "photos", "--out", "out.csv", *checkpoint_args(project)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=user,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "out.csv: could not be written (File too large)" in result.stderr
    assert "printed above, on standard output" in result.stderr
    # One row per photograph (each row names its photo first, then its patient: photos/eyeN).
    assert [line.split(",")[0] for line in result.stdout.splitlines()[1:]] == [
        f"photos/eye{i}.jpeg" for i in range(6)
    ]


# ----------------------------------------------------------------- 5. CSV output


@pytest.mark.slow
def test_hostile_file_names_stay_one_row_each_and_never_a_formula(project, user, capsys, monkeypatch):
    names = ["=1+2.jpeg", "+cmd.jpeg", "-2+3.jpeg", "@sum.jpeg", "a\rb.jpeg", 'quote",comma.jpeg']
    photos(user / "photos", project, names)
    monkeypatch.chdir(user / "photos")
    code, _ = run(["predict", ".", "--out", "../out.csv", *checkpoint_args(project)], capsys)
    assert code == 1  # issue 26: none is an image name, so each is refused in its own row
    with open(user / "out.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    written = sorted(r["image"] for r in rows)
    expected = sorted("'" + n if n[0] in "=+-@" else n for n in names)
    assert written == expected
    assert all(r["grade"] == "" and "is not an image name" in r["error"] for r in rows)


def _as_written(text: str) -> object:
    """A CSV field as the writers pass it: an int, a float that prints back the same, or text."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        return float(text) if repr(float(text)) == text else text
    except ValueError:  # an image name, a patient, a source
        return text


def test_the_csv_writer_leaves_numbers_and_the_committed_csv_files_byte_for_byte():
    committed = sorted((REPO / "metrics").rglob("*.csv"))
    assert committed
    for path in committed:
        with open(path, newline="") as stream:
            header, *rows = list(csv.reader(stream))
        values = [[_as_written(v) for v in row] for row in rows]
        assert csv_text(header, values) == path.read_text(), path
    assert csv_text(["v"], [["-0.25"], [-1], ["-inf"], [""], [None]]) == "v\n-0.25\n-1\n-inf\n\n\n"


# ----------------------------------------------------------------- 6. temporaries


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.slow
def test_a_killed_export_s_draft_folder_is_removed_by_the_next_export(project, user, capsys):
    draft = user / f".model.pt.tmp-{HOST}-{dead_pid()}-k1ll3d"
    draft.mkdir()
    (draft / "model.pt").write_bytes(b"\0" * 100_000)
    live = user / f".model.pt.tmp-{HOST}-{os.getpid()}-l1ve"  # this process: still running
    live.mkdir()
    args = [
        "export",
        "--checkpoint",
        str(project / "models/scratch/best.pt"),
        "--format",
        "torchscript",
        "--out",
        "model.pt",
    ]
    assert run(args, capsys)[0] == 0
    assert not draft.exists() and live.exists()
    assert sorted(p.name for p in user.iterdir() if p.name.startswith(".")) == [live.name]


def test_an_unlocked_temporary_of_another_host_is_removed_once_it_is_old(user, capsys):
    """A container restarted under a new name: its pid means nothing here; nobody holds its lock."""
    old = user / "init" / f".scratch.json.old-container-{os.getpid()}.a1b2c3.tmp"
    recent = user / "init" / f".scratch.json.old-container-{os.getpid()}.d4e5f6.tmp"
    locked = user / "init" / ".scratch.json.writing-now-1.g7h8i9.tmp"
    old.parent.mkdir()
    for path in (old, recent, locked):
        path.write_bytes(b"\0" * 1000)
    age(old, STALE_AFTER + 60)
    age(locked, STALE_AFTER + 60)
    fd = files._hold(locked)  # another process writing it, as far as flock can tell
    try:
        assert run(["weights", "--no-download", "--out", "init"], capsys)[0] == 0
    finally:
        os.close(fd)
    assert not old.exists() and recent.exists() and locked.exists()


def test_a_temporary_being_written_is_locked_and_kept(tmp_path):
    target = tmp_path / "last.pt"
    with files.atomic_file(target, "wb") as stream:
        stream.write(b"half")
        (temporary,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        age(temporary, STALE_AFTER + 60)  # even an old-looking one
        assert files.remove_stale_temporaries(target) == []
    assert target.read_bytes() == b"half"


def test_temporaries_are_ignored_by_git_and_dvc():
    names = [
        f"metrics/.scratch.json.{HOST}-12.ab_c1.tmp",
        f"plots/.staged.tmp-{HOST}-12-x1y2",
        f"data/.prepared.old-{HOST}-12-zz9",
        f".model.onnx.tmp-{HOST}-99-q1w2",
    ]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *names], cwd=REPO, capture_output=True, text=True
    )
    assert sorted(result.stdout.split()) == sorted(names)
    patterns = (REPO / ".dvcignore").read_text().split()
    assert {".*.tmp", ".*.tmp-*-*", ".*.old-*-*"} <= set(patterns)


@pytest.mark.slow
def test_the_committed_outputs_of_an_earlier_version_are_recognised_as_their_commands(user, capsys):
    """plots/ and models/init as git has them (no marker of any kind): report and weights rewrite them."""
    shutil.copytree(REPO / "plots", user / "plots")
    shutil.copytree(REPO / "models/init", user / "init")
    assert run(["report", "--metrics", str(REPO / "metrics"), "--out", "plots"], capsys)[0] == 0
    assert run(["weights", "--no-download", "--out", "init"], capsys)[0] == 0
