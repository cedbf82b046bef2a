"""`predict` says which photographs cannot be graded, and why (issue 30): the `gradable` and `quality`
columns, one line per ungradable photograph, params.yaml's thresholds, and `flag` / `withhold`.

The photographs are demo photos that `retinopathy demo-data` writes at 256 px, copies of them
with each camera fault of retinopathy.quality.degrade at its `reject` strength (saved as JPEG, as a
camera stores them), and scikit-image's real colour fundus photograph (CC0). The grader is the
session's tiny trained checkpoint (conftest.trained_once), so every test that grades is slow.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TRAINED_OVERRIDES, write_params
from retinopathy.commands import predict
from retinopathy.core.config import QualityThresholds
from retinopathy.core.contract import LEARNED_COLUMN, QUALITY_COLUMNS, Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.images import decode_image
from retinopathy.quality.degrade import FAULTS, off_frame, underexpose
from retinopathy.quality.learned import MIN_PER_CLASS, LearnedAssessor, assessor_text, fit
from retinopathy.quality.verdict import NO_FUNDUS, assess
from retinopathy.stages import demo_data


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    """The CSV's rows by the image's file name."""
    with open(path, newline="") as stream:
        return {Path(row["image"]).name: row for row in csv.DictReader(stream)}


def save(pixels, path: Path) -> None:
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


@pytest.fixture(scope="module")
def demo_256(tmp_path_factory) -> list[Path]:
    """Two photos of a demo written by `retinopathy demo-data` at 256 px, none with a camera fault."""
    folder = tmp_path_factory.mktemp("demo-256")
    params = write_params(
        folder,
        demo={"seed": 3, "train_size": 10, "test_size": 10, "image_size": 256, "ungradable": 0, "usable": 0},
    )
    assert demo_data.main(["--params", str(params), "--out", str(folder / "demo")]) == 0
    return sorted((folder / "demo").glob("*.jpeg"))[:2]


@pytest.fixture()
def retina_jpeg(tmp_path) -> Path:
    """scikit-image's real colour fundus photograph (1411 px, a healthy eye) as a JPEG."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is not installed: pip install '.[test]'")
    path = tmp_path / "retina.jpeg"
    save(data.retina(), path)
    return path


def test_predict_takes_the_thresholds_and_the_policy_from_params_yaml(tmp_path):
    """Fast: what `predict --params` reads; without params.yaml, the assessor's defaults and `flag`."""
    strict = dataclasses.replace(QualityThresholds(), min_focus=0.9)
    write_params(tmp_path, quality={"ungradable": "withhold", "thresholds": dataclasses.asdict(strict)})
    chosen = predict.settings(str(tmp_path / "params.yaml"))
    assert chosen.thresholds == strict and chosen.ungradable == "withhold"
    assert predict.STANDALONE.thresholds == QualityThresholds() and predict.STANDALONE.ungradable == "flag"
    parser = predict.build_parser()
    assert parser.parse_args(["x.jpeg"]).ungradable is None  # None: the param decides
    assert parser.parse_args(["x.jpeg", "--ungradable", "withhold"]).ungradable == "withhold"


def test_an_unknown_policy_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["x.jpeg", "--ungradable", "skip"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # argparse quotes the choices on some Python versions only
    assert "argument --ungradable: invalid choice: 'skip' (choose from" in err
    assert "flag" in err.splitlines()[-1] and "withhold" in err.splitlines()[-1]


def test_every_faulted_copy_is_ungradable_for_its_reason_and_the_originals_are_gradable(
    trained_project, demo_256, capsys
):
    photos = trained_project / "photos"
    photos.mkdir()
    expected: dict[str, str] = {}  # file name -> its reason ("": gradable)
    for number, source in enumerate(demo_256):
        shutil.copy(source, photos / f"original{number}.jpeg")
        expected[f"original{number}.jpeg"] = ""
        image = decode_image(source)
        for fault in FAULTS.values():
            save(fault(image, fault.reject, seed=number), photos / f"{fault.name}{number}.jpeg")
            expected[f"{fault.name}{number}.jpeg"] = fault.reason
    # 95% out of the frame: the old check called this copy "greyscale" (the colour of a sliver of
    # fundus is under 1% of the frame); there is no fundus to grade.
    save(off_frame(decode_image(demo_256[1]), 0.95, seed=1), photos / "sliver.jpeg")
    expected["sliver.jpeg"] = NO_FUNDUS
    out = trained_project / "graded.csv"
    assert predict.main([str(photos), "--out", str(out)]) == 0  # an ungradable photograph is no error
    rows = read_rows(out)
    assert list(next(iter(rows.values())))[-5:] == [*QUALITY_COLUMNS, "error", "warning", "source"]
    err = capsys.readouterr().err
    for name, reason in expected.items():
        row = rows[name]
        assert (row["gradable"], row["quality"]) == ("false" if reason else "true", reason), name
        assert row["grade"] in "01234" and row["error"] == "" and row["source"] == "single"  # flag: graded
        # The old check called a photo mostly out of the frame "greyscale"; the reason is the assessor's now.
        assert row["warning"] == "", name
        line = f"ungradable: {photos / name}: "
        assert (line + f"{reason}: " in err) if reason else (line not in err), name
    ungradable = sum(bool(reason) for reason in expected.values())
    assert f"{ungradable} of {len(expected)} photographs are ungradable" in err
    assert "graded anyway" in err and "(quality.ungradable of params.yaml: flag)" in err


def test_the_real_photograph_is_gradable_and_params_yaml_sets_the_thresholds(
    trained_project, retina_jpeg, tmp_path_factory, monkeypatch, capsys
):
    photos = trained_project / "photos"
    photos.mkdir()
    shutil.copy(retina_jpeg, photos / "retina.jpeg")
    blurred = FAULTS["defocus"]
    save(blurred(decode_image(retina_jpeg), blurred.reject), photos / "retina-blurred.jpeg")
    out = trained_project / "graded.csv"
    assert predict.main([str(photos), "--out", str(out)]) == 0
    rows = read_rows(out)
    assert (rows["retina.jpeg"]["gradable"], rows["retina.jpeg"]["quality"]) == ("true", "")
    assert (rows["retina-blurred.jpeg"]["gradable"], rows["retina-blurred.jpeg"]["quality"]) == (
        "false",
        "blur",
    )
    assert (
        "ungradable: " + str(photos / "retina-blurred.jpeg") + ": blur: focus 0." in capsys.readouterr().err
    )

    # A focus threshold above the sharp photograph's own focus: the project's params.yaml decides.
    strict = dataclasses.asdict(dataclasses.replace(QualityThresholds(), min_focus=0.95))
    write_params(trained_project, **TRAINED_OVERRIDES, quality={"thresholds": strict})
    assert predict.main([str(photos), "--out", str(out)]) == 0
    assert read_rows(out)["retina.jpeg"]["quality"] == "blur"
    assert "(at least 0.95)" in capsys.readouterr().err

    # A shipped checkpoint graded outside the project: the assessor's own defaults.
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.copy(Layout().arm("scratch").best, elsewhere / "grader.pt")
    monkeypatch.chdir(elsewhere)
    assert predict.main([str(photos), "--checkpoint", "grader.pt", "--out", "graded.csv"]) == 0
    assert read_rows(elsewhere / "graded.csv")["retina.jpeg"]["gradable"] == "true"


def test_withhold_leaves_an_ungradable_photo_and_its_patient_without_a_grade(trained_project, capsys):
    """The param (or --ungradable) withholds: no grade, no scores, no patient call; flag grades it."""
    photos = trained_project / "eyes"
    photos.mkdir()
    demo = trained_project / "data/demo"  # the trained project's photos have EyePACS names
    shutil.copy(demo / "t2_left.jpeg", photos / "7_left.jpeg")
    save(
        underexpose(decode_image(demo / "t2_right.jpeg"), FAULTS["underexpose"].reject),
        photos / "7_right.jpeg",
    )
    for eye in ("left", "right"):
        shutil.copy(demo / f"t3_{eye}.jpeg", photos / f"8_{eye}.jpeg")
    out = trained_project / "graded.csv"

    write_params(trained_project, **TRAINED_OVERRIDES, quality={"ungradable": "withhold"})
    assert predict.main([str(photos), "--out", str(out)]) == 0  # withheld, not failed
    withheld = read_rows(out)
    said = capsys.readouterr()
    err = said.err
    assert "3 of 4 images graded with" in said.out and "(1 ungradable, withheld)" in said.out
    dark = withheld["7_right.jpeg"]
    assert (dark["gradable"], dark["quality"], dark["source"], dark["error"]) == (
        "false",
        "dark",
        "withheld",
        "",
    )
    scores = ["grade", *(f"probability_{g}" for g in range(5)), "referable", "referable_score"]
    assert all(dark[column] == "" for column in scores)
    assert dark["patient"] == str(photos / "7")  # still named: its call is what is missing
    assert withheld["7_left.jpeg"]["grade"] in "01234" and withheld["7_left.jpeg"]["gradable"] == "true"
    assert withheld["7_left.jpeg"]["patient_referable"] == dark["patient_referable"] == ""
    assert withheld["8_left.jpeg"]["patient_referable"] in ("0", "1")  # a gradable patient keeps the call
    assert "ungradable: " + str(photos / "7_right.jpeg") + ": dark: mean brightness" in err
    assert "left empty (quality.ungradable of params.yaml: withhold)" in err
    assert "1 patient(s) with both eyes given get no patient_referable" in err

    # --ungradable overrides the param: flagged, it is graded like the others.
    assert predict.main([str(photos), "--out", str(out), "--ungradable", "flag"]) == 0
    flagged = read_rows(out)
    assert flagged["7_right.jpeg"]["grade"] in "01234" and flagged["7_right.jpeg"]["quality"] == "dark"
    assert flagged["7_right.jpeg"]["source"] == "single"
    assert flagged["7_left.jpeg"]["patient_referable"] in ("0", "1")
    assert flagged["7_left.jpeg"]["grade"] == withheld["7_left.jpeg"]["grade"]
    assert "(--ungradable: flag)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def learned(demo_256) -> LearnedAssessor:
    """A learned assessor fitted on every demo-256 photo (Good) and a dark copy of each (Reject: at
    12-30% of its brightness)."""
    originals = sorted(demo_256[0].parent.glob("*.jpeg"))
    assert len(originals) >= MIN_PER_CLASS
    images = [decode_image(path) for path in originals]
    dark = [underexpose(image, 0.7 + 0.18 * n / len(images)) for n, image in enumerate(images)]
    measures = [assess(image).measures for image in images + dark]
    return fit(measures, np.array([False] * len(images) + [True] * len(dark)), "demo-256 labels")


def test_a_learned_assessor_adds_its_probability_and_names_the_photos_only_it_rejects(
    trained_project, demo_256, learned, capsys
):
    photos = trained_project / "photos"
    photos.mkdir()
    shutil.copy(demo_256[0], photos / "original.jpeg")
    save(underexpose(decode_image(demo_256[0]), 0.8), photos / "dark.jpeg")  # a strength it never saw
    model, out = trained_project / "quality.json", trained_project / "graded.csv"
    model.write_text(assessor_text(learned, None, str(model)))
    assert predict.main([str(photos), "--out", str(out), "--quality-model", str(model)]) == 0
    rows = read_rows(out)
    assert list(rows["dark.jpeg"])[-1] == LEARNED_COLUMN
    original, dark = (float(rows[name][LEARNED_COLUMN]) for name in ("original.jpeg", "dark.jpeg"))
    assert original < learned.threshold_probability <= dark
    # The verdict stays the thresholds'.
    assert (rows["dark.jpeg"]["gradable"], rows["dark.jpeg"]["quality"]) == ("false", "dark")
    said = capsys.readouterr()
    assert f"learned assessor {model}: 1 of 2 photographs at or above its threshold" in said.out
    assert "the thresholds find it gradable" not in said.err  # they agree on both
    # The column comes last: every other column keeps its place and meaning.
    assert all(row["warning"] == "" and row["source"] == "single" for row in rows.values())
    assert "do not look like colour fundus photographs" not in said.err

    # An assessor that rejects everything: the photograph the thresholds keep is named, with its reason.
    model.write_text(assessor_text(dataclasses.replace(learned, threshold=-50.0), None, str(model)))
    assert predict.main([str(photos), "--out", str(out), "--quality-model", str(model)]) == 0
    err = capsys.readouterr().err
    assert f"learned assessor: {photos / 'original.jpeg'}: P(Reject) {original:.3f}, mostly " in err
    assert err.count("the thresholds find it gradable") == 1  # not the dark copy: the thresholds reject it

    # A file the stage wrote without a model (no labels, or too few) is refused before any grading.
    before = out.read_bytes()
    model.write_text(assessor_text(None, "3 Reject and 30 Good or Usable photographs", str(model)))
    refused = "holds no learned assessor: 3 Reject .*; run `dvc repro quality`"
    with pytest.raises(RetinopathyError, match=refused):
        predict.main([str(photos), "--out", str(out), "--quality-model", str(model)])
    assert out.read_bytes() == before
