"""The architectures the project trains: one frozen record each, the only list of them.

params.yaml's ``model`` is a record's name. Everything the code asks of an
architecture is a field here: its title, the function that builds it, its
torchvision ImageNet weights, the final Linear that is swapped for the 5-way
(or 1-way) head, its first convolution, the layers Grad-CAM may explain and
whether ``train.zero_init_residual`` means anything for it. Code outside an
architecture's own module reaches the network's parts through these submodule
paths (``net.get_submodule(record.head)``), never by attribute names.

It is in ``core/``, beside params validation (``core/config.py`` checks ``model`` and
the per-model keys against it), because ``core/`` imports nothing above it; and it
imports no torch (params validation, the report and `compare` read it), so the
builder is named, not imported: ``"<module>.<function>"`` under
``retinopathy.models``, resolved by :mod:`retinopathy.models.build`, which
imports every architecture module (so their code is in the import closure of
the stages that build networks, and in a checkpoint's fingerprint).

Adding an architecture (CONTRIBUTING.md, "Add an architecture"): a module
``models/<family>.py`` with the builder, a record at the end of ``RECORDS`` below,
the name in params.yaml's ``model`` comment, and ``python -m
retinopathy.pipeline.dvcyaml`` to rewrite dvc.yaml's code deps; no other file.
``build.builder_of`` imports the module by the record's name and
``pipeline.codedeps`` counts it as imported by ``models/build.py``.
tests/test_add_architecture.py follows these steps in a copy of the repository.

Per-model params (``train.epochs``, ``train.weights``, ``train.zero_init_residual``)
are one value for every model, or a mapping that names the models it
overrides and, under ``default``, the value of the rest: :func:`for_model`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from retinopathy.core.errors import RetinopathyError

T = TypeVar("T")


@dataclass(frozen=True)
class Architecture:
    """One trainable architecture.

    Attributes:
        name: params.yaml's ``model`` (and a checkpoint spec's): lower case, as torchvision names it.
        title: For tables and figure titles (``ResNet18``).
        builder: ``"<module>.<function>"`` under ``retinopathy.models``; the function takes
            ``(num_classes: int, zero_init_residual: bool)`` and returns a freshly initialised
            ``nn.Module`` with torchvision's state-dict layout for that architecture.
        imagenet: torchvision's ImageNet-1k weights, as ``torchvision.models.get_weight`` names
            them (``"ResNet18_Weights.IMAGENET1K_V1"``): the URL, file name and hash come from there.
        head: Submodule path of the final ``nn.Linear`` (1000 ImageNet classes in the weights file),
            replaced by a ``num_classes``-way one.
        features: Inputs of that Linear: the width of the pooled features.
        initialisation: The builder's random initialisation, in words (the scratch arm's manifest).
        first_conv: Submodule path of the first ``nn.Conv2d`` (its memory format, channels_last or
            not, is the one the input is laid out in).
        cam_layers: Grad-CAM candidates, deepest first: (submodule path, input pixels per cell of
            its feature map). The deepest with enough cells a side is explained.
        zero_init_residual: Whether ``train.zero_init_residual`` means something: the network has
            residual blocks whose last BatchNorm can start at 0 (Goyal et al. 2017). Where it does
            not, ``true`` is refused (params validation) rather than ignored.
        own: Written in this project (models/resnet.py), in torchvision's layout; `bench` times it
            against torchvision's own implementation.
    """

    name: str
    title: str
    builder: str
    imagenet: str
    head: str
    features: int
    initialisation: str
    first_conv: str
    cam_layers: tuple[tuple[str, int], ...]
    zero_init_residual: bool
    own: bool

    @property
    def module(self) -> str:
        """The builder's module under ``retinopathy.models`` (``resnet``)."""
        return self.builder.split(".")[0]

    @property
    def function(self) -> str:
        """The builder's function name in that module (``resnet18``)."""
        return self.builder.split(".")[1]


_RESNET_CAM = (("layer4", 32), ("layer3", 16), ("layer2", 8), ("layer1", 4))

RECORDS = (
    Architecture(
        name="resnet18",
        title="ResNet18",
        builder="resnet.resnet18",
        imagenet="ResNet18_Weights.IMAGENET1K_V1",
        head="fc",
        features=512,
        initialisation="Kaiming normal",
        first_conv="conv1",
        cam_layers=_RESNET_CAM,
        zero_init_residual=True,
        own=True,
    ),
    Architecture(
        name="resnet50",
        title="ResNet50",
        builder="resnet.resnet50",
        imagenet="ResNet50_Weights.IMAGENET1K_V1",
        head="fc",
        features=2048,
        initialisation="Kaiming normal",
        first_conv="conv1",
        cam_layers=_RESNET_CAM,
        zero_init_residual=True,
        own=True,
    ),
    # torchvision's: features.N are the stages (features.8 the final 1x1 convolution to 1280
    # channels), classifier = Dropout, Linear. Its MBConv blocks have no BatchNorm-at-0 option.
    Architecture(
        name="efficientnet_b0",
        title="EfficientNet-B0",
        builder="efficientnet.efficientnet_b0",
        imagenet="EfficientNet_B0_Weights.IMAGENET1K_V1",
        head="classifier.1",
        features=1280,
        initialisation="torchvision's: Kaiming normal convolutions, uniform Linear",
        first_conv="features.0.0",
        cam_layers=(("features.8", 32), ("features.5", 16), ("features.3", 8), ("features.2", 4)),
        zero_init_residual=False,
        own=False,
    ),
    # torchvision's: features.1/3/5/7 are the four stages, features.0/2/4/6 the stem and the
    # downsampling layers; classifier = LayerNorm2d, Flatten, Linear. Its blocks already start
    # close to the identity (layer scale 1e-6) and have no BatchNorm.
    Architecture(
        name="convnext_tiny",
        title="ConvNeXt-Tiny",
        builder="convnext.convnext_tiny",
        imagenet="ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
        head="classifier.2",
        features=768,
        initialisation="torchvision's: truncated normal, std 0.02; layer scale 1e-6",
        first_conv="features.0.0",
        cam_layers=(("features.7", 32), ("features.5", 16), ("features.3", 8), ("features.1", 4)),
        zero_init_residual=False,
        own=False,
    ),
)
REGISTRY: dict[str, Architecture] = {record.name: record for record in RECORDS}
MODELS = tuple(REGISTRY)  # params.yaml's choices for `model`, in this order everywhere
OWN_MODELS = tuple(record.name for record in RECORDS if record.own)  # written here; `bench` times them
if len(MODELS) != len(RECORDS):
    raise ImportError("core/registry.py: two records have the same name")

DEFAULT = "default"  # the key of a per-model mapping that holds the value of the models it does not name


def architecture(name: str) -> Architecture:
    """The record of ``name``.

    Raises:
        RetinopathyError: for an unknown name, listing the choices.
    """
    if name not in REGISTRY:
        raise RetinopathyError(
            f"unknown model {name!r}; choose one of: {', '.join(MODELS)} (params.yaml key `model`)"
        )
    return REGISTRY[name]


def title(name: str) -> str:
    """``resnet18`` -> ``ResNet18``, for titles; an unknown name (an old run's) as it is."""
    return REGISTRY[name].title if name in REGISTRY else name


def unknown_keys(mapping: Mapping[str, Any]) -> list[str]:
    """The keys of a per-model mapping that are neither a model's name nor ``default``."""
    return [key for key in mapping if key != DEFAULT and key not in REGISTRY]


def for_model(value: T | Mapping[str, T], model: str, key: str) -> T:
    """A per-model param's value for ``model``: the value, or the mapping's entry for it, else its default.

    Args:
        value: One value for every model, or ``{default: v, <model>: v, ...}`` (``default`` may be
            left out when every model that is used is named).
        model: The architecture's name.
        key: The params key, for the message (``train.epochs``).

    Raises:
        RetinopathyError: the mapping names neither ``model`` nor a default.
    """
    if not isinstance(value, Mapping):
        return value
    if model in value:
        return value[model]
    if DEFAULT in value:
        return value[DEFAULT]
    raise RetinopathyError(f"`{key}` {no_value(value, model)}")


def no_value(mapping: Mapping[str, Any], model: str) -> str:
    """What is wrong with a per-model mapping that names neither ``model`` nor a default, and the fix."""
    return (
        f"has no value for {model} (it names {', '.join(map(str, mapping))}); "
        f"add `{DEFAULT}: <value>` (for every model it does not name) or "
        f"`{model}: <value>`"
    )
