"""params.yaml -> typed, validated, frozen dataclasses.

Every stage calls :func:`load_params` before it writes anything, so an unknown
key or a bad value stops the pipeline with a message that lists what is
allowed, instead of a KeyError halfway through training. What each key allows is
declared once, on its field (``Annotated[int, Between(1, MAX_EPOCHS)]``, the choices
of ``OneOf``, :data:`~retinopathy.core.schema.PerModel` mappings), and read by the
one typed reader of :mod:`retinopathy.core.schema`; relations between keys are
checked by the dataclass that holds them (``__post_init__``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml

from retinopathy.core.contract import (
    DATA_SPLITS,
    EXTERNAL_SET_NAME,
    EXTERNAL_SET_RULE,
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
    UNGRADABLE_POLICIES,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.registry import DEFAULT, MODELS, REGISTRY, for_model, no_value
from retinopathy.core.schema import (
    NOT_READ,
    Between,
    Even,
    FromBool,
    Interval,
    Invalid,
    Keys,
    NotEmpty,
    OneOf,
    PerModel,
    Positive,
    Say,
    excerpt,
    key_text,
    parse,
    refuse,
)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
SWITCHES = ("auto", "on", "off")
CLASS_BALANCES = ("none", "weighted_loss", "sampler")
# Seeds go to torch.manual_seed, numpy and Python's random; 0 .. 2**32 - 1 is what all
# of them take (numpy's legacy seeding and many samplers refuse more).
MAX_SEED = 2**32 - 1

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

# The kinds of value that several keys share.
Seed = Annotated[int, Between(0, MAX_SEED, said=f"an integer seed in 0..{MAX_SEED} (2**32 - 1)")]
Flag = bool
Switch = Annotated[str, FromBool("on", "off"), OneOf(SWITCHES)]  # YAML reads on/off as booleans
Share = Annotated[float, Between(0.0, 1.0, open_high=True)]  # augment's relative changes
DemoImages = Annotated[
    int,
    Between(10, MAX_IMAGES),
    Even(),  # images: two per patient
    Say(f"an even integer >= 10 (two eyes per patient, at least 5 patients) and at most {MAX_IMAGES:,}"),
]
Weights = Annotated[
    str,
    NotEmpty(),
    Say(
        "`imagenet` or the path of a .pth/.pt file "
        f"(or a mapping of those per model: {DEFAULT}, {', '.join(MODELS)})",
        sep=";",
    ),
]
Target = Annotated[float, Between(0, 1, open_low=True), Say("a target in (0, 1] (a share: 0.9, not 90)")]

# The dataclasses carry no defaults: params.yaml is the only place a default is
# written, and a key missing from it is an error that names the key.


@dataclass(frozen=True)
class DemoParams:
    """The synthetic demo dataset written by `retinopathy demo-data`."""

    seed: Seed
    train_size: DemoImages
    test_size: DemoImages
    image_size: Annotated[int, Between(32, MAX_IMAGE_SIZE)]
    variation: Flag  # vary exposure, colour, blur, rotation and field of view between photos
    subtlety: Annotated[float, Between(0.0, 1.0)]  # 0-1: smaller, fainter and (at grades 1-2) fewer lesions
    grader_misses: Annotated[float, Between(0.0, MAX_GRADER_MISSES)]  # share of mild eyes called healthy
    # share of the other eyes with retinopathy given a neighbouring grade
    grader_slips: Annotated[float, Between(0.0, MAX_GRADER_SLIPS)]
    grader_artefacts: Annotated[float, Between(0.0, MAX_GRADER_ARTEFACTS)]  # healthy eyes called mild
    ungradable: Annotated[float, Between(0.0, MAX_FAULTED)]  # photos made ungradable (EyeQ Reject)
    usable: Annotated[float, Between(0.0, MAX_FAULTED)]  # photos with a mild camera fault (EyeQ Usable)
    shifted_size: Annotated[  # photos of the shifted set from another camera (0: none)
        Annotated[int, Between(10, MAX_IMAGES)] | Annotated[int, Between(0, 0)],
        Say(f"an integer >= 10 and at most {MAX_IMAGES:,} (or 0: no shifted set)"),
    ]


@dataclass(frozen=True)
class DataParams:
    """Where the images are and how they are fed to the network."""

    root: Annotated[str, NotEmpty(), Say("a folder path")]
    # lists (the course's, as listed) | patients (re-split keeping each patient on one side)
    split: Annotated[str, OneOf(DATA_SPLITS)]
    # None: use the files' own size (512 for the course data)
    image_size: (
        Annotated[int, Between(32), Between(high=MAX_IMAGE_SIZE, said=f"at most {MAX_IMAGE_SIZE} (or null)")]
        | None
    )
    val_fraction: Annotated[float, Between(0.0, 0.9, open_high=True)]  # > 0: a stratified validation split
    seed: Seed  # seeds the validation split (and the re-split of data.split: patients)
    # DataLoader worker processes; "auto" picks from the CPU count
    num_workers: Annotated[
        Annotated[int, Between(0, MAX_WORKERS)] | Annotated[str, OneOf(("auto",))],
        Say(f"an integer >= 0 and at most {MAX_WORKERS:,} (or auto)"),
    ]
    on_device: Switch  # auto | on | off: decode each split once into the device's memory
    # a folder for decoded pixels (e.g. /dev/shm/retinopathy); speed only
    cache_dir: Annotated[str, NotEmpty(), Say("a folder path or null")] | None
    max_pixels: Annotated[  # prepare refuses images whose header says more pixels than this
        int,
        Between(
            32 * 32, MAX_MEGAPIXELS * 10**6, why=" (Kaggle's full-size photographs have about 15 million)"
        ),
    ]
    preprocess: Annotated[str, OneOf(PREPROCESSES)]  # none | graham (local average colour subtracted)


@dataclass(frozen=True)
class TrainParams:
    """Optimisation hyperparameters and the speed switches of the training loop."""

    # Per-model keys: one value, or {default: v, <model>: v} (registry.for_model).
    epochs: PerModel[Annotated[int, Between(1, MAX_EPOCHS)]]  # e.g. {default: 4, resnet50: 5}
    batch_size: Annotated[int, Between(1, MAX_BATCH, why=" (over all GPUs together)")]
    lr: Annotated[float, Between(0.0, MAX_LR, why=" (the lab's is 0.001)"), Positive()]
    momentum: Annotated[float, Between(0.0, 1.0, open_high=True)]
    weight_decay: Annotated[float, Between(0.0, MAX_DECAY, why=" (the lab's is 0.0005)")]
    seed: Seed
    # > 0: re-estimate BatchNorm statistics on this many train images per epoch
    precise_bn_images: Annotated[int, Between(0, MAX_IMAGES, why=" (0: off)")]
    device: Annotated[str, OneOf(DEVICES)]
    weights: PerModel[Weights]  # pretrained arm: "imagenet" or a file; or per model
    # scale to [0,1], then ImageNet mean/std ("none": [0,1] only, as the lab)
    normalize: Annotated[str, OneOf(NORMALIZATIONS)]
    precision: Annotated[str, OneOf(PRECISIONS)]  # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: Switch  # auto: on for CUDA, off on CPU
    compile: Switch  # auto | on | off: torch.compile the training step
    portable: Switch  # auto | on | off: the same CPU bits on any x86-64 with AVX2 (retinopathy.core.portable)
    schedule: Annotated[str, OneOf(SCHEDULES)]  # constant | cosine, per batch
    warmup_epochs: Annotated[int, Between(0, MAX_EPOCHS)]  # linear warm-up from 0, per batch
    nesterov: Flag
    zero_init_residual: PerModel[Flag]  # scratch: residual blocks start as the identity; or per model
    loss: Annotated[str, OneOf(LOSSES)]  # cross_entropy | regression
    tune_thresholds: Flag  # regression: tune the grade thresholds on the validation split
    class_balance: Annotated[str, OneOf(CLASS_BALANCES)]  # none | weighted_loss | sampler
    select_by: Annotated[str, OneOf(SELECT_BY)]  # accuracy | kappa

    def __post_init__(self) -> None:
        if self.nesterov and self.momentum == 0:
            raise refuse("nesterov", "needs train.momentum > 0 (Nesterov momentum is momentum)")

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

    flip: Flag
    rotate: Annotated[float, Between(0.0, 180.0, said="in [0, 180] degrees")]  # degrees, either way
    # [min, max] share of the area a random resized crop keeps
    scale: (
        Annotated[
            list[Annotated[float, Between(0, 4, open_low=True)]],
            Interval(),
            Say("null or [min, max] with 0 < min <= max <= 4, e.g. [0.87, 1.15]", sep=";"),
        ]
        | None
    )
    translate: Annotated[float, Between(0.0, 0.5, open_high=True)]  # fraction of the side
    brightness: Share  # relative
    contrast: Share  # relative

    @property
    def active(self) -> bool:
        return bool(
            self.flip or self.rotate or self.scale or self.translate or self.brightness or self.contrast
        )


@dataclass(frozen=True)
class EvaluateParams:
    """How the test split is scored."""

    tta: Annotated[str, OneOf(TTAS)]  # none | flips
    # contract.OPERATING_POINTS -> target sensitivity/specificity, in that order
    operating_points: Annotated[
        dict[str, Target],
        Keys(OPERATING_POINTS, ordered=True),
        Say(
            f"a mapping of exactly {', '.join(OPERATING_POINTS)} to a target in (0, 1], e.g. "
            "{high_sensitivity: 0.9, high_specificity: 0.9}",
            sep=";",
        ),
    ]
    # resamples of patients for the 95% intervals (0: no intervals)
    bootstrap: Annotated[
        int, Between(0, MAX_RESAMPLES, why=" resamples (1,000 to 10,000 is usual for a 95% interval)")
    ]
    seed: Seed  # seeds the bootstrap


@dataclass(frozen=True)
class FuseParams:
    """Grading with both eyes (the `fuse` stage): the blend over [this eye, the other eye, which eye]."""

    method: Annotated[str, OneOf(FUSION_METHODS)]  # none | blend
    inputs: Annotated[str, OneOf(FUSION_INPUTS)]  # features (pooled penultimate layer) | scores (the head's)
    # width of the hidden layer (0: linear)
    hidden: Annotated[int, Between(0, MAX_HIDDEN, why=" units (0: linear; the default blend has 32)")]
    epochs: Annotated[int, Between(1, MAX_FUSE_EPOCHS)]
    batch_size: Annotated[int, Between(1, MAX_FUSE_BATCH)]
    lr: Annotated[float, Between(0.0, MAX_FUSE_LR, why=" (Adam's; its usual is 0.001)"), Positive()]  # Adam
    weight_decay: Annotated[float, Between(0.0, MAX_DECAY)]
    seed: Seed


Brightness = Annotated[float, Between(0.0, 255.0)]  # mean luminance, ITU-R 601, 0-255


@dataclass(frozen=True)
class QualityThresholds:
    """Where each quality measure stops being gradable (units as on ``quality.measures.Measures``).

    The one place these defaults are written in code (params.yaml repeats them and a test checks
    that it does): `predict` without a project uses them. Each lies between what was measured on
    photographs that must stay gradable and on copies that must not (BENCHMARKS.md, "Image
    quality": the real photograph ``skimage.data.retina()``, the demo's 800 photos, and copies of
    both degraded by ``quality.degrade`` at a ``mild`` and a ``reject`` strength).

    Attributes:
        min_coverage: Below this share of the frame covered by the disc, no fundus: 0.05.
            A black frame or a speck of light covers under 0.01; the demo's photos cover
            0.45-0.87, the real one 0.78, and still 0.39 with half the eye out of the frame.
        min_visible: Below this share of the disc in the picture, off-field: 0.7. The demo's
            photos measure 0.91-0.99 (those zoomed until the frame cuts them included), the
            real one 0.95, and 0.85 in a camera's frame that cuts a tenth of the disc off
            the top and the bottom; with half the eye out of the frame 0.36-0.63.
        min_brightness: Below this mean luminance (0-255), dark: 20. The demo's darkest
            photo is 38 (27 at 70% of its exposure), the real one 114; at 12% of their
            exposure all measure 17 or less.
        max_clipped_dark: Above this share of the disc clipped dark, dark: 0.5. The demo's
            photos 0.06 at most; the real one 0.02, 0.79 at 12% of its exposure.
        max_brightness: Above this mean luminance, overexposed: 210. The demo's brightest
            photo is 135; the real one 186 with 3% of its fundus clipped, 228 with half.
        max_clipped_bright: Above this share of the disc clipped in green, overexposed:
            0.15. The demo's photos 0.02 at most (0.08 with 3% of the fundus clipped on
            purpose); with half clipped 0.40 or more.
        min_focus: Below this focus, blur: 0.18. The demo's softest photo measures 0.24
            (0.21 blurred by a further 0.4% of the frame); the real one 0.47-0.50 and 0.37
            so blurred. Defocus of 1.5% of the frame (7.7 px at 512 px) leaves 0.15 at
            most; the real photograph drops below 0.18 at 1.1%.
        max_flare: Above this share of the disc under a haze, flare: 0.15. The demo's
            photos 0.09 at most (0.10 under a faint haze), the real one 0.00; under a haze
            of 60% of white at its centre 0.21 or more.
    """

    min_coverage: Annotated[float, Between(0.0, 1.0)] = 0.05
    min_visible: Annotated[float, Between(0.0, 1.0)] = 0.7
    min_brightness: Brightness = 20.0
    max_clipped_dark: Annotated[float, Between(0.0, 1.0)] = 0.5
    max_brightness: Brightness = 210.0
    max_clipped_bright: Annotated[float, Between(0.0, 1.0)] = 0.15
    min_focus: Annotated[float, Between(0.0)] = 0.18
    max_flare: Annotated[float, Between(0.0, 1.0)] = 0.15

    def __post_init__(self) -> None:
        if self.min_brightness >= self.max_brightness:
            raise refuse(
                "min_brightness",
                f"({self.min_brightness:g}) must be below max_brightness ({self.max_brightness:g}), or "
                "every photograph is dark or overexposed; fix one of them",
            )


@dataclass(frozen=True)
class QualityParams:
    """Whether a photograph can be graded (``retinopathy.quality``), and what is done with one that cannot."""

    # EyeQ's format (contract.QUALITY_HEADER: 0 Good, 1 Usable, 2 Reject), matched to the photos' names:
    # trains and tests the learned assessor and gives the quality confusion matrix (null: none)
    labels: Annotated[str, NotEmpty(), Say("a CSV path (EyeQ's format) or null")] | None
    ungradable: Annotated[str, OneOf(UNGRADABLE_POLICIES)]  # flag: grade it and mark it | withhold: no grade
    thresholds: QualityThresholds


@dataclass(frozen=True)
class Params:
    """All of params.yaml."""

    model: Annotated[str, OneOf(MODELS)]  # the registry's names
    data: DataParams
    demo: DemoParams
    augment: AugmentParams
    train: TrainParams
    evaluate: EvaluateParams
    fuse: FuseParams
    quality: QualityParams
    # external validation: a set's name -> the folder `retinopathy import-external` wrote ({}: none).
    # Only the names are checked here: every stage loads params.yaml, and a folder may be written
    # by an earlier stage of the same `dvc repro`; the external stage checks the folders.
    external: dict[str, str]
    # where these came from, for error messages (not a parameter)
    source: str = dataclasses.field(default="params.yaml", metadata=NOT_READ)

    def __post_init__(self) -> None:
        for name, folder in self.external.items():
            if not EXTERNAL_SET_NAME.fullmatch(name):
                raise refuse("external", f"has the set name {excerpt(name)}; {EXTERNAL_SET_RULE}")
            if not folder.strip():
                raise refuse(
                    f"external.{name}",
                    "is empty; give the folder that `retinopathy import-external FORMAT --root DIR "
                    "--out DIR` wrote",
                )
        # The per-model keys' values for `model`: each has one, and they fit the model.
        train, model = self.train, self.model
        for key in ("epochs", "weights", "zero_init_residual"):
            value = getattr(train, key)
            if isinstance(value, Mapping) and model not in value and DEFAULT not in value:
                raise refuse(f"train.{key}", no_value(value, model))
        epochs = train.epochs_for(model)
        if train.warmup_epochs >= epochs:
            raise refuse(
                "train.warmup_epochs",
                f"must be fewer than train.epochs ({epochs} for {model}), got {train.warmup_epochs}",
            )
        if train.zero_init_for(model) and not REGISTRY[model].zero_init_residual:
            allowed = ", ".join(name for name, record in REGISTRY.items() if record.zero_init_residual)
            named = isinstance(train.zero_init_residual, dict) and model in train.zero_init_residual
            raise refuse(
                f"train.zero_init_residual.{model}" if named else "train.zero_init_residual",
                f"is true for {model}, which has no residual blocks that start as the "
                f"identity (only {allowed} have; see core/registry.py); set it false for {model}, "
                f"e.g. `zero_init_residual: {{{DEFAULT}: false, resnet50: true}}`",
            )
        if train.tune_thresholds and (train.loss != "regression" or self.data.val_fraction == 0):
            raise refuse(
                "train.tune_thresholds",
                "needs train.loss: regression and data.val_fraction > 0 "
                "(the thresholds are tuned on the validation split)",
            )

    def to_dict(self) -> dict[str, Any]:
        """The parameters as plain data (without ``source``), e.g. for a checkpoint."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a params mapping (as read from YAML) and return :class:`Params`.

    Raises:
        RetinopathyError: naming the first unknown, missing or bad key and what is allowed.
    """
    if not isinstance(raw, dict):
        raise RetinopathyError(f"{source}: must be a YAML mapping of keys; got {type(raw).__name__}")
    try:
        params = parse(Params, raw, by_hand=True)
    except Invalid as error:
        raise RetinopathyError(f"{source}: `{error.key}` {error.said}") from None
    return dataclasses.replace(params, source=source)


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
                        f"`{key_text(key)}` is set twice in one mapping, at lines "
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
