"""Atomic outputs: a failed stage leaves the previous output exactly as it was."""

import pytest

from retinopathy.files import staged_folder, write_json_atomic


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
