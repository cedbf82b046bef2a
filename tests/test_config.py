"""params.yaml validation: unknown, missing and bad keys are rejected with what is allowed."""

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from retinopathy.core.config import DataParams, DemoParams, Params, TrainParams, load_params, parse_params
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.registry import MODELS

REPO = Path(__file__).resolve().parents[1]
SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())


def shipped_with(changes: dict) -> dict:
    """The shipped params.yaml with ``changes`` laid over it, section by section."""
    raw = copy.deepcopy(SHIPPED)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return raw


def test_the_shipped_params_are_valid_and_run_the_demo():
    params = load_params(REPO / "params.yaml")
    assert params.model == "resnet18" and params.data.root == "data/demo"
    assert params.train.epochs_for("resnet18") >= 1 and params.train.weights_for("resnet50") == "imagenet"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"modle": "resnet18"},
            r"`modle` is not a known key; allowed here: model, data, demo, augment, train, evaluate",
        ),
        ({"model": "resnet34"}, rf"`model` must be one of {', '.join(MODELS)}; got 'resnet34'"),
        ({"train": {"lr": -1}}, r"`train.lr` must be >= 0.0"),
        ({"train": {"lr": 0}}, r"`train.lr` must be > 0"),
        (
            {"train": {"batchsize": 4}},
            r"`train.batchsize` is not a known key; allowed here: epochs, batch_size",
        ),
        ({"train": {"device": "gpu"}}, r"`train.device` must be one of auto, cpu, cuda"),
        (
            {"train": {"epochs": {"resnet34": 3}}},
            r"`train.epochs.resnet34` is not a model's name; .*`default`",
        ),
        (
            {"model": "resnet50", "train": {"epochs": {"resnet18": 3}}},
            r"`train.epochs` has no value for resnet50 .*add `default: <value>`.* or `resnet50: <value>`",
        ),
        ({"train": {"epochs": 0}}, r"`train.epochs` must be an integer >= 1"),
        ({"train": {"momentum": 1.5}}, r"`train.momentum` must be in \[0.0, 1.0\)"),
        ({"train": {"weights": ""}}, r"`train.weights` must be `imagenet` or the path"),
        ({"data": {"val_fraction": 0.95}}, r"`data.val_fraction` must be in"),
        ({"data": {"image_size": 8}}, r"`data.image_size` must be an integer >= 32"),
        ({"demo": {"train_size": 2}}, r"`demo.train_size` must be an even integer >= 10"),
        ({"demo": {"test_size": 13}}, r"`demo.test_size` must be an even integer >= 10 \(two eyes"),
        ({"data": {"split": "patient"}}, r"`data.split` must be one of lists, patients; got .patient."),
        ({"train": {"compile": "yes"}}, r"`train.compile` must be one of auto, on, off"),
        ({"data": {"on_device": "gpu"}}, r"`data.on_device` must be one of auto, on, off"),
        ({"augment": {"rotate": 270}}, r"`augment.rotate` must be in \[0, 180\] degrees"),
        ({"augment": {"scale": [1.15, 0.87]}}, r"`augment.scale` must be null or \[min, max\]"),
        ({"augment": {"scale": 0.9}}, r"`augment.scale` must be null or \[min, max\]"),
        ({"augment": {"flip": "yes"}}, r"`augment.flip` must be true or false"),
        ({"augment": {"translate": 0.6}}, r"`augment.translate` must be in \[0.0, 0.5\)"),
        ({"train": {"schedule": "step"}}, r"`train.schedule` must be one of constant, cosine"),
        (
            {"train": {"warmup_epochs": 4}},
            r"`train.warmup_epochs` must be fewer than train.epochs \(4 for resnet18\)",
        ),
        ({"train": {"nesterov": True, "momentum": 0}}, r"`train.nesterov` needs train.momentum > 0"),
        ({"train": {"loss": "mse"}}, r"`train.loss` must be one of cross_entropy, regression"),
        ({"train": {"class_balance": "oversample"}}, r"`train.class_balance` must be one of none"),
        ({"train": {"select_by": "auc"}}, r"`train.select_by` must be one of accuracy, kappa"),
        (
            {"train": {"tune_thresholds": True, "loss": "regression"}},
            r"`train.tune_thresholds` needs train.loss: regression and data.val_fraction > 0",
        ),
        ({"evaluate": {"tta": "rotations"}}, r"`evaluate.tta` must be one of none, flips"),
        ({"data": {"preprocess": "clahe"}}, r"`data.preprocess` must be one of none, graham"),
        ({"demo": {"variation": "some"}}, r"`demo.variation` must be true or false"),
    ],
)
def test_bad_params_are_rejected_with_what_is_allowed(raw, message):
    with pytest.raises(RetinopathyError, match=message):
        parse_params(shipped_with(raw), "params.yaml")


@pytest.mark.parametrize("key", ["train.lr", "train.momentum", "train.weight_decay", "data.val_fraction"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected(key, value):
    section, name = key.split(".")
    with pytest.raises(RetinopathyError, match=rf"`{key}` must be a finite number"):
        parse_params(shipped_with({section: {name: value}}))


def test_a_missing_key_is_named():
    raw = shipped_with({})
    del raw["train"]["momentum"]
    with pytest.raises(RetinopathyError, match=r"`train.momentum` is missing"):
        parse_params(raw)
    del raw["data"]
    with pytest.raises(RetinopathyError, match=r"`data` is missing"):
        parse_params(raw)


def test_params_yaml_is_the_only_source_of_defaults():
    # No field of the params dataclasses has a default: every value comes from params.yaml,
    # and params.yaml sets every field.
    for cls in (Params, DataParams, DemoParams, TrainParams):
        for field in dataclasses.fields(cls):
            if field.name != "source":
                assert field.default is dataclasses.MISSING, f"{cls.__name__}.{field.name}"
                assert field.default_factory is dataclasses.MISSING, f"{cls.__name__}.{field.name}"
    assert load_params(REPO / "params.yaml").to_dict() == {
        key: value if not isinstance(value, dict) else {k: v for k, v in value.items()}
        for key, value in SHIPPED.items()
    }


def test_per_model_mappings_and_yaml_switches():
    params = parse_params(
        shipped_with(
            {
                "train": {
                    "epochs": {"resnet18": 10, "resnet50": 5},
                    "channels_last": False,
                    "weights": {"resnet18": "a.pth", "resnet50": "imagenet"},
                }
            }
        )
    )
    assert params.train.epochs_for("resnet50") == 5 and params.train.channels_last == "off"
    assert params.train.weights_for("resnet18") == "a.pth"


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(RetinopathyError, match="nope.yaml: not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("model: resnet18\ntrain:\n  lr: [\n")
    with pytest.raises(RetinopathyError, match=r"params.yaml:\d+: not valid YAML"):
        load_params(bad)


def test_zero_init_residual_is_one_switch_or_one_per_model():
    both = parse_params(shipped_with({"train": {"zero_init_residual": True}}), "p.yaml")
    assert both.train.zero_init_for("resnet18") and both.train.zero_init_for("resnet50")
    shipped = parse_params(shipped_with({}), "p.yaml")  # ResNet50 only: ResNet18 learns faster without it
    assert not shipped.train.zero_init_for("resnet18") and shipped.train.zero_init_for("resnet50")
    with pytest.raises(RetinopathyError, match="`train.zero_init_residual` has no value for resnet18"):
        parse_params(shipped_with({"train": {"zero_init_residual": {"resnet50": True}}}), "p.yaml")
    with pytest.raises(RetinopathyError, match=r"train.zero_init_residual.resnet18"):
        parse_params(
            shipped_with({"train": {"zero_init_residual": {"resnet18": "yes", "resnet50": True}}}), "p.yaml"
        )
