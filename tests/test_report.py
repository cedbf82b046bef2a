"""The report stage on tiny hand-written metrics in the train/evaluate stages' formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinopathy.core.contract import Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import (
    EvaluationInfo,
    FusedScreeningRecord,
    FusionFacts,
    Skipped,
    screening_data,
    write_info,
)
from retinopathy.data.labels import Record
from retinopathy.data.patients import leakage
from retinopathy.evaluation import screening
from retinopathy.evaluation.screening_files import write_screening
from retinopathy.stages.report import main, write_report

FIGURES = (
    "accuracy.png",
    "confusion_scratch.png",
    "confusion_pretrained.png",
    "best_accuracy.png",
    "roc.png",
    "reliability.png",
    "roc_external.png",
)
COUNTS = [
    [137, 3, 6, 0, 1],
    [8, 2, 0, 0, 0],
    [9, 1, 19, 1, 0],
    [1, 0, 2, 3, 0],
    [0, 0, 1, 1, 5],
]


def _trained(arm: str, best: float, val: bool = False) -> tuple[dict, EvaluationInfo]:
    """The metrics (numbers) and info (words) evaluate writes for a trained arm."""
    metrics = {
        "acc": best,
        "bacc": 0.61,
        "base": 0.7336,
        "epoch": 3,
        "kappa": 0.72,
        "r0": 0.98,
        "r1": 0.2,
        "r2": 0.7,
        "r3": 0.5,
        "r4": 0.6,
        "train": 0.91,
    }
    info = EvaluationInfo(
        model="resnet18",
        init=arm,
        weights="random initialisation (seed 0)" if arm == "scratch" else "ImageNet",
        data="data/demo",
        synthetic=True,
        selection="validation" if val else "test",
        select_by="accuracy",
        selection_rule="epoch with the highest "
        + ("validation accuracy" if val else "test accuracy (the lab's rule)"),
        tta="none",
        epochs=4,
        test_size=200,
        decoder="libjpeg-turbo",
        trained_with_decoder="libjpeg-turbo",
        fingerprint="0123456789abcdef",
        numerics={"portable": True},
        patients=leakage(
            {
                "train": [Record(f"{n}_{eye}", 0) for n in range(8) for eye in ("left", "right")],
                "val": [],
                "test": [Record(f"{n}_{eye}", 0) for n in range(8, 10) for eye in ("left", "right")],
            },
            "lists",
        ),
    )
    if val:
        metrics["val"] = 0.9
    return metrics, info


SKIPPED = Skipped(
    model="resnet18",
    init="pretrained",
    reason="ImageNet weights for resnet18 are not in the torchvision cache and could not be "
    "downloaded (no network)",
    fix="put resnet18-f37072fd.pth in /root/.cache/torch/hub/checkpoints/",
)


def _confusion_csv(rows: list[list[float]] | None) -> str:
    lines = ["actual,0,1,2,3,4"]
    for grade, row in enumerate(rows or []):
        lines.append(",".join([str(grade), *(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row)]))
    return "\n".join(lines) + "\n"


def write_metrics(root: Path, skip: tuple[str, ...] = (), val: bool = False) -> Path:
    """Write metrics/ as the train and evaluate stages would; return its path."""
    metrics = root / "metrics"
    (metrics / "history").mkdir(parents=True)
    (metrics / "confusion").mkdir()
    header = "epoch,train_loss,train_accuracy,train_kappa,test_loss,test_accuracy,test_kappa"
    header += ",val_loss,val_accuracy,val_kappa" if val else ""
    for arm, best in (("scratch", 0.885), ("pretrained", 0.925)):
        history = [header]
        if arm not in skip:
            for epoch in range(1, 5):
                test = best - 0.02 * (4 - epoch)
                row = [epoch, 1.2 / epoch, 0.6 + 0.08 * epoch, 0.5, 1.0 / epoch, test, 0.6]
                history.append(",".join(map(str, row + ([0.9 / epoch, 0.8, 0.7] if val else []))))
        (metrics / "history" / f"{arm}.csv").write_text("\n".join(history) + "\n")
        numbers, info = ({}, SKIPPED) if arm in skip else _trained(arm, best, val)
        (metrics / f"{arm}.json").write_text(json.dumps(numbers))
        write_info(metrics / f"{arm}.info.json", info)
        normalized = [[c / sum(row) for c in row] for row in COUNTS]
        trained = arm not in skip
        (metrics / "confusion" / f"{arm}_normalized.csv").write_text(
            _confusion_csv(normalized if trained else None)
        )
        (metrics / "confusion" / f"{arm}_counts.csv").write_text(_confusion_csv(COUNTS if trained else None))
        test = screening_split(200, 1 if arm == "scratch" else 2) if trained else None
        record = (
            screening.record(
                test,
                screening_split(60, 3) if val else None,
                {"high_sensitivity": 0.9, "high_specificity": 0.9},
                50,
                0,
                probabilities=True,
            )
            if trained
            else None
        )
        write_screening(Layout(metrics=metrics).arm(arm).screening_files, record, test, probabilities=True)
    return metrics


def write_fused(metrics: Path, arm: str, method: str = "blend") -> FusedScreeningRecord:
    """Write the `fuse` stage's headline and screening files of ``arm``; return the screening record."""
    layout = Layout(metrics=metrics)
    test = screening_split(200, 7)
    single = screening.record(
        test, None, {"high_sensitivity": 0.9, "high_specificity": 0.9}, 50, 0, probabilities=True
    )
    facts = FusionFacts(
        method=method,
        selection="epoch 7 of 60, the lowest validation loss",
        epoch=7,
        images=200,
        fused=196,
        single_no_partner=4,
        val_images=0,
    )
    record = FusedScreeningRecord.of(single, facts)
    write_screening(layout.fused(arm), record, test, probabilities=True)
    layout.fused_metrics(arm).write_text(json.dumps({"acc": 0.777, "bacc": 0.5, "kappa": 0.654}))
    return record


def screening_split(images: int, seed: int) -> screening.Scored:
    """Graded images of patients with two eyes each (names ``<n>_left``, ``<n>_right``), scores that track
    the grade."""
    rng = np.random.default_rng(seed)
    actual = rng.choice(5, size=images, p=[0.55, 0.15, 0.18, 0.07, 0.05])
    logits = rng.normal(size=(images, 5)) + 1.6 * np.eye(5)[actual]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return screening.scored(
        [str(i // 2) for i in range(images)], actual, probabilities.argmax(1), probabilities, regression=False
    )


def _check_figures(out: Path) -> None:
    for name in FIGURES:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            assert 400 <= image.width <= 2000 and 300 <= image.height <= 2000, (name, image.size)


@pytest.mark.slow
def test_both_arms_trained(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path)
    out = tmp_path / "plots"
    write_report(metrics, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURES, "report.md"])
    _check_figures(out)
    report = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in report
    for number in ("88.5%", "92.5%", "91.0%", "61.0%", "0.720", "73.4%", "98.0%", "20.0%"):
        assert number in report
    assert "SYNTHETIC" in report
    assert "highest test accuracy (the lab's rule)" in report
    assert "skipped" not in report
    assert not list(tmp_path.glob(".plots.*")), "temporary folders left behind"


@pytest.mark.slow
def test_the_fused_grades_beside_the_single_eye_ones(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path, skip=("pretrained",))
    record = write_fused(metrics, "scratch")
    (metrics / "fused").mkdir(exist_ok=True)
    (metrics / "fused" / "pretrained.json").write_text("{}")  # a skipped arm: nothing fused
    write_report(metrics, tmp_path / "plots")
    report = (tmp_path / "plots" / "report.md").read_text()
    section = report[report.index("## Both eyes (fusion)") : report.index("## Confusion matrices")]
    alone = json.loads((metrics / "scratch.screening.json").read_text())
    assert "graded with both eyes 196, alone for want of the other eye 4" in section
    assert "epoch 7 of 60, the lowest validation loss" in section
    assert "- pretrained: skipped" in section
    row = next(line for line in section.splitlines() if line.startswith("| referable DR AUC"))
    for level in ("image", "patient"):
        for figures in (alone[level], screening_data(record)[level]):
            entry = figures["auc_referable"]
            assert f"{entry['value']:.3f} [{entry['low']:.3f}-{entry['high']:.3f}]" in row
    header = (
        "| figure | alone, per image | both eyes, per image | alone, per patient | both eyes, per patient |"
    )
    assert header in section


@pytest.mark.slow
def test_a_report_without_the_fuse_stage_says_how_to_run_it(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path)
    write_fused(metrics, "pretrained", method="none")
    write_report(metrics, tmp_path / "plots")
    report = (tmp_path / "plots" / "report.md").read_text()
    assert "- scratch: not graded with both eyes yet; run `dvc repro fuse@scratch`" in report
    assert "`fuse.method` is none: every one of the 200 test images is graded alone" in report


@pytest.mark.slow
def test_pretrained_skipped(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path, skip=("pretrained",))
    out = tmp_path / "plots"
    write_report(metrics, out)
    _check_figures(out)
    report = (out / "report.md").read_text()
    assert SKIPPED.reason in report and SKIPPED.fix in report
    assert "| status | trained | skipped |" in report
    assert "88.5%" in report


@pytest.mark.slow
def test_all_arms_skipped(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path, skip=("scratch", "pretrained"))
    write_report(metrics, tmp_path / "plots")
    _check_figures(tmp_path / "plots")
    assert "| status | skipped | skipped |" in (tmp_path / "plots" / "report.md").read_text()


@pytest.mark.slow
def test_validation_split_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = write_metrics(tmp_path, val=True)
    out = tmp_path / "nested" / "plots"
    assert main(["--metrics", str(metrics), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "validation accuracy (selected epoch)" in report and "90.0%" in report
    assert "lab's rule" not in report
    assert "report.md" in capsys.readouterr().out


@pytest.mark.slow
def test_rerun_replaces_its_own_files_and_links_the_heat_maps(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path)
    out = tmp_path / "plots"
    out.mkdir()
    Image.new("RGB", (4, 4)).save(out / "accuracy.png")  # an earlier report's figure, linked from it
    old = (out / "accuracy.png").read_bytes()
    (out / "report.md").write_text(
        "# ResNet18: diabetic retinopathy grading, scratch vs pretrained\n\n"
        "![accuracy per epoch](accuracy.png)\n"
    )
    (out / "explain_scratch.png").write_bytes(b"the explain stage's")  # not the report's to replace
    write_report(metrics, out)
    assert (out / "accuracy.png").read_bytes() != old
    assert (out / "explain_scratch.png").read_bytes() == b"the explain stage's"
    report = (out / "report.md").read_text()
    assert "](explain_scratch.png)" in report and "run `dvc repro explain@pretrained`" in report
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def _break_normalized(metrics: Path) -> Path:
    path = metrics / "confusion" / "scratch_normalized.csv"
    path.write_text(_confusion_csv(COUNTS))  # counts where fractions belong: rows sum to > 1
    return path


def _drop_column(metrics: Path) -> Path:
    path = metrics / "confusion" / "pretrained_normalized.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    return path


def _drop_history_column(metrics: Path) -> Path:
    path = metrics / "history" / "scratch.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line.split(",", 1)[1] for line in lines) + "\n")
    return path


def _remove_json(metrics: Path) -> Path:
    path = metrics / "pretrained.json"
    path.unlink()
    return path


def _remove_info(metrics: Path) -> Path:
    path = metrics / "scratch.info.json"
    path.unlink()
    return path


def _unversioned_info(metrics: Path) -> Path:
    """An info.json as evaluate wrote it before records were versioned."""
    path = metrics / "scratch.info.json"
    path.write_text(
        json.dumps({key: value for key, value in json.loads(path.read_text()).items() if key != "version"})
    )
    return path


def _words_in_metrics(metrics: Path) -> Path:
    path = metrics / "scratch.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "status": "trained"}))
    return path


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (_break_normalized, "sum to 1"),
        (_drop_column, "4 missing"),
        (_drop_history_column, "epoch missing"),
        (_remove_json, "dvc repro evaluate"),
        (_remove_info, "dvc repro evaluate"),
        (
            _unversioned_info,
            "before records were versioned, but this version of retinopathy reads format "
            "version 1 only; run `dvc repro -f evaluate@scratch`",
        ),
        (_words_in_metrics, "not one of the numbers"),
    ],
)
@pytest.mark.parametrize("existing", [False, True])
def test_errors_name_the_file_and_leave_no_output(tmp_path: Path, damage, words: str, existing: bool) -> None:
    metrics = write_metrics(tmp_path)
    out = tmp_path / "plots"
    if existing:
        out.mkdir()
        (out / "report.md").write_text("previous report\n")
    path = damage(metrics)
    with pytest.raises(RetinopathyError) as caught:
        write_report(metrics, out)
    assert str(path) in str(caught.value) and words in str(caught.value)
    if existing:
        assert [p.name for p in out.iterdir()] == ["report.md"]
        assert (out / "report.md").read_text() == "previous report\n"
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["metrics"] + ["plots"] * existing)


def test_stale_counts_are_rejected(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path)
    counts = metrics / "confusion" / "scratch_counts.csv"
    counts.write_text(_confusion_csv([list(reversed(row)) for row in COUNTS]))
    with pytest.raises(RetinopathyError, match="stale"):
        write_report(metrics, tmp_path / "plots")


def test_percent_instead_of_fraction_is_rejected(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path)
    path = metrics / "scratch.json"
    path.write_text(json.dumps({**_trained("scratch", 0.885)[0], "acc": 88.5}))
    with pytest.raises(RetinopathyError, match="fraction"):
        write_report(metrics, tmp_path / "plots")


@pytest.mark.slow
def test_an_arm_at_the_majority_baseline_is_flagged(tmp_path: Path) -> None:
    metrics = write_metrics(tmp_path)
    numbers = json.loads((metrics / "scratch.json").read_text())
    numbers.update(acc=0.7336, kappa=0.0, bacc=0.2)  # always grade 0
    (metrics / "scratch.json").write_text(json.dumps(numbers))
    out = tmp_path / "plots"
    write_report(metrics, out)
    report = (out / "report.md").read_text()
    assert "**At the majority baseline: scratch.**" in report and "kappa 0.000 <= 0.05" in report
    assert "| beats the majority baseline? | **no: at the baseline** | yes |" in report
    _check_figures(out)


@pytest.mark.parametrize(
    ("numbers", "flagged"),
    [
        ({"acc": 0.7336, "base": 0.7336, "kappa": 0.0, "bacc": 0.2}, True),  # always grade 0
        ({"acc": 0.17, "base": 0.735, "kappa": 0.008, "bacc": 0.21}, True),  # issue 21's ResNet50 epoch 1
        ({"acc": 0.738, "base": 0.735, "kappa": 0.08, "bacc": 0.23}, True),  # grade 0 nearly always
        ({"acc": 0.738, "base": 0.735, "kappa": 0.30, "bacc": 0.40}, False),  # same accuracy, learned grades
        ({"acc": 0.885, "base": 0.735, "kappa": 0.89, "bacc": 0.40}, False),
    ],
)
def test_the_baseline_rule(numbers: dict, flagged: bool) -> None:
    from retinopathy.reporting.results import at_baseline

    assert bool(at_baseline(numbers)) is flagged
