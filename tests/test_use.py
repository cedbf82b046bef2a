"""Using a trained grader: predict new photographs, explain its grades, export it."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retinopathy.commands import export, predict
from retinopathy.core.config import QualityThresholds, load_params
from retinopathy.core.contract import Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.images import decode_image
from retinopathy.data.labels import patient_of
from retinopathy.data.synthetic import render_fundus
from retinopathy.fusion.pairs import photo_patients
from retinopathy.stages import explain


@pytest.fixture()
def trained(trained_project) -> Path:
    """A copy of the session's trained tiny project (conftest.trained_once); cwd is the project."""
    return trained_project


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def camera_photo(path: Path) -> None:
    """A wide photograph with a black border around a drawn fundus, as a fundus camera takes them."""
    fundus = render_fundus(3, np.random.default_rng(5), 200)
    canvas = np.zeros((260, 390, 3), dtype=np.uint8)
    canvas[30:230, 95:295] = fundus
    Image.fromarray(canvas).save(path, "JPEG", quality=92)


def test_predict_on_the_test_split_gives_exactly_the_grades_evaluate_wrote(trained):
    out = trained / "predicted.csv"
    assert predict.main(["data/demo/test_img.csv", "--out", str(out)]) == 0
    rows = read_rows(out)
    expected = read_rows(Layout().arm("scratch").predictions)
    assert [int(r["grade"]) for r in rows] == [int(r["predicted"]) for r in expected]
    assert [float(r["referable_score"]) for r in rows] == pytest.approx(
        [float(r["referable_score"]) for r in expected], abs=1e-5
    )  # the score evaluate's figures rank by
    names = (trained / "data/demo/test_img.csv").read_text().split()
    assert [Path(r["image"]).stem for r in rows] == names  # input order
    assert list(rows[0]) == [
        "image",
        "grade",
        *(f"probability_{g}" for g in range(5)),
        "referable",
        "referable_score",
        "patient",
        "patient_referable",
        "gradable",
        "quality",
        "error",
        "warning",
        "source",
    ]
    assert {row["source"] for row in rows} == {"single"}  # no blend (the `fuse` stage has not run)
    for row in rows:
        probabilities = [float(row[f"probability_{g}"]) for g in range(5)]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert int(row["grade"]) == int(np.argmax(probabilities)) and row["error"] == ""
        assert row["warning"] == ""  # the demo's colour fundus photographs are not flagged
        assert (row["gradable"], row["quality"]) == ("true", "")  # nor found ungradable
        assert row["referable"] == str(int(int(row["grade"]) >= 2))
        assert float(row["referable_score"]) == pytest.approx(sum(probabilities[2:]), abs=2e-6)
        image = Path(row["image"])  # the patient with its folder: data/demo/<id>
        assert row["patient"] == str(image.parent / patient_of(image.stem))


def test_patient_calls_need_both_eyes_and_refer_when_either_eye_is_referable():
    photos = [
        Path(name)
        for name in (
            "a/7_left.jpeg",
            "a/7_right.png",
            "9_left.jpeg",
            "3_left.jpeg",
            "3_right.jpeg",
            "plain.jpeg",
            "b/7_right.jpeg",
        )
    ]
    who = photo_patients(photos)  # b/7_right is another folder's patient 7: another person
    calls = predict.patient_calls
    assert calls(who.group, who.eye, [0, 2, 3, 1, 0, 4, 4]) == ["1", "1", "", "0", "0", "", ""]
    assert calls(who.group, who.eye, [0, None, 3, 1, 0, 4, 4]) == ["", "", "", "0", "0", "", ""]


def test_predict_gives_the_patient_call_when_given_both_eyes(trained):
    names = (trained / "data/demo/test_img.csv").read_text().split()
    folder = trained / "eyes"
    folder.mkdir()
    for source, target in zip(names[:3], ("5_left", "5_right", "6_left"), strict=True):
        shutil.copy(trained / f"data/demo/{source}.jpeg", folder / f"{target}.jpeg")
    out = trained / "eyes.csv"
    assert predict.main([str(folder), "--out", str(out)]) == 0
    rows = {Path(r["image"]).stem: r for r in read_rows(out)}
    worse = max(int(rows["5_left"]["grade"]), int(rows["5_right"]["grade"]))
    assert rows["5_left"]["patient"] == rows["5_right"]["patient"] == str(folder / "5")
    assert rows["5_left"]["patient_referable"] == rows["5_right"]["patient_referable"] == str(int(worse >= 2))
    assert rows["6_left"]["patient"] == str(folder / "6") and rows["6_left"]["patient_referable"] == ""


@pytest.mark.slow
def test_predict_grades_a_camera_photo_and_reports_a_broken_image_without_stopping(trained, capsys):
    photos = trained / "photos"
    photos.mkdir()
    camera_photo(photos / "camera.jpg")
    (photos / "broken.jpeg").write_bytes(b"\xff\xd8 this is not a JPEG")
    shutil.copy(
        trained
        / "data/demo"
        / (Path((trained / "data/demo/test_img.csv").read_text().split()[0]).name + ".jpeg"),
        photos / "course.jpeg",
    )
    out = trained / "new.csv"
    assert predict.main([str(photos), "--out", str(out), "--explain", str(trained / "why")]) == 1
    rows = {Path(r["image"]).name: r for r in read_rows(out)}
    assert list(rows) == ["broken.jpeg", "camera.jpg", "course.jpeg"]  # the folder, sorted
    assert rows["broken.jpeg"]["grade"] == "" and "cannot decode" in rows["broken.jpeg"]["error"]
    assert rows["camera.jpg"]["grade"] in "01234" and rows["camera.jpg"]["error"] == ""
    assert "1 of 3 images could not be graded" in capsys.readouterr().err
    for name in ("camera", "course"):
        with Image.open(trained / "why" / f"{name}.png") as figure:
            assert figure.format == "PNG" and figure.width > 500
    assert not (trained / "why/broken.png").exists()


@pytest.mark.slow
def test_predict_with_a_shipped_checkpoint_works_outside_the_project(
    trained, tmp_path_factory, monkeypatch, capsys
):
    """No params.yaml in the folder and no --params: the checkpoint's spec and built-in defaults."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(Layout().arm("scratch").best, elsewhere / "grader.pt")
    camera_photo(elsewhere / "eye.jpg")
    expected_out = trained / "here.csv"
    assert predict.main([str(elsewhere / "eye.jpg"), "--out", str(expected_out)]) == 0
    monkeypatch.chdir(elsewhere)
    assert not Path("params.yaml").exists()
    assert predict.main(["eye.jpg", "--checkpoint", "grader.pt", "--out", "graded.csv"]) == 0
    (row,) = read_rows(elsewhere / "graded.csv")
    (expected,) = read_rows(expected_out)
    assert row["error"] == "" and row["grade"] == expected["grade"]
    assert row["probability_0"] == expected["probability_0"]  # same spec, same device, same numbers
    with pytest.raises(RetinopathyError, match="nothing.yaml: not found"):
        predict.main(["eye.jpg", "--checkpoint", "grader.pt", "--params", "nothing.yaml"])


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_skipped_arm_says_why_and_the_real_fix(trained, command):
    """Offline, `dvc repro` does not train the pretrained arm: the message says why and what does."""
    argv = (
        ["data/demo/test_img.csv", "--arm", "pretrained"]
        if command == "predict"
        else ["--arm", "pretrained", "--format", "torchscript", "--out", "grader.pt"]
    )
    with pytest.raises(RetinopathyError) as excinfo:
        {"predict": predict, "export": export}[command].main(argv)
    message = str(excinfo.value)
    assert "was not trained" in message and "says skipped" in message and "TORCH_HOME" in message
    assert "train.weights" in message and "run `dvc repro`" not in message


def test_a_camera_photo_is_cropped_to_the_fundus_as_import_kaggle_does(tmp_path):
    from retinopathy.data.photos import prepare_photo

    camera_photo(tmp_path / "camera.jpg")
    prepared = prepare_photo(tmp_path / "camera.jpg", 64, 10**7)
    assert prepared.shape == (64, 64, 3)
    bright = prepared.max(axis=2) > 20
    rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
    assert rows[0] <= 3 and cols[0] <= 3 and rows[-1] >= 60 and cols[-1] >= 60  # the fundus fills it


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_round_trips_within_1e_4_and_writes_a_card(trained, fmt):
    out = trained / f"grader.{fmt}"
    assert export.main(["--arm", "scratch", "--format", fmt, "--out", str(out)]) == 0
    names = (trained / "data/demo/test_img.csv").read_text().split()[:5]
    from retinopathy.data.photos import prepare_photo

    params = load_params("params.yaml")
    size = params.data.image_size
    images = torch.stack(
        [
            torch.from_numpy(prepare_photo(trained / f"data/demo/{n}.jpeg", size, 10**7)).permute(2, 0, 1)
            for n in names
        ]
    )
    reference = export.load_scores_model(Layout().arm("scratch").best)
    with torch.no_grad():
        expected = reference(images)
    got = export.EXPORTERS[fmt][1](out, images)
    assert got.shape == (5, 5) and torch.allclose(got, expected, atol=1e-4)

    # The photograph at its own size (the demo's 64 px, decoded in full): the graph resizes it.
    full = torch.stack(
        [
            torch.from_numpy(np.array(Image.open(trained / f"data/demo/{n}.jpeg").convert("RGB"))).permute(
                2, 0, 1
            )
            for n in names
        ]
    )
    assert full.shape[-1] == 2 * size
    resized = export.EXPORTERS[fmt][1](out, full)
    assert resized.shape == (5, 5) and torch.allclose(resized.sum(1), torch.ones(5), atol=1e-4)
    assert (resized - expected).abs().max() < 0.25  # close to predict's, not identical (the DCT scaling)

    card = out.with_name(out.name + ".md").read_text()
    assert "For research, not for diagnosis" in card and "SYNTHETIC" in card and "resnet18" in card
    assert "uint8 RGB [N, 3, H, W], 0-255, any H and W" in card and f"resize to {size}x{size}" in card
    assert "antialias=True" in card and "smallest DCT scale n/8" in card
    assert "| `acc` |" in card and "whose evaluation carries this checkpoint's fingerprint" in card
    measured = re.search(r"measured on (\d+) test images .* at most \*\*([0-9.]+)\*\*", card)
    assert measured and int(measured[1]) == 12 and 0 < float(measured[2]) < 0.25, card
    # The quality verdict is not in the graph: the card says so, with the project's thresholds and policy.
    assert "## Image quality: not computed by this graph" in card and "does **not**" in card
    assert "Thresholds in force (`quality` of `params.yaml`)" in card and f"min_focus={0.18!r}," in card
    assert "Policy in force: `quality.ungradable: flag`" in card


def test_the_card_says_how_to_judge_quality_and_its_code_gives_predict_s_verdict(tmp_path):
    """The card's recipe, run as written, gives the verdict predict gives, with the thresholds in force."""
    from retinopathy.quality.degrade import defocus
    from retinopathy.quality.verdict import assess

    thresholds = dataclasses.replace(QualityThresholds(), min_focus=0.2, max_flare=0.1)
    policy = export.QualityPolicy(thresholds, "withhold", "`quality` of `mine.yaml`")
    card = "\n".join(export.quality_section(policy))
    sharp = render_fundus(0, np.random.default_rng(3), 128)
    paths = {"sharp": tmp_path / "sharp.jpeg", "blurred": tmp_path / "blurred.jpeg"}
    Image.fromarray(sharp).save(paths["sharp"], quality=92)
    Image.fromarray(defocus(sharp, 1.0)).save(paths["blurred"], quality=92)
    code = card.split("```python\n")[1].split("```")[0]
    verdicts = {}
    for name, path in paths.items():
        namespace = {"path": path}
        exec(code, namespace)  # the recipe exactly as the card prints it
        verdicts[name] = namespace["verdict"]
        assert namespace["verdict"] == assess(decode_image(path), thresholds)
    assert verdicts["sharp"].gradable and verdicts["blurred"].reasons == ("blur",)
    for field in dataclasses.fields(thresholds):  # every threshold, with its value in force
        value = getattr(thresholds, field.name)
        assert f"{field.name}={value!r}," in code and re.search(
            rf"\| `{field.name}` \|.*\| [<>] {value:g} \|", card
        )
    assert "`retinopathy.quality.verdict.assess`" in card and "longer side is 256 px" in card
    assert "Policy in force: `quality.ungradable: withhold` (`quality` of `mine.yaml`)" in card


@pytest.mark.slow
def test_the_export_card_shows_only_metrics_of_the_exported_checkpoint(trained, tmp_path_factory):
    """Metrics on disk from another run (another fingerprint) are not shown as the checkpoint's."""
    info_path = Layout().arm("scratch").info
    elsewhere = tmp_path_factory.mktemp("shipped")
    shutil.copy(Layout().arm("scratch").best, elsewhere / "best.pt")
    out = trained / "copy.pt"
    assert (
        export.main(
            ["--checkpoint", str(elsewhere / "best.pt"), "--format", "torchscript", "--out", str(out)]
        )
        == 0
    )
    card = out.with_name(out.name + ".md").read_text()
    assert "| `acc` |" in card  # found by its fingerprint, though the file was copied elsewhere

    info = json.loads(info_path.read_text())
    info["fingerprint"] = "0123456789abcdef"  # another run's evaluation
    info_path.write_text(json.dumps(info))
    assert export.main(["--arm", "scratch", "--format", "torchscript", "--out", str(out)]) == 0
    card = out.with_name(out.name + ".md").read_text()
    assert "| `acc` |" not in card and "Source: none" in card
    state = torch.load(Layout().arm("scratch").best, weights_only=True)
    assert f"`{state['fingerprint']}`" in card and f"selected epoch | {state['epoch']} of 1" in card
    assert "Training's own figures for epoch 1" in card and "| `test_accuracy` |" in card  # from status.json


def test_onnx_export_without_the_extra_names_it(trained, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'", name="onnxscript")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    with pytest.raises(RetinopathyError, match=r"onnxscript.*pip install -e '\.\[export\]'"):
        export.main(["--arm", "scratch", "--format", "onnx", "--out", "grader.onnx"])
    assert not Path("grader.onnx").exists()


@pytest.mark.slow
def test_the_explain_stage_draws_heat_maps_and_says_when_an_arm_was_skipped(trained):
    params = load_params("params.yaml")
    for arm in ("scratch", "pretrained"):
        path = explain.explain_arm(params, arm)
        with Image.open(path) as figure:
            assert figure.format == "PNG"
            assert figure.width > (500 if arm == "scratch" else 300)
    sizes = {arm: os.path.getsize(Layout().explanation(arm)) for arm in ("scratch", "pretrained")}
    assert sizes["scratch"] > sizes["pretrained"]
