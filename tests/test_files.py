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
