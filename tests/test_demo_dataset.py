"""The demo as a testbed (issues 28 and 30): one grader's labels beside the painted truth, subtler
lesions, camera faults labelled in EyeQ's format, and the shifted set from another camera in APTOS
2019's layout, imported unchanged by `retinopathy import-external aptos2019`.

No training: small demos written by `retinopathy demo-data` (its `main`, or the library call it
makes), read back from disk as the pipeline and a user would read them.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import cohen_kappa_score

from conftest import REPO, subprocess_env, write_params
from retinopathy.core.contract import QUALITY_HEADER, Layout, shifted_folder
from retinopathy.core.errors import RetinopathyError
from retinopathy.data import demo as demo_files
from retinopathy.data.demo_camera import APTOS_GRADES, grade_counts
from retinopathy.data.demo_grader import Grader
from retinopathy.data.images import decode_image
from retinopathy.data.labels import read_course_splits
from retinopathy.data.synthetic import COURSE_TRAIN_PAIRS, pair_counts, render_fundus
from retinopathy.quality.degrade import FAULTS
from retinopathy.quality.verdict import assess
from retinopathy.stages import demo_data as demo
from retinopathy.stages.demo_data import write_demo_dataset

# The shipped defaults of the new keys (a test below checks that they are what params.yaml says).
DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())["demo"]
GRADER = Grader(DEFAULTS["grader_misses"], DEFAULTS["grader_slips"], DEFAULTS["grader_artefacts"])
# Small, but at the demo's 256 px (the quality thresholds are checked at that size), with more faults
# than the default share so that every kind occurs twice among the rejected photos.
SMALL = {
    "seed": 5,
    "train_size": 30,
    "test_size": 20,
    "image_size": 256,
    "variation": True,
    "subtlety": DEFAULTS["subtlety"],
    "grader": GRADER,
    "ungradable": 0.2,
    "usable": 0.1,
    "shifted_size": 12,
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small demo and its shifted set, written by the library call `demo-data` makes."""
    root = tmp_path_factory.mktemp("demo-dataset")
    write_demo_dataset(root / "demo", shifted_out=root / "demo-shifted", **SMALL)
    return root / "demo", root / "demo-shifted"


# ---------------------------------------------------------------- params.yaml and determinism


def test_params_yaml_holds_every_new_key_with_its_bound_in_a_comment() -> None:
    text = (REPO / "params.yaml").read_text()
    for key in (
        "subtlety",
        "grader_misses",
        "grader_slips",
        "grader_artefacts",
        "ungradable",
        "usable",
        "shifted_size",
    ):
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:"))
        assert re.search(r"#\s*(0-[0-9.]+|0 or 10\+):", line), line


@pytest.mark.slow  # two more 256 px demos: about 8 s (tests/test_demo.py checks the demo bytes fast)
def test_same_seed_same_bytes_in_both_folders_and_another_seed_differs(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    demo_folder, shifted = written
    write_demo_dataset(tmp_path / "demo", shifted_out=tmp_path / "shifted", **SMALL)
    assert _files(tmp_path / "demo") == _files(demo_folder)
    assert _files(tmp_path / "shifted") == _files(shifted)
    # Another seed, on fewer patients (the first image's name is the same): only its bytes matter.
    other = {**SMALL, "seed": 6, "train_size": 10, "test_size": 10}
    write_demo_dataset(tmp_path / "other", shifted_out=tmp_path / "other-shifted", **other)
    name = _lines(demo_folder / "train_img.csv")[0]
    assert (tmp_path / "other" / f"{name}.jpeg").read_bytes() != (demo_folder / f"{name}.jpeg").read_bytes()
    assert (tmp_path / "other-shifted/train.csv").read_text() != (shifted / "train.csv").read_text()


def test_without_the_new_settings_the_demo_is_drawn_as_before(tmp_path: Path) -> None:
    # subtlety 0, an exact grader and no faults: every pixel as the painter drew it before they existed.
    write_demo_dataset(
        tmp_path / "plain", seed=4, train_size=10, test_size=10, image_size=48, variation=False
    )
    names = _lines(tmp_path / "plain/train_img.csv")
    labels = [int(x) for x in _lines(tmp_path / "plain/train_label.csv")]
    truth = _rows(tmp_path / "plain/truth.csv")
    assert [int(r["grade"]) for r in truth[:10]] == labels and {r["quality"] for r in truth} == {"0"}
    rng = np.random.default_rng(np.random.SeedSequence([4, 1, 0, 0]))
    redrawn = render_fundus(labels[0], rng, 48, eye="left")
    Image.fromarray(redrawn).save(tmp_path / "redrawn.jpeg", "JPEG", quality=90, subsampling=0)
    assert names[0] == "demo_00000_left"
    assert (tmp_path / "redrawn.jpeg").read_bytes() == (tmp_path / f"plain/{names[0]}.jpeg").read_bytes()


# ---------------------------------------------------------------- the painter's subtlety


def _lesion_pixels(grade: int, seed: int, subtlety: float) -> int:
    """Pixels that differ clearly from the same eye drawn at grade 0."""
    healthy = render_fundus(0, np.random.default_rng(seed), 128, eye="right", subtle=True)
    sick = render_fundus(grade, np.random.default_rng(seed), 128, eye="right", subtle=True, subtlety=subtlety)
    return int((np.abs(sick.astype(int) - healthy).max(axis=2) > 25).sum())


@pytest.mark.parametrize("grade", [1, 2])
def test_subtle_lesions_are_smaller_fainter_and_fewer_at_the_borderline_grades(grade: int) -> None:
    plain = sum(_lesion_pixels(grade, seed, 0.0) for seed in range(6))
    subtle = sum(_lesion_pixels(grade, seed, 1.0) for seed in range(6))
    assert 0 < subtle < 0.6 * plain, (plain, subtle)
    # Still visible, and still more at grade 2 than at grade 1.
    assert sum(_lesion_pixels(2, seed, 1.0) for seed in range(6)) > sum(
        _lesion_pixels(1, seed, 1.0) for seed in range(6)
    )


def test_subtlety_out_of_range_is_refused_by_the_painter() -> None:
    with pytest.raises(RetinopathyError, match="subtlety must be a number from 0 to 1"):
        render_fundus(2, np.random.default_rng(0), 32, subtlety=1.5)


# ---------------------------------------------------------------- the grader


def _draw(grader: Grader, truth: list[int], seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [grader.grade(grade, rng) for grade in truth]


def test_the_default_grader_disagrees_as_graders_do() -> None:
    # Six hundred eyes with the course's grade mix (the demo's 300 training patients).
    truth = [g for (a, b), n in pair_counts(300).items() for g in (a, b) for _ in range(n)]
    one, other = _draw(GRADER, truth, 1), _draw(GRADER, truth, 2)
    # Krause et al. 2018: quadratic kappa 0.80-0.91 among graders and the adjudicated reference.
    between = cohen_kappa_score(one, other, weights="quadratic")
    against_truth = cohen_kappa_score(truth, one, weights="quadratic")
    assert 0.80 <= between <= 0.91, between
    assert between < against_truth <= 0.95, against_truth
    # About a third of the disagreements are missed microaneurysms (Krause: 36%).
    differ = [(t, g) for t, g in zip(truth, one, strict=True) if t != g]
    missed = sum(t == 1 and g == 0 for t, g in differ) / len(differ)
    assert 0.2 <= missed <= 0.5, missed
    # Only neighbouring grades, and never 0 -> 2 or the like.
    assert all(abs(t - g) == 1 for t, g in differ)


def test_the_grader_confusion_and_an_exact_grader() -> None:
    matrix = GRADER.confusion()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    assert matrix[1, 0] == DEFAULTS["grader_misses"] and matrix[0, 1] == DEFAULTS["grader_artefacts"]
    assert matrix[3, 2] == matrix[3, 4] == DEFAULTS["grader_slips"] / 2 and matrix[4, 3] == matrix[3, 4]
    truth = [g for g in range(5) for _ in range(50)]
    assert _draw(Grader(), truth, 0) == truth
    with pytest.raises(RetinopathyError, match="misses \\+ slips / 2 must be at most 1"):
        Grader(misses=0.9, slips=0.4)


def test_labels_are_the_graders_and_truth_csv_holds_the_painted_grades(written: tuple[Path, Path]) -> None:
    demo_folder, _ = written
    splits = read_course_splits(demo_folder)
    truth = _rows(demo_folder / "truth.csv")
    listed = [(r.image, "train", r.label) for r in splits.train] + [
        (r.image, "test", r.label) for r in splits.test
    ]
    assert [(r["image"], r["split"], int(r["label"])) for r in truth] == listed
    # The painted grades pair the two eyes as the course's training list does.
    painted = {r["image"]: int(r["grade"]) for r in truth}
    for name in painted:
        if name.endswith("_left"):
            pair = sorted((painted[name], painted[name.replace("_left", "_right")]))
            assert tuple(pair) in COURSE_TRAIN_PAIRS
    assert sum(int(r["grade"]) != int(r["label"]) for r in truth) > 0, "the grader should disagree somewhere"
    readme = (demo_folder / "README.txt").read_text()
    assert "ONE GRADER'S grades, not the truth" in readme and "truth.csv" in readme


# ---------------------------------------------------------------- image quality


def test_quality_csv_is_eyeqs_format_with_the_shares_asked_for(written: tuple[Path, Path]) -> None:
    demo_folder, _ = written
    with (demo_folder / "quality.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert tuple(rows[0]) == QUALITY_HEADER == ("", "image", "quality", "DR_grade")
    splits = read_course_splits(demo_folder)
    records = splits.train + splits.test
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(records))]
    assert [(r[1], int(r[3])) for r in rows[1:]] == [(f"{rec.image}.jpeg", rec.label) for rec in records]
    quality = {r[1].removesuffix(".jpeg"): int(r[2]) for r in rows[1:]}
    for split, size in (("train", SMALL["train_size"]), ("test", SMALL["test_size"])):
        names = [rec.image for rec in (splits.train if split == "train" else splits.test)]
        levels = [quality[name] for name in names]
        assert levels.count(2) == round(SMALL["ungradable"] * size), split
        assert levels.count(1) == round(SMALL["usable"] * size), split
        assert levels.count(0) == size - levels.count(1) - levels.count(2)


def test_the_assessor_finds_each_rejected_photo_for_its_faults_reason_and_the_others_gradable(
    written: tuple[Path, Path],
) -> None:
    demo_folder, _ = written
    faults_seen = set()
    for row in _rows(demo_folder / "truth.csv"):
        verdict = assess(decode_image(demo_folder / f"{row['image']}.jpeg"))
        described = f"{row} {verdict.reasons} {verdict.measures.as_dict()}"
        if row["quality"] == "2":
            fault = FAULTS[row["fault"]]
            assert float(row["strength"]) == fault.reject
            assert verdict.reasons == (fault.reason,), described
            faults_seen.add(fault.name)
        else:  # Good, and Usable (a mild fault a nurse would accept)
            assert verdict.gradable, described
    assert faults_seen == set(FAULTS), "every kind of fault should occur"


def test_the_shifted_set_has_faults_too_and_its_clean_photos_are_gradable(written: tuple[Path, Path]) -> None:
    _, shifted = written
    rows = _rows(shifted / "truth.csv")
    assert sum(r["quality"] == "2" for r in rows) == round(SMALL["ungradable"] * SMALL["shifted_size"])
    for row in rows:
        verdict = assess(decode_image(shifted / "train_images" / f"{row['image']}.png"))
        if row["quality"] == "2":
            assert FAULTS[row["fault"]].reason in verdict.reasons, row
        else:
            assert verdict.gradable, f"{row} {verdict.reasons} {verdict.measures.as_dict()}"


# ---------------------------------------------------------------- the shifted set, APTOS 2019's layout


def test_the_shifted_set_is_aptos_2019_as_kaggle_unpacks_it(written: tuple[Path, Path]) -> None:
    _, shifted = written
    with (shifted / "train.csv").open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["id_code", "diagnosis"] and len(rows) == 1 + SMALL["shifted_size"]
    ids = [row[0] for row in rows[1:]]
    assert all(re.fullmatch(r"[0-9a-f]{12}", code) for code in ids) and len(set(ids)) == len(ids)
    assert sorted(p.name for p in (shifted / "train_images").iterdir()) == sorted(f"{c}.png" for c in ids)
    sizes = set()
    for code in ids:
        with Image.open(shifted / "train_images" / f"{code}.png") as image:
            assert image.format == "PNG" and image.mode == "RGB"
            sizes.add(image.size)
            assert image.width > image.height  # a landscape frame, unlike the demo's squares
    assert len(sizes) > 1, "the sizes vary, as APTOS's do"
    truth = _rows(shifted / "truth.csv")
    assert [(r["image"], r["label"]) for r in truth] == [(row[0], row[1]) for row in rows[1:]]
    # Its population has APTOS's grade mix, far more disease than the demo's.
    assert np.bincount([int(r["grade"]) for r in truth], minlength=5).tolist() == grade_counts(
        SMALL["shifted_size"]
    )
    assert (shifted / "README.txt").read_text().startswith("SYNTHETIC DEMO DATASET")


def test_grade_counts_follow_aptos() -> None:
    assert grade_counts(3662) == list(APTOS_GRADES)
    assert sum(grade_counts(160)) == 160 and min(grade_counts(10)) == 1
    assert grade_counts(0) == [0] * 5


def test_import_external_imports_the_shifted_set_unchanged(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    _, shifted = written
    before = _files(shifted)
    out = tmp_path / "imported"
    result = subprocess.run(
        [sys.executable, "-m", "retinopathy", "import-external", "aptos2019", "--root", str(shifted),
         "--out", str(out), "--size", "128"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{SMALL['shifted_size']} test images" in result.stdout
    labels = {row["image"]: row["label"] for row in _rows(shifted / "truth.csv")}
    names, grades = _lines(out / "test_img.csv"), _lines(out / "test_label.csv")
    assert dict(zip(names, grades, strict=True)) == labels
    summary = json.loads((out / "import.json").read_text())
    assert summary["format"] == "aptos2019" and summary["images"] == SMALL["shifted_size"]
    assert summary["grades"] == np.bincount([int(g) for g in grades], minlength=5).tolist()
    for name in names:
        with Image.open(out / f"{name}.jpeg") as image:
            assert image.size == (128, 128)
    assert _files(shifted) == before, "importing must not change the set"


# ---------------------------------------------------------------- the command: params, folders, atomicity


@pytest.mark.slow  # two demos at 256 px: about 2 s here
def test_the_command_writes_the_shifted_set_beside_the_demo(tmp_path: Path, capsys) -> None:
    params = write_params(tmp_path, demo={"seed": 1, "train_size": 10, "test_size": 10, "image_size": 64})
    assert demo.main(["--params", str(params), "--out", str(tmp_path / "d")]) == 0
    assert shifted_folder(tmp_path / "d") == tmp_path / "d-shifted"
    assert Layout().demo_shifted == Path("data/demo-shifted")
    assert len(_lines(tmp_path / "d-shifted/train.csv")) == 1 + 10  # conftest's tiny shifted_size
    assert {"quality.csv", "truth.csv", "README.txt"} <= {p.name for p in (tmp_path / "d").iterdir()}
    assert "to " + str(tmp_path / "d-shifted") in capsys.readouterr().out
    # shifted_size 0: the folder (an output of the stage) holds only a README that says why.
    params = write_params(
        tmp_path, demo={"shifted_size": 0, "train_size": 10, "test_size": 10, "image_size": 32}
    )
    assert demo.main(["--params", str(params), "--out", str(tmp_path / "d")]) == 0
    assert [p.name for p in (tmp_path / "d-shifted").iterdir()] == ["README.txt"]
    assert "demo.shifted_size is 0" in (tmp_path / "d-shifted/README.txt").read_text()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("subtlety", 1.5),
        ("subtlety", -0.1),
        ("grader_misses", 0.9),
        ("grader_slips", 0.5),
        ("grader_artefacts", 0.6),
        ("ungradable", 0.6),
        ("usable", -0.01),
        ("usable", "some"),
        ("shifted_size", 5),
        ("shifted_size", -1),
        ("shifted_size", 2.5),
        ("shifted_size", True),
    ],
)
def test_out_of_bounds_settings_are_refused_with_the_key_named(
    tmp_path: Path, key: str, value: object
) -> None:
    params = write_params(tmp_path, demo={key: value})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "retinopathy",
            "demo-data",
            "--params",
            str(params),
            "--out",
            str(tmp_path / "d"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"`demo.{key}`" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "d-shifted").exists()


def test_a_shifted_folder_inside_the_demo_or_not_ours_is_refused(tmp_path: Path) -> None:
    params = write_params(tmp_path, demo={"train_size": 10, "test_size": 10, "image_size": 32})
    with pytest.raises(RetinopathyError, match="must be a folder apart from --out"):
        demo.main(["--params", str(params), "--out", str(tmp_path / "d"), "--shifted", str(tmp_path / "d/x")])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "photo.png").write_bytes(b"not ours")
    with pytest.raises(RetinopathyError, match="not a demo dataset.*--shifted"):
        demo.main(["--params", str(params), "--out", str(tmp_path / "d"), "--shifted", str(precious)])
    assert (precious / "photo.png").read_bytes() == b"not ours"
    assert not (tmp_path / "d").exists()


@pytest.mark.slow  # two demos: about 3 s here
def test_an_interrupted_write_keeps_both_earlier_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {**SMALL, "image_size": 32, "train_size": 10, "test_size": 10, "shifted_size": 10}
    write_demo_dataset(tmp_path / "demo", shifted_out=tmp_path / "shifted", **settings)
    before = _files(tmp_path / "demo"), _files(tmp_path / "shifted")

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(
        demo_files, "readme", crash
    )  # the demo's last file, after the shifted set is complete
    with pytest.raises(KeyboardInterrupt):
        write_demo_dataset(tmp_path / "demo", shifted_out=tmp_path / "shifted", **{**settings, "seed": 9})
    assert (_files(tmp_path / "demo"), _files(tmp_path / "shifted")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "shifted"], "no temporary folders left"
