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
  the field's annotation (checked from the annotations, nested records included).

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
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

from retinopathy.core.contract import EXTERNAL_FORMATS, GRADES, LEFT_OUT_REASONS, NUM_GRADES
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import write_json_atomic

STATUS_VERSION = 1  # models/<arm>/status.json
INFO_VERSION = 1  # metrics/<arm>.info.json
SUMMARY_VERSION = 1  # data/prepared/summary.json
IMPORT_VERSION = 1  # import.json of a folder written by `import-external`

VERSION_KEY = "version"
STATUS_KEY = "status"  # status.json and info.json: "trained" or "skipped"
TRAINED, SKIPPED = "trained", "skipped"


@dataclass(frozen=True)
class Skipped:
    """An arm that was not trained (the pretrained one offline): status.json and info.json alike.

    Attributes:
        model: The architecture (``contract.MODELS``).
        init: The arm (``contract.ARMS``).
        reason: Why it was not trained, in words.
        fix: What makes it trainable.
    """

    model: str
    init: str
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

    model: str
    init: str
    epochs: int
    best_epoch: int
    selection: str
    select_by: str
    decoder: str
    resident: bool
    weights: str
    fingerprint: str
    history: list[dict[str, float]]


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

    model: str
    init: str
    weights: str
    data: str
    synthetic: bool
    selection: str
    select_by: str
    selection_rule: str
    tta: str
    epochs: int
    test_size: int
    decoder: str
    trained_with_decoder: str
    fingerprint: str
    numerics: dict[str, Any]
    patients: dict[str, Any]


@dataclass(frozen=True)
class SplitCounts:
    """One split of the prepared index: its size and its images per grade (0-4)."""

    count: int
    class_counts: list[int]


@dataclass(frozen=True)
class MajorityBaseline:
    """Always answering the commonest training grade: the grade and its test accuracy (a fraction)."""

    grade: int
    test_accuracy: float
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
    splits: dict[str, SplitCounts]
    majority_baseline: MajorityBaseline
    notes: list[str]
    identical_images: dict[str, Any]
    patients: dict[str, Any]


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


def write_info(path: Path, record: EvaluationInfo | Skipped) -> None:
    """Write ``<arm>.info.json`` (atomically): version, ``trained`` or ``skipped``, the fields."""
    kind = TRAINED if isinstance(record, EvaluationInfo) else SKIPPED
    write_json_atomic(path, {VERSION_KEY: INFO_VERSION, STATUS_KEY: kind, **_fields(record)})


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


def _convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotation ``hint`` says (nested records built), or ValueError saying where."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _convert(value, option, where)
            except ValueError:
                continue
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
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value  # as written: an integer stays one, so that writing it again changes no byte
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ValueError(f"{where!r} is {json.dumps(value)[:80]}, not of type {_type_name(hint)}")


def _build(cls: type[Record], raw: Any, where: str = "") -> Record:
    """A ``cls`` from the JSON object ``raw``: exactly its fields, each of its annotated type."""
    prefix = f"{where}." if where else ""
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'the file'} is not a JSON object")
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]  # type: ignore[arg-type]
    missing = [name for name in names if name not in raw]
    if missing:
        raise ValueError(f"the key {prefix}{missing[0]!r} is missing" if len(missing) == 1
                         else f"the keys {', '.join(repr(prefix + name) for name in missing)} are missing")
    extra = [key for key in raw if key not in names]
    if extra:
        raise ValueError(f"it has the key(s) {', '.join(repr(prefix + key) for key in extra)}, which "
                         f"a {cls.__name__} does not")
    return cls(**{name: _convert(raw[name], hints[name], prefix + name) for name in names})


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
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(f"{path}: damaged, not a JSON record ({error}); {fix}") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: damaged, not a JSON object; {fix}")
    return raw


def _versioned(path: Path, raw: dict[str, Any], version: int, fix: str) -> dict[str, Any]:
    """``raw`` without its version, which must be ``version``."""
    found = raw.get(VERSION_KEY)
    if found != version:
        written = ("before records were versioned" if VERSION_KEY not in raw
                   else f"in format version {found!r}")
        raise RecordError(f"{path}: written {written}, but this version of retinopathy reads format "
                          f"version {version} only; {fix}")
    return {key: value for key, value in raw.items() if key != VERSION_KEY}


def _record(path: Path, cls: type[Record], raw: dict[str, Any], fix: str) -> Record:
    try:
        return _build(cls, raw)
    except ValueError as error:
        raise RecordError(f"{path}: {error} (damaged, or written by another version); {fix}") from None


def _trained_or_skipped(path: Path, raw: dict[str, Any], trained: type[Record], what: str,
                        fix: str) -> Record | Skipped:
    kind = raw.get(STATUS_KEY)
    if kind not in (TRAINED, SKIPPED):
        raise RecordError(f"{path}: not {what} (its `{STATUS_KEY}` is {kind!r}, not {TRAINED} or "
                          f"{SKIPPED}); {fix}")
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
    fix = (f"restore it with `dvc checkout models/{arm}`, or run `dvc repro -f train@{arm}` to train "
           "the arm again")
    raw = _versioned(path, read_json_object(path, read, f"run `dvc repro train@{arm}` first", fix),
                     STATUS_VERSION, fix)
    status = _trained_or_skipped(path, raw, TrainingStatus, "a training status record", fix)
    if isinstance(status, TrainingStatus) and not status.history:
        raise RecordError(f"{path}: a trained record with no history; {fix}")
    return status


def read_info(path: Path, arm: str, read: ReadText = read_working_tree) -> EvaluationInfo | Skipped:
    """evaluate's ``<arm>.info.json``, checked whole: never half read.

    Raises:
        RecordError: as :func:`read_status`, naming the file and what to run.
    """
    fix = f"run `dvc repro -f evaluate@{arm}` to write it again"
    raw = _versioned(path, read_json_object(path, read, f"run `dvc repro evaluate@{arm}` first", fix),
                     INFO_VERSION, fix)
    return _trained_or_skipped(path, raw, EvaluationInfo, "an evaluation info record", fix)


PREPARE_FIX = "run `dvc repro -f prepare` to write it again (or `dvc checkout data/prepared`)"


def read_summary(path: Path, read: ReadText = read_working_tree) -> PreparedSummary:
    """prepare's ``summary.json``, checked whole: never half read.

    Raises:
        RecordError: as :func:`read_status`, or a majority baseline that is no grade or
            no fraction; naming the file and saying to run prepare again.
    """
    raw = _versioned(path, read_json_object(path, read, "run `dvc repro prepare` first", PREPARE_FIX),
                     SUMMARY_VERSION, PREPARE_FIX)
    summary = _record(path, PreparedSummary, raw, PREPARE_FIX)
    baseline = summary.majority_baseline
    if not 0 <= baseline.test_accuracy <= 1:
        raise RecordError(f"{path}: 'majority_baseline.test_accuracy' is {baseline.test_accuracy!r}, not a "
                          f"fraction in [0, 1]; {PREPARE_FIX}")
    if baseline.grade not in GRADES:
        raise RecordError(f"{path}: 'majority_baseline.grade' is {baseline.grade!r}, not a grade; "
                          f"{PREPARE_FIX}")
    return summary


def read_import_summary(path: Path, read: ReadText = read_working_tree) -> ImportSummary:
    """``import.json`` of a folder written by `import-external`, checked whole: never half read.

    Raises:
        RecordError: as :func:`read_status`, or counts that do not add up (a format, grade or
            reason this version does not know); naming the file and saying to import again.
    """
    fix = (f"import the set again with `retinopathy import-external FORMAT --root DIR --out "
           f"{path.parent}` into a new folder")
    missing = f"{path.parent} was not written by `retinopathy import-external`; {fix}"
    raw = _versioned(path, read_json_object(path, read, missing, fix), IMPORT_VERSION, fix)
    summary = _record(path, ImportSummary, raw, fix)
    if summary.format not in EXTERNAL_FORMATS:
        raise RecordError(f"{path}: 'format' is {summary.format!r}, not one of "
                          f"{', '.join(EXTERNAL_FORMATS)}; {fix}")
    if len(summary.grades) != NUM_GRADES or sum(summary.grades) != summary.images:
        raise RecordError(f"{path}: 'grades' {summary.grades} are not {NUM_GRADES} counts adding up to "
                          f"'images' ({summary.images}); {fix}")
    if list(summary.left_out) != list(LEFT_OUT_REASONS):
        raise RecordError(f"{path}: 'left_out' has the reasons {list(summary.left_out)}, not "
                          f"{list(LEFT_OUT_REASONS)}; {fix}")
    return summary
