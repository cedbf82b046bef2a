"""params.yaml validation: unknown keys and bad values are rejected with what is allowed."""

from pathlib import Path

import pytest

from retinopathy.config import load_params, parse_params
from retinopathy.errors import RetinopathyError

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_params_are_valid_and_run_the_demo():
    params = load_params(REPO / "params.yaml")
    assert params.model == "resnet18" and params.data.root == "data/demo"
    assert params.train.epochs_for("resnet18") >= 1 and params.train.weights_for("resnet50") == "imagenet"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"modle": "resnet18"}, r"`modle` is not a known key; allowed here: model, data, demo, train"),
        ({"model": "resnet34"}, r"`model` must be one of resnet18, resnet50; got 'resnet34'"),
        ({"train": {"lr": -1}}, r"`train.lr` must be >= 0.0"),
        ({"train": {"lr": 0}}, r"`train.lr` must be > 0"),
        ({"train": {"batchsize": 4}},
         r"`train.batchsize` is not a known key; allowed here: epochs, batch_size"),
        ({"train": {"device": "gpu"}}, r"`train.device` must be one of auto, cpu, cuda"),
        ({"train": {"epochs": {"resnet18": 3}}}, r"`train.epochs` as a mapping needs exactly the keys"),
        ({"train": {"epochs": 0}}, r"`train.epochs` must be an integer >= 1"),
        ({"train": {"momentum": 1.5}}, r"`train.momentum` must be in \[0.0, 1.0\)"),
        ({"train": {"weights": ""}}, r"`train.weights` must be `imagenet` or the path"),
        ({"data": {"val_fraction": 0.95}}, r"`data.val_fraction` must be in"),
        ({"data": {"image_size": 8}}, r"`data.image_size` must be an integer >= 32"),
        ({"demo": {"train_size": 2}}, r"`demo.train_size` must be an integer >= 5"),
        ({"train": {"compile": "yes"}}, r"`train.compile` must be true or false"),
    ],
)
def test_bad_params_are_rejected_with_what_is_allowed(raw, message):
    with pytest.raises(RetinopathyError, match=message):
        parse_params(raw, "params.yaml")


def test_per_model_mappings_and_yaml_switches():
    params = parse_params({"train": {"epochs": {"resnet18": 10, "resnet50": 5}, "channels_last": False,
                                     "weights": {"resnet18": "a.pth", "resnet50": "imagenet"}}})
    assert params.train.epochs_for("resnet50") == 5 and params.train.channels_last == "off"
    assert params.train.weights_for("resnet18") == "a.pth"


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(RetinopathyError, match="nope.yaml: not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("model: resnet18\ntrain:\n  lr: [\n")
    with pytest.raises(RetinopathyError, match=r"params.yaml:\d+: not valid YAML"):
        load_params(bad)
