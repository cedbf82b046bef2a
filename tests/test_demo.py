"""The synthetic demo dataset: layout, patients, determinism, class balance, lesions, atomic replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_params
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.labels import read_course_splits
from retinopathy.data.patients import eye_pairs
from retinopathy.data.synthetic import COURSE_TRAIN_PAIRS, pair_counts, render_fundus
from retinopathy.stages import demo_data as demo
from retinopathy.stages.demo_data import write_demo_dataset

SMALL = {"train_size": 12, "test_size": 10, "image_size": 64, "variation": True}
COURSE = (20656, 1955, 4210, 698, 581)


def _image_counts(pairs: dict[tuple[int, int], int]) -> list[int]:
    """Images per grade of patients counted by the grades of their two eyes."""
    counts = [0] * 5
    for (lower, higher), n in pairs.items():
        counts[lower] += n
        counts[higher] += n
    return counts


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


@pytest.mark.slow
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
    assert np.bincount(labels, minlength=5).tolist() == _image_counts(pair_counts(SMALL["train_size"] // 2))
    assert set(labels) == set(range(5))
    assert labels != sorted(labels), "records should be shuffled, not grouped by grade"


def test_images_are_two_eyes_of_patients_on_one_side(dataset: Path) -> None:
    splits = read_course_splits(dataset)
    seen: dict[str, str] = {}
    for split, records in (("train", splits.train), ("test", splits.test)):
        names = [r.image for r in records]
        patients = sorted({name.rsplit("_", 1)[0] for name in names})
        assert sorted(names) == sorted(f"{p}_{eye}" for p in patients for eye in ("left", "right"))
        assert len(patients) == len(records) // 2
        for patient in patients:
            assert seen.setdefault(patient, split) == split, f"{patient} is in train and test"
    # The patients of test follow train's: demo_00000 ... demo_00005, then demo_00006 ...
    assert sorted(seen) == [f"demo_{i:05d}" for i in range(11)]
    # Each pair's grades are one of the course's pairs.
    pairs = {r.image: r.label for r in splits.train + splits.test}
    for patient in seen:
        grades = sorted((pairs[f"{patient}_left"], pairs[f"{patient}_right"]))
        assert tuple(grades) in COURSE_TRAIN_PAIRS


def test_two_eyes_share_a_grade_as_often_as_in_the_course() -> None:
    measured = 9795 / 11241  # same-grade pairs of the course's train split (see COURSE_TRAIN_PAIRS)
    assert sum(n for (a, b), n in COURSE_TRAIN_PAIRS.items() if a == b) == 9795
    assert pair_counts(11241) == COURSE_TRAIN_PAIRS
    for patients in (300, 5000):
        counts = pair_counts(patients)
        same = sum(n for (a, b), n in counts.items() if a == b) / patients
        assert abs(same - measured) < 0.01
        # And the images' grades follow the course's train split.
        shares = np.array(_image_counts(counts)) / (2 * patients)
        assert np.abs(shares - np.array(COURSE) / sum(COURSE)).max() < 0.01


@pytest.mark.slow
def test_a_large_demo_split_pairs_like_the_course(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    write_demo_dataset(out, seed=0, train_size=400, test_size=10, image_size=32, variation=False)
    pairs = eye_pairs(read_course_splits(out).train)
    assert pairs.pairs == 200 and pairs.same_grade is not None and abs(pairs.same_grade - 0.871) < 0.02
    assert pairs.differences[1] > pairs.differences[2] > 0


@pytest.mark.parametrize("patients", [0, 1, 4, 5, 6, 7, 50, 300, 100])
def test_pair_counts_sum_and_every_grade(patients: int) -> None:
    counts = pair_counts(patients)
    assert sum(counts.values()) == patients and min(counts.values()) >= 0
    if patients >= 5:
        assert min(_image_counts(counts)) >= 1


@pytest.mark.slow
def test_same_seed_gives_identical_bytes(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    write_demo_dataset(again, seed=7, **SMALL)
    assert _files(again) == _files(dataset)


@pytest.mark.slow
def test_other_seed_gives_other_images(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_demo_dataset(other, seed=8, **SMALL)
    name = _lines(dataset / "train_img.csv")[0]
    assert (other / f"{name}.jpeg").read_bytes() != (dataset / f"{name}.jpeg").read_bytes()


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


@pytest.mark.slow
def test_replaces_existing_demo_folder_entirely(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    write_demo_dataset(out, seed=1, **SMALL)
    (out / "stale.jpeg").write_bytes(b"left over from an older run")
    write_demo_dataset(out, seed=1, train_size=10, test_size=10, image_size=32, variation=True)
    assert not (out / "stale.jpeg").exists()
    assert len(_lines(out / "train_img.csv")) == 10
    assert len(list(out.glob("*.jpeg"))) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["demo"], "no temporary folders left behind"


@pytest.mark.slow
def test_interrupted_write_keeps_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "demo"
    write_demo_dataset(out, seed=1, **SMALL)
    before = _files(out)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("retinopathy.data.demo.readme", crash)  # the last file the stage writes
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
    ("key", "value"),
    [("train_size", 8), ("train_size", 11), ("test_size", 0), ("image_size", 16), ("seed", -1)],
)
def test_bad_settings_are_user_errors(tmp_path: Path, key: str, value: int) -> None:
    settings = {"seed": 0, **SMALL, key: value}
    with pytest.raises(RetinopathyError, match=key):
        write_demo_dataset(tmp_path / "out", **settings)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_reads_demo_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = write_params(tmp_path, demo={"seed": 3, "train_size": 10, "test_size": 12, "image_size": 32})
    out = tmp_path / "demo"
    assert demo.main(["--params", str(params), "--out", str(out)]) == 0
    assert len(_lines(out / "test_img.csv")) == 12
    readme = (out / "README.txt").read_text(encoding="utf-8")
    assert "seed: 3" in readme and "test: 12 images of 6 patients" in readme
    assert "10 train + 12 test" in capsys.readouterr().out


@pytest.mark.slow
def test_variation_changes_each_photo_deterministically_and_off_keeps_the_drawing(tmp_path: Path) -> None:
    plain, varied, again = tmp_path / "plain", tmp_path / "varied", tmp_path / "again"
    settings = {**SMALL, "train_size": 10, "test_size": 10}
    write_demo_dataset(plain, seed=4, **{**settings, "variation": False})
    write_demo_dataset(varied, seed=4, **settings)
    write_demo_dataset(again, seed=4, **settings)
    assert _files(varied) == _files(again)  # deterministic
    names = _lines(plain / "train_img.csv")
    assert names == _lines(varied / "train_img.csv")
    assert _lines(plain / "train_label.csv") == _lines(varied / "train_label.csv")
    # Without variation the painter draws exactly what it drew before there was any: image 0 is
    # patient 0's left eye, drawn as a left eye.
    assert names[0] == "demo_00000_left"
    rng = np.random.default_rng(np.random.SeedSequence([4, 1, 0, 0]))
    first = np.asarray(Image.open(plain / f"{names[0]}.jpeg"))
    Image.fromarray(render_fundus(int(_lines(plain / "train_label.csv")[0]), rng, 64, eye="left")).save(
        tmp_path / "redrawn.jpeg", "JPEG", quality=90, subsampling=0
    )
    assert np.array_equal(np.asarray(Image.open(tmp_path / "redrawn.jpeg")), first)
    # With it, brightness and framing vary from photo to photo.
    means = [np.asarray(Image.open(varied / f"{n}.jpeg"), dtype=float).mean() for n in names]
    plain_means = [np.asarray(Image.open(plain / f"{n}.jpeg"), dtype=float).mean() for n in names]
    assert np.std(means) > 1.5 * np.std(plain_means)
    assert (
        "variation between photos" in (varied / "README.txt").read_text()
        and "on" in (varied / "README.txt").read_text()
    )
