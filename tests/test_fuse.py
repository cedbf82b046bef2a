"""Grading with both eyes: pairing by name, the blend, the `fuse` stage and `predict` on pairs."""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from conftest import TINY_PARAMS, TRAINED_OVERRIDES, subprocess_env, write_params
from retinopathy import cli
from retinopathy.commands import export, predict
from retinopathy.core.config import load_params
from retinopathy.core.contract import FUSION_FACTS, METRIC_KEYS, Layout, fused_prediction_columns
from retinopathy.core.errors import RetinopathyError
from retinopathy.data.photos import prepare_photo
from retinopathy.fusion.blend import BlendRecord, Pairs, learn
from retinopathy.fusion.pairs import NO_PARTNER, partners, photo_patients
from retinopathy.models.head import Head
from retinopathy.stages import evaluate, fuse, prepare

# The shared trained project's test split (conftest.pair_names): five two-eyed patients and two one-eyed.
TEST_SIZE = TINY_PARAMS["demo"]["test_size"]


@pytest.fixture(scope="module")
def _paired_once(trained_once, tmp_path_factory) -> Path:
    """The session's trained tiny project (its images have EyePACS names) with `fuse@scratch` run."""
    from retinopathy.models.build import NO_DOWNLOAD_ENV

    folder = tmp_path_factory.mktemp("paired") / "project"
    shutil.copytree(trained_once, folder, symlinks=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(NO_DOWNLOAD_ENV, "1")
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
        patch.chdir(folder)
        assert fuse.main(["--init", "scratch"]) == 0
    return folder


@pytest.fixture()
def paired(_paired_once, tmp_path, monkeypatch) -> Path:
    project = tmp_path / "project"
    shutil.copytree(_paired_once, project, symlinks=True)
    monkeypatch.chdir(project)
    return project


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


# ----------------------------------------------------------------- pairing


def test_eyes_pair_by_patient_only_when_both_are_there_once():
    names = ["p1_left", "p1_right", "p2_left", "x", "p3_left", "p3_left", "p4_right", "p1"]
    found, sides = partners(names)
    assert found == [1, 0, NO_PARTNER, NO_PARTNER, NO_PARTNER, NO_PARTNER, NO_PARTNER, NO_PARTNER]
    assert sides[:2] == [0.0, 1.0] and sides[6] == 1.0


def test_photographs_pair_within_a_folder_or_explicitly_and_an_eye_pairs_once():
    photos = [
        Path(name)
        for name in (
            "b/1_right.jpeg",
            "x.jpeg",
            "a/1_left.jpeg",
            "a/2_left.jpeg",
            "a/2_right.jpeg",
            "c/2_right.jpeg",
        )
    ]
    who = photo_patients(photos)  # c/2_right is another folder's patient 2
    assert who.partner == [NO_PARTNER, NO_PARTNER, NO_PARTNER, 4, 3, NO_PARTNER]
    assert who.label == ["b/1", "x", "a/1", "a/2", "a/2", "c/2"]
    who = photo_patients(photos, [(2, 0)])
    assert who.partner[:3] == [2, NO_PARTNER, 0] and who.side[:3] == [1.0, 0.0, 0.0]
    assert who.label[0] == who.label[2] == "a/1+b/1" and who.group[0] == who.group[2]
    with pytest.raises(RetinopathyError, match="in two pairs"):
        photo_patients(photos, [(2, 0), (2, 5)])


# ----------------------------------------------------------------- the blend on synthetic features


def synthetic(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int], list[float]]:
    """Two eyes per patient with one grade; each eye's 4 features show it only through noise."""
    generator = torch.Generator().manual_seed(seed)
    grades = torch.randint(0, 5, (count,), generator=generator).repeat_interleave(2)
    features = grades.float().unsqueeze(1) + 1.5 * torch.randn(2 * count, 4, generator=generator)
    partner = [i + 1 if i % 2 == 0 else i - 1 for i in range(2 * count)]
    return features, grades, partner, [float(i % 2) for i in range(2 * count)]


@pytest.mark.slow
def test_the_blend_learns_from_the_other_eye_and_is_seeded():
    head = Head("cross_entropy")
    train_pairs, test_pairs = Pairs.of(*synthetic(400, 0)), Pairs.of(*synthetic(200, 1))
    settings = dict(hidden=8, epochs=40, lr=0.01, weight_decay=0.0, batch_size=64)
    model, epoch, rule = learn(train_pairs, None, head, seed=0, **settings)
    again, _, _ = learn(train_pairs, None, head, seed=0, **settings)
    assert epoch == 40 and "fixed" in rule and "test unseen" in rule
    first, second = model.state_dict(), again.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    with torch.no_grad():
        both = model(test_pairs.this, test_pairs.other, test_pairs.side).argmax(1)
        alone = model(test_pairs.this, test_pairs.this, test_pairs.side).argmax(1)  # no news from the other
    accuracy = [float((grades == test_pairs.labels).float().mean()) for grades in (both, alone)]
    assert accuracy[0] > accuracy[1] + 0.05


def test_the_blend_keeps_the_best_validation_epoch():
    head = Head("regression")
    model, epoch, rule = learn(
        Pairs.of(*synthetic(100, 0)),
        Pairs.of(*synthetic(50, 2)),
        head,
        hidden=0,
        epochs=30,
        lr=0.05,
        weight_decay=0.0,
        batch_size=32,
        seed=1,
    )
    assert 1 <= epoch <= 30 and "lowest validation loss" in rule and "test unseen" in rule


# ----------------------------------------------------------------- the stage


@pytest.mark.slow
def test_the_stage_writes_fused_rows_and_a_single_eye_row_for_the_patient_with_one_image(paired):
    layout = Layout()
    rows = read_rows(layout.fused_predictions("scratch"))
    assert tuple(rows[0]) == fused_prediction_columns(regression=False)
    names = (paired / "data/demo/test_img.csv").read_text().split()
    assert [row["image"] for row in rows] == names
    assert [row["source"] for row in rows] == ["fused"] * (TEST_SIZE - 2) + ["single-no-partner"] * 2
    single = read_rows(layout.arm("scratch").predictions)
    for lonely, alone, patient in zip(rows[-2:], single[-2:], ("t6", "t7"), strict=True):
        assert lonely["predicted"] == alone["predicted"] and lonely["patient"] == patient
    for row in rows:
        probabilities = [float(row[f"p{g}"]) for g in range(5)]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert int(row["predicted"]) == max(range(5), key=probabilities.__getitem__)
        assert float(row["referable_score"]) == pytest.approx(sum(probabilities[2:]), abs=2e-6)
    facts = json.loads(layout.fused("scratch").screening.read_text())["fusion"]
    assert set(facts) == set(FUSION_FACTS) and facts["method"] == "blend"
    counts = (facts["images"], facts["fused"], facts["single_no_partner"], facts["epoch"])
    assert counts == (TEST_SIZE, TEST_SIZE - 2, 2, 60)
    record = BlendRecord.load(layout.blend("scratch"), "fix")
    assert record.learned and record.train_pairs == 40 and record.val_pairs == 0


def test_the_fused_headline_has_only_headline_keys_so_dvc_metrics_show_gains_rows_not_columns(paired):
    fused = json.loads(Layout().fused_metrics("scratch").read_text())
    alone = json.loads(Layout().arm("scratch").metrics.read_text())
    assert {"acc", "bacc", "kappa"} <= set(fused) <= set(METRIC_KEYS) and set(fused) <= set(alone)


def _sensitivity_specificity(truth: np.ndarray, called: np.ndarray) -> tuple[float, float]:
    return float(called[truth].mean()), float((~called[~truth]).mean())


def test_the_fused_screening_figures_are_recomputed_from_the_fused_csv(paired):
    layout = Layout()
    rows = pd.read_csv(layout.fused_predictions("scratch"))
    record = json.loads(layout.fused("scratch").screening.read_text())
    patients = rows.groupby("patient", sort=False)[["actual", "predicted", "referable_score"]].max()
    for level, table in (("image", rows), ("patient", patients)):
        figures = record[level]
        actual, predicted = table["actual"].to_numpy(), table["predicted"].to_numpy()
        truth = actual >= 2
        assert figures["n"] == len(table) and figures["referable"] == int(truth.sum())
        assert figures["accuracy"]["value"] == pytest.approx(accuracy_score(actual, predicted), abs=1e-4)
        kappa = cohen_kappa_score(actual, predicted, labels=list(range(5)), weights="quadratic")
        assert figures["kappa"]["value"] == pytest.approx(np.nan_to_num(kappa), abs=1e-4)
        if truth.all() or not truth.any():
            assert figures["auc_referable"]["value"] is None
        else:
            auc = roc_auc_score(truth, table["referable_score"])
            assert figures["auc_referable"]["value"] == pytest.approx(auc, abs=1e-4)
            sensitivity, specificity = _sensitivity_specificity(truth, predicted >= 2)
            assert figures["sensitivity"]["value"] == pytest.approx(sensitivity, abs=1e-4)
            assert figures["specificity"]["value"] == pytest.approx(specificity, abs=1e-4)
        low, high = figures["accuracy"]["low"], figures["accuracy"]["high"]
        assert low <= figures["accuracy"]["value"] <= high  # evaluate.bootstrap's interval
    assert record["bootstrap"]["resamples"] == load_params("params.yaml").evaluate.bootstrap
    assert record["operating_points"] == {}  # no validation split: none chosen (never on test)
    headline = json.loads(layout.fused_metrics("scratch").read_text())
    assert headline["acc"] == pytest.approx(record["image"]["accuracy"]["value"], abs=1e-3)


@pytest.mark.slow
def test_the_operating_points_are_chosen_on_the_validation_split_graded_with_both_eyes(paired, monkeypatch):
    write_params(paired, **TRAINED_OVERRIDES, data={"val_fraction": 0.5})
    shutil.rmtree(paired / "data/prepared")
    prepare.prepare(load_params("params.yaml"), paired / "data/prepared")  # the network is not retrained
    from retinopathy.fusion import grading  # where the fused grades are scored

    chosen = []
    original = grading.record
    monkeypatch.setattr(
        grading,
        "record",
        lambda test, val, *rest, **named: chosen.append((test, val)) or original(test, val, *rest, **named),
    )
    fuse.fuse_arm(load_params("params.yaml"), "scratch")
    ((test, val),) = chosen
    blend = BlendRecord.load(Layout().blend("scratch"), "fix")
    facts = json.loads(Layout().fused("scratch").screening.read_text())["fusion"]
    assert blend.val_pairs > 0 and facts["val_images"] == len(val) > 0
    assert set(val.patients).isdisjoint(test.patients)  # chosen on validation, never on test
    points = json.loads(Layout().fused("scratch").screening.read_text())["operating_points"]
    assert points["val_images"] == len(val)
    # The validation images are graded as the test images: by the blend where the other eye is there.
    evaluate.evaluate_arm(load_params("params.yaml"), "scratch")
    alone = pd.read_csv(Layout().arm("scratch").val_predictions)
    two_eyed = [i for i, p in enumerate(partners(alone["image"].tolist())[0]) if p >= 0]
    lonely = [i for i in range(len(alone)) if i not in two_eyed]
    assert len(two_eyed) == blend.val_pairs and np.allclose(
        val.referable[lonely], alone["referable_score"].to_numpy()[lonely], atol=1e-5
    )
    assert not np.allclose(val.referable[two_eyed], alone["referable_score"].to_numpy()[two_eyed], atol=1e-5)


@pytest.mark.slow
def test_the_blend_never_sees_the_test_images(paired):
    layout = Layout()
    before = BlendRecord.load(layout.blend("scratch"), "fix")
    fused_before = layout.fused_predictions("scratch").read_text()
    root = paired / "data/demo"
    names = (root / "test_img.csv").read_text().split()
    for name in names:  # every test photograph replaced by another one
        shutil.copyfile(root / "a0_left.jpeg", root / f"{name}.jpeg")
    fuse.fuse_arm(load_params("params.yaml"), "scratch")
    after = BlendRecord.load(layout.blend("scratch"), "fix")
    assert after.state.keys() == before.state.keys()
    assert all(torch.equal(after.state[key], before.state[key]) for key in before.state)
    assert layout.fused_predictions("scratch").read_text() != fused_before  # the test images were read


@pytest.mark.slow
def test_method_none_grades_each_photograph_alone(paired):
    write_params(paired, **TRAINED_OVERRIDES, fuse={"method": "none"})
    fuse.fuse_arm(load_params("params.yaml"), "scratch")
    rows = read_rows(Layout().fused_predictions("scratch"))
    single = read_rows(Layout().arm("scratch").predictions)
    assert {row["source"] for row in rows} == {"single"}
    assert [row["predicted"] for row in rows] == [row["predicted"] for row in single]
    assert not BlendRecord.load(Layout().blend("scratch"), "fix").learned


def test_no_two_eyed_patient_in_training_skips_the_arms_fusion_with_a_note(trained_project, capsys):
    # A user training on APTOS or IDRiD: no training image is named <patient>_left/_right.
    root = trained_project / "data/demo"
    names = (root / "train_img.csv").read_text().split()
    for name in names:
        (root / f"{name}.jpeg").rename(root / f"{name.replace('_', '')}.jpeg")
    (root / "train_img.csv").write_text("\n".join(name.replace("_", "") for name in names) + "\n")
    shutil.rmtree(trained_project / "data/prepared")
    assert cli.main(["prepare", "--out", "data/prepared"]) == 0
    capsys.readouterr()
    assert cli.main(["fuse", "--init", "scratch"]) == 0  # the default `dvc repro` goes on
    err = capsys.readouterr().err
    assert "scratch: fusion skipped: no patient has both eyes in the training split" in err
    assert "fuse.method to none" in err
    layout = Layout()
    # Header-only outputs, as an arm skipped offline has; the reason in the blend and the facts.
    assert json.loads(layout.fused_metrics("scratch").read_text()) == {}
    assert read_rows(layout.fused_predictions("scratch")) == []
    assert (
        read_rows(layout.fused("scratch").roc("image"))
        == read_rows(layout.fused("scratch").reliability)
        == []
    )
    blend = BlendRecord.load(layout.blend("scratch"), "fix")
    assert not blend.learned and blend.selection.startswith("fusion skipped: no patient has both eyes")
    facts = json.loads(layout.fused("scratch").screening.read_text())["fusion"]
    assert facts["method"] == "none" and facts["selection"] == blend.selection and facts["images"] == 0
    # The report's Both eyes section says why, and draws no fused figures.
    assert cli.main(["report"]) == 0
    report = (trained_project / "plots/report.md").read_text()
    section = report[report.index("## Both eyes (fusion)") :]
    assert "- scratch: not graded with both eyes: fusion skipped: no patient has both eyes" in section
    assert "- pretrained: skipped (the arm was not trained)" in section


@pytest.mark.slow
def test_a_killed_stage_leaves_no_partial_output(paired):
    layout = Layout()
    for path in (layout.fused_predictions("scratch"), layout.fused_metrics("scratch")):
        path.unlink()
    # The stage is killed while it writes its outputs (all of them to temporaries first): the blend
    # is in its temporary file, the predictions in theirs, not yet synced to the disk.
    code = (
        "import os, signal\n"
        "from retinopathy.stages import fuse\n"
        "synced, real = [], os.fsync\n"
        "def killed(fd):\n"
        "    synced.append(fd)\n"
        "    if len(synced) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(fd)\n"
        "os.fsync = killed\n"
        "fuse.main(['--init', 'scratch'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=paired)
    assert result.returncode == -signal.SIGKILL
    assert not layout.fused_predictions("scratch").exists() and not layout.fused_metrics("scratch").exists()
    assert [p.name for p in layout.fused_predictions("scratch").parent.glob(".*.tmp")]  # the killed temporary
    assert fuse.main(["--init", "scratch"]) == 0
    assert not list(layout.fused_predictions("scratch").parent.glob(".*.tmp"))
    assert len(read_rows(layout.fused_predictions("scratch"))) == TEST_SIZE


# ----------------------------------------------------------------- predict


@pytest.mark.slow
def test_predict_on_a_pair_gives_the_fused_rows_of_the_stage(paired):
    fused = {row["image"]: row for row in read_rows(Layout().fused_predictions("scratch"))}
    out = paired / "pair.csv"
    inputs = ["data/demo/t2_left.jpeg", "data/demo/t2_right.jpeg", "data/demo/t6_left.jpeg"]
    assert predict.main([*inputs, "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [row["source"] for row in rows] == ["fused", "fused", "single-no-partner"]
    for row in rows:
        expected = fused[Path(row["image"]).stem]
        assert row["grade"] == expected["predicted"]
        for g in range(5):
            assert float(row[f"probability_{g}"]) == pytest.approx(float(expected[f"p{g}"]), abs=1e-5)


@pytest.mark.slow
def test_predict_pairs_explicitly_and_grades_alone_on_request(paired):
    out = paired / "pair.csv"
    left, right = "data/demo/t2_left.jpeg", "data/demo/t2_right.jpeg"
    for folder, source in (("one", left), ("two", right)):  # two folders: one patient only if paired
        Path(folder).mkdir()
        shutil.copyfile(source, Path(folder) / Path(source).name)
    copies = ["one/t2_left.jpeg", "two/t2_right.jpeg"]
    assert predict.main([*copies, "--out", str(out)]) == 0
    assert {r["source"] for r in read_rows(out)} == {"single-no-partner"}
    assert predict.main([*copies, "--pair", *copies, "--out", str(out)]) == 0
    joined = read_rows(out)
    assert predict.main([left, right, "--out", str(out)]) == 0
    assert [r["grade"] for r in joined] == [r["grade"] for r in read_rows(out)]  # as paired by name
    assert {r["source"] for r in joined} == {"fused"} and joined[0]["patient"] == "one/t2+two/t2"
    assert predict.main([left, right, "--single", "--out", str(out)]) == 0
    assert {r["source"] for r in read_rows(out)} == {"single"}


@pytest.mark.slow
def test_a_withheld_eye_gets_no_fused_grade_and_its_partner_is_graded_alone(paired, capsys):
    """quality.ungradable withhold: the blend never reads an ungradable eye's features, and its
    patient gets no call; flagged, the same eye is fused like any other."""
    from PIL import Image

    from retinopathy.data.images import decode_image
    from retinopathy.quality.degrade import FAULTS

    Path("eyes").mkdir()
    shutil.copyfile("data/demo/t2_left.jpeg", "eyes/t2_left.jpeg")
    dark = FAULTS["underexpose"]
    Image.fromarray(dark(decode_image("data/demo/t2_right.jpeg"), dark.reject)).save("eyes/t2_right.jpeg")
    inputs = ["eyes/t2_left.jpeg", "eyes/t2_right.jpeg", "data/demo/t3_left.jpeg", "data/demo/t3_right.jpeg"]
    assert predict.main([*inputs, "--out", "flag.csv", "--ungradable", "flag"]) == 0
    flagged = read_rows(Path("flag.csv"))
    assert [r["source"] for r in flagged] == ["fused"] * 4 and flagged[1]["quality"] == "dark"
    assert predict.main([*inputs, "--out", "withhold.csv", "--ungradable", "withhold"]) == 0
    left, right, *gradable = read_rows(Path("withhold.csv"))
    assert (right["source"], right["grade"], right["patient_referable"]) == ("withheld", "", "")
    assert left["source"] == "single-no-partner" and left["patient_referable"] == ""
    assert predict.main(["eyes/t2_left.jpeg", "--single", "--out", "alone.csv"]) == 0
    alone = read_rows(Path("alone.csv"))[0]
    assert left["grade"] == alone["grade"] and left["probability_0"] == alone["probability_0"]
    for row, before in zip(gradable, flagged[2:], strict=True):  # the other patient's rows do not change
        assert (row["source"], row["grade"], row["patient_referable"]) == (
            "fused",
            before["grade"],
            before["patient_referable"],
        )
        assert float(row["probability_0"]) == pytest.approx(float(before["probability_0"]), abs=1e-5)
    assert "1 patient(s) with both eyes given get no patient_referable" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_refuses_a_blend_of_another_checkpoint(paired):
    layout = Layout()
    record = BlendRecord.load(layout.blend("scratch"), "fix")
    record.fingerprint = "0" * 16
    record.save(layout.blend("scratch"))
    with pytest.raises(RetinopathyError, match="learned on the features of run 0000.*fuse@scratch.*--single"):
        predict.main(["data/demo/t2_left.jpeg", "--out", "x.csv"])


# ----------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("fuse_params", "message"),
    [
        ({"method": "both"}, r"`fuse.method` must be one of none, blend"),
        ({"inputs": "pixels"}, r"`fuse.inputs` must be one of features, scores"),
        ({"hidden": -1}, r"`fuse.hidden` must be an integer >= 0"),
        ({"lr": 0}, r"`fuse.lr` must be > 0"),
        ({"seed": -1}, r"`fuse.seed` must be an integer seed"),
    ],
)
def test_bad_fuse_params_are_refused_naming_the_key(tmp_path, fuse_params, message):
    write_params(tmp_path, fuse=fuse_params)
    with pytest.raises(RetinopathyError, match=message):
        load_params(tmp_path / "params.yaml")


# ----------------------------------------------------------------- export


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_writes_both_eyes_in_one_graph_that_gives_predict_s_fused_grades(paired, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")

    out = paired / f"both.{fmt}"
    assert export.main(["--arm", "scratch", "--format", fmt, "--out", str(out), "--fused"]) == 0
    card = out.with_name(out.name + ".md").read_text()
    assert "both eyes" in card.splitlines()[0] and "## Image quality: not computed by this graph" in card
    fused = {row["image"]: row for row in read_rows(Layout().fused_predictions("scratch"))}
    size = load_params("params.yaml").data.image_size
    left, right = (
        torch.from_numpy(prepare_photo(Path(f"data/demo/t2_{eye}.jpeg"), size, 10**9))
        .permute(2, 0, 1)
        .unsqueeze(0)
        .contiguous()
        for eye in ("left", "right")
    )
    scores = export.run_fused(
        out, fmt, torch.cat([left, right]), torch.cat([right, left]), torch.tensor([0.0, 1.0])
    )
    for row, name in zip(scores.tolist(), ("t2_left", "t2_right"), strict=True):
        assert row == pytest.approx([float(fused[name][f"p{g}"]) for g in range(5)], abs=1e-4)


def test_fuse_params_do_not_change_what_training_fingerprints():
    from conftest import tiny_params
    from retinopathy.engine.checkpoint import training_params

    params = tiny_params()
    before = training_params(params)
    params["fuse"].update(method="none", hidden=7, seed=3)
    assert training_params(params) == before and "fuse" not in before
