"""The JSON records that one stage writes and another reads: a frozen dataclass each, one writer, one reader.

- :class:`TrainingStatus`, ``models/<arm>/status.json``: written by train (:func:`write_status`),
  read by evaluate and export, and by predict's and export's messages (:func:`read_status`);
- :class:`EvaluationInfo`, ``metrics/<arm>.info.json``: written by evaluate (:func:`write_info`),
  read by report, compare, explain and export (:func:`read_info`);
- :class:`Skipped`: either of the two for an arm that was not trained (the pretrained one offline);
- :class:`PreparedSummary`, ``data/prepared/summary.json``: written by prepare (:func:`summary_text`),
  read by evaluate (:func:`read_summary`);
- :class:`ImportSummary`, ``import.json`` in a folder of `import-external`: written by it
  (:func:`import_summary_text`), read by the external validation (:func:`read_import_summary`);
- :class:`ExternalRun`, ``metrics/external/files/<arm>/index.json``: written by the `external`
  stage (:func:`external_run_text`), read by report and compare (:func:`read_external_run`);
- :class:`QualitySurvey`, ``metrics/quality.info.json``: written by the `quality` stage
  (:func:`quality_survey_text`), read by report (:func:`read_quality_survey`).

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
  ``Keys``), fields that do not fit together (the record's ``__post_init__``), and
  always: a float that is not finite, a negative int (every int here is a count, an
  epoch, a grade or a seed), JSON's non-standard ``NaN`` and ``Infinity``, and JSON
  nested too deeply to read.

The reader is :func:`retinopathy.core.schema.parse`, the one typed layer that params,
the weights manifest and the `fuse` stage's blend go through too. The screening files'
JSON is written from a :class:`ScreeningRecord` or :class:`FusedScreeningRecord`
(:func:`screening_data`) and read back as one (:func:`check_screening`,
:func:`check_fused_screening`); the report reads the plain data once it is checked.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from retinopathy.core.config import QualityThresholds
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
    QUALITY_LEVELS,
    SELECT_BY,
    SELECTION_SPLITS,
    SPLITS,
    TTAS,
    VAL_COLUMNS,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import json_text, write_json_atomic, write_text_atomic
from retinopathy.core.registry import MODELS
from retinopathy.core.schema import Between, Invalid, Keys, OneOf, parse, refuse

STATUS_VERSION = 1  # models/<arm>/status.json
INFO_VERSION = 1  # metrics/<arm>.info.json
SUMMARY_VERSION = 1  # data/prepared/summary.json
IMPORT_VERSION = 1  # import.json of a folder written by `import-external`
EXTERNAL_VERSION = 1  # metrics/external/files/<arm>/index.json
QUALITY_VERSION = 1  # metrics/quality.info.json

VERSION_KEY = "version"
STATUS_KEY = "status"  # status.json and info.json: "trained" or "skipped"
TRAINED, SKIPPED = "trained", "skipped"


# ------------------------------------------------------------------ the records

Fraction = Annotated[float, Between(0, 1)]
Epoch = Annotated[int, Between(1)]


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

    def __post_init__(self) -> None:
        problem = _history_problem(self)
        if problem:
            raise refuse("history", problem, text=problem)


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
    numerics: dict[str, str | int | bool]
    patients: PatientCounts


@dataclass(frozen=True)
class EyePairs:
    """The training patients with both eyes listed (``data.patients.eye_pairs``)."""

    pairs: int
    same_grade: Fraction | None  # None: no such patient
    differences: list[int]  # patients whose eyes differ by 0, 1, ... 4 grades


@dataclass(frozen=True)
class PatientCounts:
    """prepare's patient counts (``data.patients.leakage``), in summary.json and info.json.

    Attributes:
        split: ``data.split`` (``lists`` or ``patients``).
        named_by_patient: Whether any name is ``<patient>_left|right`` (if not, every image is its own
            patient and nothing can be counted).
        count: The patients of each split.
        test_and_train: Patients with an eye in test and another in train or val.
        test_images: The test images of those patients.
        test_share: Their share of the test split.
        val_and_train: Patients with an eye in val and another in train.
        val_images: The validation images of those patients.
        val_share: Their share of the validation split.
        train_pairs: The training patients with both eyes listed.
    """

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
class Duplicates:
    """The same photograph listed under several names (``data.checks.duplicates_summary``).

    Attributes:
        groups: Sets of identical images.
        images: Images in them.
        across_splits: Groups with images in more than one split.
        within_a_split: Groups within one split.
        different_grades: Groups whose images have different grades.
        examples: The first few groups, as ``<split>:<image> (grade <g>)``, those across splits first.
    """

    groups: int
    images: int
    across_splits: int
    within_a_split: int
    different_grades: int
    examples: list[list[str]]


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
    identical_images: Duplicates
    patients: PatientCounts


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
class LevelGradability:
    """What ungradable photographs do to the screening figures of one level (per image or per patient).

    A patient is gradable when every photograph of theirs is (IDx-DR's protocol needs both eyes).

    Attributes:
        n: Cases (images or patients).
        gradable: Gradable cases.
        imageability: The gradable share of the cases.
        gradable_only: The screening figures on the gradable cases only.
        sensitivity: Intention to screen: sensitivity of referable DR at the model's grade, an
            ungradable case counted as referred (a patient: any photograph referred or ungradable).
        specificity: The same specificity.
        high_sensitivity_sensitivity: The same at the operating points, where a validation split chose them.
    """

    n: int
    gradable: int
    imageability: Figure
    gradable_only: LevelFigures
    sensitivity: Figure
    specificity: Figure
    high_sensitivity_sensitivity: Figure | None = None
    high_sensitivity_specificity: Figure | None = None
    high_specificity_sensitivity: Figure | None = None
    high_specificity_specificity: Figure | None = None

    def __post_init__(self) -> None:
        if not self.gradable_only.n == self.gradable <= self.n:
            raise ValueError(
                f"it counts {self.n} cases, {self.gradable} gradable and {self.gradable_only.n} in "
                "'gradable_only': not n >= gradable = gradable_only.n"
            )


@dataclass(frozen=True)
class Gradability:
    """The `quality` stage's verdicts on the test photographs, and the figures they change.

    Attributes:
        rule: How ungradable photographs were counted, in words.
        reasons: Test photographs per reason they are ungradable for (one may have several).
        image: The figures per image.
        patient: The figures per patient.
    """

    rule: str
    reasons: dict[str, int]
    image: LevelGradability
    patient: LevelGradability


@dataclass(frozen=True)
class ScreeningRecord:
    """``metrics/<arm>.screening.json`` of a trained arm (``evaluation.screening.record``), read back.

    ``operating_points`` is ``{}`` without a validation split. ``gradability`` is there when the test
    photographs' quality verdicts were given (evaluate: the `quality` stage's); a file written before
    it existed reads as None. Keyword-only, so that records built on this one add required fields.
    """

    bootstrap: Bootstrap
    operating_points: OperatingPoints | Annotated[dict[str, OperatingPoint], Keys(())]
    calibration: Calibration
    image: LevelFigures
    patient: LevelFigures
    notes: list[str]
    gradability: Gradability | None = dataclasses.field(default=None, kw_only=True)


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
class UnfusedRecord:
    """``metrics/fused/<arm>.screening.json`` of a trained arm whose fusion was skipped (its training
    split has no two-eyed patient): no figures, only the `fuse` stage's facts, whose ``selection``
    says why. Written by ``fusion.grading.unfused``, read by the report (:func:`check_unfused_screening`)."""

    fusion: FusionFacts

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written."""
        return {"fusion": dataclasses.asdict(self.fusion)}


@dataclass(frozen=True)
class FusedScreeningRecord(ScreeningRecord):
    """``metrics/fused/<arm>.screening.json``: the screening record of the fused grades, and ``fusion``."""

    fusion: FusionFacts

    @classmethod
    def of(cls, record: ScreeningRecord, fusion: FusionFacts) -> FusedScreeningRecord:
        """``record`` (of the fused grades) with the `fuse` stage's facts."""
        fields = {field.name: getattr(record, field.name) for field in dataclasses.fields(ScreeningRecord)}
        return cls(**fields, fusion=fusion)

    def __post_init__(self) -> None:
        if self.image.n != self.fusion.images:
            raise ValueError(f"'image.n' ({self.image.n}) and 'fusion.images' ({self.fusion.images}) differ")


def screening_data(record: ScreeningRecord) -> dict[str, Any]:
    """A screening record as its JSON file holds it: the fields in order, nested records as objects,
    and a field at its default (a figure at an operating point no validation split chose) left out."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                field.name: plain(getattr(value, field.name))
                for field in dataclasses.fields(value)
                if field.default is dataclasses.MISSING or getattr(value, field.name) != field.default
            }
        if isinstance(value, list):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    return plain(record)


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

    format: Annotated[str, OneOf(EXTERNAL_FORMATS)]
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

    def __post_init__(self) -> None:
        # counts that do not add up: a grade or a reason this version does not know
        if len(self.grades) != NUM_GRADES or sum(self.grades) != self.images:
            raise refuse(
                "grades",
                f"{self.grades} are not {NUM_GRADES} counts adding up to 'images' ({self.images})",
            )
        if list(self.left_out) != list(LEFT_OUT_REASONS):
            raise refuse("left_out", f"has the reasons {list(self.left_out)}, not {list(LEFT_OUT_REASONS)}")


# ------------------------------------------------------------------ writing


@dataclass(frozen=True)
class ExternalSet:
    """One external set as an arm graded it: an entry of the `external` stage's ``index.json``.

    Attributes:
        folder: params.yaml's ``external.<name>``, the folder `import-external` wrote.
        format: The set's format (``import.json``).
        images: Test images graded.
        patients: Patients among them; None when the set names none (then per patient = per image).
        referable: What "referable" means in ``<name>.screening.json``, in words.
        gulshan: Where the set has DME labels: Gulshan et al.'s definition of referable, in words,
            scored in ``gulshan/<name>.screening.json``; None otherwise.
        referable_dme: Test images with referable DME (None as ``gulshan``).
        operating_points: Where the operating points were chosen, in words (never on this set).
        quality: Where the set has quality labels (its ``quality.csv``): each EyeQ level -> the
            quality assessor's verdicts on the set's photographs of that level, the ones the set calls
            ungradable (not graded) included; None for a set without (and in files written before).
    """

    folder: str
    format: Annotated[str, OneOf(EXTERNAL_FORMATS)]
    images: int
    patients: int | None
    referable: str
    gulshan: str | None
    referable_dme: int | None
    operating_points: str
    quality: Annotated[dict[str, VerdictCounts], Keys(QUALITY_LEVELS, ())] | None = None


@dataclass(frozen=True)
class ExternalRun:
    """``metrics/external/files/<arm>/index.json``: the sets an arm's ``best.pt`` graded, or why none.

    Attributes:
        arm: The arm.
        sets: Each graded set by its name (params.yaml's ``external``), in the order listed there.
        skipped: Why the arm graded nothing (it was not trained), with the fix; None when trained.
    """

    arm: Annotated[str, OneOf(ARMS)]
    sets: dict[str, ExternalSet]
    skipped: Skipped | None


@dataclass(frozen=True)
class VerdictCounts:
    """Photographs of one EyeQ level that the assessor found gradable and ungradable."""

    gradable: int
    ungradable: int


@dataclass(frozen=True)
class QualitySurvey:
    """``metrics/quality.info.json``: what the `quality` stage judged, with what, and how labels agree.

    Attributes:
        thresholds: ``quality.thresholds``, as judged with.
        labels: ``quality.labels`` (None: no labels).
        photos: Photographs judged per split.
        ungradable: Of them, those found ungradable, per split.
        test_patients: Patients of the test split.
        reasons: Test photographs per reason they are ungradable for (one may have several).
        labelled: Test photographs with a label.
        unmatched: Label rows that name no photograph of the prepared index.
        unmatched_examples: The first few of those names.
        unlabelled: Photographs of the index (every split) without a label.
        confusion: The test split's EyeQ level -> the verdicts on its photographs (``{}`` without labels).
        bootstrap: How the intervals of ``metrics/quality.json`` were drawn.
        notes: What a reader of the figures should know.
    """

    thresholds: QualityThresholds
    labels: str | None
    photos: Annotated[dict[str, int], Keys(SPLITS)]
    ungradable: Annotated[dict[str, int], Keys(SPLITS)]
    test_patients: int
    reasons: dict[str, int]
    labelled: int
    unmatched: int
    unmatched_examples: list[str]
    unlabelled: int
    confusion: Annotated[dict[str, VerdictCounts], Keys(QUALITY_LEVELS, ())]
    bootstrap: Bootstrap
    notes: list[str]


def quality_survey_text(path: Path, record: QualitySurvey) -> str:
    """The text of ``metrics/quality.info.json`` at ``path``: version, then the fields."""
    return json_text(path, {VERSION_KEY: QUALITY_VERSION, **dataclasses.asdict(record)})


def external_run_text(path: Path, record: ExternalRun) -> str:
    """The text of the `external` stage's ``index.json`` at ``path``: version, then the fields."""
    return json_text(path, {VERSION_KEY: EXTERNAL_VERSION, **dataclasses.asdict(record)})


def write_status(path: Path, record: TrainingStatus | Skipped) -> None:
    """Write ``status.json`` (atomically): version, ``trained`` or ``skipped``, the fields."""
    kind = TRAINED if isinstance(record, TrainingStatus) else SKIPPED
    write_json_atomic(path, {VERSION_KEY: STATUS_VERSION, STATUS_KEY: kind, **dataclasses.asdict(record)})


def info_text(path: Path, record: EvaluationInfo | Skipped) -> str:
    """The text of ``<arm>.info.json`` at ``path``: version, ``trained`` or ``skipped``, the fields."""
    kind = TRAINED if isinstance(record, EvaluationInfo) else SKIPPED
    return json_text(path, {VERSION_KEY: INFO_VERSION, STATUS_KEY: kind, **dataclasses.asdict(record)})


def write_info(path: Path, record: EvaluationInfo | Skipped) -> None:
    """Write ``<arm>.info.json`` (:func:`info_text`) atomically."""
    write_text_atomic(path, info_text(path, record))


def summary_text(record: PreparedSummary) -> str:
    """The text of ``summary.json`` (prepare writes it into its staging folder)."""
    return json.dumps({VERSION_KEY: SUMMARY_VERSION, **dataclasses.asdict(record)}, indent=2) + "\n"


def import_summary_text(record: ImportSummary) -> str:
    """The text of ``import.json`` (import-external writes it into its staging folder)."""
    return json.dumps({VERSION_KEY: IMPORT_VERSION, **dataclasses.asdict(record)}, indent=2) + "\n"


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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}, which is no number JSON allows")


def parse_json(text: str) -> Any:
    """The JSON value of ``text``, strictly: ValueError for bad syntax, ``NaN``/``Infinity``, a number of
    thousands of digits, or nesting thousands of levels deep (which would otherwise overflow the stack)."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("it is nested too deeply to read (thousands of levels)") from None


def read_text_file(path: Path, missing_fix: str, fix: str, read: ReadText = read_working_tree) -> str:
    """The text of a file a stage wrote; else a :class:`RecordError` naming it and the fix.

    Args:
        path: The file.
        missing_fix: What to do when it is missing (the stage that writes it).
        fix: What to do when it cannot be read: not UTF-8, a folder, no permission.
        read: How to read it (the working tree, or a git revision's).
    """
    try:
        return read(path)
    except FileNotFoundError:
        raise RecordError(f"{path}: not found; {missing_fix}") from None
    except UnicodeDecodeError:
        raise RecordError(f"{path}: damaged, not UTF-8 text; {fix}") from None
    except OSError as error:
        raise RecordError(f"{path}: cannot read it ({error.strerror}); {fix}") from None


def read_json_object(path: Path, read: ReadText, missing_fix: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; else a :class:`RecordError` naming it and ``missing_fix`` or ``fix``."""
    text = read_text_file(path, missing_fix, fix, read)
    try:
        raw = parse_json(text)
    except ValueError as error:
        raise RecordError(f"{path}: damaged, not a JSON record ({error}); {fix}") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: damaged, not a JSON object; {fix}")
    return raw


def _versioned(path: Path, raw: dict[str, object], version: int, fix: str) -> dict[str, object]:
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


def _record(path: Path, cls: type[Record], raw: object, fix: str) -> Record:
    try:
        return parse(cls, raw)
    except Invalid as error:
        raise RecordError(f"{path}: {error} (damaged, or written by another version); {fix}") from None


def _trained_or_skipped(
    path: Path, raw: dict[str, object], trained: type[Record], what: str, fix: str
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
    return _trained_or_skipped(path, raw, TrainingStatus, "a training status record", fix)


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


def check_screening(path: Path, raw: object, fix: str) -> ScreeningRecord:
    """A trained arm's screening JSON as read (``raw``), as the whole :class:`ScreeningRecord` it must be.

    Raises:
        RecordError: naming ``path``, what is wrong and ``fix``.
    """
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: damaged, not a JSON object; {fix}")
    return _record(path, ScreeningRecord, raw, fix)


def check_unfused_screening(path: Path, raw: object, fix: str) -> UnfusedRecord:
    """As :func:`check_fused_screening`, the :class:`UnfusedRecord` of an arm whose fusion was skipped."""
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: damaged, not a JSON object; {fix}")
    return _record(path, UnfusedRecord, raw, fix)


def check_fused_screening(path: Path, raw: object, fix: str) -> FusedScreeningRecord:
    """As :func:`check_screening`, the `fuse` stage's :class:`FusedScreeningRecord` (with its ``fusion``)."""
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: damaged, not a JSON object; {fix}")
    return _record(path, FusedScreeningRecord, raw, fix)


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
    return _record(path, ImportSummary, raw, fix)


def read_external_run(path: Path, read: ReadText = read_working_tree) -> ExternalRun:
    """The `external` stage's ``index.json`` of one arm, checked whole.

    Raises:
        RecordError: missing, damaged or of another version; naming the file and the stage to rerun.
    """
    fix = "run `dvc repro external` to write it again"
    raw = _versioned(path, read_json_object(path, read, fix, fix), EXTERNAL_VERSION, fix)
    return _record(path, ExternalRun, raw, fix)


def read_quality_survey(path: Path, read: ReadText = read_working_tree) -> QualitySurvey:
    """The `quality` stage's ``quality.info.json``, checked whole.

    Raises:
        RecordError: missing, damaged or of another version; naming the file and the stage to rerun.
    """
    fix = "run `dvc repro quality` to write it again"
    raw = _versioned(
        path, read_json_object(path, read, "run `dvc repro quality` first", fix), QUALITY_VERSION, fix
    )
    return _record(path, QualitySurvey, raw, fix)
