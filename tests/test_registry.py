"""The architecture registry: every record builds, its parts exist, per-model params resolve."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm
from torch import nn

from conftest import REPO, make_tiny_project, tiny_params
from retinopathy.core.config import load_params, parse_params
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.registry import DEFAULT, MODELS, OWN_MODELS, REGISTRY, architecture, for_model, title
from retinopathy.models import build
from retinopathy.models.gradcam import MIN_CELLS, grad_cam, target_layer
from retinopathy.models.grader import Grader, GraderSpec

SIDE = 64  # small enough for every architecture on a CPU, large enough for its deepest maps to exist


def spec(model: str, loss: str = "cross_entropy") -> GraderSpec:
    return GraderSpec(
        model=model, image_size=None, normalize="imagenet", preprocess="none", loss=loss, thresholds=None
    )


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def net(model) -> nn.Module:
    torch.manual_seed(0)
    return build.new_model(model, num_classes=5).eval()


def test_the_records_are_the_models_params_yaml_offers():
    comment = re.search(r"^model: \w+ +# (.*)$", (REPO / "params.yaml").read_text(), re.M)
    assert comment and comment[1].startswith(" | ".join(MODELS) + " ("), "params.yaml's `model` comment"
    assert MODELS[:2] == ("resnet18", "resnet50") and set(OWN_MODELS) == {"resnet18", "resnet50"}
    with pytest.raises(RetinopathyError, match=f"unknown model 'vgg16'; choose one of: {', '.join(MODELS)}"):
        architecture("vgg16")
    assert title("convnext_tiny") == "ConvNeXt-Tiny" and title("resnet18") == "ResNet18"
    assert title("an_old_model") == "an_old_model"


# A quick check of CONTRIBUTING's recipe (tests/test_add_architecture.py): never slow-marked.
def test_every_model_builds_for_both_heads_with_the_recorded_parts(model, net):
    record = architecture(model)
    head = net.get_submodule(record.head)
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (record.features, 5)
    first = net.get_submodule(record.first_conv)
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3
    images = torch.randint(0, 256, (2, 3, SIDE, SIDE), dtype=torch.uint8)
    one = copy.deepcopy(net)  # the regression head: the same network with a 1-way Linear
    build.replace_head(one, model, 1)
    assert build.head_of(one, model).out_features == 1 and one.get_submodule(record.head) is not head
    with torch.no_grad():
        assert Grader(net, spec(model))(images).shape == (2, 5)
        assert Grader(one, spec(model, "regression"))(images).shape == (2, 1)


def test_the_grad_cam_layers_exist_with_the_recorded_strides(model, net):
    record = architecture(model)
    sizes = {}

    def keep_size(path: str):
        def hook(_module, _inputs, output) -> None:
            sizes[path] = tuple(output.shape[-2:])

        return hook

    hooks = [net.get_submodule(path).register_forward_hook(keep_size(path)) for path, _ in record.cam_layers]
    with torch.no_grad():
        net(torch.zeros(1, 3, SIDE, SIDE))
    for hook in hooks:
        hook.remove()
    assert sizes == {path: (SIDE // stride, SIDE // stride) for path, stride in record.cam_layers}
    strides = [stride for _, stride in record.cam_layers]
    assert strides == sorted(strides, reverse=True), "deepest first"
    grader = Grader(net, spec(model))
    name, layer = target_layer(grader, SIDE)
    assert SIDE // dict(record.cam_layers)[name] >= MIN_CELLS and layer is net.get_submodule(name)


# A quick check of CONTRIBUTING's recipe (tests/test_add_architecture.py): never slow-marked.
def test_grad_cam_explains_every_model(model, net):
    grader = Grader(net, spec(model))
    heat = grad_cam(grader, torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), [0, 3])
    assert heat.shape == (2, 32, 32) and heat.min() >= 0 and heat.max() <= 1


def test_the_input_follows_the_first_convolutions_memory_format(model, net):
    grader = Grader(net, spec(model))
    assert grader.input_format() == torch.contiguous_format
    grader = grader.to(memory_format=torch.channels_last)
    assert grader.input_format() == torch.channels_last


@pytest.mark.parametrize("model", ["resnet18", "efficientnet_b0"])  # one of ours, one of torchvision's
def test_a_weights_file_loads_and_only_the_head_is_new(model, tmp_path):
    torch.manual_seed(1)
    source = build.new_model(model)  # 1000 classes, as an ImageNet file has
    path = tmp_path / f"{model}.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    loaded = build.build_model(model, num_classes=5, weights=path)
    head = architecture(model).head
    mine, theirs = loaded.state_dict(), source.state_dict()
    assert mine[f"{head}.weight"].shape == (5, architecture(model).features)
    assert all(torch.equal(value, theirs[key]) for key, value in mine.items() if not key.startswith(head))
    other = MODELS[(MODELS.index(model) + 1) % len(MODELS)]  # another architecture refuses the file
    refused = rf"{model}.pth: (does not fit|has no `{REGISTRY[other].head}.weight`)"
    with pytest.raises(RetinopathyError, match=refused):
        build.build_model(other, weights=path)


def test_the_imagenet_weights_are_torchvisions_for_the_same_layout(model, net):
    weights = build.IMAGENET[model]
    assert weights is tvm.get_weight(architecture(model).imagenet)
    assert re.search(r"-[a-f0-9]+\.pth$", weights.url), "the cached file's hash check needs the hash"
    assert build.imagenet_cache_file(model).name == os.path.basename(weights.url)
    if architecture(model).own:  # written here: the layout must be torchvision's, for its weights
        theirs = tvm.get_model(model, weights=None, num_classes=5).state_dict()
        assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in theirs.items()}


def test_zero_init_residual_only_where_the_record_allows_it():
    for model in MODELS:
        if architecture(model).zero_init_residual:
            net = build.new_model(model, zero_init_residual=True)
            assert any(isinstance(m, nn.BatchNorm2d) and not m.weight.any() for m in net.modules())
        else:
            with pytest.raises(RetinopathyError, match=f"`train.zero_init_residual` is true for {model}"):
                build.new_model(model, zero_init_residual=True)


def shipped_with(model: str, **train) -> dict:
    raw = tiny_params()
    raw["model"] = model
    raw["train"].update(train)
    return raw


def test_a_per_model_mapping_names_the_models_it_overrides_and_the_rest_take_the_default():
    assert for_model(7, "convnext_tiny", "train.epochs") == 7
    mapping = {DEFAULT: 4, "resnet50": 5}
    expected = {model: 5 if model == "resnet50" else 4 for model in MODELS}  # every model, however many
    assert {m: for_model(mapping, m, "train.epochs") for m in MODELS} == expected
    with pytest.raises(
        RetinopathyError,
        match=r"`train.epochs` has no value for convnext_tiny \(it names "
        r"resnet50\); add `default: <value>`",
    ):
        for_model({"resnet50": 5}, "convnext_tiny", "train.epochs")
    params = parse_params(
        shipped_with(
            "efficientnet_b0",
            epochs={DEFAULT: 2, "efficientnet_b0": 3},
            weights={DEFAULT: "imagenet", "resnet18": "r18.pth"},
            zero_init_residual={DEFAULT: False, "resnet50": True},
        )
    )
    train = params.train
    assert (train.epochs_for("efficientnet_b0"), train.epochs_for("resnet50")) == (3, 2)
    assert (train.weights_for("efficientnet_b0"), train.weights_for("resnet18")) == ("imagenet", "r18.pth")
    assert not train.zero_init_for("efficientnet_b0") and train.zero_init_for("resnet50")


@pytest.mark.parametrize(
    ("model", "train", "message"),
    [
        (
            "resnet18",
            {"epochs": {DEFAULT: 2, "resnet_50": 3}},
            r"p.yaml: `train.epochs.resnet_50` is not a model's name; a per-model mapping takes `default`",
        ),
        ("resnet18", {"weights": {"convnext": "a.pth"}}, r"`train.weights.convnext` is not a model's name"),
        ("resnet18", {"zero_init_residual": {}}, r"`train.zero_init_residual` is empty"),
        ("resnet18", {"epochs": {DEFAULT: 0}}, r"`train.epochs.default` must be an integer >= 1"),
        (
            "convnext_tiny",
            {"weights": {"resnet18": "a.pth"}},
            r"`train.weights` has no value for convnext_tiny",
        ),
        (
            "convnext_tiny",
            {"zero_init_residual": True},
            r"`train.zero_init_residual` is true for convnext_tiny, which has no residual blocks",
        ),
        (
            "efficientnet_b0",
            {"zero_init_residual": {DEFAULT: False, "efficientnet_b0": True}},
            r"`train.zero_init_residual.efficientnet_b0` is true for efficientnet_b0.*set it false",
        ),
        (
            "efficientnet_b0",
            {"epochs": {DEFAULT: 4, "efficientnet_b0": 1}, "warmup_epochs": 1},
            r"`train.warmup_epochs` must be fewer than train.epochs \(1 for efficientnet_b0\)",
        ),
    ],
)
def test_bad_per_model_params_name_the_key_and_the_fix(model, train, message):
    with pytest.raises(RetinopathyError, match=message):
        parse_params(shipped_with(model, **train), "p.yaml")


@pytest.mark.slow
def test_efficientnet_trains_evaluates_explains_predicts_and_exports(tmp_path, monkeypatch):
    """The whole way for a torchvision architecture, tiny: 1 epoch of 40 images at 32 px (not ONNX: slow)."""
    from retinopathy.commands import export, predict
    from retinopathy.stages import evaluate, explain, train

    monkeypatch.chdir(tmp_path)
    make_tiny_project(tmp_path, model="efficientnet_b0", train={"epochs": 1, "precise_bn_images": 8})
    params = load_params("params.yaml")
    from retinopathy.core.records import TrainingStatus

    assert isinstance(train.train_arm(params, "scratch"), TrainingStatus)  # trained, not skipped
    evaluate.evaluate_arm(params, "scratch")
    assert json.loads(Path("metrics/scratch.info.json").read_text())["model"] == "efficientnet_b0"
    explain.explain_arm(params, "scratch")
    assert predict.main(["data/demo/test_img.csv", "--out", "graded.csv"]) == 0
    assert export.main(["--arm", "scratch", "--format", "torchscript", "--out", "grader.pt"]) == 0
    assert "efficientnet_b0" in Path("grader.pt.md").read_text()


def test_the_compare_table_has_a_row_per_model_the_experiments_trained():
    from retinopathy.core.records import EvaluationInfo, Skipped
    from retinopathy.reporting.comparison import lab_table
    from retinopathy.reporting.experiments import Experiment
    from retinopathy.reporting.results import Arm

    def experiment(name: str, model: str, acc: float) -> Experiment:
        info = EvaluationInfo(
            model=model,
            init="scratch",
            weights="random",
            data="data/demo",
            synthetic=True,
            selection="test",
            select_by="accuracy",
            selection_rule="highest test accuracy",
            tta="none",
            epochs=1,
            test_size=4,
            decoder="pillow",
            trained_with_decoder="pillow",
            fingerprint="0123456789abcdef",
            numerics={},
            patients={},
        )
        trained = Arm("scratch", info, {"acc": acc, "kappa": 0.5})
        skipped = Arm("pretrained", Skipped(model=model, init="pretrained", reason="offline", fix="-"), {})
        return Experiment(name, name, {"model": model}, {"scratch": trained, "pretrained": skipped})

    assert lab_table([experiment("a", "convnext_tiny", 0.5)]) is None  # one model: nothing side by side
    table = lab_table(
        [
            experiment("a", "convnext_tiny", 0.5),
            experiment("b", "resnet18", 0.25),
            experiment("c", "efficientnet_b0", 0.75),
        ]
    )
    assert table[2:] == [
        "| ResNet18 | 25.0% (0.500) b | not trained |",
        "| EfficientNet-B0 | 75.0% (0.500) c | not trained |",
        "| ConvNeXt-Tiny | 50.0% (0.500) a | not trained |",
    ]
