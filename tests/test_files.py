"""Atomic outputs: a failed stage leaves the previous output exactly as it was."""

import os

import pytest

from retinopathy.core.files import atomic_file, staged_folder, write_json_atomic, write_text_atomic


def test_staged_folder_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    with staged_folder(out) as staging:
        (staging / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"

    with pytest.raises(RuntimeError), staged_folder(out) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("killed halfway")
    assert (out / "a.txt").read_text() == "first"

    with staged_folder(out) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_write_json_atomic_leaves_no_temporary_file(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    write_json_atomic(tmp_path / "m.json", {"a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not tempfile's 0600


def test_a_write_failing_halfway_leaves_the_target_as_it_was_and_no_temporary_file(tmp_path):
    target = tmp_path / "m.txt"
    write_text_atomic(target, "before")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "half \ud800")  # a lone surrogate has no UTF-8 encoding
    with pytest.raises(RuntimeError), atomic_file(target, "wb") as out:
        out.write(b"half")
        raise RuntimeError("killed halfway")
    assert target.read_text() == "before"
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(tmp_path / "new.txt", "\ud800")
    assert [p.name for p in tmp_path.iterdir()] == ["m.txt"]  # no new.txt, no temporary file


def test_staged_files_change_together_or_not_at_all(tmp_path, monkeypatch):
    """A rename that fails half-way (a full disk) puts back the files already replaced: none changes."""
    import errno

    from retinopathy.core.errors import RetinopathyError
    from retinopathy.core.files import staged_files

    folder = tmp_path / "plots"
    folder.mkdir()
    for name in ("a.md", "b.png", "c.png"):
        (folder / name).write_text(f"old {name}")
    (folder / "theirs.png").write_text("another stage's")
    ours = dict.fromkeys(("a.md", "b.png", "c.png"), lambda _: True)
    replace, calls = os.replace, []

    def full_disk_at_the_third(source, target):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk_at_the_third)
    full = pytest.raises(RetinopathyError, match=r"No space left on device.*free some space")
    with full as caught, staged_files(folder, "report", ours) as staging:
        for name in ("a.md", "b.png", "c.png"):
            (staging / name).write_text(f"new {name}")
    monkeypatch.undo()
    assert "c.png" in str(caught.value)  # the file that could not be written
    assert {p.name: p.read_text() for p in folder.iterdir()} == {
        "a.md": "old a.md",
        "b.png": "old b.png",
        "c.png": "old c.png",
        "theirs.png": "another stage's",
    }  # every file as it was, and no temporary left behind

    with staged_files(folder, "report", ours) as staging:
        for name in ("a.md", "b.png", "c.png"):
            (staging / name).write_text(f"new {name}")
    assert sorted(p.name for p in folder.iterdir()) == ["a.md", "b.png", "c.png", "theirs.png"]
    assert (folder / "c.png").read_text() == "new c.png" and (
        folder / "theirs.png"
    ).read_text() == "another stage's"


def test_a_full_disk_in_a_draft_folder_is_an_error_naming_the_output_and_leaves_no_draft(tmp_path):
    """export builds its file in a draft folder: a full disk there names the output, not a traceback."""
    import errno

    from retinopathy.core.errors import RetinopathyError
    from retinopathy.core.files import draft_folder

    out = tmp_path / "model.onnx"
    with (
        pytest.raises(
            RetinopathyError, match=r"model\.onnx: could not be written \(No space left on device\)"
        ),
        draft_folder(out) as draft,
    ):
        (draft / "model.onnx").write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
