"""params.yaml -> typed, validated, frozen dataclasses.

Every stage calls :func:`load_params` before it writes anything, so an unknown
key or a bad value stops the pipeline with a message that lists what is
allowed, instead of a KeyError halfway through training.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import reprlib
import stat
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

# Upper bounds of the numbers in params.yaml. None of them is a limit of the method: each is far
# beyond what anyone grading fundus photographs uses, and stops a typo (an extra zero or three)
# from asking for days of work or all the memory before anything useful happens.
MAX_EPOCHS = 1000  # train.epochs (the lab: 5-10; Huang et al. 2023: 25; Kaggle 2015 winners: about 250)
MAX_BATCH = 16384  # train.batch_size, global over all GPUs (one H200 trains ResNet18 at 256)
MAX_IMAGES = 1_000_000  # demo sizes and train.precise_bn_images (EyePACS has 88,702 photographs)
MAX_WORKERS = 1024  # data.num_workers, DataLoader processes
MAX_MEGAPIXELS = 1000  # data.max_pixels in millions (Kaggle's full-size photographs: about 15)
MAX_LR = 10.0  # train.lr (the lab: 0.001; SGD beyond 1 diverges on any of these networks)
MAX_DECAY = 1.0  # train.weight_decay and fuse.weight_decay (the field: 1e-5 to 0.05)
MAX_RESAMPLES = 100_000  # evaluate.bootstrap (1,000 to 10,000 is usual for a 95% percentile interval)
MAX_HIDDEN = 4096  # fuse.hidden (Kaggle 2015's o_O blended with 32 units; the default is 32)
MAX_FUSE_EPOCHS = 10_000  # fuse.epochs (the default: 60)
MAX_FUSE_BATCH = 65_536  # fuse.batch_size (a whole training split of two-eyed patients fits in one)
MAX_FUSE_LR = 1.0  # fuse.lr, Adam's (its usual 0.001; beyond 1 every blend diverges)
# The demo's grader (demo.grader_*): beyond these its labels stop describing the pictures; a
# mild eye is missed or slips up, never both, so misses + slips / 2 stays at most 1.
MAX_GRADER_MISSES = 0.8
MAX_GRADER_SLIPS = 0.4
MAX_GRADER_ARTEFACTS = 0.5
# demo.ungradable and demo.usable, each (EyeQ: 19% Reject, 22% Usable; Beede 2020: 21% rejected).
MAX_FAULTED = 0.5

# What a params file may be. The project's params.yaml is about 7 KB, 3 levels deep (section, key,
# per-model mapping) and about 100 values; a file far beyond these is a mistake or an attack (a
# "billion laughs" of YAML aliases, or thousands of nested brackets that overflow the parser's stack).
MAX_PARAMS_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 32  # nesting levels of mappings and lists
MAX_VALUES = 10_000  # values after expanding every YAML alias (`*name`)
EXCERPT = 80  # characters of a user's value that a message quotes

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 60, 60, 40
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 6


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """A short ``repr`` of a user's value for a message: at most ``limit`` characters, whatever its size.

    ``reprlib`` looks at only a few levels and items, so the work is bounded too (a
    value built from YAML aliases may be billions of items long once expanded).
    """
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer too long to print (Python's 4300-digit limit)
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    text = text if len(text) <= limit else f"{text[:limit]}..."
    return f"{text} ({len(value):,} characters)" if isinstance(value, str) and len(value) > 60 else text


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
    subtlety: float  # 0-1: smaller, fainter and (at grades 1-2) fewer lesions
    grader_misses: float  # share of mild eyes the labels' grader calls healthy
    grader_slips: float  # share of the other eyes with retinopathy given a neighbouring grade
    grader_artefacts: float  # share of healthy eyes the grader calls mild
    ungradable: float  # share of photos made ungradable by a camera fault (EyeQ Reject)
    usable: float  # share of photos with a mild camera fault (EyeQ Usable)
    shifted_size: int  # photos of the shifted set from another camera (0: none)


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
        return bool(
            self.flip or self.rotate or self.scale or self.translate or self.brightness or self.contrast
        )


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
        raise _fail(source, prefix, f"must be a mapping of keys, got {excerpt(raw)}")
    allowed = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    # Keys may be of any type YAML reads (`1: x` is an integer key): order them by their text.
    unknown = sorted((key for key in raw if key not in allowed), key=_key_text)
    if unknown:
        key = f"{prefix}.{_key_text(unknown[0])}" if prefix else _key_text(unknown[0])
        kind = "" if isinstance(unknown[0], str) else f" ({_KEY_KINDS.get(type(unknown[0]), 'not')} a name)"
        raise _fail(source, key, f"is not a known key{kind}; allowed here: {', '.join(allowed)}")
    missing = [name for name in allowed if name not in raw]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise _fail(
            source,
            key,
            "is missing; every key must be set (the project's params.yaml "
            "lists each one with its default and what it does)",
        )
    return raw


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,60}")
_KEY_KINDS = {
    int: "a number, not",
    float: "a number, not",
    bool: "true or false, not",
    type(None): "null, not",
}


def _key_text(key: Any) -> str:
    """A key as a message shows it: a plain name as it is, anything else as a short ``repr``."""
    return key if isinstance(key, str) and _PLAIN_KEY.fullmatch(key) else excerpt(key, 60)


def _int(source: str, key: str, value: Any, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """``value`` if it is an integer in ``minimum``..``maximum`` (``why``: what the maximum allows)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f">= {minimum}" if maximum is None else f">= {minimum} and at most {maximum:,}{why}"
        raise _fail(source, key, f"must be an integer {bound}, got {excerpt(value)}")
    return value


def _seed(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise _fail(
            source, key, f"must be an integer seed in 0..{MAX_SEED} (2**32 - 1), got {excerpt(value)}"
        )
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
            out[field.name] = [
                float(v) if isinstance(v, str) and _NUMBER_TEXT.fullmatch(v.strip()) else v for v in value
            ]
    return out


def _cli_type(parse: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, and refuse what is not ``ok`` as "must be <what>"."""

    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {excerpt(text)}")
        return value

    check.__doc__ = f"argparse type: {what}."
    return check


# The command lines' numbers (`--batch-size`, `--workers`, `--size`, `--seed`, `--download-timeout`,
# `--test-fraction`), refused with a usage error rather than a traceback deep in the work.
cli_positive_int = _cli_type(int, lambda value: value >= 1, "a positive integer")
cli_seed = _cli_type(int, lambda value: 0 <= value <= MAX_SEED, f"an integer seed in 0..{MAX_SEED}")
cli_positive_float = _cli_type(float, lambda value: math.isfinite(value) and value > 0, "a positive number")
cli_fraction = _cli_type(float, lambda value: 0 < value < 1, "a number between 0 and 1 (exclusive)")


def _number(
    source: str,
    key: str,
    value: Any,
    low: float,
    high: float | None = None,
    most: float | None = None,
    why: str = "",
) -> float:
    """``value`` as a float if it is finite and in [``low``, ``high``) (or [``low``, ``most``])."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, key, f"must be a number, got {excerpt(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(source, key, f"must be a finite number, got {excerpt(value)}")
    # An integer is compared as it is: one of 400 digits is beyond every float, but not beyond `most`.
    if value < low or (high is not None and value >= high) or (most is not None and value > most):
        bound = (
            f"in [{low}, {high})"
            if high is not None
            else f">= {low} and at most {most}{why}"
            if most is not None
            else f">= {low}"
        )
        raise _fail(source, key, f"must be {bound}, got {excerpt(value)}")
    try:
        return float(value)
    except OverflowError:  # an integer beyond every float, where no upper bound stopped it
        raise _fail(source, key, f"must be a finite number, got {excerpt(value)}") from None


def _choice(source: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(source, key, f"must be one of {', '.join(choices)}; got {excerpt(value)}")
    return value


def _switch(source: str, key: str, value: Any) -> str:
    # YAML reads on/off/true/false as booleans; accept those as the switch values.
    if isinstance(value, bool):
        value = "on" if value else "off"
    return _choice(source, key, value, SWITCHES)


def _demo(raw: Any, source: str) -> DemoParams:
    raw = _numbers_from_text(DemoParams, _section(DemoParams, raw, source, "demo"))
    out = DemoParams(**raw)
    _seed(source, "demo.seed", out.seed)
    for key in ("train_size", "test_size"):  # images: two per patient
        value = getattr(out, key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < 10
            or value % 2
            or value > MAX_IMAGES
        ):
            raise _fail(
                source,
                f"demo.{key}",
                f"must be an even integer >= 10 (two eyes per patient, "
                f"at least 5 patients) and at most {MAX_IMAGES:,}, got {excerpt(value)}",
            )
    _int(source, "demo.image_size", out.image_size, 32, MAX_IMAGE_SIZE)
    _bool(source, "demo.variation", out.variation)
    _number(source, "demo.subtlety", out.subtlety, 0.0, most=1.0)
    for key, most in (
        ("grader_misses", MAX_GRADER_MISSES),
        ("grader_slips", MAX_GRADER_SLIPS),
        ("grader_artefacts", MAX_GRADER_ARTEFACTS),
        ("ungradable", MAX_FAULTED),
        ("usable", MAX_FAULTED),
    ):
        _number(source, f"demo.{key}", getattr(out, key), 0.0, most=most)
    if isinstance(out.shifted_size, bool) or out.shifted_size != 0 or not isinstance(out.shifted_size, int):
        _int(source, "demo.shifted_size", out.shifted_size, 10, MAX_IMAGES, " (or 0: no shifted set)")
    return out


def _data(raw: Any, source: str) -> DataParams:
    raw = _numbers_from_text(DataParams, _section(DataParams, raw, source, "data"))
    out = DataParams(**raw)
    if not isinstance(out.root, str) or not out.root:
        raise _fail(source, "data.root", f"must be a folder path, got {excerpt(out.root)}")
    _choice(source, "data.split", out.split, DATA_SPLITS)
    if out.image_size is not None:
        _int(source, "data.image_size", out.image_size, 32)
        if out.image_size > MAX_IMAGE_SIZE:
            raise _fail(
                source,
                "data.image_size",
                f"must be at most {MAX_IMAGE_SIZE} (or null), got {excerpt(out.image_size)}",
            )
    _number(source, "data.val_fraction", out.val_fraction, 0.0, 0.9)
    _seed(source, "data.seed", out.seed)
    if out.num_workers != "auto":
        _int(source, "data.num_workers", out.num_workers, 0, MAX_WORKERS, " (or auto)")
    if out.cache_dir is not None and (not isinstance(out.cache_dir, str) or not out.cache_dir):
        raise _fail(source, "data.cache_dir", f"must be a folder path or null, got {excerpt(out.cache_dir)}")
    _int(
        source,
        "data.max_pixels",
        out.max_pixels,
        32 * 32,
        MAX_MEGAPIXELS * 10**6,
        " (Kaggle's full-size photographs have about 15 million)",
    )
    out = dataclasses.replace(out, on_device=_switch(source, "data.on_device", out.on_device))
    _choice(source, "data.preprocess", out.preprocess, PREPROCESSES)
    return out


def _bool(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, key, f"must be true or false, got {excerpt(value)}")
    return value


def _augment(raw: Any, source: str) -> AugmentParams:
    raw = _numbers_from_text(AugmentParams, _section(AugmentParams, raw, source, "augment"))
    out = AugmentParams(**raw)
    _bool(source, "augment.flip", out.flip)
    _number(source, "augment.rotate", out.rotate, 0.0)
    if out.rotate > 180:
        raise _fail(source, "augment.rotate", f"must be in [0, 180] degrees, got {excerpt(out.rotate)}")
    if out.scale is not None:
        bad = not isinstance(out.scale, list) or len(out.scale) != 2
        if (
            bad
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in out.scale)
            or not 0 < out.scale[0] <= out.scale[1] <= 4
            or not all(map(math.isfinite, out.scale))
        ):
            raise _fail(
                source,
                "augment.scale",
                "must be null or [min, max] with 0 < min <= max <= 4, "
                f"e.g. [0.87, 1.15]; got {excerpt(out.scale)}",
            )
    _number(source, "augment.translate", out.translate, 0.0, 0.5)
    _number(source, "augment.brightness", out.brightness, 0.0, 1.0)
    _number(source, "augment.contrast", out.contrast, 0.0, 1.0)
    return dataclasses.replace(
        out,
        rotate=float(out.rotate),
        translate=float(out.translate),
        brightness=float(out.brightness),
        contrast=float(out.contrast),
        scale=None if out.scale is None else [float(v) for v in out.scale],
    )


def _evaluate(raw: Any, source: str) -> EvaluateParams:
    out = EvaluateParams(**_section(EvaluateParams, raw, source, "evaluate"))
    _choice(source, "evaluate.tta", out.tta, TTAS)
    points = out.operating_points
    if not isinstance(points, dict) or set(points) != set(OPERATING_POINTS):
        raise _fail(
            source,
            "evaluate.operating_points",
            f"must be a mapping of exactly "
            f"{', '.join(OPERATING_POINTS)} to a target in (0, 1], e.g. "
            f"{{high_sensitivity: 0.9, high_specificity: 0.9}}; got {excerpt(points)}",
        )
    for point, target in points.items():
        key = f"evaluate.operating_points.{point}"
        if isinstance(target, str) and _NUMBER_TEXT.fullmatch(target.strip()):
            target = float(target)
        if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
            raise _fail(
                source, key, f"must be a target in (0, 1] (a share: 0.9, not 90), got {excerpt(target)}"
            )
    _int(
        source,
        "evaluate.bootstrap",
        out.bootstrap,
        0,
        MAX_RESAMPLES,
        " resamples (1,000 to 10,000 is usual for a 95% interval)",
    )
    _seed(source, "evaluate.seed", out.seed)
    return dataclasses.replace(out, operating_points={p: float(points[p]) for p in OPERATING_POINTS})


def _fuse(raw: Any, source: str) -> FuseParams:
    out = FuseParams(**_numbers_from_text(FuseParams, _section(FuseParams, raw, source, "fuse")))
    _choice(source, "fuse.method", out.method, FUSION_METHODS)
    _choice(source, "fuse.inputs", out.inputs, FUSION_INPUTS)
    _int(source, "fuse.hidden", out.hidden, 0, MAX_HIDDEN, " units (0: linear; the default blend has 32)")
    _int(source, "fuse.epochs", out.epochs, 1, MAX_FUSE_EPOCHS)
    _int(source, "fuse.batch_size", out.batch_size, 1, MAX_FUSE_BATCH)
    _number(source, "fuse.lr", out.lr, 0.0, most=MAX_FUSE_LR, why=" (Adam's; its usual is 0.001)")
    if out.lr == 0:
        raise _fail(source, "fuse.lr", "must be > 0")
    _number(source, "fuse.weight_decay", out.weight_decay, 0.0, most=MAX_DECAY)
    _seed(source, "fuse.seed", out.seed)
    return dataclasses.replace(out, lr=float(out.lr), weight_decay=float(out.weight_decay))


def _per_model(source: str, key: str, mapping: dict) -> None:
    unknown = unknown_keys(mapping)
    if unknown or not mapping:
        where, problem = (
            (f"{key}.{_key_text(unknown[0])}", "is not a model's name") if unknown else (key, "is empty")
        )
        raise _fail(
            source,
            where,
            f"{problem}; a per-model mapping takes `{DEFAULT}` (the value of the "
            f"models it does not name) and model names: {', '.join(MODELS)} (e.g. "
            f"`{{{DEFAULT}: ..., {MODELS[-1]}: ...}}`); or write one value for every model",
        )


def _train(raw: Any, source: str) -> TrainParams:
    raw = _numbers_from_text(TrainParams, _section(TrainParams, raw, source, "train"))
    out = TrainParams(**raw)
    if isinstance(out.epochs, dict):
        _per_model(source, "train.epochs", out.epochs)
        for model, epochs in out.epochs.items():
            _int(source, f"train.epochs.{_key_text(model)}", epochs, 1, MAX_EPOCHS)
    else:
        _int(source, "train.epochs", out.epochs, 1, MAX_EPOCHS)
    _int(source, "train.batch_size", out.batch_size, 1, MAX_BATCH, " (over all GPUs together)")
    _number(source, "train.lr", out.lr, 0.0, most=MAX_LR, why=" (the lab's is 0.001)")
    if out.lr == 0:
        raise _fail(source, "train.lr", "must be > 0")
    _number(source, "train.momentum", out.momentum, 0.0, 1.0)
    _number(source, "train.weight_decay", out.weight_decay, 0.0, most=MAX_DECAY, why=" (the lab's is 0.0005)")
    _seed(source, "train.seed", out.seed)
    _int(source, "train.precise_bn_images", out.precise_bn_images, 0, MAX_IMAGES, " (0: off)")
    _choice(source, "train.device", out.device, DEVICES)
    if isinstance(out.weights, dict):
        _per_model(source, "train.weights", out.weights)
    for value in out.weights.values() if isinstance(out.weights, dict) else [out.weights]:
        if not isinstance(value, str) or not value:
            raise _fail(
                source,
                "train.weights",
                "must be `imagenet` or the path of a .pth/.pt file "
                f"(or a mapping of those per model: {DEFAULT}, {', '.join(MODELS)}); "
                f"got {excerpt(value)}",
            )
    _choice(source, "train.normalize", out.normalize, NORMALIZATIONS)
    _choice(source, "train.precision", out.precision, PRECISIONS)
    _choice(source, "train.schedule", out.schedule, SCHEDULES)
    _int(source, "train.warmup_epochs", out.warmup_epochs, 0, MAX_EPOCHS)
    _bool(source, "train.nesterov", out.nesterov)
    if isinstance(out.zero_init_residual, dict):
        _per_model(source, "train.zero_init_residual", out.zero_init_residual)
        for model, flag in out.zero_init_residual.items():
            _bool(source, f"train.zero_init_residual.{_key_text(model)}", flag)
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
    for key, value in (
        ("epochs", train.epochs),
        ("weights", train.weights),
        ("zero_init_residual", train.zero_init_residual),
    ):
        try:
            for_model(value, model, f"train.{key}")
        except RetinopathyError as error:
            raise RetinopathyError(f"{source}: {error}") from None
    epochs = train.epochs_for(model)
    if train.warmup_epochs >= epochs:
        raise _fail(
            source,
            "train.warmup_epochs",
            f"must be fewer than train.epochs ({epochs} for {model}), got {train.warmup_epochs}",
        )
    if train.zero_init_for(model) and not REGISTRY[model].zero_init_residual:
        allowed = ", ".join(name for name, record in REGISTRY.items() if record.zero_init_residual)
        key = (
            f"train.zero_init_residual.{model}"
            if isinstance(train.zero_init_residual, dict) and model in train.zero_init_residual
            else "train.zero_init_residual"
        )
        raise _fail(
            source,
            key,
            f"is true for {model}, which has no residual blocks that start as the "
            f"identity (only {allowed} have; see models/registry.py); set it false for {model}, "
            f"e.g. `zero_init_residual: {{{DEFAULT}: false, resnet50: true}}`",
        )


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
        raise _fail(
            source,
            "train.tune_thresholds",
            "needs train.loss: regression and data.val_fraction > 0 "
            "(the thresholds are tuned on the validation split)",
        )
    return params


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_a_file(path: Path, mode: int) -> RetinopathyError:
    kind = next((kind for test, kind in _KINDS if test(mode)), "not a regular file")
    return RetinopathyError(
        f"{path}: is {kind}, not a params file; pass --params PATH of a YAML file (the project's params.yaml)"
    )


def _read_text(path: Path) -> str:
    """The text of the params file ``path``, read only if it is a regular file of a sensible size.

    A named pipe would block the read until something writes to it (every command would
    hang), and a device may never end: both are refused from their ``stat``, before opening.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_file(path, mode)
        # O_NONBLOCK: if the file was swapped for a pipe since the stat, opening must not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise RetinopathyError(
            f"{path}: not found; run from the project root or pass --params PATH"
        ) from None
    except OSError as error:
        raise RetinopathyError(
            f"{path}: cannot be read ({error.strerror or error}); pass --params PATH of a readable file"
        ) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_a_file(path, mode)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(MAX_PARAMS_BYTES + 1)
    except OSError as error:
        raise RetinopathyError(
            f"{path}: cannot be read ({error.strerror or error}); pass --params PATH of a readable file"
        ) from None
    finally:
        os.close(fd)
    if len(data) > MAX_PARAMS_BYTES:
        raise RetinopathyError(
            f"{path}: is larger than {MAX_PARAMS_BYTES // 1024} KiB, far more than any "
            "params file needs (the project's is about 7 KB); pass --params PATH of the "
            "project's params.yaml"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RetinopathyError(
            f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x}); save the file as UTF-8"
        ) from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the limits of a params file.

    It refuses, naming the line: nesting deeper than :data:`MAX_DEPTH` (PyYAML's
    composer recurses once per level, and thousands of levels overflow Python's
    stack); a key set twice in one mapping (YAML keeps the last silently, DVC
    refuses the file); and an integer too long for Python to read.
    """

    def __init__(self, text: str, source: str) -> None:
        super().__init__(text)
        self.source = source
        self.depth = 0
        self.aliases: list[tuple[str, int]] = []  # (name, line) of each `*name`

    def _error(self, mark: Any, problem: str) -> RetinopathyError:
        return RetinopathyError(f"{self.source}:{mark.line + 1}: {problem}")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            self.aliases.append((event.anchor, event.start_mark.line + 1))
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self._error(
                    self.peek_event().start_mark,
                    f"nested more than {MAX_DEPTH} levels deep (params.yaml needs 3: section, "
                    "key, per-model mapping); a params file this deep is damaged or hostile. "
                    "Restore it (`git checkout params.yaml`) or pass --params PATH",
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # a merge (`<<: *base`) may override; a list as a key is refused below
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise self._error(
                        key_node.start_mark,
                        f"`{_key_text(key)}` is set twice in one mapping, at lines "
                        f"{lines[key]} and {line}; YAML would keep the second silently and "
                        "DVC refuses the file. Delete one of them",
                    )
                lines[key] = line
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: Any) -> Any:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (4300): no params value is such a number
            raise self._error(
                node.start_mark,
                f"a number of {len(node.value):,} digits; no params value needs more than a few",
            ) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _check_size(root: Any, loader: _Loader) -> None:
    """Refuse a document of more than :data:`MAX_VALUES` values once its aliases are expanded.

    PyYAML shares an aliased node rather than copying it, so nine aliases of nine
    aliases of ... ("billion laughs") load at once, as one tiny object with billions
    of items behind it; every later walk over it (a message quoting it, the run's
    fingerprint) would then run out of time or memory. The walk stops at the limit.
    """
    stack, count = [root], 0
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            if loader.aliases:
                first: dict[str, int] = {}  # each alias's name and the line of its first use
                for name, line in loader.aliases:
                    first.setdefault(name, line)
                names = ", ".join(f"`*{name}` (line {line})" for name, line in list(first.items())[:3])
                more = f" and {len(first) - 3} more" if len(first) > 3 else ""
                raise RetinopathyError(
                    f"{loader.source}:{loader.aliases[0][1]}: its YAML aliases {names}{more} expand to more "
                    f"than {MAX_VALUES:,} values (the project's params.yaml has about 100): a file built to "
                    "exhaust memory, or a mistake. Write the values out instead of the aliases"
                )
            raise RetinopathyError(
                f"{loader.source}: holds more than {MAX_VALUES:,} values (the project's "
                "params.yaml has about 100); pass --params PATH of a params file"
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in node.value for item in pair)


def read_yaml(path: str | Path) -> Any:
    """Read the YAML file ``path`` (params.yaml, or any params file) within the limits of a params file.

    Only a regular file of at most :data:`MAX_PARAMS_BYTES` is read; nesting deeper than
    :data:`MAX_DEPTH`, more than :data:`MAX_VALUES` values with the aliases expanded, and a
    key set twice are refused. A JSON file is YAML too, and is read the same way.

    Raises:
        RetinopathyError: naming the file, the line where there is one, and the fix.
    """
    path = Path(path)
    text = _read_text(path)
    loader = _Loader(text, str(path))
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_size(root, loader)
        return loader.construct_document(root)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        detail = str(error)
        detail = detail if len(detail) <= 400 else detail[:400] + " ..."
        raise RetinopathyError(f"{path}{line}: not valid YAML ({detail})") from None
    finally:
        loader.dispose()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read (:func:`read_yaml`) and validate ``params.yaml``.

    Raises:
        RetinopathyError: if the file is missing, not a regular file, not YAML, beyond the
            limits of a params file, or has a bad key or value.
    """
    path = Path(path)
    return parse_params(read_yaml(path), str(path))
