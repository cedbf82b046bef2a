"""Issue 20, second round, inputs and records: what a user feeds in, and the files stages hand on.

Each test does what a user did (the real CLI, or DVC's own `-S` code) on files it makes:
identical photographs under two names, 16-bit PNGs, rotated camera JPEGs, tiny
images, folders with subfolders, greyscale copies, bad values and settings, damaged
records between stages, and machine-specific text in committed outputs.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import write_params
from retinopathy.cli import main as cli
from retinopathy.core.config import MAX_SEED, load_params
from retinopathy.core.contract import MAX_IMAGE_SIZE
from retinopathy.data.images import MIN_IMAGE_SIDE, decode_image
from retinopathy.data.labels import SPLIT_FILES
from retinopathy.data.synthetic import render_fundus
from retinopathy.models.build import new_model
from retinopathy.models.grader import GraderSpec

# --------------------------------------------------------------------------------------- helpers


def fundus(seed: int, side: int = 64, grade: int = 0) -> np.ndarray:
    """A colour fundus picture (the demo's painter), side x side."""
    return render_fundus(grade, np.random.default_rng(seed), side)


def write_course(
    root: Path, train: list[tuple[str, int]], test: list[tuple[str, int]], side: int = 64
) -> Path:
    """A course layout: the four lists and a distinct colour JPEG per name."""
    root.mkdir(parents=True, exist_ok=True)
    for split, records in (("train", train), ("test", test)):
        images, labels = SPLIT_FILES[split]
        (root / images).write_text("".join(f"{name}\n" for name, _ in records))
        (root / labels).write_text("".join(f"{grade}\n" for _, grade in records))
    for seed, (name, grade) in enumerate(train + test):
        Image.fromarray(fundus(seed, side, grade)).save(root / f"{name}.jpeg", quality=92)
    return root


def course_project(folder: Path, monkeypatch, train=None, test=None, **data) -> Path:
    """``folder`` with params.yaml pointing data.root at a small course layout; cwd set to it."""
    train = train or [(f"{i}_left", i % 5) for i in range(10)]
    test = test or [(f"{i}_right", i % 5) for i in range(5)]
    write_course(folder / "course", train, test)
    write_params(folder, data={"root": "course", **data})
    monkeypatch.chdir(folder)
    return folder


def run(capsys, *argv: str) -> tuple[int, str]:
    """``retinopathy ARGV``: the exit status and stderr (argparse's exits included)."""
    capsys.readouterr()
    try:
        status = cli(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err


def fake_checkpoint(path: Path, image_size: int | None = 32) -> Path:
    """A best.pt as training writes it, with random weights (enough for `predict`)."""
    torch.manual_seed(0)
    spec = GraderSpec(
        model="resnet18",
        image_size=image_size,
        normalize="imagenet",
        preprocess="none",
        loss="cross_entropy",
        thresholds=None,
    )
    state = {
        "model": new_model("resnet18", num_classes=5).state_dict(),
        "spec": spec.to_dict(),
        "epoch": 1,
        "fingerprint": "test",
    }
    torch.save(state, path)
    return path


def predict_rows(capsys, folder: Path, *paths: str) -> tuple[int, str, dict[str, dict[str, str]]]:
    """`retinopathy predict PATHS --checkpoint best.pt` on ``folder / path`` for each path: status,
    stderr and the CSV's rows by file name."""
    checkpoint = folder / "best.pt"
    if not checkpoint.exists():
        fake_checkpoint(checkpoint)
        write_params(folder, train={"batch_size": 2})
    out = folder / "predictions.csv"
    status, err = run(
        capsys,
        "predict",
        *(str(folder / p) for p in paths),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--params",
        str(folder / "params.yaml"),
    )
    rows = {}
    if out.exists():
        with open(out, newline="") as stream:
            rows = {Path(row["image"]).name: row for row in csv.DictReader(stream)}
    return status, err, rows


def probabilities(row: dict[str, str]) -> np.ndarray:
    return np.array([float(row[f"probability_{g}"]) for g in range(5)])


# ------------------------------------------------------------------- 1. leakage by content


def test_prepare_names_and_counts_one_photograph_listed_under_two_names(tmp_path, monkeypatch, capsys):
    project = course_project(tmp_path, monkeypatch)
    course = project / "course"
    # The same photograph in test under a new name (a leak), and twice within train.
    shutil.copy(course / "3_left.jpeg", course / "3_right.jpeg")
    shutil.copy(course / "1_left.jpeg", course / "2_left.jpeg")
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 0  # a warning: the course's fixed split lists must still run
    assert "warning:" in err and "identical bytes" in err
    assert "train:3_left (grade 3) = test:3_right (grade 3)" in err
    assert "train:1_left (grade 1) = train:2_left (grade 2)" in err
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    counts = summary["identical_images"]
    assert (counts["groups"], counts["images"]) == (2, 4)
    assert (counts["across_splits"], counts["within_a_split"]) == (1, 1)
    assert counts["different_grades"] == 1
    assert any("identical bytes" in note for note in summary["notes"])


def test_prepare_of_distinct_photographs_counts_no_identical_images(tmp_path, monkeypatch, capsys):
    project = course_project(tmp_path, monkeypatch)
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 0 and "identical" not in err
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    assert summary["identical_images"]["groups"] == 0


# ------------------------------------------------------------------- 2. images decoded wrong


@pytest.mark.slow
def test_a_16_bit_greyscale_png_is_scaled_not_clipped_to_white(tmp_path, capsys):
    grey8 = np.asarray(Image.fromarray(fundus(1, 96)).convert("L"))
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # 8-bit values in 16 bits
    Image.fromarray(grey8).save(tmp_path / "eight.png")
    decoded = decode_image(tmp_path / "sixteen.png")
    assert np.array_equal(decoded, decode_image(tmp_path / "eight.png"))  # was almost all 255
    status, _, rows = predict_rows(capsys, tmp_path, "sixteen.png", "eight.png")
    assert status == 0
    np.testing.assert_allclose(
        probabilities(rows["sixteen.png"]), probabilities(rows["eight.png"]), atol=1e-6
    )


def exif_jpeg(path: Path, pixels: np.ndarray, orientation: int) -> None:
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.slow
@pytest.mark.parametrize("side", [(200, 300), (96, 96)])  # a camera's photograph, a square one
def test_a_jpeg_stored_rotated_is_graded_upright_by_its_exif_orientation(tmp_path, capsys, side):
    canvas = np.zeros((*side, 3), dtype=np.uint8)
    inner = min(side) - 8
    top, left = (side[0] - inner) // 2, (side[1] - inner) // 2
    canvas[top : top + inner, left : left + inner] = fundus(2, inner, grade=4)
    upright = canvas
    stored = np.rot90(upright, 1)  # what a camera held sideways stores; EXIF 6 turns it back clockwise
    exif_jpeg(tmp_path / "tagged.jpg", np.ascontiguousarray(stored), orientation=6)
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    tagged, plain = decode_image(tmp_path / "tagged.jpg"), decode_image(tmp_path / "upright.jpg")
    assert tagged.shape == plain.shape and np.abs(tagged.astype(int) - plain).mean() < 2
    status, _, rows = predict_rows(capsys, tmp_path, "tagged.jpg", "upright.jpg")
    assert status == 0
    np.testing.assert_allclose(
        probabilities(rows["tagged.jpg"]), probabilities(rows["upright.jpg"]), atol=0.02
    )


def test_a_jpeg_without_an_orientation_tag_decodes_as_before(tmp_path):
    """The course's and the demo's files have no EXIF: their pixels are libjpeg-turbo's, untouched."""
    import simplejpeg

    path = tmp_path / "a.jpeg"
    Image.fromarray(fundus(3, 128)).save(path, quality=90)
    data = path.read_bytes()
    assert np.array_equal(decode_image(path), simplejpeg.decode_jpeg(data, colorspace="RGB"))
    assert np.array_equal(
        decode_image(path, 64), simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=64, min_width=64)
    )


@pytest.mark.slow
def test_images_too_small_to_be_a_fundus_are_refused_by_predict_and_prepare(tmp_path, monkeypatch, capsys):
    for side in (1, 3):
        Image.fromarray(fundus(4, 64)).resize((side, side)).save(tmp_path / f"tiny{side}.png")
    status, err, rows = predict_rows(capsys, tmp_path, "tiny1.png", "tiny3.png")
    assert status == 1 and "2 of 2 images could not be graded" in err
    for name, side in (("tiny1.png", 1), ("tiny3.png", 3)):
        assert rows[name]["grade"] == ""  # was grade 0 at p=1.000
        assert f"{side}x{side} px is too small to be a fundus photograph" in rows[name]["error"]
        assert f"minimum is {MIN_IMAGE_SIDE} px" in rows[name]["error"]

    project = course_project(tmp_path / "project", monkeypatch)
    Image.fromarray(fundus(4, 64)).resize((3, 3)).save(project / "course/2_left.jpeg", "JPEG")
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and "train_img.csv:3" in err and "2_left.jpeg: 3x3 px is too small" in err
    assert not (project / "data/prepared").exists()


# ------------------------------------------------------------------------------------ 3. folders


@pytest.mark.slow
def test_predict_on_a_folder_says_which_subfolders_it_did_not_grade(tmp_path, capsys):
    photos = tmp_path / "photos"
    (photos / "left-eyes/2024").mkdir(parents=True)
    Image.fromarray(fundus(5, 64)).save(photos / "top.jpeg")
    Image.fromarray(fundus(6, 64)).save(photos / "left-eyes/a.jpeg")
    Image.fromarray(fundus(7, 64)).save(photos / "left-eyes/2024/b.png")
    (photos / "notes.txt").write_text("not a photo")
    status, err, rows = predict_rows(capsys, tmp_path, "photos")
    assert status == 0 and list(rows) == ["top.jpeg"]
    assert f"{photos / 'left-eyes'} (2)" in err and "not graded" in err
    assert "1 file(s) not graded" in err and "notes.txt" in err
    status, err, rows = predict_rows(capsys, tmp_path, "photos", "photos/left-eyes")
    assert sorted(rows) == ["a.jpeg", "top.jpeg"]  # the fix the warning gives


# ------------------------------------------------------- 4. inputs unlike the training photographs


@pytest.mark.slow
def test_predict_flags_a_greyscale_copy_and_a_flat_image_in_a_warning_column(tmp_path, capsys):
    colour = fundus(8, 96)
    Image.fromarray(colour).save(tmp_path / "colour.jpeg", quality=92)
    Image.fromarray(colour).convert("L").save(tmp_path / "grey.jpeg", quality=92)
    Image.fromarray(colour).convert("L").convert("RGB").save(tmp_path / "grey-rgb.png")
    Image.new("RGB", (96, 96), (90, 60, 40)).save(tmp_path / "flat.png")
    Image.new("RGB", (96, 96)).save(tmp_path / "black.png")
    names = ("colour.jpeg", "grey.jpeg", "grey-rgb.png", "flat.png", "black.png")
    status, err, rows = predict_rows(capsys, tmp_path, *names)
    assert status == 0
    assert rows["colour.jpeg"]["warning"] == "" and rows["colour.jpeg"]["gradable"] == "true"
    assert rows["grey.jpeg"]["warning"].startswith("greyscale")
    assert rows["grey-rgb.png"]["warning"].startswith("greyscale")
    assert rows["flat.png"]["warning"].startswith("one flat colour")
    # A black frame is the quality assessor's to name: no fundus, not a warning.
    assert (rows["black.png"]["warning"], rows["black.png"]["quality"]) == ("", "no fundus")
    assert all(rows[n]["grade"] in "01234" for n in names)  # still graded, never silently
    assert "3 of 5 images do not look like colour fundus photographs" in err


# ------------------------------------------------------------------- 5. bad values and settings


def test_a_seed_of_2_to_the_64_is_refused_with_the_key_and_the_range(tmp_path, monkeypatch, capsys):
    course_project(tmp_path, monkeypatch)
    params = yaml.safe_load(Path("params.yaml").read_text())
    for key in ("train", "data", "demo"):
        params[key]["seed"] = 2**64
        Path("params.yaml").write_text(yaml.safe_dump(params))
        status, err = run(capsys, "prepare", "--out", "data/prepared")
        assert status == 2 and f"`{key}.seed` must be an integer seed in 0..{MAX_SEED}" in err
        params[key]["seed"] = MAX_SEED
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert load_params().train.seed == MAX_SEED
    torch.manual_seed(MAX_SEED)
    np.random.seed(MAX_SEED)  # the largest seed every consumer takes


@pytest.mark.parametrize("line, found", [("7" * 5001, "is not an integer grade 0-4"), ("0\x00", "grade")])
def test_a_huge_or_nul_label_line_is_an_error_naming_the_line(tmp_path, monkeypatch, capsys, line, found):
    project = course_project(tmp_path, monkeypatch)
    labels = project / "course/train_label.csv"
    rows = labels.read_text().splitlines()
    rows[2] = line
    labels.write_text("\n".join(rows) + "\n")
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and "train_label.csv:3" in err and found in err and len(err) < 1000


def test_a_nul_byte_in_an_image_list_is_an_error_naming_the_line(tmp_path, monkeypatch, capsys):
    project = course_project(tmp_path, monkeypatch)
    images = project / "course/test_img.csv"
    images.write_bytes(images.read_bytes().replace(b"2_right", b"2_ri\x00ght"))
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and "test_img.csv:3" in err and "control character" in err


@pytest.mark.parametrize(
    "argv, option",
    [
        (["predict", "x.jpeg", "--batch-size", "-1"], "--batch-size"),
        (["predict", "x.jpeg", "--batch-size", "0"], "--batch-size"),
        (["prepare", "--workers", "-1"], "--workers"),
        (["import-kaggle", "--labels", "l", "--images", "i", "--out", "o", "--workers", "0"], "--workers"),
        (["import-kaggle", "--labels", "l", "--images", "i", "--out", "o", "--size", "-5"], "--size"),
        (["import-kaggle", "--labels", "l", "--images", "i", "--out", "o", "--seed", str(2**64)], "--seed"),
        (
            ["import-kaggle", "--labels", "l", "--images", "i", "--out", "o", "--test-fraction", "1.5"],
            "--test-fraction",
        ),
        (["weights", "--download-timeout", "-1"], "--download-timeout"),
        (["weights", "--download-timeout", "nan"], "--download-timeout"),
    ],
)
def test_a_bad_number_on_the_command_line_is_a_usage_error_not_a_traceback(capsys, argv, option):
    status, err = run(capsys, *argv)
    assert status == 2 and f"argument {option}: must be" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_checkpoint_claiming_a_60000_px_image_size_is_refused_before_any_memory(tmp_path, capsys):
    checkpoint = fake_checkpoint(tmp_path / "huge.pt", image_size=60000)
    Image.fromarray(fundus(9, 64)).save(tmp_path / "a.jpeg")
    write_params(tmp_path)
    status, err = run(
        capsys,
        "predict",
        str(tmp_path / "a.jpeg"),
        "--checkpoint",
        str(checkpoint),
        "--params",
        str(tmp_path / "params.yaml"),
        "--out",
        str(tmp_path / "p.csv"),
    )
    assert status == 2 and str(checkpoint) in err and f"1..{MAX_IMAGE_SIZE} px" in err


def test_params_refuse_an_image_size_over_the_maximum(tmp_path, monkeypatch, capsys):
    course_project(tmp_path, monkeypatch, image_size=60000)
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and f"`data.image_size` must be at most {MAX_IMAGE_SIZE}" in err


def test_a_val_fraction_that_empties_the_train_split_is_refused_by_prepare(tmp_path, monkeypatch, capsys):
    # One training image per grade, named without patients (so held out per image): each grade's
    # single image goes to validation whole.
    project = course_project(
        tmp_path, monkeypatch, train=[(f"img{g}", g) for g in range(5)], val_fraction=0.6
    )
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and "`data.val_fraction` 0.6 holds out all 5 training images" in err
    assert not (project / "data/prepared").exists()


def test_mixed_image_sizes_with_image_size_null_are_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    project = course_project(tmp_path, monkeypatch, image_size=None)
    Image.fromarray(fundus(10, 80)).save(project / "course/4_left.jpeg")
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and "4_left.jpeg: 80x80 px, but 14 of 15 images are 64x64" in err
    assert "`data.image_size`" in err
    write_params(project, data={"root": "course", "image_size": 64})  # the fix the message gives
    assert run(capsys, "prepare", "--out", "data/prepared")[0] == 0


# ------------------------------------------------------------- 6. numbers that YAML 1.1 reads as text


@pytest.mark.slow
def test_dvc_exp_run_s_weight_decay_1e_minus_10_is_accepted_as_a_number(tmp_path, monkeypatch, capsys):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` runs on params.yaml

    course_project(tmp_path, monkeypatch)
    apply_overrides("params.yaml", ["train.weight_decay=1e-10", "train.lr=2e-3", "augment.rotate=1e1"])
    assert yaml.safe_load(Path("params.yaml").read_text())["train"]["weight_decay"] == "1e-10"  # YAML 1.1
    params = load_params()
    assert params.train.weight_decay == 1e-10 and params.train.lr == 2e-3 and params.augment.rotate == 10.0
    assert run(capsys, "prepare", "--out", "data/prepared")[0] == 0
    # Text stays text where the key is text, and text that is not a number is still refused.
    apply_overrides("params.yaml", ["data.root=1e-10"])
    assert load_params().data.root == "1e-10"
    apply_overrides("params.yaml", ["data.root=course", "train.weight_decay=tiny"])
    status, err = run(capsys, "prepare", "--out", "data/prepared")
    assert status == 2 and "`train.weight_decay` must be a number, got 'tiny'" in err


# --------------------------------------------------------------- 7. damaged records between stages


def test_a_renamed_column_in_the_prepared_index_names_the_file_and_the_fix(tiny_project, capsys):
    index = tiny_project / "data/prepared/index.csv"
    index.write_text(index.read_text().replace("split,image,label", "split,image,grade", 1))
    status, err = run(capsys, "train", "--init", "scratch")
    assert status == 2 and f"{Path('data/prepared/index.csv')}:1: the header is split,image,grade" in err
    assert "dvc repro -f prepare" in err and "Traceback" not in err


def test_merge_conflict_markers_in_a_weights_manifest_name_the_file_and_the_fix(tiny_project, capsys):
    manifest = tiny_project / "models/init/pretrained.json"
    text = manifest.read_text()
    manifest.write_text(f"<<<<<<< HEAD\n{text}=======\n{text}>>>>>>> other\n")
    status, err = run(capsys, "train", "--init", "pretrained")
    assert status == 2 and "pretrained.json: not valid JSON (it holds merge-conflict markers)" in err
    assert "dvc repro weights" in err


def test_a_summary_missing_a_key_names_the_file_the_key_and_the_fix(tiny_project, capsys):
    assert run(capsys, "train", "--init", "pretrained")[0] == 0  # skipped offline: quick
    path = tiny_project / "data/prepared/summary.json"
    summary = json.loads(path.read_text())
    del summary["majority_baseline"]
    path.write_text(json.dumps(summary))
    status, err = run(capsys, "evaluate", "--init", "pretrained")
    assert status == 2 and "summary.json: the key 'majority_baseline' is missing" in err
    assert "dvc repro -f prepare" in err


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda text: text[: len(text) // 2], "damaged, not a JSON record"),
        (lambda text: text.replace('"fix"', '"fixed"'), "the key 'fix' is missing"),
        (lambda text: text.replace('"version": 1', '"version": 0'), "format version 0"),
        (lambda text: "<<<<<<< HEAD\n" + text, "damaged, not a JSON record"),
    ],
)
def test_a_truncated_or_incomplete_status_json_names_the_file_and_the_fix(
    tiny_project, capsys, damage, words
):
    assert run(capsys, "train", "--init", "pretrained")[0] == 0  # skipped offline: quick
    path = tiny_project / "models/pretrained/status.json"
    path.write_text(damage(path.read_text()))
    status, err = run(capsys, "evaluate", "--init", "pretrained")
    assert status == 2 and "status.json: " in err and words in err
    assert "dvc checkout models/pretrained" in err and "Traceback" not in err


# ---------------------------------------------------- 8. machine-specific text in committed outputs


def test_the_weights_manifest_is_the_same_under_another_home_and_torch_home(tmp_path, monkeypatch, capsys):
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    manifests = []
    for machine in ("alice", "bob"):
        monkeypatch.setenv("HOME", str(tmp_path / machine))
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / machine / "torch"))
        assert run(capsys, "weights")[0] == 0
        manifests.append(Path("models/init/pretrained.json").read_bytes())
    assert manifests[0] == manifests[1]
    text = manifests[0].decode()
    assert str(tmp_path) not in text and "alice" not in text
    manifest = json.loads(text)
    assert manifest["available"] is False and "resnet18-f37072fd.pth" in manifest["reason"]
    assert "$TORCH_HOME/hub/checkpoints" in manifest["fix"] and "train.weights" in manifest["fix"]


def test_the_machine_specific_detail_of_missing_weights_goes_to_stderr(tmp_path, monkeypatch, capsys):
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "my-torch"))
    status, err = run(capsys, "weights")
    cache = tmp_path / "my-torch/hub/checkpoints/resnet18-f37072fd.pth"
    assert status == 0 and f"{cache} does not exist and downloads are disabled" in err
    assert str(tmp_path) not in Path("models/init/pretrained.json").read_text()


def test_prepare_writes_nothing_machine_specific_beyond_data_root(tmp_path, monkeypatch, capsys):
    project = course_project(tmp_path, monkeypatch)
    assert run(capsys, "prepare", "--out", "data/prepared")[0] == 0
    summary = (project / "data/prepared/summary.json").read_text()
    assert str(tmp_path) not in summary  # data.root is relative, as params.yaml gives it
