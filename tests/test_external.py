"""The `external` stage: each arm's best.pt grades the sets of params.yaml's `external`.

The sets are tiny copies that `import-external` writes from photographs the test writes
(tests/test_import_external.py's layouts). The graders are the session's trained project (one
epoch of 40 images at 32 px); the tests that grade are slow-marked (seconds each), the
refusals are fast. Every figure is recomputed with scikit-learn from the
predictions CSV, at the operating points evaluate chose on the internal validation split.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from conftest import TRAINED_OVERRIDES, write_params
from retinopathy import cli
from retinopathy.core.contract import FUSED_METRIC_KEYS, Layout
from retinopathy.core.records import read_external_run
from retinopathy.reporting.comparison import seeds_table
from retinopathy.reporting.external import NO_EXTERNAL
from test_import_external import aptos, messidor

LAYOUT = Layout()


def import_set(project: Path, format: str, write) -> str:
    """Import a tiny copy of ``format`` into data/external/<format>; its folder, relative to the project."""
    root = write(project / "unpacked" / format)
    out = f"data/external/{format}"
    assert cli.main(["import-external", format, "--root", str(root), "--out", out, "--size", "32"]) == 0
    return out


@pytest.fixture()
def validated(trained_project: Path) -> Path:
    """The trained project with a validation split (evaluate chose operating points on it), two sets."""
    sets = {
        "aptos": import_set(trained_project, "aptos2019", aptos),
        "messidor2": import_set(trained_project, "messidor2", messidor),
    }
    write_params(trained_project, **TRAINED_OVERRIDES, data={"val_fraction": 0.25}, external=sets)
    # The same best.pt, evaluated again with a validation split: its operating points are chosen there.
    assert cli.main(["prepare", "--out", "data/prepared"]) == 0
    assert cli.main(["evaluate", "--init", "scratch"]) == 0
    return trained_project


def screening(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow  # grades the sets (seconds each on 2 shared cores)
def test_each_set_is_scored_at_the_internal_operating_points_and_recomputes(validated, capsys):
    assert cli.main(["external", "--init", "scratch"]) == 0
    assert "graded aptos, messidor2" in capsys.readouterr().out
    internal = screening(LAYOUT.arm("scratch").screening_files.screening)["operating_points"]
    out = LAYOUT.external("scratch")
    run = read_external_run(out.index)
    assert list(run.sets) == ["aptos", "messidor2"] and run.skipped is None
    assert sorted(p.name for p in out.headline.iterdir()) == ["aptos.json", "messidor2.json"]
    for name in ("aptos", "messidor2"):
        predictions = pd.read_csv(out.predictions(name))
        evaluate_columns = pd.read_csv(LAYOUT.arm("scratch").predictions, nrows=0).columns
        assert list(predictions.columns) == list(evaluate_columns)
        record = screening(out.screening(name).screening)
        # Applied unchanged: the thresholds and their validation figures are evaluate's.
        assert record["operating_points"] == internal
        truth = predictions["actual"].to_numpy() >= 2
        score = predictions["referable_score"].to_numpy()
        figures = record["image"]
        assert figures["n"] == len(predictions) == run.sets[name].images
        assert figures["auc_referable"]["value"] == pytest.approx(roc_auc_score(truth, score), abs=1e-4)
        for point in ("high_sensitivity", "high_specificity"):
            called = score >= internal[point]["threshold"]
            assert figures[f"{point}_sensitivity"]["value"] == pytest.approx(called[truth].mean(), abs=1e-4)
            assert figures[f"{point}_specificity"]["value"] == pytest.approx(
                (~called[~truth]).mean(), abs=1e-4
            )
        # The quality assessor judged every image: imageability and intention to screen recompute.
        assert set(predictions["gradable"]) <= {True, False} and predictions["gradable"].notna().all()
        gradable = predictions["gradable"].to_numpy(dtype=bool)
        judged = record["gradability"]["image"]
        assert judged["n"] == len(predictions) and judged["gradable"] == gradable.sum()
        assert judged["imageability"]["value"] == pytest.approx(gradable.mean(), abs=1e-4)
        referred = (predictions["predicted"].to_numpy() >= 2) | ~gradable
        assert judged["sensitivity"]["value"] == pytest.approx(referred[truth].mean(), abs=1e-4)
        metrics = json.loads(out.metrics(name).read_text())
        assert set(metrics) <= set(FUSED_METRIC_KEYS) and "kappa" in metrics
        assert metrics["acc"] == pytest.approx(
            (predictions["actual"] == predictions["predicted"]).mean(), abs=1e-3
        )
    # Messidor-2 has DME labels: referable as Gulshan defines it, named beside the figures.
    assert run.sets["messidor2"].gulshan and "macular edema" in run.sets["messidor2"].gulshan
    assert run.sets["aptos"].gulshan is None and not out.gulshan("aptos").screening.exists()
    # Messidor-2's adjudicated_gradable: every photograph it wrote is judged, ungradable ones included.
    assert run.sets["aptos"].quality is None
    labelled = pd.read_csv(Path(run.sets["messidor2"].folder) / "quality.csv")
    counts = run.sets["messidor2"].quality
    assert counts is not None and sum(c.gradable + c.ungradable for c in counts.values()) == len(labelled)
    assert counts["Reject"].gradable + counts["Reject"].ungradable == (labelled["quality"] == 2).sum()
    gulshan = screening(out.gulshan("messidor2").screening)
    assert "Gulshan" in gulshan["notes"][0]
    predictions = pd.read_csv(out.predictions("messidor2"))
    dme = np.array([line == "1" for line in Path("data/external/messidor2/test_dme.csv").read_text().split()])
    truth = (predictions["actual"].to_numpy() >= 2) | dme
    assert gulshan["image"]["referable"] == int(truth.sum())
    auc = gulshan["image"]["auc_referable"]["value"]
    assert auc == pytest.approx(roc_auc_score(truth, predictions["referable_score"]), abs=1e-4)
    # Messidor-2 names its patients (exams): per patient is the worse eye, fewer rows than images.
    assert screening(out.screening("messidor2").screening)["patient"]["n"] == run.sets["messidor2"].patients


def test_a_folder_that_was_not_imported_is_refused_naming_the_key_and_nothing_is_written(
    trained_project, capsys
):
    Path("data/by-hand").mkdir(parents=True)
    Path("data/by-hand/test_img.csv").write_text("a\n")
    write_params(trained_project, **TRAINED_OVERRIDES, external={"mine": "data/by-hand"})
    assert cli.main(["external", "--init", "scratch"]) == 2
    error = capsys.readouterr().err
    assert "external.mine" in error and "has no import.json" in error
    assert "retinopathy import-external FORMAT --root DIR --out data/by-hand" in error
    assert "Traceback" not in error
    assert not (trained_project / "metrics/external").exists()


@pytest.mark.slow  # grades the sets (seconds each on 2 shared cores)
def test_no_set_writes_the_index_alone_and_a_set_taken_out_loses_its_files(trained_project, capsys):
    assert cli.main(["external", "--init", "scratch"]) == 0
    assert "no external set configured" in capsys.readouterr().out
    out = LAYOUT.external("scratch")
    assert read_external_run(out.index).sets == {} and list(out.headline.iterdir()) == []
    folder = import_set(trained_project, "aptos2019", aptos)
    write_params(trained_project, **TRAINED_OVERRIDES, external={"aptos": folder})
    assert cli.main(["external", "--init", "scratch"]) == 0
    assert out.metrics("aptos").is_file() and out.predictions("aptos").is_file()
    write_params(trained_project, **TRAINED_OVERRIDES, external={})
    assert cli.main(["external", "--init", "scratch"]) == 0
    assert list(out.headline.iterdir()) == [] and not out.predictions("aptos").exists()


@pytest.mark.slow  # grades the sets (seconds each on 2 shared cores)
def test_a_skipped_arm_writes_each_set_empty_with_its_reason(trained_project, capsys):
    folder = import_set(trained_project, "aptos2019", aptos)
    write_params(trained_project, **TRAINED_OVERRIDES, external={"aptos": folder})
    assert cli.main(["external", "--init", "pretrained"]) == 0  # skipped offline (no ImageNet weights)
    assert "pretrained arm skipped" in capsys.readouterr().err
    out = LAYOUT.external("pretrained")
    run = read_external_run(out.index)
    assert run.sets == {} and run.skipped is not None and run.skipped.reason
    assert json.loads(out.metrics("aptos").read_text()) == {}
    assert screening(out.screening("aptos").screening) == {}
    assert len(out.predictions("aptos").read_text().splitlines()) == 1  # the header only


def test_set_names_follow_the_rule(trained_project, capsys):
    write_params(trained_project, **TRAINED_OVERRIDES, external={"a.b": "data/x"})
    assert cli.main(["external", "--init", "scratch"]) == 2
    assert "`external` has the set name 'a.b'" in capsys.readouterr().err
    assert yaml.safe_load(Path("params.yaml").read_text())["external"] == {"a.b": "data/x"}


@pytest.mark.slow  # grades the sets (seconds each on 2 shared cores)
def test_the_report_shows_every_set_beside_the_internal_test_set(validated, capsys):
    assert cli.main(["external", "--init", "scratch"]) == 0
    assert cli.main(["external", "--init", "pretrained"]) == 0
    assert cli.main(["report", "--metrics", "metrics", "--out", "plots"]) == 0
    text = Path("plots/report.md").read_text()
    section = text[text.index("## External validation") :]
    rows = [line for line in section.splitlines() if line.startswith("| scratch |")]
    assert [row.split(" | ")[1] for row in rows] == [
        "internal test (grade >= 2)",
        "aptos (grade >= 2)",
        "messidor2 (grade >= 2)",
        "messidor2 (Gulshan: grade >= 2 or referable DME)",
    ]
    auc = screening(LAYOUT.external("scratch").screening("aptos").screening)["image"]["auc_referable"]
    internal = screening(LAYOUT.arm("scratch").screening_files.screening)["image"]["auc_referable"]
    assert f"({auc['value'] - internal['value']:+.3f})" in rows[1]  # the change from internal
    imageability = screening(LAYOUT.external("scratch").screening("aptos").screening)["gradability"]["image"]
    assert f"{imageability['imageability']['value']:.3f}" in rows[1]  # the set's imageability, judged
    assert "- messidor2's own quality labels against the quality assessor: found ungradable" in section
    assert "aptos's own quality labels" not in section  # APTOS says nothing of quality
    assert "0.853 (Messidor-2)" in section and "![ROC of referable DR per set](roc_external.png)" in section
    assert Path("plots/roc_external.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # grades the sets (seconds each on 2 shared cores)
def test_without_sets_the_report_says_how_to_add_one_in_one_line(trained_project, capsys):
    for arm in ("scratch", "pretrained"):
        assert cli.main(["external", "--init", arm]) == 0
    assert cli.main(["report", "--metrics", "metrics", "--out", "plots"]) == 0
    text = Path("plots/report.md").read_text()
    section = text[text.index("## External validation") :].split("\n## ")[0].strip().splitlines()
    assert section[2:] == [NO_EXTERNAL]
    assert cli.main(["report", "--metrics", "metrics", "--out", "plots"]) == 0  # its figure is ours again


@pytest.mark.slow  # grades the sets (seconds each on 2 shared cores)
def test_compare_shows_external_auc_per_experiment_and_across_seeds(validated):
    from retinopathy.reporting.comparison import results_table
    from retinopathy.reporting.experiments import seed_groups
    from retinopathy.reporting.results import load_arm
    from test_seeds import experiment

    assert cli.main(["external", "--init", "scratch"]) == 0
    read = load_arm(LAYOUT, "scratch").external  # as compare reads each experiment's files
    auc = screening(LAYOUT.external("scratch").screening("aptos").screening)["image"]["auc_referable"][
        "value"
    ]
    assert list(read) == ["aptos", "messidor2"] and read["aptos"] == auc
    runs = [experiment(name, seed, 0.8) for name, seed in (("a", 0), ("b", 1), ("c", 2))]
    for run, value in zip(runs, (0.70, 0.80, None), strict=True):
        run.arms["scratch"].external = {"messidor2": value}
    assert "| external referable AUC |" in results_table(runs)[0]
    assert "| messidor2 0.700 |" in next(line for line in results_table(runs) if line.startswith("| a |"))
    lines = seeds_table(seed_groups(runs))
    assert lines[0].endswith("| external AUC messidor2 |")
    scratch = next(line for line in lines if "| scratch |" in line)
    assert scratch.endswith(
        f"| {statistics.fmean([0.7, 0.8]):.3f} ± {statistics.stdev([0.7, 0.8]):.3f} (n=2) |"
    )


@pytest.mark.slow  # the whole pipeline under DVC
def test_dvc_repro_with_two_sets_writes_their_metrics(tmp_path):
    import subprocess

    from conftest import subprocess_env
    from test_pipeline import project as make_project
    from test_pipeline import ran, run

    folder = make_project.__wrapped__(tmp_path)  # the tiny DVC project of test_pipeline.py
    sets = {}
    for format, write in (("aptos2019", aptos), ("messidor2", messidor)):
        root = write(tmp_path / "unpacked" / format)
        out = f"data/external/{format}"
        subprocess.run(
            ["retinopathy", "import-external", format, "--root", str(root), "--out", out, "--size", "32"],
            cwd=folder,
            env=subprocess_env(),
            check=True,
            capture_output=True,
        )
        sets[format] = out
    params = yaml.safe_load((folder / "params.yaml").read_text())
    params["external"] = sets
    params["data"]["val_fraction"] = 0.25
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run(folder, "dvc", "repro")
    assert {"external@scratch", "external@pretrained", "report"} <= ran(output)
    shown = run(folder, "dvc", "metrics", "show", stdout_only=True)
    for name in sets:
        assert f"metrics/external/scratch/{name}.json" in shown
    report = (folder / "plots/report.md").read_text()
    assert "| scratch | messidor2 (Gulshan: grade >= 2 or referable DME) |" in report
    assert ran(run(folder, "dvc", "repro")) == {"weights"}  # nothing else changed


def test_the_external_sets_are_no_part_of_a_training_run():
    from conftest import tiny_params
    from retinopathy.engine.checkpoint import training_params

    params = tiny_params()
    other = {**params, "external": {"messidor2": "data/external/messidor2"}}
    # Naming a set to validate on must not make a finished training run another run (no resume, no retrain).
    assert training_params(params) == training_params(other)


def test_a_sets_sources_csv_damaged_after_import_is_named_with_the_fix(tmp_path):
    from retinopathy.core.contract import ImportedSet
    from retinopathy.core.errors import RetinopathyError
    from retinopathy.engine.external import _written_images

    files = ImportedSet(tmp_path)
    with pytest.raises(RetinopathyError, match=r"sources\.csv: not found, but quality\.csv is there; "):
        _written_images(files)
    files.sources.write_text("name,state\na,test\n")
    with pytest.raises(RetinopathyError, match=r"sources\.csv:1: lacks the columns image and status; "):
        _written_images(files)
    files.sources.write_text("image,status\na,test\nb,ungradable\nc,missing\n")
    assert _written_images(files) == ["a", "b"]
