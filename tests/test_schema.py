"""The one typed layer (core/schema.py): params, records, the manifest and the screening JSON read alike."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import yaml

from conftest import REPO, tiny_params
from retinopathy import cli
from retinopathy.core.config import load_params
from retinopathy.core.contract import Layout
from retinopathy.core.records import (
    TrainingStatus,
    check_screening,
    read_json_object,
    read_working_tree,
    screening_data,
)
from retinopathy.core.schema import Between, Invalid, Keys, OneOf, PerModel, Say, parse
from retinopathy.evaluation import screening
from retinopathy.evaluation.screening_files import write_screening
from retinopathy.models.manifest import RandomInit, describe_scratch, read_manifest, write_manifest
from retinopathy.pipeline.codedeps import PACKAGE, imported_modules
from test_report import screening_split


def test_core_imports_nothing_above_it():
    """core/ is the ground floor: params validation takes the model names from core/registry.py."""
    for path in sorted((PACKAGE / "core").glob("*.py")):
        above = sorted(name for name in imported_modules(path) if not name.startswith("retinopathy.core"))
        assert not above, f"{path.relative_to(PACKAGE)} imports {above}"


@dataclass(frozen=True)
class Part:
    name: Annotated[str, OneOf(("left", "right"))]
    share: Annotated[float, Between(0, 1)]
    counts: Annotated[dict[str, int], Keys(("a", "b"))]
    epochs: PerModel[Annotated[int, Between(1, 10)]]
    words: Annotated[str, Say("a word, as in the docs")] = "x"


GOOD = {"name": "left", "share": 0.5, "counts": {"a": 1, "b": 2}, "epochs": 3}


@pytest.mark.parametrize(
    ("change", "record_words", "params_key", "params_words"),
    [
        (
            {"name": "up"},
            "'name' is \"up\", not one of left, right",
            "name",
            "must be one of left, right; got 'up'",
        ),
        (
            {"share": 1.5},
            "'share' is 1.5, not a fraction in [0, 1]",
            "share",
            "must be >= 0 and at most 1, got 1.5",
        ),
        ({"share": True}, "'share' is true, not of type float", "share", "must be a number, got True"),
        (
            {"counts": {"a": 1}},
            "'counts' lacks 'b'",
            "counts",
            "must be a mapping of exactly a, b, got {'a': 1}",
        ),
        ({"counts": {"a": 1, "b": -2}}, "'counts.b' is -2, but it is a count", "counts.b", ""),
        (
            {"epochs": 0},
            "'epochs' is 0, not in [1, 10]",
            "epochs",
            "must be an integer >= 1 and at most 10, got 0",
        ),
        (
            {"epochs": {"resnet99": 2}},
            "'epochs.resnet99' is not a model's name",
            "epochs.resnet99",
            "is not a",
        ),
        ({"epochs": {"default": 11}}, "'epochs.default' is 11", "epochs.default", "must be an integer >= 1"),
        ({"words": 5}, "'words' is 5, not of type str", "words", "must be a word, as in the docs, got 5"),
        ({"extra": 1}, "it has the key(s) 'extra', which a Part does not", "extra", "is not a known key"),
        ({"name": None}, "'name' is null, not of type str", "name", "must be one of left, right; got None"),
    ],
)
def test_one_reader_says_what_is_wrong_in_the_words_of_records_and_of_params(
    change, record_words, params_key, params_words
):
    raw = {**GOOD, **change}
    with pytest.raises(Invalid) as written_by_us:
        parse(Part, raw)
    assert record_words in str(written_by_us.value)
    if params_key == "counts.b":  # by hand, an int is no count: only its declared bounds hold
        assert parse(Part, raw, by_hand=True).counts == {"a": 1, "b": -2}
        return
    with pytest.raises(Invalid) as by_hand:
        parse(Part, raw, by_hand=True)
    assert by_hand.value.key == params_key and by_hand.value.said.startswith(params_words)


def test_a_file_written_by_hand_gives_floats_and_one_written_by_us_keeps_its_numbers():
    assert parse(Part, {**GOOD, "share": "5e-1"}, by_hand=True).share == 0.5
    assert isinstance(parse(Part, {**GOOD, "share": 1}, by_hand=True).share, float)
    assert isinstance(parse(Part, {**GOOD, "share": 1}).share, int)  # written again, the same bytes
    with pytest.raises(Invalid, match="not of type float"):
        parse(Part, {**GOOD, "share": "5e-1"})


def test_equal_bounds_written_differently_keep_their_own_words():
    """typing caches Annotated[float, mark] by equal marks: Between(0, 1) must not stand in for
    Between(0.0, 1.0), whose params message says "at most 1.0" (as params.yaml's fuse.weight_decay)."""

    @dataclass(frozen=True)
    class Loose:
        a: Annotated[float, Between(0, 1)]

    @dataclass(frozen=True)
    class Written:
        a: Annotated[float, Between(0.0, 1.0)]

    parse(Loose, {"a": 0.5})
    with pytest.raises(Invalid) as error:
        parse(Written, {"a": 2}, by_hand=True)
    assert error.value.said == "must be >= 0.0 and at most 1.0, got 2"


def _params(tmp_path: Path, **sections: dict) -> Path:
    raw = tiny_params()
    for section, values in sections.items():
        raw[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        (
            {"data": {"num_workers": "many"}},
            "`data.num_workers` must be an integer >= 0 and at most 1,024 (or auto)",
        ),
        (
            {"train": {"weights": {"default": "imagenet", "resnet50": ""}}},
            "`train.weights.resnet50` must be `imagenet` or the path of a .pth/.pt file",
        ),
        ({"train": {"nesterov": True, "momentum": 0}}, "`train.nesterov` needs train.momentum > 0"),
        (
            {"train": {"epochs": {"resnet50": 5}}},
            "`train.epochs` has no value for resnet18 (it names resnet50)",
        ),
        (
            {"augment": {"scale": [0.5, float("nan")]}},
            "`augment.scale` must be null or [min, max] with 0 < min",
        ),
    ],
)
def test_a_bad_param_stops_the_command_naming_the_file_and_key(tmp_path, capsys, sections, words):
    path = _params(tmp_path, **sections)
    before = path.read_bytes()
    assert cli.main(["prepare", "--params", str(path), "--out", str(tmp_path / "prepared")]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: {words}" in err and "Traceback" not in err
    assert path.read_bytes() == before and not (tmp_path / "prepared").exists()


def test_every_float_param_holds_a_float(tmp_path):
    """`val_fraction: 0` (an int in YAML) is read as 0.0, as every other float key always was."""
    params = load_params(_params(tmp_path, data={"val_fraction": 0}, train={"lr": 1}))
    assert isinstance(params.data.val_fraction, float) and isinstance(params.train.lr, float)
    assert params.to_dict()["data"]["val_fraction"] == 0.0


def test_the_weights_manifest_is_a_record_whose_file_keeps_its_bytes(tmp_path):
    path = tmp_path / "scratch.json"
    manifest = describe_scratch("resnet18", 0, False)
    write_manifest(path, manifest)
    assert path.read_text() == (
        "{\n"
        '  "arm": "scratch",\n'
        '  "available": true,\n'
        '  "model": "resnet18",\n'
        '  "source": "random",\n'
        '  "description": "random initialisation (Kaiming normal, torch seed 0)"\n'
        "}\n"
    )
    assert read_manifest(path) == manifest and isinstance(manifest, RandomInit)


def test_train_refuses_a_manifest_whose_words_are_not_text(tmp_path, capsys, monkeypatch):
    """The reader before this one let `true` pass for text (it checked `str | bool`)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    path = Layout().manifest("scratch")
    path.parent.mkdir(parents=True)
    write_manifest(path, dataclasses.replace(describe_scratch("resnet18", 0, False), description=True))
    assert cli.main(["train", "--init", "scratch"]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: 'description' is true, not of type str; run `dvc repro weights`" in err
    assert not Layout().arm("scratch").status.exists()


@pytest.mark.parametrize("val", [False, True])
def test_the_screening_json_reads_back_as_its_record_and_writes_again_to_the_same_bytes(tmp_path, val):
    test = screening_split(60, 1)
    targets = {"high_sensitivity": 0.9, "high_specificity": 0.9}
    record = screening.record(test, screening_split(40, 2) if val else None, targets, 20, 0, True)
    files = Layout(metrics=tmp_path).arm("scratch").screening_files
    write_screening(files, record, test, probabilities=True)
    text = files.screening.read_text()
    # Without a validation split the figures at the operating points are left out, as before.
    assert ('"high_sensitivity_sensitivity"' in text) == val
    read = check_screening(files.screening, read_json_object(files.screening, read_working_tree, "", ""), "")
    assert json.dumps(screening_data(read), indent=2) + "\n" == text
    assert read.patient.n == len(screening.per_patient(test)) and read.image.n == 60


def test_a_status_whose_history_disagrees_with_its_epochs_is_never_written():
    row = {
        "epoch": 1,
        "train_loss": 1.0,
        "train_accuracy": 0.5,
        "train_kappa": 0.0,
        "test_loss": 1.0,
        "test_accuracy": 0.5,
        "test_kappa": 0.0,
    }
    fields = dict(
        model="resnet18",
        init="scratch",
        best_epoch=1,
        selection="test",
        select_by="accuracy",
        decoder="pillow",
        resident=False,
        weights="random",
        fingerprint="0123456789abcdef",
        history=[row],
    )
    assert TrainingStatus(epochs=1, **fields).epochs == 1
    with pytest.raises(Invalid, match="it says 2 epochs, the best 1, but its history has 1 rows"):
        TrainingStatus(epochs=2, **fields)
