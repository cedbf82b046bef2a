"""Building the course layout from a (tiny, generated) Kaggle download."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinopathy.commands.import_kaggle import import_kaggle, main
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.checks import check_images
from retinopathy.data.fundus import NoFundusError, crop_to_fundus
from retinopathy.data.images import decode_image
from retinopathy.data.kaggle import stratified_split
from retinopathy.data.labels import SPLIT_FILES, Record, class_counts, image_path, read_course_splits

# 12 patients x 2 eyes; the grade of each patient's left and right eye.
GRADES = [(0, 0), (0, 1), (0, 0), (2, 2), (0, 0), (4, 3)]
GRADES += [(1, 0), (0, 0), (2, 0), (3, 3), (0, 0), (1, 1)]


def photograph(width: int = 120, height: int = 80, radius: int = 30, seed: int = 0) -> Image.Image:
    """A fake full-size photograph: a bright textured disc on a black background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    inside = np.hypot(xx - width / 2 + 0.5, yy - height / 2 + 0.5) < radius
    colour = np.array([170, 90, 40]) + rng.integers(-30, 30, (height, width, 3))
    pixels = np.where(inside[..., None], colour, rng.integers(0, 4, (height, width, 3)))
    return Image.fromarray(pixels.astype(np.uint8))


def bright_extent(image: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of pixels brighter than 10."""
    bright = np.asarray(image).max(axis=2) > 10
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def kaggle_download(root: Path, grades: list[tuple[int, int]] = GRADES) -> tuple[Path, Path]:
    """Write trainLabels.csv and <image>.jpeg photographs; return (labels, images dir)."""
    images = root / "train"
    images.mkdir(parents=True)
    lines = ["image,level"]
    for patient, pair in enumerate(grades, start=10):
        for eye, grade in zip(("left", "right"), pair, strict=True):
            name = f"{patient}_{eye}"
            lines.append(f"{name},{grade}")
            photograph(seed=patient).save(images / f"{name}.jpeg", quality=95)
    labels = root / "trainLabels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return labels, images


def write_lists(folder: Path, train: list[tuple[str, int]], test: list[tuple[str, int]]) -> None:
    folder.mkdir(parents=True)
    for split, rows in (("train", train), ("test", test)):
        img_file, lab_file = SPLIT_FILES[split]
        (folder / img_file).write_text("".join(f"{name}\n" for name, _ in rows))
        (folder / lab_file).write_text("".join(f"{grade}\n" for _, grade in rows))


def only_child(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --------------------------------------------------------------------------- cropping


def test_crop_makes_the_fundus_fill_the_square() -> None:
    square = crop_to_fundus(photograph(120, 80, radius=30))
    assert square.mode == "RGB"
    assert abs(square.width - 60) <= 2 and square.width == square.height
    left, top, right, bottom = bright_extent(square)
    assert left <= 1 and top <= 1 and right >= square.width - 1 and bottom >= square.height - 1
    pixels = np.asarray(square)
    assert pixels[0, 0].max() <= 10 and pixels[-1, -1].max() <= 10  # corners stay black


def test_crop_pads_a_cut_off_fundus_to_a_centred_square() -> None:
    # The disc (diameter 90) is cut off at the top and bottom of an 80-high photograph.
    square = crop_to_fundus(photograph(120, 80, radius=45))
    assert square.size == (90, 90)
    left, top, right, bottom = bright_extent(square)
    assert (left, right) == (0, 90)
    assert (top, bottom) == (5, 85)  # 5 black rows above and below: centred, still round


def test_crop_ignores_a_noisy_border_on_large_images() -> None:
    image = photograph(1200, 800, radius=300)
    pixels = np.asarray(image).copy()
    pixels[5, 5] = 255  # one hot pixel in the border: averaged away on the small copy
    square = crop_to_fundus(Image.fromarray(pixels))
    assert abs(square.width - 600) <= 8 and square.width == square.height


def test_crop_of_a_black_image_raises() -> None:
    with pytest.raises(NoFundusError):
        crop_to_fundus(Image.new("RGB", (40, 30)))


# --------------------------------------------------------------------------- importing


def test_import_with_a_seeded_stratified_split(tmp_path: Path) -> None:
    labels, images = kaggle_download(tmp_path)
    out = tmp_path / "course"
    import_kaggle(labels, images, out, size=32, test_fraction=0.25, seed=3)

    splits = read_course_splits(out)
    check_images(out, splits.train + splits.test)
    assert len(splits.train) + len(splits.test) == 24
    assert 4 <= len(splits.test) <= 8
    assert not list(tmp_path.glob(".course.*"))  # the temporary build folder was renamed
    assert decode_image(image_path(out, "10_left")).shape == (32, 32, 3)
    # Both eyes of a patient land in the same split.
    test_patients = {r.image.split("_")[0] for r in splits.test}
    assert not test_patients & {r.image.split("_")[0] for r in splits.train}
    # Labels are copied from trainLabels.csv, and every listed file is header-less.
    expected = {
        f"{patient}_{eye}": grade
        for patient, pair in enumerate(GRADES, start=10)
        for eye, grade in zip(("left", "right"), pair, strict=True)
    }
    assert all(expected[r.image] == r.label for r in splits.train + splits.test)
    assert splits.notes == []
    # The fundus fills the output square.
    left, top, right, bottom = bright_extent(Image.open(image_path(out, "10_left")))
    assert left <= 1 and top <= 1 and right >= 31 and bottom >= 31

    again = tmp_path / "again"
    import_kaggle(labels, images, again, size=32, test_fraction=0.25, seed=3)
    for name in ("train_img.csv", "test_img.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes()


def test_stratified_split_keeps_grade_proportions() -> None:
    labels = {f"{i}_{eye}": (i % 5, i) for i in range(500) for eye in ("left", "right")}
    splits = stratified_split(labels, 0.2, seed=0)
    test = [Record(name, labels[name][0]) for name in splits["test"]]
    assert class_counts(test) == [40] * 5  # 20% of the 100 patients of each grade, both eyes
    assert splits == stratified_split(labels, 0.2, seed=0)
    assert splits != stratified_split(labels, 0.2, seed=1)


def test_stratified_split_refuses_an_empty_split() -> None:
    with pytest.raises(RetinopathyError, match="leaves the test split empty"):
        stratified_split({"1_left": (0, 2), "1_right": (0, 3)}, 0.2, seed=0)
    with pytest.raises(RetinopathyError, match="between 0 and 1"):
        stratified_split({"1_left": (0, 2)}, 1.5, seed=0)


def test_import_with_split_lists_reproduces_them(tmp_path: Path) -> None:
    labels, images = kaggle_download(tmp_path)
    lists = tmp_path / "lists"
    write_lists(lists, [("11_right", 1), ("10_left", 0), ("15_left", 4)], [("13_left", 2)])
    out = tmp_path / "course"
    import_kaggle(labels, images, out, size=32, split_lists=lists, workers=2)

    for img_file, lab_file in SPLIT_FILES.values():
        assert (out / img_file).read_bytes() == (lists / img_file).read_bytes()
        assert (out / lab_file).read_bytes() == (lists / lab_file).read_bytes()
    splits = read_course_splits(out)
    check_images(out, splits.train + splits.test)
    jpegs = sorted(path.stem for path in out.glob("*.jpeg"))
    assert jpegs == ["10_left", "11_right", "13_left", "15_left"]


def test_split_lists_that_disagree_with_train_labels(tmp_path: Path) -> None:
    labels, images = kaggle_download(tmp_path)
    lists = tmp_path / "lists"
    write_lists(lists, [("10_left", 0), ("11_right", 3)], [("13_left", 2)])
    with pytest.raises(RetinopathyError) as excinfo:
        import_kaggle(labels, images, tmp_path / "course", split_lists=lists)
    message = str(excinfo.value)
    assert f"{lists / 'train_label.csv'}:2" in message and "grade 3" in message
    assert f"{labels}:5" in message and "grade 1" in message
    assert not (tmp_path / "course").exists()


def test_split_lists_naming_an_unknown_image(tmp_path: Path) -> None:
    labels, images = kaggle_download(tmp_path)
    lists = tmp_path / "lists"
    write_lists(lists, [("10_left", 0)], [("99_left", 2)])
    with pytest.raises(RetinopathyError, match=r"test_img.csv:1: '99_left' is not in"):
        import_kaggle(labels, images, tmp_path / "course", split_lists=lists)


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ("name,grade\n1_left,0\n", 1, "expected the header"),
        ("image,level\n10_left,5\n", 2, "'5'"),
        ("image,level\n10_left,x\n", 2, "'x'"),
        ("image,level\n10_left,0\n10_right,1\n10_left,0\n", 4, "also at line 2"),
        ("image,level\n10_left,0,extra\n", 2, "expected 'image,level'"),
        ("image,level\n10_left,0\n\n10_right,1\n", 3, "blank line"),
        ("image,level\n10_left,0\n10;x_right,1\n", 3, "is not an image name"),
        ("image,level\n10_left.jpg,0\n", 2, "has a file extension"),
    ],
)
def test_bad_train_labels(tmp_path: Path, content: str, line: int, words: str) -> None:
    _, images = kaggle_download(tmp_path)
    labels = tmp_path / "bad.csv"
    labels.write_text(content)
    with pytest.raises(RetinopathyError) as excinfo:
        import_kaggle(labels, images, tmp_path / "course", test_fraction=0.5)
    assert f"{labels}:{line}:" in str(excinfo.value) and words in str(excinfo.value)
    assert only_child(tmp_path) == ["bad.csv", "train", "trainLabels.csv"]  # nothing written


def test_missing_images_are_listed_before_anything_is_written(tmp_path: Path) -> None:
    labels, images = kaggle_download(tmp_path)
    (images / "12_right.jpeg").unlink()
    with pytest.raises(RetinopathyError) as excinfo:
        import_kaggle(labels, images, tmp_path / "course")
    assert f"{labels}:7: {images / '12_right.jpeg'}" in str(excinfo.value)
    assert only_child(tmp_path) == ["train", "trainLabels.csv"]


def test_missing_labels_file_and_existing_output(tmp_path: Path) -> None:
    labels, images = kaggle_download(tmp_path)
    with pytest.raises(RetinopathyError, match="not found"):
        import_kaggle(tmp_path / "nope.csv", images, tmp_path / "course")
    (tmp_path / "course").mkdir()
    (tmp_path / "course" / "old.txt").write_text("keep me")
    with pytest.raises(RetinopathyError, match="already exists"):
        import_kaggle(labels, images, tmp_path / "course")
    assert only_child(tmp_path / "course") == ["old.txt"]


@pytest.mark.slow
def test_a_corrupt_image_leaves_no_output(tmp_path: Path) -> None:
    labels, images = kaggle_download(tmp_path)
    raw = (images / "14_left.jpeg").read_bytes()
    (images / "14_left.jpeg").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RetinopathyError, match="14_left.jpeg: cannot decode"):
        import_kaggle(labels, images, tmp_path / "course", workers=2)
    assert only_child(tmp_path) == ["train", "trainLabels.csv"]


def test_a_black_image_is_kept_whole_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels, images = kaggle_download(tmp_path)
    Image.new("RGB", (120, 80)).save(images / "16_right.jpeg")
    import_kaggle(labels, images, tmp_path / "course", size=16, test_fraction=0.25)
    assert "1 image(s) have no pixel brighter" in capsys.readouterr().err
    assert np.asarray(Image.open(image_path(tmp_path / "course", "16_right"))).max() <= 10


# --------------------------------------------------------------------------- command line


def test_cli_seeded_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels, images = kaggle_download(tmp_path)
    out = tmp_path / "course"
    args = ["--labels", str(labels), "--images", str(images), "--out", str(out), "--size", "16"]
    assert main([*args, "--test-fraction", "0.25", "--seed", "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(read_course_splits(out).train) > 0


def test_cli_defaults_to_the_lab_lists_when_they_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    labels, images = kaggle_download(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["--labels", str(labels), "--images", str(images), "--size", "16"]

    # No data/splits/lab here: a seeded split, and a note that says so.
    assert main([*args, "--out", "seeded"]) == 0
    assert "using a seeded stratified split" in capsys.readouterr().err

    write_lists(tmp_path / "data" / "splits" / "lab", [("10_left", 0)], [("11_left", 0)])
    assert main([*args, "--out", "course"]) == 0
    assert "split lists in data/splits/lab" in capsys.readouterr().out
    splits = read_course_splits(tmp_path / "course")
    assert [r.image for r in splits.train + splits.test] == ["10_left", "11_left"]


def test_cli_rejects_two_ways_of_splitting(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["--labels", "a", "--images", "b", "--out", "c", "--split-lists", "d", "--seed", "1"])
    assert excinfo.value.code == 2


def test_a_killed_import_leaves_no_staging_folder_behind_the_next_one(tmp_path: Path) -> None:
    labels, images = kaggle_download(tmp_path)
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()  # a process that is gone, like an import killed with SIGKILL
    staging = tmp_path / f".course.tmp-{socket.gethostname()}-{killed.pid}-abc123"
    staging.mkdir()
    (staging / "10_left.jpeg").write_bytes(b"half an image")
    import_kaggle(labels, images, tmp_path / "course", size=32, test_fraction=0.25, seed=3)
    assert not staging.exists() and not list(tmp_path.glob(".course.*"))
