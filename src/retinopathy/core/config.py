"""params.yaml -> typed, validated, frozen dataclasses.

Every stage calls :func:`load_params` before it writes anything, so an unknown
key or a bad value stops the pipeline with a message that lists what is
allowed, instead of a KeyError halfway through training.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from retinopathy.core.contract import (
    DATA_SPLITS,
    FUSION_INPUTS,
    FUSION_METHODS,
    LOSSES,
    MAX_IMAGE_SIZE,
    NORMALIZATIONS,
    OPERATING_POINTS,
    PREPROCESSES,
    SCHEDULES,
    SELECT_BY,
    TTAS,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.models.registry import DEFAULT, MODELS, REGISTRY, for_model, unknown_keys

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
SWITCHES = ("auto", "on", "off")
CLASS_BALANCES = ("none", "weighted_loss", "sampler")
# Seeds go to torch.manual_seed, numpy and Python's random; 0 .. 2**32 - 1 is what all
# of them take (numpy's legacy seeding and many samplers refuse more).
MAX_SEED = 2**32 - 1
# A number as `dvc exp run -S key=1e-10` writes it: YAML 1.1 reads a float without a
# dot ("1e-10") as a string, so for keys that hold numbers such a string is accepted.
_NUMBER_TEXT = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


# The dataclasses carry no defaults: params.yaml is the only place a default is
# written, and a key missing from it is an error that names the key.


@dataclass(frozen=True)
class DemoParams:
    """The synthetic demo dataset written by `retinopathy demo-data`."""

    seed: int
    train_size: int
    test_size: int
    image_size: int
    variation: bool  # vary exposure, colour, blur, rotation and field of view between photos


@dataclass(frozen=True)
class DataParams:
    """Where the images are and how they are fed to the network."""

    root: str
    split: str  # lists (the course's, as listed) | patients (re-split keeping each patient on one side)
    image_size: int | None  # None: use the files' own size (512 for the course data)
    val_fraction: float  # > 0: hold out a stratified validation split to pick the epoch
    seed: int  # seeds the validation split (and the re-split of data.split: patients)
    num_workers: int | str  # DataLoader worker processes; "auto" picks from the CPU count
    on_device: str  # auto | on | off: decode each split once into the device's memory
    cache_dir: str | None  # a folder for decoded pixels (e.g. /dev/shm/retinopathy); speed only
    max_pixels: int  # prepare refuses images whose header says more pixels than this
    preprocess: str  # none | graham (local average colour subtracted, on the device)


@dataclass(frozen=True)
class TrainParams:
    """Optimisation hyperparameters and the speed switches of the training loop."""

    # Per-model keys: one value, or {default: v, <model>: v} (registry.for_model).
    epochs: int | dict[str, int]  # one number, or per model: {default: 4, resnet50: 5}
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    seed: int
    precise_bn_images: int  # > 0: re-estimate BatchNorm statistics on this many train images per epoch
    device: str
    weights: str | dict[str, str]  # pretrained arm: "imagenet" or a file; or per model
    normalize: str  # scale to [0,1], then ImageNet mean/std ("none": [0,1] only, as the lab)
    precision: str  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: str  # auto: on for CUDA, off on CPU
    compile: str  # auto | on | off: torch.compile the training step
    portable: str  # auto | on | off: the same CPU bits on any x86-64 with AVX2 (retinopathy.core.portable)
    schedule: str  # constant | cosine, per batch
    warmup_epochs: int  # linear warm-up from 0, per batch
    nesterov: bool
    zero_init_residual: bool | dict[str, bool]  # scratch: residual blocks start as the identity; or per model
    loss: str  # cross_entropy | regression
    tune_thresholds: bool  # regression: tune the grade thresholds on the validation split
    class_balance: str  # none | weighted_loss | sampler
    select_by: str  # accuracy | kappa

    def epochs_for(self, model: str) -> int:
        """The number of epochs for ``model`` (``epochs`` may be one number or a mapping)."""
        return for_model(self.epochs, model, "train.epochs")

    def zero_init_for(self, model: str) -> bool:
        """Whether ``model``'s scratch arm starts every residual block as the identity (may be a mapping)."""
        return for_model(self.zero_init_residual, model, "train.zero_init_residual")

    def weights_for(self, model: str) -> str:
        """The pretrained arm's initial weights for ``model`` (``weights`` may be a mapping)."""
        return for_model(self.weights, model, "train.weights")


@dataclass(frozen=True)
class AugmentParams:
    """Random changes to the training images, on the device; all off is the lab's behaviour."""

    flip: bool
    rotate: float  # degrees, either way
    scale: list[float] | None  # [min, max] share of the area a random resized crop keeps
    translate: float  # fraction of the side
    brightness: float  # relative
    contrast: float  # relative

    @property
    def active(self) -> bool:
        return bool(self.flip or self.rotate or self.scale or self.translate or self.brightness
                    or self.contrast)


@dataclass(frozen=True)
class EvaluateParams:
    """How the test split is scored."""

    tta: str  # none | flips
    operating_points: dict[str, float]  # contract.OPERATING_POINTS -> target sensitivity/specificity
    bootstrap: int  # resamples of patients for the 95% intervals (0: no intervals)
    seed: int  # seeds the bootstrap


@dataclass(frozen=True)
class FuseParams:
    """Grading with both eyes (the `fuse` stage): the blend over [this eye, the other eye, which eye]."""

    method: str  # none | blend
    inputs: str  # features (pooled penultimate layer) | scores (the head's)
    hidden: int  # width of the hidden layer (0: linear)
    epochs: int
    batch_size: int
    lr: float  # Adam
    weight_decay: float
    seed: int


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    model: str
    data: DataParams
    demo: DemoParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    fuse: FuseParams
    source: str = "params.yaml"  # where these came from, for error messages (not a parameter)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as plain data (without ``source``), e.g. for a checkpoint."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def _fail(source: str, key: str, problem: str) -> RetinopathyError:
    return RetinopathyError(f"{source}: `{key}` {problem}")


def _section(cls: type, raw: Any, source: str, prefix: str) -> dict[str, Any]:
    """Check that mapping ``raw`` has exactly the fields of dataclass ``cls``; return it."""
    if not isinstance(raw, dict):
        raise _fail(source, prefix, f"must be a mapping of keys, got {raw!r}")
    allowed = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise _fail(source, key, f"is not a known key; allowed here: {', '.join(allowed)}")
    missing = [name for name in allowed if name not in raw]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise _fail(source, key, "is missing; every key must be set (the project's params.yaml "
                    "lists each one with its default and what it does)")
    return raw


def _int(source: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(source, key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _seed(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise _fail(source, key, f"must be an integer seed in 0..{MAX_SEED} (2**32 - 1), got {value!r}")
    return value


def _numbers_from_text(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the number-typed keys of ``cls`` written as text ("1e-10") read as floats.

    Only keys whose type is a float (or a list of floats) are touched: a string-typed
    key keeps its text, and text that is not a plain number stays text (and is refused).
    """
    out = dict(raw)
    for field in dataclasses.fields(cls):
        value = out.get(field.name)
        if field.type == "float" and isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
            out[field.name] = float(value)
        elif field.type.startswith("list[float]") and isinstance(value, list):
            out[field.name] = [float(v) if isinstance(v, str) and _NUMBER_TEXT.fullmatch(v.strip()) else v
                               for v in value]
    return out


def _cli_type(parse: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, and refuse what is not ``ok`` as "must be <what>"."""
    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    check.__doc__ = f"argparse type: {what}."
    return check


# The command lines' numbers (`--batch-size`, `--workers`, `--size`, `--seed`, `--download-timeout`,
# `--test-fraction`), refused with a usage error rather than a traceback deep in the work.
cli_positive_int = _cli_type(int, lambda value: value >= 1, "a positive integer")
cli_seed = _cli_type(int, lambda value: 0 <= value <= MAX_SEED, f"an integer seed in 0..{MAX_SEED}")
cli_positive_float = _cli_type(float, lambda value: math.isfinite(value) and value > 0, "a positive number")
cli_fraction = _cli_type(float, lambda value: 0 < value < 1, "a number between 0 and 1 (exclusive)")


def _number(source: str, key: str, value: Any, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, key, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise _fail(source, key, f"must be a finite number, got {value!r}")
    if value < low or (high is not None and value >= high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise _fail(source, key, f"must be {bound}, got {value!r}")
    return float(value)


def _choice(source: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(source, key, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _switch(source: str, key: str, value: Any) -> str:
    # YAML reads on/off/true/false as booleans; accept those as the switch values.
    if isinstance(value, bool):
        value = "on" if value else "off"
    return _choice(source, key, value, SWITCHES)


def _demo(raw: Any, source: str) -> DemoParams:
    raw = _section(DemoParams, raw, source, "demo")
    out = DemoParams(**raw)
    _seed(source, "demo.seed", out.seed)
    for key in ("train_size", "test_size"):  # images: two per patient
        value = getattr(out, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 10 or value % 2:
            raise _fail(source, f"demo.{key}", f"must be an even integer >= 10 (two eyes per patient, "
                        f"at least 5 patients), got {value!r}")
    _int(source, "demo.image_size", out.image_size, 32)
    _bool(source, "demo.variation", out.variation)
    return out


def _data(raw: Any, source: str) -> DataParams:
    raw = _numbers_from_text(DataParams, _section(DataParams, raw, source, "data"))
    out = DataParams(**raw)
    if not isinstance(out.root, str) or not out.root:
        raise _fail(source, "data.root", f"must be a folder path, got {out.root!r}")
    _choice(source, "data.split", out.split, DATA_SPLITS)
    if out.image_size is not None:
        _int(source, "data.image_size", out.image_size, 32)
        if out.image_size > MAX_IMAGE_SIZE:
            raise _fail(source, "data.image_size", f"must be at most {MAX_IMAGE_SIZE} (or null), got "
                        f"{out.image_size!r}")
    _number(source, "data.val_fraction", out.val_fraction, 0.0, 0.9)
    _seed(source, "data.seed", out.seed)
    if out.num_workers != "auto":
        _int(source, "data.num_workers", out.num_workers, 0)
    if out.cache_dir is not None and (not isinstance(out.cache_dir, str) or not out.cache_dir):
        raise _fail(source, "data.cache_dir", f"must be a folder path or null, got {out.cache_dir!r}")
    _int(source, "data.max_pixels", out.max_pixels, 32 * 32)
    out = dataclasses.replace(out, on_device=_switch(source, "data.on_device", out.on_device))
    _choice(source, "data.preprocess", out.preprocess, PREPROCESSES)
    return out


def _bool(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, key, f"must be true or false, got {value!r}")
    return value


def _augment(raw: Any, source: str) -> AugmentParams:
    raw = _numbers_from_text(AugmentParams, _section(AugmentParams, raw, source, "augment"))
    out = AugmentParams(**raw)
    _bool(source, "augment.flip", out.flip)
    _number(source, "augment.rotate", out.rotate, 0.0)
    if out.rotate > 180:
        raise _fail(source, "augment.rotate", f"must be in [0, 180] degrees, got {out.rotate!r}")
    if out.scale is not None:
        bad = not isinstance(out.scale, list) or len(out.scale) != 2
        if bad or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in out.scale) \
                or not 0 < out.scale[0] <= out.scale[1] <= 4 or not all(map(math.isfinite, out.scale)):
            raise _fail(source, "augment.scale", "must be null or [min, max] with 0 < min <= max <= 4, "
                        f"e.g. [0.87, 1.15]; got {out.scale!r}")
    _number(source, "augment.translate", out.translate, 0.0, 0.5)
    _number(source, "augment.brightness", out.brightness, 0.0, 1.0)
    _number(source, "augment.contrast", out.contrast, 0.0, 1.0)
    return dataclasses.replace(out, rotate=float(out.rotate), translate=float(out.translate),
                               brightness=float(out.brightness), contrast=float(out.contrast),
                               scale=None if out.scale is None else [float(v) for v in out.scale])


def _evaluate(raw: Any, source: str) -> EvaluateParams:
    out = EvaluateParams(**_section(EvaluateParams, raw, source, "evaluate"))
    _choice(source, "evaluate.tta", out.tta, TTAS)
    points = out.operating_points
    if not isinstance(points, dict) or set(points) != set(OPERATING_POINTS):
        raise _fail(source, "evaluate.operating_points", f"must be a mapping of exactly "
                    f"{', '.join(OPERATING_POINTS)} to a target in (0, 1], e.g. "
                    f"{{high_sensitivity: 0.9, high_specificity: 0.9}}; got {points!r}")
    for point, target in points.items():
        key = f"evaluate.operating_points.{point}"
        if isinstance(target, str) and _NUMBER_TEXT.fullmatch(target.strip()):
            target = float(target)
        if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
            raise _fail(source, key, f"must be a target in (0, 1] (a share: 0.9, not 90), got {target!r}")
    _int(source, "evaluate.bootstrap", out.bootstrap, 0)
    _seed(source, "evaluate.seed", out.seed)
    return dataclasses.replace(out, operating_points={p: float(points[p]) for p in OPERATING_POINTS})


def _fuse(raw: Any, source: str) -> FuseParams:
    out = FuseParams(**_numbers_from_text(FuseParams, _section(FuseParams, raw, source, "fuse")))
    _choice(source, "fuse.method", out.method, FUSION_METHODS)
    _choice(source, "fuse.inputs", out.inputs, FUSION_INPUTS)
    _int(source, "fuse.hidden", out.hidden, 0)
    _int(source, "fuse.epochs", out.epochs, 1)
    _int(source, "fuse.batch_size", out.batch_size, 1)
    _number(source, "fuse.lr", out.lr, 0.0)
    if out.lr == 0:
        raise _fail(source, "fuse.lr", "must be > 0")
    _number(source, "fuse.weight_decay", out.weight_decay, 0.0)
    _seed(source, "fuse.seed", out.seed)
    return dataclasses.replace(out, lr=float(out.lr), weight_decay=float(out.weight_decay))


def _per_model(source: str, key: str, mapping: dict) -> None:
    unknown = unknown_keys(mapping)
    if unknown or not mapping:
        where, problem = (f"{key}.{unknown[0]}", "is not a model's name") if unknown else (key, "is empty")
        raise _fail(source, where, f"{problem}; a per-model mapping takes `{DEFAULT}` (the value of the "
                    f"models it does not name) and model names: {', '.join(MODELS)} (e.g. "
                    f"`{{{DEFAULT}: ..., {MODELS[-1]}: ...}}`); or write one value for every model")


def _train(raw: Any, source: str) -> TrainParams:
    raw = _numbers_from_text(TrainParams, _section(TrainParams, raw, source, "train"))
    out = TrainParams(**raw)
    if isinstance(out.epochs, dict):
        _per_model(source, "train.epochs", out.epochs)
        for model, epochs in out.epochs.items():
            _int(source, f"train.epochs.{model}", epochs, 1)
    else:
        _int(source, "train.epochs", out.epochs, 1)
    _int(source, "train.batch_size", out.batch_size, 1)
    _number(source, "train.lr", out.lr, 0.0)
    if out.lr == 0:
        raise _fail(source, "train.lr", "must be > 0")
    _number(source, "train.momentum", out.momentum, 0.0, 1.0)
    _number(source, "train.weight_decay", out.weight_decay, 0.0)
    _seed(source, "train.seed", out.seed)
    _int(source, "train.precise_bn_images", out.precise_bn_images, 0)
    _choice(source, "train.device", out.device, DEVICES)
    if isinstance(out.weights, dict):
        _per_model(source, "train.weights", out.weights)
    for value in out.weights.values() if isinstance(out.weights, dict) else [out.weights]:
        if not isinstance(value, str) or not value:
            raise _fail(source, "train.weights", "must be `imagenet` or the path of a .pth/.pt file "
                        f"(or a mapping of those per model: {DEFAULT}, {', '.join(MODELS)}); got {value!r}")
    _choice(source, "train.normalize", out.normalize, NORMALIZATIONS)
    _choice(source, "train.precision", out.precision, PRECISIONS)
    _choice(source, "train.schedule", out.schedule, SCHEDULES)
    _int(source, "train.warmup_epochs", out.warmup_epochs, 0)
    _bool(source, "train.nesterov", out.nesterov)
    if isinstance(out.zero_init_residual, dict):
        _per_model(source, "train.zero_init_residual", out.zero_init_residual)
        for model, flag in out.zero_init_residual.items():
            _bool(source, f"train.zero_init_residual.{model}", flag)
    else:
        _bool(source, "train.zero_init_residual", out.zero_init_residual)
    if out.nesterov and out.momentum == 0:
        raise _fail(source, "train.nesterov", "needs train.momentum > 0 (Nesterov momentum is momentum)")
    _choice(source, "train.loss", out.loss, LOSSES)
    _bool(source, "train.tune_thresholds", out.tune_thresholds)
    _choice(source, "train.class_balance", out.class_balance, CLASS_BALANCES)
    _choice(source, "train.select_by", out.select_by, SELECT_BY)
    return dataclasses.replace(
        out,
        lr=float(out.lr),
        momentum=float(out.momentum),
        weight_decay=float(out.weight_decay),
        channels_last=_switch(source, "train.channels_last", out.channels_last),
        compile=_switch(source, "train.compile", out.compile),
        portable=_switch(source, "train.portable", out.portable),
    )


def _for_the_model(params: Params) -> None:
    """Check the per-model keys' values for ``params.model``: each has one, and they fit the model."""
    train, model, source = params.train, params.model, params.source
    for key, value in (("epochs", train.epochs), ("weights", train.weights),
                       ("zero_init_residual", train.zero_init_residual)):
        try:
            for_model(value, model, f"train.{key}")
        except RetinopathyError as error:
            raise RetinopathyError(f"{source}: {error}") from None
    epochs = train.epochs_for(model)
    if train.warmup_epochs >= epochs:
        raise _fail(source, "train.warmup_epochs", f"must be fewer than train.epochs ({epochs} for {model}), "
                    f"got {train.warmup_epochs}")
    if train.zero_init_for(model) and not REGISTRY[model].zero_init_residual:
        allowed = ", ".join(name for name, record in REGISTRY.items() if record.zero_init_residual)
        key = f"train.zero_init_residual.{model}" if isinstance(train.zero_init_residual, dict) and \
            model in train.zero_init_residual else "train.zero_init_residual"
        raise _fail(source, key, f"is true for {model}, which has no residual blocks that start as the "
                    f"identity (only {allowed} have; see models/registry.py); set it false for {model}, "
                    f"e.g. `zero_init_residual: {{{DEFAULT}: false, resnet50: true}}`")


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as read from YAML) and return :class:`Params`.

    Raises:
        RetinopathyError: naming the first unknown, missing or bad key and what is allowed.
    """
    if not isinstance(raw, dict):
        raise RetinopathyError(f"{source}: must be a YAML mapping of keys; got {type(raw).__name__}")
    _section(Params, raw, source, "")
    params = Params(
        model=_choice(source, "model", raw["model"], MODELS),  # the registry's names
        data=_data(raw["data"], source),
        demo=_demo(raw["demo"], source),
        augment=_augment(raw["augment"], source),
        train=_train(raw["train"], source),
        evaluate=_evaluate(raw["evaluate"], source),
        fuse=_fuse(raw["fuse"], source),
        source=source,
    )
    _for_the_model(params)
    if params.train.tune_thresholds and (params.train.loss != "regression" or params.data.val_fraction == 0):
        raise _fail(source, "train.tune_thresholds", "needs train.loss: regression and data.val_fraction > 0 "
                    "(the thresholds are tuned on the validation split)")
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``.

    Raises:
        RetinopathyError: if the file is missing, is not YAML, or has a bad key or value.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RetinopathyError(
            f"{path}: not found; run from the project root or pass --params PATH"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RetinopathyError(f"{path}{line}: not valid YAML ({error})") from None
    return parse_params(raw, str(path))
