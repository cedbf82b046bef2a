"""The JSON records that one stage writes and another reads: a frozen dataclass each, one writer, one reader.

- :class:`TrainingStatus`, ``models/<arm>/status.json``: written by train (:func:`write_status`),
  read by evaluate and export, and by predict's and export's messages (:func:`read_status`);
- :class:`EvaluationInfo`, ``metrics/<arm>.info.json``: written by evaluate (:func:`write_info`),
  read by report, compare, explain and export (:func:`read_info`);
- :class:`Skipped`: either of the two for an arm that was not trained (the pretrained one offline);
- :class:`PreparedSummary`, ``data/prepared/summary.json``: written by prepare (:func:`summary_text`),
  read by evaluate (:func:`read_summary`);
- :class:`ImportSummary`, ``import.json`` in a folder of `import-external`: written by it
  (:func:`import_summary_text`), read by the external validation (:func:`read_import_summary`).

Every file carries its format's version (``"version"``, first), and status.json and
info.json say whether the arm was ``trained`` or ``skipped`` (``"status"``, second);
the record's fields follow, in the order of the dataclass. A reader refuses, naming
the file and the command that writes it again:

- a file of another version (one without ``"version"`` was written before records
  were versioned): it is never half read, nor read as if it were this version;
- a missing key, a key the record does not have, or a value of another type than
  the field's annotation (checked from the annotations, nested records included);
- a value outside what the field allows, declared once beside it in its annotation
  (``Annotated[str, OneOf(ARMS)]``, ``Annotated[float, Between(0, 1)]``, a mapping's
  ``Keys``, plain data checked ``Like`` a record), and always: a float that is not
  finite, a negative int (every int here is a count, an epoch, a grade or a seed),
  JSON's non-standard ``NaN`` and ``Infinity``, and JSON nested too deeply to read.

The screening files' JSON (:class:`ScreeningRecord`, :class:`FusedScreeningRecord`)
is checked by the same reader (:func:`check_screening`) but kept as plain data.

To add a field: add it to the dataclass with its type (and a line to its docstring),
set it where the one writer's caller builds the record, and raise the record's
``*_VERSION`` by one, so that files written before are refused with the command that
writes them again instead of failing on the missing key. Nothing else changes: the
reader checks the new field from its annotation, and the writer writes it.

This module imports neither torch nor anything heavy (the report reads these).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar, Union

from retinopathy.core.contract import (
    ARMS,
    DATA_SPLITS,
    EXTERNAL_FORMATS,
    FUSION_FACTS,
    FUSION_METHODS,
    GRADES,
    HISTORY_COLUMNS,
    LEFT_OUT_REASONS,
    LEVELS,
    NUM_GRADES,
    OPERATING_POINTS,
    SELECT_BY,
    SELECTION_SPLITS,
    SPLITS,
    TTAS,
    VAL_COLUMNS,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import json_text, write_json_atomic, write_text_atomic
from retinopathy.core.registry import MODELS

STATUS_VERSION = 1  # models/<arm>/status.json
INFO_VERSION = 1  # metrics/<arm>.info.json
SUMMARY_VERSION = 1  # data/prepared/summary.json
IMPORT_VERSION = 1  # import.json of a folder written by `import-external`

VERSION_KEY = "version"
STATUS_KEY = "status"  # status.json and info.json: "trained" or "skipped"
TRAINED, SKIPPED = "trained", "skipped"


# ------------------------------------------------------------------ what a field allows


@dataclass(frozen=True)
class OneOf:
    """``Annotated[str, OneOf(contract.ARMS)]``: the field holds one of ``values``."""

    values: tuple[Any, ...]

    def check(self, value: Any, where: str) -> None:
        if value not in self.values:
            raise ValueError(f"{where!r} is {_shown(value)}, not one of {', '.join(map(str, self.values))}")


@dataclass(frozen=True)
class Between:
    """``Annotated[float, Between(0, 1)]``: a number in [low, high] (None: no bound on that side)."""

    low: float | None = None
    high: float | None = None

    def check(self, value: Any, where: str) -> None:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            wanted = (
                "a fraction in [0, 1]"
                if (self.low, self.high) == (0, 1)
                else f"at least {self.low}"
                if self.high is None
                else f"at most {self.high}"
                if self.low is None
                else f"in [{self.low}, {self.high}]"
            )
            raise ValueError(f"{where!r} is {_shown(value)}, not {wanted}")


@dataclass(frozen=True)
class Keys:
    """``Annotated[dict[str, float], Keys(a, b)]``: a mapping whose keys are exactly ``a``'s or ``b``'s."""

    sets: tuple[tuple[str, ...], ...]

    def __init__(self, *sets: tuple[str, ...]) -> None:
        object.__setattr__(self, "sets", sets)

    def check(self, value: Any, where: str) -> None:
        if any(set(value) == set(keys) for keys in self.sets):
            return
        allowed = {key for keys in self.sets for key in keys}
        extra = [key for key in value if key not in allowed]
        closest = min(self.sets, key=lambda keys: len(set(keys) ^ set(value)))
        missing = [key for key in closest if key not in value]
        problem = (
            f"has the key(s) {', '.join(map(repr, extra))}, which it may not have"
            if extra
            else f"lacks {', '.join(map(repr, missing))}"
        )
        raise ValueError(f"{where!r} {problem}")


@dataclass(frozen=True)
class Like:
    """``Annotated[dict[str, Any], Like(PatientCounts)]``: plain data (as its writers and readers use
    it), checked as the record ``record`` would be."""

    record: type

    def check(self, value: Any, where: str) -> None:
        _build(self.record, value, where)


Fraction = Annotated[float, Between(0, 1)]
Epoch = Annotated[int, Between(1)]


# ------------------------------------------------------------------ the records


@dataclass(frozen=True)
class Skipped:
    """An arm that was not trained (the pretrained one offline): status.json and info.json alike.

    Attributes:
        model: The architecture (``contract.MODELS``).
        init: The arm (``contract.ARMS``).
        reason: Why it was not trained, in words.
        fix: What makes it trainable.
    """

    model: Annotated[str, OneOf(MODELS)]
    init: Annotated[str, OneOf(ARMS)]
    reason: str
    fix: str


@dataclass(frozen=True)
class TrainingStatus:
    """What train did for an arm that it trained: ``models/<arm>/status.json``, for evaluate.

    Attributes:
        model: The architecture.
        init: The arm.
        epochs: Epochs trained.
        best_epoch: The selected epoch (the one in ``best.pt``; the first among ties).
        selection: The split that selected it: ``validation`` or ``test``.
        select_by: The figure that selected it: ``accuracy`` or ``kappa`` (train.select_by).
        decoder: What decoded the training pixels (decoders differ by a few levels).
        resident: Whether the splits were decoded once into the device's memory (evaluate does the same).
        weights: Where the initial weights came from, in words.
        fingerprint: The run's fingerprint (``checkpoint.fingerprint``), also in ``best.pt``.
        history: One row per epoch (``contract.HISTORY_COLUMNS``, then ``VAL_COLUMNS``).
    """

    model: Annotated[str, OneOf(MODELS)]
    init: Annotated[str, OneOf(ARMS)]
    epochs: Epoch
    best_epoch: Epoch
    selection: Annotated[str, OneOf(SELECTION_SPLITS)]
    select_by: Annotated[str, OneOf(SELECT_BY)]
    decoder: str
    resident: bool
    weights: str
    fingerprint: str
    history: list[Annotated[dict[str, float], Keys(HISTORY_COLUMNS, HISTORY_COLUMNS + VAL_COLUMNS)]]


@dataclass(frozen=True)
class EvaluationInfo:
    """evaluate's words about a trained arm: ``metrics/<arm>.info.json`` (its numbers are ``<arm>.json``).

    Attributes:
        model: The architecture.
        init: The arm.
        weights: Where the initial weights came from, in words.
        data: ``data.root`` of the evaluated test split.
        synthetic: Whether that is the synthetic demo.
        selection: The split that selected the epoch: ``validation`` or ``test``.
        select_by: The figure that selected it: ``accuracy`` or ``kappa``.
        selection_rule: The same in words.
        tta: ``evaluate.tta``: ``none`` or ``flips``.
        epochs: Epochs trained.
        test_size: Test images evaluated.
        decoder: What decoded the test pixels.
        trained_with_decoder: What decoded the training pixels.
        fingerprint: The evaluated checkpoint's run fingerprint (export's card checks it).
        numerics: ``portable.state()``: the CPU numerics in effect.
        patients: prepare's patient counts (``PreparedSummary.patients``), for the report's leakage line.
    """

    model: Annotated[str, OneOf(MODELS)]
    init: Annotated[str, OneOf(ARMS)]
    weights: str
    data: str
    synthetic: bool
    selection: Annotated[str, OneOf(SELECTION_SPLITS)]
    select_by: Annotated[str, OneOf(SELECT_BY)]
    selection_rule: str
    tta: Annotated[str, OneOf(TTAS)]
    epochs: Epoch
    test_size: int
    decoder: str
    trained_with_decoder: str
    fingerprint: str
    numerics: dict[str, Any]
    patients: Annotated[dict[str, Any], Like(PatientCounts)]


@dataclass(frozen=True)
class EyePairs:
    """The training patients with both eyes listed (``data.patients.eye_pairs``)."""

    pairs: int
    same_grade: Fraction | None  # None: no such patient
    differences: list[int]  # patients whose eyes differ by 0, 1, ... 4 grades


@dataclass(frozen=True)
class PatientCounts:
    """prepare's patient counts (``data.patients.leakage``), in summary.json and info.json as plain data."""

    split: Annotated[str, OneOf(DATA_SPLITS)]
    named_by_patient: bool
    count: Annotated[dict[str, int], Keys(SPLITS)]
    test_and_train: int
    test_images: int
    test_share: Fraction
    val_and_train: int
    val_images: int
    val_share: Fraction
    train_pairs: EyePairs


@dataclass(frozen=True)
class SplitCounts:
    """One split of the prepared index: its size and its images per grade (0-4)."""

    count: int
    class_counts: list[int]


@dataclass(frozen=True)
class MajorityBaseline:
    """Always answering the commonest training grade: the grade and its test accuracy (a fraction)."""

    grade: Annotated[int, OneOf(GRADES)]
    test_accuracy: Fraction
    rule: str


@dataclass(frozen=True)
class PreparedSummary:
    """prepare's summary of the checked data: ``data/prepared/summary.json``.

    Attributes:
        root: ``data.root``, the folder prepared.
        synthetic: Whether it is the synthetic demo.
        splits: Per split (train, val, test, in that order): size and counts per grade.
        majority_baseline: The accuracy of always answering the commonest training grade.
        notes: What was accepted and normalised in the input (a header row, a BOM, ...).
        identical_images: The same photograph listed under several names
            (``data.checks.duplicates_summary``: counts and examples).
        patients: Patients per split and those with eyes on both sides of it
            (``data.patients.leakage``).
    """

    root: str
    synthetic: bool
    splits: Annotated[dict[str, SplitCounts], Keys(SPLITS)]
    majority_baseline: MajorityBaseline
    notes: list[str]
    identical_images: dict[str, Any]
    patients: Annotated[dict[str, Any], Like(PatientCounts)]


@dataclass(frozen=True)
class Figure:
    """One screening figure with its bootstrap interval (None: undefined, one class only; no interval)."""

    value: float | None
    low: float | None
    high: float | None
    undefined: int  # resamples in which it had no value

    def __post_init__(self) -> None:
        if (self.low is None) != (self.high is None):
            raise ValueError("its 'low' and 'high' must both be numbers or both be null")


@dataclass(frozen=True)
class LevelFigures:
    """The screening figures of one level (per image or per patient): counts, then ``screening.FIGURES``.

    The figures at the operating points are there only when a validation split chose them.
    """

    n: int
    referable: int
    vision_threatening: int
    accuracy: Figure
    kappa: Figure
    auc_referable: Figure
    auc_vision_threatening: Figure
    sensitivity: Figure
    specificity: Figure
    high_sensitivity_sensitivity: Figure | None = None
    high_sensitivity_specificity: Figure | None = None
    high_specificity_sensitivity: Figure | None = None
    high_specificity_specificity: Figure | None = None

    def __post_init__(self) -> None:
        if not self.vision_threatening <= self.referable <= self.n:
            raise ValueError(
                f"it counts {self.n} cases, {self.referable} referable and "
                f"{self.vision_threatening} vision-threatening: not n >= referable >= "
                "vision-threatening"
            )


@dataclass(frozen=True)
class Bootstrap:
    """How the screening intervals were drawn."""

    resamples: int
    seed: int
    confidence: Fraction
    unit: Annotated[str, OneOf(("patient",))]
    method: Annotated[str, OneOf(("percentile",))]


@dataclass(frozen=True)
class Calibration:
    """The expected calibration error of P(grade >= 2) (None: a regression head, no probability)."""

    ece: Fraction | None
    bins: Annotated[int, Between(1)]
    level: Annotated[str, OneOf(LEVELS)]


@dataclass(frozen=True)
class OperatingPoint:
    """A score threshold chosen on validation for a target (None: that split has one class only)."""

    target: Fraction
    threshold: float | None
    val_sensitivity: Fraction | None
    val_specificity: Fraction | None

    def __post_init__(self) -> None:
        if self.threshold is not None and (self.val_sensitivity is None or self.val_specificity is None):
            raise ValueError("it has a threshold but no validation sensitivity or specificity at it")


@dataclass(frozen=True)
class OperatingPoints:
    """The operating points (``contract.OPERATING_POINTS``) and the validation images that chose them."""

    high_sensitivity: OperatingPoint
    high_specificity: OperatingPoint
    val_images: int


@dataclass(frozen=True)
class ScreeningRecord:
    """``metrics/<arm>.screening.json`` of a trained arm (``evaluation.screening.record``), read back.

    ``operating_points`` is ``{}`` without a validation split.
    """

    bootstrap: Bootstrap
    operating_points: OperatingPoints | Annotated[dict[str, Any], Keys(())]
    calibration: Calibration
    image: LevelFigures
    patient: LevelFigures
    notes: list[str]


@dataclass(frozen=True)
class FusionFacts:
    """What the `fuse` stage did (``contract.FUSION_FACTS``): the ``fusion`` entry of its screening file."""

    method: Annotated[str, OneOf(FUSION_METHODS)]
    selection: str
    epoch: int
    images: int
    fused: int
    single_no_partner: int
    val_images: int

    def __post_init__(self) -> None:
        if self.fused + self.single_no_partner > self.images:
            raise ValueError(
                f"'fused' ({self.fused}) and 'single_no_partner' ({self.single_no_partner}) "
                f"add up to more than 'images' ({self.images})"
            )


@dataclass(frozen=True)
class FusedScreeningRecord(ScreeningRecord):
    """``metrics/fused/<arm>.screening.json``: the screening record of the fused grades, and ``fusion``."""

    fusion: FusionFacts

    def __post_init__(self) -> None:
        if self.image.n != self.fusion.images:
            raise ValueError(f"'image.n' ({self.image.n}) and 'fusion.images' ({self.fusion.images}) differ")


def _names(record: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(record))


# The field names above that repeat a fact of the contract: checked here, once, when imported.
if (
    _names(FusionFacts) != tuple(FUSION_FACTS)
    or _names(OperatingPoints)[:-1] != OPERATING_POINTS
    or _names(LevelFigures)[-4:]
    != tuple(f"{point}_{figure}" for point in OPERATING_POINTS for figure in ("sensitivity", "specificity"))
):
    raise ImportError(
        "core/records.py: FusionFacts, OperatingPoints or LevelFigures no longer match the "
        "facts of core/contract.py"
    )


@dataclass(frozen=True)
class ImportSummary:
    """What `import-external` wrote and left out: ``import.json`` in its output folder.

    Attributes:
        format: The set's format (``contract.EXTERNAL_FORMATS``).
        root: ``--root``, the folder read, as given.
        size: ``--size``, the side of the square images written.
        images: Images in the test split (``test_img.csv``).
        grades: Test images per grade 0-4.
        splits: Test images per split of origin in the set (its own names: train, test, valid,
            Public, ...), in the order first met.
        left_out: Photographs of the set not in the test split, per reason (every one of
            ``contract.LEFT_OUT_REASONS``, 0 when none).
        left_out_examples: The first few sources (paths under ``root``, or ids) per reason.
        patients: Patients among the test images (``data.labels.patient_of`` of their names);
            None when the set names no patients or eyes.
        eye_pairs: Patients with a left and a right eye among the test images; None as ``patients``.
        referable_dme: Test images with referable diabetic macular edema (``test_dme.csv``);
            None when the set has no DME labels.
        dme_definition: Which label of the set is referable DME, in words; None as ``referable_dme``.
        quality: Photographs in ``quality.csv`` per EyeQ level (``contract.QUALITY_LEVELS``);
            None when the set has no quality labels.
        quality_definition: Which label of the set gives the quality, in words; None as ``quality``.
        label_files: The set's label files read (paths under ``root``) and their SHA-256.
        notes: What was accepted and normalised in the set's files (a BOM, CRLF, trailing columns,
            ...), and what was decided about its quirks.
    """

    format: str
    root: str
    size: int
    images: int
    grades: list[int]
    splits: dict[str, int]
    left_out: dict[str, int]
    left_out_examples: dict[str, list[str]]
    patients: int | None
    eye_pairs: int | None
    referable_dme: int | None
    dme_definition: str | None
    quality: dict[str, int] | None
    quality_definition: str | None
    label_files: dict[str, str]
    notes: list[str]


# ------------------------------------------------------------------ writing


def _fields(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def write_status(path: Path, record: TrainingStatus | Skipped) -> None:
    """Write ``status.json`` (atomically): version, ``trained`` or ``skipped``, the fields."""
    kind = TRAINED if isinstance(record, TrainingStatus) else SKIPPED
    write_json_atomic(path, {VERSION_KEY: STATUS_VERSION, STATUS_KEY: kind, **_fields(record)})


def info_text(path: Path, record: EvaluationInfo | Skipped) -> str:
    """The text of ``<arm>.info.json`` at ``path``: version, ``trained`` or ``skipped``, the fields."""
    kind = TRAINED if isinstance(record, EvaluationInfo) else SKIPPED
    return json_text(path, {VERSION_KEY: INFO_VERSION, STATUS_KEY: kind, **_fields(record)})


def write_info(path: Path, record: EvaluationInfo | Skipped) -> None:
    """Write ``<arm>.info.json`` (:func:`info_text`) atomically."""
    write_text_atomic(path, info_text(path, record))


def summary_text(record: PreparedSummary) -> str:
    """The text of ``summary.json`` (prepare writes it into its staging folder)."""
    return json.dumps({VERSION_KEY: SUMMARY_VERSION, **_fields(record)}, indent=2) + "\n"


def import_summary_text(record: ImportSummary) -> str:
    """The text of ``import.json`` (import-external writes it into its staging folder)."""
    return json.dumps({VERSION_KEY: IMPORT_VERSION, **_fields(record)}, indent=2) + "\n"


# ------------------------------------------------------------------ reading

# Reads a file's text; FileNotFoundError when it is not there. The default reads the
# working tree; `compare` passes one that reads an experiment's files through DVC.
ReadText = Callable[[Path], str]


def read_working_tree(path: Path) -> str:
    """The text of ``path`` on disk (UTF-8)."""
    return path.read_text(encoding="utf-8")


class RecordError(RetinopathyError):
    """A record file that is missing, damaged, or of another version; the message names it and the fix."""


Record = TypeVar("Record")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _shown(value: Any) -> str:
    """``value`` as JSON, cut short, for a message."""
    try:
        return json.dumps(value)[:80]
    except (ValueError, RecursionError):
        return repr(value)[:80]


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotation ``hint`` says (nested records built), or ValueError saying where."""
    if typing.get_origin(hint) is Annotated:
        base, *marks = typing.get_args(hint)
        converted = _convert(value, base, where)
        for mark in marks:
            mark.check(converted, where)
        return converted
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _convert(value, option, where)
            except ValueError as error:
                errors.append(error)
        if value is not None:  # the first option's own words (`Figure | None`: what is wrong in it)
            raise errors[0]
    elif hint is Any:
        return value
    elif origin is list and isinstance(value, list):
        return [_convert(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return {key: _convert(item, args[1], f"{where}.{key}") for key, item in value.items()}
    elif hint is None or hint is type(None):
        if value is None:
            return value
    elif hint is float:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where!r} is {value}, not a finite number")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value  # as written: an integer stays one, so that writing it again changes no byte
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(
                    f"{where!r} is {value}, but it is a count (or an epoch, a grade, a seed): never negative"
                )
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ValueError(f"{where!r} is {_shown(value)}, not of type {_type_name(hint)}")


def _build(cls: type[Record], raw: Any, where: str = "") -> Record:
    """A ``cls`` from the JSON object ``raw``: exactly its fields (those with a default may be absent),
    each of its annotated type and within what its annotation allows."""
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'the file'} is not a JSON object")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = [field.name for field in fields]
    optional = {
        field.name
        for field in fields
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }
    missing = [name for name in names if name not in raw and name not in optional]
    if missing:
        raise ValueError(
            f"the key {prefix}{missing[0]!r} is missing"
            if len(missing) == 1
            else f"the keys {', '.join(repr(prefix + name) for name in missing)} are missing"
        )
    extra = [key for key in raw if key not in names]
    if extra:
        raise ValueError(
            f"it has the key(s) {', '.join(repr(prefix + str(key)) for key in extra)}, which "
            f"a {cls.__name__} does not"
        )
    values = {name: _convert(raw[name], hints[name], prefix + name) for name in names if name in raw}
    try:
        return cls(**values)
    except ValueError as error:  # a record's own check of its fields together (__post_init__)
        raise ValueError(f"{where or 'the record'}: {error}") from None


def build_record(cls: type[Record], raw: Any) -> Record:
    """A ``cls`` from plain data, checked from its annotations as every record here is.

    For a record kept in another format than JSON (the `fuse` stage's blend, a torch file).

    Raises:
        ValueError: saying which key is missing, unknown, of the wrong type or not allowed.
    """
    return _build(cls, raw)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which is no number JSON allows")


def parse_json(text: str) -> Any:
    """The JSON value of ``text``, strictly: ValueError for bad syntax, ``NaN``/``Infinity``, a number of
    thousands of digits, or nesting thousands of levels deep (which would otherwise overflow the stack)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("it is nested too deeply to read (thousands of levels)") from None


def read_json_object(path: Path, read: ReadText, missing_fix: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; else a :class:`RecordError` naming it and ``missing_fix`` or ``fix``."""
    try:
        text = read(path)
    except FileNotFoundError:
        raise RecordError(f"{path}: not found; {missing_fix}") from None
    except UnicodeDecodeError:
        raise RecordError(f"{path}: damaged, not UTF-8 text; {fix}") from None
    except OSError as error:
        raise RecordError(f"{path}: cannot read it ({error.strerror}); {fix}") from None
    try:
        raw = parse_json(text)
    except ValueError as error:
        raise RecordError(f"{path}: damaged, not a JSON record ({error}); {fix}") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: damaged, not a JSON object; {fix}")
    return raw


def _versioned(path: Path, raw: dict[str, Any], version: int, fix: str) -> dict[str, Any]:
    """``raw`` without its version, which must be ``version``."""
    found = raw.get(VERSION_KEY)
    if found != version:
        written = (
            "before records were versioned" if VERSION_KEY not in raw else f"in format version {found!r}"
        )
        raise RecordError(
            f"{path}: written {written}, but this version of retinopathy reads format "
            f"version {version} only; {fix}"
        )
    return {key: value for key, value in raw.items() if key != VERSION_KEY}


def _record(path: Path, cls: type[Record], raw: dict[str, Any], fix: str) -> Record:
    try:
        return _build(cls, raw)
    except ValueError as error:
        raise RecordError(f"{path}: {error} (damaged, or written by another version); {fix}") from None


def _trained_or_skipped(
    path: Path, raw: dict[str, Any], trained: type[Record], what: str, fix: str
) -> Record | Skipped:
    kind = raw.get(STATUS_KEY)
    if kind not in (TRAINED, SKIPPED):
        raise RecordError(
            f"{path}: not {what} (its `{STATUS_KEY}` is {kind!r}, not {TRAINED} or {SKIPPED}); {fix}"
        )
    fields = {key: value for key, value in raw.items() if key != STATUS_KEY}
    if kind == TRAINED:
        return _record(path, trained, fields, fix)
    return _record(path, Skipped, fields, fix)


def read_status(path: Path, arm: str, read: ReadText = read_working_tree) -> TrainingStatus | Skipped:
    """Training's ``status.json`` for ``arm``, checked whole: never half read.

    Raises:
        RecordError: missing, damaged, of another version, or a key missing, unknown or of the
            wrong type; naming the file and what to run.
    """
    fix = (
        f"restore it with `dvc checkout models/{arm}`, or run `dvc repro -f train@{arm}` to train "
        "the arm again"
    )
    raw = _versioned(
        path, read_json_object(path, read, f"run `dvc repro train@{arm}` first", fix), STATUS_VERSION, fix
    )
    status = _trained_or_skipped(path, raw, TrainingStatus, "a training status record", fix)
    if isinstance(status, TrainingStatus):
        problem = _history_problem(status)
        if problem:
            raise RecordError(f"{path}: {problem} (damaged, or written by another version); {fix}")
    return status


def _history_problem(status: TrainingStatus) -> str | None:
    """What is wrong with a trained status's history and epochs, as a whole (None: nothing)."""
    if not status.history:
        return "a trained record with no history"
    if len(status.history) != status.epochs or not status.best_epoch <= status.epochs:
        return (
            f"it says {status.epochs} epochs, the best {status.best_epoch}, but its history has "
            f"{len(status.history)} rows"
        )
    for number, row in enumerate(status.history, start=1):
        if row["epoch"] != number:
            return f"'history[{number - 1}].epoch' is {row['epoch']}, not {number}"
        for key, value in row.items():
            low, high = (
                (0, 1) if key.endswith("_accuracy") else (-1, 1) if key.endswith("_kappa") else (0, math.inf)
            )
            if not low <= value <= high:
                return f"'history[{number - 1}].{key}' is {value}, not in [{low}, {high}]"
    return None


def read_info(path: Path, arm: str, read: ReadText = read_working_tree) -> EvaluationInfo | Skipped:
    """evaluate's ``<arm>.info.json``, checked whole: never half read.

    Raises:
        RecordError: as :func:`read_status`, naming the file and what to run.
    """
    fix = f"run `dvc repro -f evaluate@{arm}` to write it again"
    raw = _versioned(
        path, read_json_object(path, read, f"run `dvc repro evaluate@{arm}` first", fix), INFO_VERSION, fix
    )
    return _trained_or_skipped(path, raw, EvaluationInfo, "an evaluation info record", fix)


PREPARE_FIX = "run `dvc repro -f prepare` to write it again (or `dvc checkout data/prepared`)"


def read_summary(path: Path, read: ReadText = read_working_tree) -> PreparedSummary:
    """prepare's ``summary.json``, checked whole: never half read.

    Raises:
        RecordError: as :func:`read_status`, or a majority baseline that is no grade or
            no fraction; naming the file and saying to run prepare again.
    """
    raw = _versioned(
        path,
        read_json_object(path, read, "run `dvc repro prepare` first", PREPARE_FIX),
        SUMMARY_VERSION,
        PREPARE_FIX,
    )
    return _record(path, PreparedSummary, raw, PREPARE_FIX)


def check_screening(path: Path, raw: Any, fix: str, fused: bool = False) -> dict[str, Any]:
    """``raw``, a trained arm's screening JSON as read, if it is a whole :class:`ScreeningRecord`.

    ``fused``: a :class:`FusedScreeningRecord` (the `fuse` stage's, with its ``fusion`` facts).
    The record is checked, not converted: the report reads the plain data.

    Raises:
        RecordError: naming ``path``, what is wrong and ``fix``.
    """
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: damaged, not a JSON object; {fix}")
    _record(path, FusedScreeningRecord if fused else ScreeningRecord, raw, fix)
    return raw


def read_import_summary(path: Path, read: ReadText = read_working_tree) -> ImportSummary:
    """``import.json`` of a folder written by `import-external`, checked whole: never half read.

    Raises:
        RecordError: as :func:`read_status`, or counts that do not add up (a format, grade or
            reason this version does not know); naming the file and saying to import again.
    """
    fix = (
        f"import the set again with `retinopathy import-external FORMAT --root DIR --out "
        f"{path.parent}` into a new folder"
    )
    missing = f"{path.parent} was not written by `retinopathy import-external`; {fix}"
    raw = _versioned(path, read_json_object(path, read, missing, fix), IMPORT_VERSION, fix)
    summary = _record(path, ImportSummary, raw, fix)
    if summary.format not in EXTERNAL_FORMATS:
        raise RecordError(
            f"{path}: 'format' is {summary.format!r}, not one of {', '.join(EXTERNAL_FORMATS)}; {fix}"
        )
    if len(summary.grades) != NUM_GRADES or sum(summary.grades) != summary.images:
        raise RecordError(
            f"{path}: 'grades' {summary.grades} are not {NUM_GRADES} counts adding up to "
            f"'images' ({summary.images}); {fix}"
        )
    if list(summary.left_out) != list(LEFT_OUT_REASONS):
        raise RecordError(
            f"{path}: 'left_out' has the reasons {list(summary.left_out)}, not "
            f"{list(LEFT_OUT_REASONS)}; {fix}"
        )
    return summary
