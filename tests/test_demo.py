"""The synthetic demo dataset: layout, determinism, class balance, lesions, atomic replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_params
from retinopathy.data.synthetic import class_counts, render_fundus
from retinopathy.errors import RetinopathyError
from retinopathy.stages import demo_data as demo
from retinopathy.stages.demo_data import write_demo_dataset

SMALL = {"train_size": 12, "test_size": 6, "image_size": 64, "variation": True}
COURSE = (20656, 1955, 4210, 698, 581)


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n") and "\r" not in text, f"{path.name}: want '\\n' line ends"
    return text[:-1].split("\n")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "data"
    write_demo_dataset(out, seed=7, **SMALL)
    return out


def test_layout(dataset: Path) -> None:
    csvs = ["train_img.csv", "train_label.csv", "test_img.csv", "test_label.csv"]
    assert all((dataset / name).is_file() for name in csvs)
    readme = (dataset / "README.txt").read_text(encoding="utf-8")
    assert "SYNTHETIC" in readme and "retinopathy demo-data" in readme and "seed: 7" in readme
    all_names: list[str] = []
    for split, size in (("train", SMALL["train_size"]), ("test", SMALL["test_size"])):
        names = _lines(dataset / f"{split}_img.csv")
        labels = _lines(dataset / f"{split}_label.csv")
        # Header-less: the first line is already a record.
        assert len(names) == len(labels) == size
        assert all(n.startswith("demo_") and n.endswith(("_left", "_right")) for n in names)
        assert {int(x) for x in labels} <= set(range(5))
        for name in names:
            with Image.open(dataset / f"{name}.jpeg") as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert image.size == (SMALL["image_size"],) * 2
        all_names += names
    assert len(set(all_names)) == len(all_names), "train and test share a folder: names must differ"
    jpegs = {p.stem for p in dataset.glob("*.jpeg")}
    assert jpegs == set(all_names)


def test_every_grade_in_train_with_course_proportions(dataset: Path) -> None:
    labels = [int(x) for x in _lines(dataset / "train_label.csv")]
    assert np.bincount(labels, minlength=5).tolist() == class_counts(SMALL["train_size"])
    assert set(labels) == set(range(5))
    assert labels != sorted(labels), "records should be shuffled, not grouped by grade"


def test_same_seed_gives_identical_bytes(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_demo_dataset(again, seed=7, **SMALL)
    assert _files(again) == _files(dataset)


def test_other_seed_gives_other_images(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_demo_dataset(other, seed=8, **SMALL)
    name = _lines(dataset / "train_img.csv")[0]
    assert (other / f"{name}.jpeg").read_bytes() != (dataset / f"{name}.jpeg").read_bytes()


@pytest.mark.parametrize("total", [0, 1, 4, 5, 7, 12, 100, 600, 200, 28100])
def test_class_counts_sum_and_minimum(total: int) -> None:
    counts = class_counts(total)
    assert len(counts) == 5 and sum(counts) == total and min(counts) >= 0
    if total >= 5:
        assert min(counts) >= 1


def test_class_counts_follow_course_split() -> None:
    assert class_counts(28100) == list(COURSE)
    assert class_counts(600) == [441, 42, 90, 15, 12]
    for total in (200, 1000):
        quotas = [total * c / sum(COURSE) for c in COURSE]
        assert all(abs(c - q) < 1 for c, q in zip(class_counts(total), quotas, strict=True))


def test_render_shape_dtype_and_mirroring() -> None:
    right = render_fundus(2, np.random.default_rng(3), 48, eye="right")
    left = render_fundus(2, np.random.default_rng(3), 48, eye="left")
    assert right.shape == (48, 48, 3) and right.dtype == np.uint8
    np.testing.assert_array_equal(left, right[:, ::-1])
    # Dark corners, a lit centre.
    assert right[0, 0].max() < 20 and right[24, 24].mean() > 60


def _lesion_pixels(grade: int, seed: int) -> int:
    """Pixels that differ clearly from the same eye drawn at grade 0."""
    healthy = render_fundus(0, np.random.default_rng(seed), 128, eye="right")
    sick = render_fundus(grade, np.random.default_rng(seed), 128, eye="right")
    return int((np.abs(sick.astype(int) - healthy).max(axis=2) > 40).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_lesions_grow_with_grade(seed: int) -> None:
    # The same generator state draws the same eye; only the lesions differ.
    pixels = [_lesion_pixels(grade, seed) for grade in range(5)]
    assert pixels[0] == 0
    assert pixels[1] > 5, "grade 1 should show microaneurysms"
    assert pixels[2] > pixels[1] and pixels[3] > pixels[2] and pixels[4] > pixels[2]


def test_replaces_existing_demo_folder_entirely(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    write_demo_dataset(out, seed=1, **SMALL)
    (out / "stale.jpeg").write_bytes(b"left over from an older run")
    write_demo_dataset(out, seed=1, train_size=5, test_size=5, image_size=32, variation=True)
    assert not (out / "stale.jpeg").exists()
    assert len(_lines(out / "train_img.csv")) == 5
    assert len(list(out.glob("*.jpeg"))) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["demo"], "no temporary folders left behind"


def test_interrupted_write_keeps_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    out = tmp_path / "demo"
    write_demo_dataset(out, seed=1, **SMALL)
    before = _files(out)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_readme", crash)
    with pytest.raises(KeyboardInterrupt):
        write_demo_dataset(out, seed=2, **SMALL)
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "photo.jpeg").write_bytes(b"not ours")
    with pytest.raises(RetinopathyError, match="not a demo dataset"):
        write_demo_dataset(out, seed=0, **SMALL)
    assert (out / "photo.jpeg").exists()


@pytest.mark.parametrize(
    ("key", "value"), [("train_size", 4), ("test_size", 0), ("image_size", 16), ("seed", -1)]
)
def test_bad_settings_are_user_errors(tmp_path: Path, key: str, value: int) -> None:
    settings = {"seed": 0, **SMALL, key: value}
    with pytest.raises(RetinopathyError, match=key):
        write_demo_dataset(tmp_path / "out", **settings)
    assert not (tmp_path / "out").exists()


def test_cli_reads_demo_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = write_params(tmp_path, demo={"seed": 3, "train_size": 5, "test_size": 5, "image_size": 32})
    out = tmp_path / "demo"
    assert demo.main(["--params", str(params), "--out", str(out)]) == 0
    assert len(_lines(out / "test_img.csv")) == 5
    assert "seed: 3" in (out / "README.txt").read_text(encoding="utf-8")
    assert "5 train + 5 test" in capsys.readouterr().out


def test_variation_changes_each_photo_deterministically_and_off_keeps_the_drawing(tmp_path: Path) -> None:
    plain, varied, again = tmp_path / "plain", tmp_path / "varied", tmp_path / "again"
    settings = {**SMALL, "train_size": 10, "test_size": 5}
    write_demo_dataset(plain, seed=4, **{**settings, "variation": False})
    write_demo_dataset(varied, seed=4, **settings)
    write_demo_dataset(again, seed=4, **settings)
    assert _files(varied) == _files(again)  # deterministic
    names = _lines(plain / "train_img.csv")
    assert names == _lines(varied / "train_img.csv")
    assert _lines(plain / "train_label.csv") == _lines(varied / "train_label.csv")
    # Without variation the painter draws exactly what it drew before there was any.
    rng = np.random.default_rng(np.random.SeedSequence([4, 1, 0, 0]))
    first = np.asarray(Image.open(plain / f"{names[0]}.jpeg"))
    Image.fromarray(render_fundus(int(_lines(plain / "train_label.csv")[0]), rng, 64, eye="right")).save(
        tmp_path / "redrawn.jpeg", "JPEG", quality=90, subsampling=0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "redrawn.jpeg")), first)
    # With it, brightness and framing vary from photo to photo.
    means = [np.asarray(Image.open(varied / f"{n}.jpeg"), dtype=float).mean() for n in names]
    plain_means = [np.asarray(Image.open(plain / f"{n}.jpeg"), dtype=float).mean() for n in names]
    assert np.std(means) > 1.5 * np.std(plain_means)
    assert "variation between photos" in (varied / "README.txt").read_text() and "on" in (
        varied / "README.txt").read_text()
