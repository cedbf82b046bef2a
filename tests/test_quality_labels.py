"""EyeQ's quality labels read and matched to a project's photographs (retinopathy.quality.labels):
names with and without the suffix, unmatched names counted and shown, and every bad row an error
that names the file and the line. Files the tests write, in EyeQ's own layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from retinopathy.core.errors import RetinopathyError
from retinopathy.quality.labels import UNMATCHED_SHOWN, read_quality_labels, stem

PHOTOS = ["10_left", "10_right", "13_left", "13_right", "15_left"]


def write(folder: Path, *rows: str, header: str = ",image,quality,DR_grade") -> Path:
    path = folder / "Label_EyeQ_test.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_eyeq_rows_match_names_with_and_without_the_suffix(tmp_path):
    path = write(tmp_path, "0,10_left.jpeg,0,0", "1,10_right.JPEG,2,1", "2,13_left,1,", "3,15_left.png,2,4")
    labels = read_quality_labels(path, PHOTOS)
    assert labels.levels == {"10_left": 0, "10_right": 2, "13_left": 1, "15_left": 2}
    assert (labels.rows, labels.unmatched, labels.unmatched_examples, labels.unlabelled) == (4, 0, (), 1)
    assert [labels.level_name(p) for p in PHOTOS] == ["Good", "Reject", "Usable", "", "Reject"]


def test_unmatched_names_are_counted_and_the_first_few_listed(tmp_path):
    others = [f"{i},{900 + i}_left.jpeg,0,0" for i in range(UNMATCHED_SHOWN + 3)]
    path = write(tmp_path, *others, "99,13_right.jpeg,2,0")
    labels = read_quality_labels(path, PHOTOS)
    assert labels.levels == {"13_right": 2}
    assert labels.unmatched == UNMATCHED_SHOWN + 3
    assert labels.unmatched_examples == tuple(f"{900 + i}_left.jpeg" for i in range(UNMATCHED_SHOWN))
    assert labels.unlabelled == len(PHOTOS) - 1


def test_a_bom_and_windows_line_endings_are_read(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(b"\xef\xbb\xbf,image,quality,DR_grade\r\n0,10_left.jpeg,2,0\r\n")
    assert read_quality_labels(path, PHOTOS).levels == {"10_left": 2}


@pytest.mark.parametrize(
    ("rows", "header", "wording"),
    [
        (["0,10_left.jpeg,3,0"], ",image,quality,DR_grade", ":2: quality '3' is not 0, 1 or 2"),
        (["0,10_left.jpeg,Good,0"], ",image,quality,DR_grade", ":2: quality 'Good'"),
        (["0,10_left.jpeg,0,0", "1,10_left.jpeg,0"], ",image,quality,DR_grade", ":3: 3 fields where 4"),
        (["0,,0,0"], ",image,quality,DR_grade", ":2: no image name"),
        (["0,10_left.jpeg,0,7"], ",image,quality,DR_grade", ":2: DR_grade '7'"),
        (["10_left.jpeg,0"], "image,quality", ":1: the header is 'image,quality'"),
    ],
)
def test_a_bad_row_names_the_file_and_line(tmp_path, rows, header, wording):
    path = write(tmp_path, *rows, header=header)
    with pytest.raises(RetinopathyError) as raised:
        read_quality_labels(path, PHOTOS)
    assert f"{path}{wording}" in str(raised.value)
    assert "set quality.labels to null" in str(raised.value)


def test_two_labels_for_one_photograph_are_an_error(tmp_path):
    path = write(tmp_path, "0,10_left.jpeg,0,0", "1,13_left.jpeg,0,0", "2,10_left,2,0")
    with pytest.raises(RetinopathyError, match=r":4: a second label for 10_left \(the first is on line 2\)"):
        read_quality_labels(path, PHOTOS)


def test_a_missing_file_names_the_params_key(tmp_path):
    with pytest.raises(
        RetinopathyError, match=r"nothere.csv: file not found \(params.yaml `quality.labels`\)"
    ):
        read_quality_labels(tmp_path / "nothere.csv", PHOTOS)


def test_stem_drops_only_an_image_extension():
    assert [stem(n) for n in ("a.jpeg", "a.Jpg", "a", "a.b", ".png")] == ["a", "a", "a", "a.b", ".png"]
