"""Issue 26, hardening round 3: numbers, records and outputs that must stop a command, never pass.

Each test does what the hostile tester did, through the real CLI (``retinopathy.cli.main``
in-process: exit status, the message on stderr, the files on disk), on a tiny project
whose scratch arm is "trained" without training: a ResNet18 of seeded random weights
written as ``best.pt`` with the ``status.json`` and history train would write, then
evaluated, fused and reported by the real stages. The classes:

1. non-finite numbers anywhere in the chain stop the command (a diverged blend, a
   checkpoint with NaN weights, a finite one that overflows, export's agreement check,
   the report's readers);
2. the typed records refuse unknown enum values, damaged nested fields, non-finite
   floats, negative counts and fractional ints, naming the file and the command to rerun;
3. damaged screening JSON, records nested thousands of levels deep and a blend that
   does not fit the network are clear errors, not tracebacks;
4. the outputs of one command change together or not at all (a full disk during
   `fuse`, `evaluate`, `report` or `export`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import make_tiny_project
from retinopathy import cli
from retinopathy.core import config
from retinopathy.core.config import load_params
from retinopathy.core.contract import Layout
from retinopathy.core.records import Skipped, TrainingStatus, write_status
from retinopathy.engine.checkpoint import save_atomic
from retinopathy.engine.store import write_history
from retinopathy.evaluation import screening
from retinopathy.fusion.blend import Blend, BlendRecord
from retinopathy.models.build import NO_DOWNLOAD_ENV, new_model
from retinopathy.models.grader import GraderSpec

FINGERPRINT = "0123456789abcdef"
LAYOUT = Layout()
SCRATCH = LAYOUT.arm("scratch")
SCREENING = SCRATCH.screening_files
FUSE_OUTPUTS = (
    LAYOUT.blend("scratch"),
    LAYOUT.fused_predictions("scratch"),
    LAYOUT.fused_metrics("scratch"),
    LAYOUT.fused("scratch").screening,
    LAYOUT.fused("scratch").roc_image,
    LAYOUT.fused("scratch").roc_patient,
    LAYOUT.fused("scratch").reliability,
)
EVALUATE_OUTPUTS = (
    SCRATCH.metrics,
    SCRATCH.info,
    SCRATCH.confusion_counts,
    SCRATCH.confusion_normalized,
    SCRATCH.predictions,
    SCRATCH.val_predictions,
    SCREENING.screening,
    SCREENING.roc_image,
    SCREENING.roc_patient,
    SCREENING.reliability,
)


def _history(epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": epoch,
            "train_loss": 1.5 - 0.1 * epoch,
            "train_accuracy": 0.5,
            "train_kappa": 0.1,
            "test_loss": 1.4,
            "test_accuracy": 0.5 + 0.05 * epoch,
            "test_kappa": 0.2,
        }
        for epoch in range(1, epochs + 1)
    ]


def _grader_state(scale_head: float | None = None, nan: bool = False) -> dict[str, torch.Tensor]:
    """A ResNet18's seeded random weights; its head scaled by ``scale_head`` (finite, but it overflows)."""
    torch.manual_seed(0)
    state = new_model("resnet18", num_classes=5).state_dict()
    if scale_head is not None:
        state["fc.weight"] = state["fc.weight"].abs() * scale_head
    if nan:
        state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    return state


def write_checkpoint(path: Path, state: dict[str, torch.Tensor], image_size: int = 32) -> None:
    """A best.pt as train writes it (``checkpoint.BestCheckpoint.to_dict``), with the weights ``state``."""
    spec = GraderSpec(
        model="resnet18",
        image_size=image_size,
        normalize="imagenet",
        preprocess="none",
        loss="cross_entropy",
        thresholds=None,
    )
    path.unlink(missing_ok=True)  # a new file: the module's project shares its checkpoint by a hard link
    save_atomic(
        {
            "model": state,
            "spec": spec.to_dict(),
            "epoch": 2,
            "test_accuracy": 0.6,
            "fingerprint": FINGERPRINT,
        },
        path,
    )


def _fake_training(folder: Path) -> None:
    """The files train writes for a trained scratch arm and a skipped pretrained one, without training."""
    params = load_params(folder / "params.yaml")
    write_checkpoint(folder / SCRATCH.best, _grader_state(), params.data.image_size)
    history = _history(2)
    write_history(history, folder / SCRATCH.history, with_val=False)
    write_status(
        folder / SCRATCH.status,
        TrainingStatus(
            model="resnet18",
            init="scratch",
            epochs=2,
            best_epoch=2,
            selection="test",
            select_by="accuracy",
            decoder="pillow",
            resident=False,
            weights="random initialisation",
            fingerprint=FINGERPRINT,
            history=history,
        ),
    )
    pretrained = LAYOUT.arm("pretrained")
    write_status(
        folder / pretrained.status,
        Skipped(model="resnet18", init="pretrained", reason="offline", fix="get the weights"),
    )
    write_history([], folder / pretrained.history, with_val=False)


def run(*argv: str) -> int:
    """``retinopathy <argv>`` in this process, as a user runs it."""
    return cli.main(list(argv))


@pytest.fixture(scope="module")
def _built(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("numbers")
    before, environment = os.getcwd(), dict(os.environ)
    os.environ.update(
        {
            NO_DOWNLOAD_ENV: "1",
            "TORCH_HOME": str(tmp_path_factory.mktemp("torch-home")),
            "DVC_NO_ANALYTICS": "1",
        }
    )
    os.chdir(folder)
    try:
        make_tiny_project(folder, fuse={"epochs": 3})
        _fake_training(folder)
        for command in (
            ["quality"],  # evaluate reads its verdicts, as under dvc repro
            ["evaluate", "--init", "scratch"],
            ["evaluate", "--init", "pretrained"],
            ["fuse", "--init", "scratch"],
            ["fuse", "--init", "pretrained"],
            ["report"],
        ):
            assert run(*command) == 0, command
    finally:
        os.chdir(before)
        os.environ.clear()
        os.environ.update(environment)
    return folder


def _link_or_copy(source: str, target: str) -> None:
    if source.endswith(".pt"):  # 45 MB each: shared, never written in place (see write_checkpoint)
        os.link(source, target)
    else:
        shutil.copy2(source, target)


@pytest.fixture()
def project(_built, tmp_path, monkeypatch) -> Path:
    """A copy of the module's project, the working directory."""
    folder = tmp_path / "project"
    shutil.copytree(_built, folder, copy_function=_link_or_copy)
    monkeypatch.chdir(folder)
    return folder


def contents(paths) -> dict[Path, bytes]:
    return {Path(path): Path(path).read_bytes() for path in paths}


def temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*") if ".tmp" in path.name]


@pytest.mark.slow
def test_the_fixture_is_what_the_stages_wrote(project):
    info = json.loads(SCRATCH.info.read_text())
    assert info["status"] == "trained" and info["selection"] == "test"
    assert json.loads(LAYOUT.fused("scratch").screening.read_text())["fusion"]["method"] == "blend"
    assert "scratch" in LAYOUT.report.read_text()


def rewrite(path: Path, change: Callable[[str], str]) -> None:
    """Damage a text file as a hostile user would: ``change`` its text, in a new file."""
    text = change(path.read_text(encoding="utf-8"))
    path.unlink()
    path.write_text(text, encoding="utf-8")


def rewrite_json(path: Path, change: Callable[[dict], object]) -> None:
    """Damage a JSON file: ``change`` its object in place."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    change(raw)
    path.unlink()
    path.write_text(json.dumps(raw), encoding="utf-8")


def set_params(section: str, **values: object) -> None:
    params = yaml.safe_load(Path("params.yaml").read_text())
    params[section].update(values)
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def refused(capsys, *argv: str) -> str:
    """Run ``retinopathy <argv>``; it must stop with status 2 and its reason on stderr, no traceback."""
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


def photos() -> list[str]:
    """Both eyes of the first test patient."""
    names = Path("data/demo/test_img.csv").read_text().split()[:2]
    assert names[0].endswith("_left") and names[1] == names[0].replace("_left", "_right")
    return [f"data/demo/{name}.jpeg" for name in names]


# ------------------------------------------------------------------ 1. non-finite numbers stop the command


@pytest.mark.slow
def test_a_diverged_blend_is_not_saved_and_the_fuse_stage_says_to_lower_fuse_lr(project, capsys, monkeypatch):
    before = contents(FUSE_OUTPUTS)
    set_params("fuse", lr=1e30)  # Adam's steps are about lr in size: the weights overflow to NaN
    # params.yaml bounds fuse.lr (at most MAX_FUSE_LR) ...
    assert "`fuse.lr` must be >= 0.0 and at most 1.0" in refused(capsys, "fuse", "--init", "scratch")
    # ... and a blend that diverges all the same is never saved: lift the bound to reach it.
    monkeypatch.setattr(config, "MAX_FUSE_LR", 1e31)
    err = refused(capsys, "fuse", "--init", "scratch")
    assert "diverged" in err and "NaN or infinite" in err and "lower fuse.lr" in err
    assert contents(FUSE_OUTPUTS) == before and not temporaries(project)


def _nan_blend() -> None:
    """The project's blend with one NaN weight, as a diverged (or altered) blend file would hold."""
    path = LAYOUT.blend("scratch")
    record = torch.load(path, weights_only=True)
    first = next(iter(record["state"]))
    record["state"][first].view(-1)[0] = float("nan")
    path.unlink()  # shared with the module's project by a hard link
    torch.save(record, path)


@pytest.mark.parametrize(
    "command",
    [
        ("predict", "PHOTOS", "--out", "grades.csv"),
        (
            "predict",
            "PHOTOS",
            "--checkpoint",
            str(SCRATCH.best),
            "--blend",
            str(LAYOUT.blend("scratch")),
            "--out",
            "grades.csv",
        ),
        ("export", "--fused", "--format", "torchscript", "--out", "both.pt"),
    ],
    ids=["predict", "predict-blend", "export-fused"],
)
def test_a_blend_with_nan_weights_is_refused_where_it_is_loaded(project, capsys, command):
    _nan_blend()
    argv = [part for item in command for part in (photos() if item == "PHOTOS" else [item])]
    err = refused(capsys, *argv)
    assert f"{LAYOUT.blend('scratch')}: its weights hold NaN or infinite numbers" in err
    assert not Path("grades.csv").exists() and not Path("both.pt").exists()


def _damaged_checkpoint(kind: str) -> None:
    """models/scratch/best.pt with a NaN weight, or with finite weights whose outputs overflow float32."""
    state = _grader_state(nan=True) if kind == "nan" else _grader_state()
    if kind == "overflow":
        state["fc.weight"] = torch.full_like(state["fc.weight"], 3e38)  # finite; the logits are not
    write_checkpoint(SCRATCH.best, state)


# Each command that reads the arm's network, what it must not have written, and its words.
READERS = {
    "predict": (("predict", "PHOTOS", "--out", "grades.csv"), ("grades.csv",)),
    "evaluate": (("evaluate", "--init", "scratch"), EVALUATE_OUTPUTS),
    "fuse": (("fuse", "--init", "scratch"), FUSE_OUTPUTS),
    "explain": (("explain", "--init", "scratch"), (LAYOUT.explanation("scratch"),)),
    "export": (("export", "--format", "torchscript", "--out", "grader.pt"), ("grader.pt", "grader.pt.md")),
}


def _state_of(paths) -> dict[str, bytes | None]:
    return {str(path): Path(path).read_bytes() if Path(path).exists() else None for path in paths}


@pytest.mark.parametrize("command", list(READERS))
def test_a_checkpoint_with_nan_weights_is_refused_by_every_command_that_loads_it(project, capsys, command):
    argv, outputs = READERS[command]
    before = _state_of(outputs)
    _damaged_checkpoint("nan")
    err = refused(capsys, *[part for item in argv for part in (photos() if item == "PHOTOS" else [item])])
    assert f"{SCRATCH.best}: its weights hold NaN or infinite numbers" in err and "layer1.0.conv1" in err
    assert _state_of(outputs) == before and not temporaries(project)


@pytest.mark.slow
@pytest.mark.parametrize("command", list(READERS))
def test_a_finite_checkpoint_whose_outputs_overflow_grades_nothing(project, capsys, command):
    argv, outputs = READERS[command]
    before = _state_of(outputs)
    _damaged_checkpoint("overflow")
    err = refused(capsys, *[part for item in argv for part in (photos() if item == "PHOTOS" else [item])])
    # export: its agreement check compares NaN with NaN, which `max(d, nan)` used to pass
    assert "NaN or infinite" in err and ("no grade can be read" in err or "cannot be shown to agree" in err)
    assert str(SCRATCH.best) in err or command == "export"
    assert _state_of(outputs) == before and not temporaries(project)


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A change to a JSON object: the key at the dotted ``path`` set to ``value``."""

    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            raw = raw[key]
        raw[last] = value

    return change


def _text(old: str, new: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        assert old in text, f"{old!r} not in the file"
        return text.replace(old, new, 1)

    return change


def _json_literal(key: str, literal: str) -> Callable[[str], str]:
    """A change to JSON text: ``"key": <number>`` made ``"key": <literal>`` (NaN, Infinity, 1e999)."""
    import re

    def change(text: str) -> str:
        new, count = re.subn(rf'("{key}": )[-0-9.eE]+', rf"\g<1>{literal}", text, count=1)
        assert count == 1, f"no number under {key!r}"
        return new

    return change


FUSED = LAYOUT.fused("scratch")
# What the report reads, damaged the ways the hostile tester did: (file, change, words in the error).
REPORT_INPUTS = {
    "metrics-nan": (SCRATCH.metrics, _json_literal("kappa", "NaN"), "NaN, which is no number JSON allows"),
    "metrics-infinity": (SCRATCH.metrics, _json_literal("acc", "Infinity"), "Infinity"),
    "metrics-overflow": (SCRATCH.metrics, _json_literal("acc", "1e999"), "'acc' is inf: not a finite number"),
    "metrics-fractional-epoch": (SCRATCH.metrics, _json_literal("epoch", "2.5"), "not an epoch"),
    "metrics-negative-epoch": (SCRATCH.metrics, _json_literal("epoch", "-1"), "not an epoch"),
    "metrics-kappa-range": (SCRATCH.metrics, _json_literal("kappa", "7"), "not a kappa in [-1, 1]"),
    "fused-metrics-nan": (LAYOUT.fused_metrics("scratch"), _json_literal("kappa", "NaN"), "NaN"),
    "screening-negative-count": (SCREENING.screening, _json_literal("n", "-3"), "'image.n' is -3"),
    "screening-infinite-figure": (SCREENING.screening, _json_literal("value", "Infinity"), "Infinity"),
    "fused-screening-negative-count": (FUSED.screening, _json_literal("fused", "-1"), "'fusion.fused' is -1"),
    "fused-screening-fractional-count": (
        FUSED.screening,
        _json_literal("images", "12.5"),
        "'fusion.images' is 12.5, not of type int",
    ),
    "info-negative-count": (SCRATCH.info, _json_literal("test_size", "-5"), "'test_size' is -5"),
    "info-fractional-epochs": (
        SCRATCH.info,
        _json_literal("epochs", "2.5"),
        "'epochs' is 2.5, not of type int",
    ),
    "history-fractional-epoch": (SCRATCH.history, _text("\n1,", "\n1.5,"), "the epochs must be 1, 2"),
    "history-nan": (SCRATCH.history, _text("\n2,1.300000", "\n2,nan"), "empty, NaN or infinite"),
    "confusion-negative-count": (SCRATCH.confusion_counts, _text("\n0,", "\n0,-2"), "negative entries"),
    "roc-infinite": (SCREENING.roc_image, _text("\n0.", "\ninf,0."), "empty, NaN or infinite"),
}


@pytest.mark.parametrize("damage", list(REPORT_INPUTS))
def test_the_report_refuses_non_finite_fractional_or_negative_numbers_naming_the_file(
    project, capsys, damage
):
    path, change, words = REPORT_INPUTS[damage]
    before = contents(project.joinpath("plots").iterdir())
    rewrite(path, change)
    err = refused(capsys, "report")
    assert f"{path}" in err and words in err and "dvc repro" in err
    assert contents(project.joinpath("plots").iterdir()) == before and not temporaries(project)


def test_explain_refuses_a_predictions_file_whose_grades_are_not_grades(project, capsys):
    first = SCRATCH.predictions.read_text().splitlines()[1].split(",")
    first[3] = "nan"  # the first image's predicted grade (int("nan") was a traceback)
    rewrite(SCRATCH.predictions, lambda text: text.replace(text.splitlines()[1], ",".join(first), 1))
    err = refused(capsys, "explain", "--init", "scratch")
    assert f"{SCRATCH.predictions}:2: 'predicted' is not a grade 0-4" in err
    assert not LAYOUT.explanation("scratch").exists()


def test_an_operating_point_that_calls_nobody_referable_is_a_finite_threshold():
    # A small validation split where only "refer nobody" reaches 100% specificity: scikit-learn's
    # threshold is infinite, which JSON cannot hold (evaluate then refused to write it).
    truth, score = np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.2, 0.1])
    threshold = screening.operating_threshold(truth, score, "high_specificity", 1.0)
    assert threshold is not None and np.isfinite(threshold) and not (score >= threshold).any()


# ------------------------------------------------------------------ 2. records: enums, nested fields

# (the command that reads it, the file, the change, the words, the command the message says to run)
RECORDS = {
    "info-selection": (
        ("report",),
        SCRATCH.info,
        _set("selection", "bogus"),
        "'selection' is \"bogus\", not one of validation, test",
        "dvc repro -f evaluate@scratch",
    ),
    "info-select-by": (
        ("report",),
        SCRATCH.info,
        _set("select_by", "loss"),
        "'select_by' is \"loss\", not one of accuracy, kappa",
        "evaluate@scratch",
    ),
    "info-tta": (("report",), SCRATCH.info, _set("tta", "mirror"), "'tta' is \"mirror\"", "evaluate@scratch"),
    "info-model": (
        ("report",),
        SCRATCH.info,
        _set("model", "resnet1000"),
        "'model' is \"resnet1000\"",
        "evaluate@scratch",
    ),
    "info-patients-split": (
        ("report",),
        SCRATCH.info,
        _set("patients.split", "random"),
        "'patients.split' is \"random\", not one of lists, patients",
        "evaluate@scratch",
    ),
    "info-patients-count": (
        ("report",),
        SCRATCH.info,
        lambda raw: raw["patients"]["count"].pop("test"),
        "'patients.count' lacks 'test'",
        "evaluate@scratch",
    ),
    "info-patients-share": (
        ("report",),
        SCRATCH.info,
        _set("patients.test_share", 1.5),
        "'patients.test_share' is 1.5, not a fraction in [0, 1]",
        "evaluate@scratch",
    ),
    "info-patients-pairs": (
        ("report",),
        SCRATCH.info,
        _set("patients.train_pairs.same_grade", "most"),
        "'patients.train_pairs.same_grade' is \"most\"",
        "evaluate@scratch",
    ),
    "info-patients-negative": (
        ("report",),
        SCRATCH.info,
        _set("patients.test_images", -2),
        "'patients.test_images' is -2",
        "evaluate@scratch",
    ),
    "status-selection": (
        ("evaluate", "--init", "scratch"),
        SCRATCH.status,
        _set("selection", "train"),
        "'selection' is \"train\"",
        "dvc repro -f train@scratch",
    ),
    "status-history-row": (
        ("evaluate", "--init", "scratch"),
        SCRATCH.status,
        lambda raw: raw["history"][1].pop("test_kappa"),
        "'history[1]' lacks 'test_kappa'",
        "train@scratch",
    ),
    "status-history-key": (
        ("evaluate", "--init", "scratch"),
        SCRATCH.status,
        _set("history", [{**row, "best": 1} for row in _history(2)]),
        "'history[0]' has the key(s) 'best'",
        "train@scratch",
    ),
    "status-history-negative-loss": (
        ("evaluate", "--init", "scratch"),
        SCRATCH.status,
        lambda raw: raw["history"][0].update(train_loss=-1.0),
        "'history[0].train_loss' is -1.0",
        "train@scratch",
    ),
    "status-history-epochs": (
        ("evaluate", "--init", "scratch"),
        SCRATCH.status,
        lambda raw: raw["history"][1].update(epoch=7),
        "'history[1].epoch' is 7, not 2",
        "train@scratch",
    ),
    "status-epochs": (
        ("evaluate", "--init", "scratch"),
        SCRATCH.status,
        _set("epochs", 0),
        "'epochs' is 0, not at least 1",
        "train@scratch",
    ),
    "summary-patients": (
        ("evaluate", "--init", "scratch"),
        LAYOUT.summary,
        _set("patients.split", "eyes"),
        "'patients.split' is \"eyes\"",
        "dvc repro -f prepare",
    ),
    "summary-splits": (
        ("evaluate", "--init", "scratch"),
        LAYOUT.summary,
        lambda raw: raw["splits"].update(holdout=raw["splits"]["test"]),
        "'splits' has the key(s) 'holdout'",
        "dvc repro -f prepare",
    ),
    "screening-figure": (
        ("report",),
        SCREENING.screening,
        _set("image.kappa", {"value": 0.5}),
        "the keys 'image.kappa.low', 'image.kappa.high', 'image.kappa.undefined' are missing",
        "dvc repro evaluate",
    ),
    "screening-interval": (
        ("report",),
        SCREENING.screening,
        _set("patient.accuracy.high", None),
        "'low' and 'high' must both be numbers or both be null",
        "dvc repro evaluate",
    ),
    "screening-count-type": (
        ("report",),
        SCREENING.screening,
        _set("image.n", "many"),
        "'image.n' is \"many\", not of type int",
        "dvc repro evaluate",
    ),
    "screening-bootstrap": (
        ("report",),
        SCREENING.screening,
        _set("bootstrap", []),
        "bootstrap is not a JSON object",
        "dvc repro evaluate",
    ),
    "screening-operating-points": (
        ("report",),
        SCREENING.screening,
        _set("operating_points", {"high_sensitivity": 1}),
        "the keys 'operating_points.high_specificity'",
        "dvc repro evaluate",
    ),
    "fused-screening-method": (
        ("report",),
        FUSED.screening,
        _set("fusion.method", "magic"),
        "'fusion.method' is \"magic\", not one of none, blend",
        "dvc repro fuse",
    ),
    "fused-screening-facts": (
        ("report",),
        FUSED.screening,
        lambda raw: raw.pop("fusion"),
        "the key 'fusion' is missing",
        "dvc repro fuse",
    ),
}


@pytest.mark.parametrize("damage", list(RECORDS))
def test_a_record_s_unknown_enum_value_or_damaged_nested_field_is_refused_naming_it(project, capsys, damage):
    command, path, change, words, fix = RECORDS[damage]
    rewrite_json(path, change)
    err = refused(capsys, *command)
    assert err.startswith(f"error: {path}: ") and words in err and fix in err, err


def test_a_record_nested_thousands_of_levels_deep_is_a_clear_error(project, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    for path, command in (
        (SCRATCH.info, ("report",)),
        (SCREENING.screening, ("report",)),
        (LAYOUT.summary, ("evaluate", "--init", "scratch")),
        (SCRATCH.status, ("evaluate", "--init", "scratch")),
    ):
        original = path.read_text()
        rewrite(
            path,
            _text('"version": 1', f'"version": 1, "deep": {deep}')
            if '"version"' in original
            else _text("{", f'{{"deep": {deep},'),
        )
        err = refused(capsys, *command)
        assert err.startswith(f"error: {path}: ") and "nested too deeply" in err
        path.unlink()
        path.write_text(original)


# ------------------------------------------------------------------ 3. a blend that does not fit: an error


def _foreign_blend(path: Path, inputs: str = "features", size: int = 5) -> None:
    """A blend of this checkpoint's run learned on ``size`` numbers per eye (another network's width)."""
    model = Blend(size, 0, 5, torch.zeros(size), torch.ones(size))
    path.unlink(missing_ok=True)
    BlendRecord(
        "blend",
        inputs,
        "cross_entropy",
        None,
        size,
        0,
        FINGERPRINT,
        1,
        "learned elsewhere",
        8,
        0,
        {key: value.clone() for key, value in model.state_dict().items()},
    ).save(path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("inputs", "size", "words"),
    [
        ("features", 5, "the blend reads 5 features per eye, but this network gives 512"),
        ("scores", 512, "the blend reads 512 scores per eye, but this network gives 5"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [
        ("predict", "PHOTOS", "--out", "grades.csv"),
        (
            "predict",
            "PHOTOS",
            "--checkpoint",
            str(SCRATCH.best),
            "--blend",
            str(LAYOUT.blend("scratch")),
            "--out",
            "grades.csv",
        ),
        ("export", "--fused", "--format", "torchscript", "--out", "both.pt"),
    ],
    ids=["predict", "predict-blend", "export-fused"],
)
def test_a_blend_learned_on_another_width_is_refused_naming_it(project, capsys, command, inputs, size, words):
    _foreign_blend(LAYOUT.blend("scratch"), inputs, size)
    err = refused(capsys, *[part for item in command for part in (photos() if item == "PHOTOS" else [item])])
    assert err.startswith(f"error: {LAYOUT.blend('scratch')}: {words}") and "fuse@scratch" in err
    assert not Path("grades.csv").exists() and not Path("both.pt").exists()


def test_a_blend_with_an_unknown_setting_is_refused_at_load(project, capsys):
    path = LAYOUT.blend("scratch")
    record = torch.load(path, weights_only=True)
    record["inputs"] = "mirror"  # read as "scores" before: any value but "features" was
    path.unlink()
    torch.save(record, path)
    err = refused(capsys, "predict", *photos(), "--out", "grades.csv")
    assert f"{path}: damaged: 'inputs' is \"mirror\", not one of features, scores" in err


# ------------------------------------------------------------------ 4. one command's outputs change together


def fail_on(monkeypatch, name: str, call: int) -> list:
    """Make the ``call``-th ``os.<name>`` fail as a full disk does; returns the calls seen."""
    real, calls = getattr(os, name), []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize(("name", "call"), [("replace", 1), ("replace", 5), ("fsync", 4)])
def test_a_full_disk_during_fuse_leaves_every_output_as_it_was(project, capsys, monkeypatch, name, call):
    before = contents(FUSE_OUTPUTS)
    set_params("fuse", seed=1, epochs=4)  # another blend: every output would change
    real = getattr(os, name)
    fail_on(monkeypatch, name, call)
    err = refused(capsys, "fuse", "--init", "scratch")
    assert "No space left on device" in err and "free some space" in err
    assert contents(FUSE_OUTPUTS) == before and not temporaries(project)
    monkeypatch.setattr(os, name, real)  # the same command with room on the disk changes them all
    assert run("fuse", "--init", "scratch") == 0
    after = contents(FUSE_OUTPUTS)
    changed = (LAYOUT.blend("scratch"), LAYOUT.fused_metrics("scratch"), LAYOUT.fused_predictions("scratch"))
    assert all(after[path] != before[path] for path in changed)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "call"), [("replace", 6), ("fsync", 10)])
def test_a_full_disk_during_evaluate_leaves_every_output_as_it_was(project, capsys, monkeypatch, name, call):
    before = contents(EVALUATE_OUTPUTS)
    state = _grader_state()
    state["fc.bias"][2] += 50.0  # every image graded 2: the metrics, tables and predictions would change
    write_checkpoint(SCRATCH.best, state)
    fail_on(monkeypatch, name, call)
    err = refused(capsys, "evaluate", "--init", "scratch")
    assert "No space left on device" in err
    assert contents(EVALUATE_OUTPUTS) == before and not temporaries(project)


@pytest.mark.slow
def test_a_failed_rename_during_report_puts_back_the_figures_already_replaced(project, capsys, monkeypatch):
    before = contents(project.joinpath("plots").iterdir())
    rewrite_json(SCRATCH.metrics, _set("acc", 0.125))  # a valid change: report.md would change
    calls = fail_on(monkeypatch, "replace", 3)
    err = refused(capsys, "report")
    assert "No space left on device" in err and "and so are the other outputs of the command" in err
    assert len(calls) > 3  # the two files already replaced were put back
    assert contents(project.joinpath("plots").iterdir()) == before and not temporaries(project)


@pytest.mark.slow
def test_an_export_s_model_and_card_are_written_together(project, capsys, monkeypatch):
    out, card = Path("grader.pt"), Path("grader.pt.md")
    fail_on(monkeypatch, "replace", 2)  # the card, after the model
    refused(capsys, "export", "--format", "torchscript", "--out", str(out))
    assert not out.exists() and not card.exists() and not temporaries(project)  # the new model removed again
    monkeypatch.undo()
    monkeypatch.chdir(project)
    assert run("export", "--format", "torchscript", "--out", str(out)) == 0
    before = contents([out, card])
    state = _grader_state()
    state["fc.bias"][1] += 1.0
    write_checkpoint(SCRATCH.best, state)
    fail_on(monkeypatch, "replace", 2)
    refused(capsys, "export", "--format", "torchscript", "--out", str(out))
    assert contents([out, card]) == before and not temporaries(project)
