"""External validation: an arm's ``best.pt`` grades every set that `import-external` wrote.

Each set of params.yaml's ``external`` (a name -> a folder with ``import.json``) is graded
as evaluate grades the test split (:mod:`retinopathy.engine.evaluation`'s :func:`open_grader`
and :func:`grade`) and scored with evaluate's code and schema
(:func:`retinopathy.evaluation.screening.record_at`, :mod:`retinopathy.evaluation.screening_files`),
per image and per patient (where the set names no patients, each image is its own patient).

The operating points are the ones the arm chose on the INTERNAL validation split
(``metrics/<arm>.screening.json``), applied unchanged: choosing them again on the external set
would report the figures a screening programme could not have set in advance. Where the set
has DME labels, referable is scored a second time as Gulshan et al. 2016 define it (moderate DR
or worse, or referable diabetic macular edema), in ``gulshan/<set>.screening.json``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from retinopathy.core.config import QualityThresholds
from retinopathy.core.contract import (
    FUSED_METRIC_KEYS,
    METRIC_DECIMALS,
    QUALITY_LEVELS,
    QUALITY_REASON_SEPARATOR,
    REFERABLE_GRADE,
    ArmFiles,
    ExternalFiles,
    ImportedSet,
    prediction_header,
)
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import csv_text, json_text
from retinopathy.core.records import (
    ExternalRun,
    ExternalSet,
    ImportSummary,
    RecordError,
    ScreeningRecord,
    Skipped,
    TrainingStatus,
    VerdictCounts,
    check_screening,
    external_run_text,
    read_external_run,
    read_import_summary,
    read_json_object,
    read_working_tree,
)
from retinopathy.data.labels import Record, image_path, parse_split
from retinopathy.engine.evaluation import Graded, grade, load_best, open_grader, prediction_rows
from retinopathy.engine.runtime import Switches
from retinopathy.evaluation.scoring import confusion_tables, scores
from retinopathy.evaluation.screening import Scored, record_at
from retinopathy.evaluation.screening_files import screening_contents
from retinopathy.quality.labels import read_quality_labels
from retinopathy.quality.photos import assess_files
from retinopathy.quality.verdict import REASONS

REFERABLE = "referable DR: grade >= 2 (moderate non-proliferative DR or worse)"
GULSHAN = (
    "referable as Gulshan et al. 2016 define it: moderate DR or worse (grade >= 2), or referable "
    "diabetic macular edema"
)
GULSHAN_NOTE = (
    f"{GULSHAN}. A DME-referable image counts as grade 2 here when its grade is lower, so only the "
    "referable figures (AUC, sensitivity, specificity) mean what they say; accuracy, kappa and the "
    "vision-threatening figures of the set's own grades are in the set's screening file"
)
IMPORT_FIX = "retinopathy import-external FORMAT --root DIR --out DIR"


@dataclass(frozen=True)
class ExternalData:
    """One configured set, read and checked: its import record, test images and DME labels."""

    name: str
    folder: Path
    summary: ImportSummary
    records: list[Record]
    dme: np.ndarray | None  # referable DME (bool) per test image; None without DME labels


def _dme_labels(files: ImportedSet, count: int, key: str) -> np.ndarray:
    lines = files.dme.read_text(encoding="utf-8").splitlines()
    if len(lines) != count or any(line not in ("0", "1") for line in lines):
        raise RetinopathyError(
            f"{files.dme}: expected {count} lines of 0 or 1 (one per line of test_img.csv), found "
            f"{len(lines)} lines; the folder of {key} was changed after import - import the set again "
            f"(`{IMPORT_FIX}`) into a new folder"
        )
    return np.array([line == "1" for line in lines], dtype=bool)


def _written_images(files: ImportedSet) -> list[str]:
    """The photographs `import-external` wrote (``sources.csv``'s status ``test`` or ``ungradable``).

    Raises:
        RetinopathyError: ``sources.csv`` is missing, unreadable or lacks its columns (the folder
            was changed after import), naming it and the fix.
    """
    again = f"the folder was changed after import - import the set again (`{IMPORT_FIX}`) into a new folder"
    try:
        with files.sources.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            rows, columns = list(reader), reader.fieldnames or []
    except FileNotFoundError:
        raise RetinopathyError(f"{files.sources}: not found, but quality.csv is there; {again}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RetinopathyError(f"{files.sources}: cannot read it ({error}); {again}") from None
    if not {"image", "status"} <= set(columns):
        raise RetinopathyError(f"{files.sources}:1: lacks the columns image and status; {again}")
    return [row["image"] for row in rows if row["status"] in ("test", "ungradable")]


def read_set(name: str, folder: str) -> ExternalData:
    """The set ``name`` of params.yaml's ``external``, checked to be a folder `import-external` wrote.

    Raises:
        RetinopathyError: the folder is missing or was not imported (naming ``external.<name>`` and the
            import command), or its lists no longer match its ``import.json``.
    """
    key = f"params.yaml's external.{name}"
    path = Path(folder)
    files = ImportedSet(path)
    if not path.is_dir() or not files.summary.is_file():
        what = "is not a folder" if not path.is_dir() else "has no import.json"
        raise RetinopathyError(
            f"{folder}: {what}, so it was not written by `retinopathy import-external` ({key}); "
            f"import the set first with `{IMPORT_FIX.replace('--out DIR', f'--out {folder}')}`, "
            f"or remove {name} from external in params.yaml"
        )
    try:
        summary = read_import_summary(files.summary)
    except RecordError as error:
        raise RetinopathyError(f"{error} ({key})") from None
    records = parse_split(path, "test").records
    if len(records) != summary.images:
        raise RetinopathyError(
            f"{path}: test_img.csv lists {len(records)} images, import.json {summary.images} ({key}); "
            f"the folder was changed after import - import the set again (`{IMPORT_FIX}`) into a new folder"
        )
    dme = _dme_labels(files, len(records), key) if summary.dme_definition else None
    return ExternalData(name, path, summary, records, dme)


def internal_points(files: ArmFiles) -> ScreeningRecord:
    """The arm's internal screening record (evaluate's): the operating points chosen on validation."""
    fix = f"run `dvc repro evaluate@{files.arm}` first"
    path = files.screening_files.screening
    return check_screening(path, read_json_object(path, read_working_tree, fix, fix), fix)


def _with_gulshan(rows: Scored, dme: np.ndarray) -> Scored:
    """``rows`` with each DME-referable image below grade 2 counted as grade 2 (Gulshan's referable)."""
    raised = np.where(dme & (rows.actual < REFERABLE_GRADE), REFERABLE_GRADE, rows.actual)
    return replace(rows, actual=raised.astype(np.int64))


def _points_source(files: ArmFiles, internal: ScreeningRecord) -> str:
    points = internal.operating_points
    if isinstance(points, dict):
        return f"none: {files.screening_files.screening} has none (no internal validation split)"
    return (
        f"chosen on the internal validation split ({points.val_images} images, "
        f"{files.screening_files.screening}), applied unchanged"
    )


def judge_set(data: ExternalData, thresholds: QualityThresholds) -> list[tuple[bool, str]]:
    """The transparent quality verdict on each test image of the set, as evaluate has the `quality`
    stage's: (gradable, the reasons joined by ``contract.QUALITY_REASON_SEPARATOR``).

    The set's own quality labels (its ``quality.csv``) decided which photographs were imported as
    gradable; this is the assessor's verdict on those, measured on the imported copies.
    """
    verdicts = assess_files([image_path(data.folder, record.image) for record in data.records], thresholds)
    return [(verdict.gradable, QUALITY_REASON_SEPARATOR.join(verdict.reasons)) for verdict in verdicts]


def quality_agreement(
    data: ExternalData, judged: list[tuple[bool, str]], thresholds: QualityThresholds
) -> dict[str, VerdictCounts] | None:
    """The set's own quality labels against the assessor: per EyeQ level, its verdicts.

    Every photograph `import-external` wrote is judged: the test images (``judged``, :func:`judge_set`)
    and those the set calls ungradable, written only for ``quality.csv`` (``sources.csv``'s status).

    Returns:
        EyeQ level -> verdict counts; None for a set without quality labels.
    """
    files = ImportedSet(data.folder)
    if not files.quality.is_file():
        return None
    written = _written_images(files)
    labels = read_quality_labels(files.quality, written, key=f"the quality labels of {data.folder}")
    verdicts = {record.image: ok for record, (ok, _) in zip(data.records, judged, strict=True)}
    others = [name for name in labels.levels if name not in verdicts]  # those not imported as test images
    paths = [image_path(data.folder, name) for name in others]
    verdicts.update(zip(others, (v.gradable for v in assess_files(paths, thresholds)), strict=True))
    counts = {level: [0, 0] for level in QUALITY_LEVELS}
    for name, level in labels.levels.items():
        counts[QUALITY_LEVELS[level]][0 if verdicts[name] else 1] += 1
    return {level: VerdictCounts(gradable=g, ungradable=u) for level, (g, u) in counts.items()}


def set_contents(
    out: ExternalFiles,
    data: ExternalData,
    graded: Graded,
    internal: ScreeningRecord,
    arm_files: ArmFiles,
    bootstrap: int,
    seed: int,
    regression: bool,
    judged: list[tuple[bool, str]],
    quality: dict[str, VerdictCounts] | None = None,
) -> tuple[ExternalSet, dict[Path, str]]:
    """Score one graded set at the internal operating points: its entry of the index and its files' texts.

    ``judged`` is :func:`judge_set`'s verdicts: the predictions say whether each image is gradable and
    the screening records gain their ``gradability`` part (imageability, the figures on gradable
    images only, intention to screen), as evaluate's do.
    """
    rows = replace(graded.rows, gradable=np.array([ok for ok, _ in judged], dtype=bool))
    said = [text.split(QUALITY_REASON_SEPARATOR) for _, text in judged]
    reasons = {reason: sum(reason in words for words in said) for reason in REASONS}
    probabilities = not regression
    source = _points_source(arm_files, internal)
    notes = [f"operating points: {source}"]
    if data.summary.patients is None:
        notes.append(
            f"{data.name} names no patients: each image is its own patient (per patient = per image)"
        )
    screening = record_at(rows, internal.operating_points, bootstrap, seed, probabilities, notes, reasons)
    actual, predicted = rows.actual, graded.predicted
    numbers = scores(actual, predicted, confusion_tables(actual, predicted))
    metrics = {key: round(numbers[key], METRIC_DECIMALS) for key in FUSED_METRIC_KEYS if key in numbers}
    contents = {
        out.metrics(data.name): json_text(out.metrics(data.name), metrics),
        out.predictions(data.name): csv_text(
            list(prediction_header(regression)), prediction_rows(data.records, graded, judged)
        ),
        **screening_contents(out.screening(data.name), screening, rows, probabilities),
    }
    if data.dme is not None:
        gulshan = _with_gulshan(rows, data.dme)
        record = record_at(
            gulshan,
            internal.operating_points,
            bootstrap,
            seed,
            probabilities,
            [GULSHAN_NOTE, *notes],
            reasons,
        )
        contents.update(screening_contents(out.gulshan(data.name), record, gulshan, probabilities))
    entry = ExternalSet(
        folder=str(data.folder),
        format=data.summary.format,
        images=len(data.records),
        patients=data.summary.patients,
        referable=REFERABLE,
        gulshan=GULSHAN if data.dme is not None else None,
        referable_dme=int(data.dme.sum()) if data.dme is not None else None,
        operating_points=source,
        quality=quality,
    )
    return entry, contents


def skipped_contents(out: ExternalFiles, status: Skipped, names: list[str]) -> dict[Path, str]:
    """A skipped arm, as evaluate writes one: per set ``{}`` as metrics, header-only CSVs, an empty
    screening record; its index says why and how to fix it."""
    contents: dict[Path, str] = {}
    for name in names:
        contents[out.metrics(name)] = json_text(out.metrics(name), {})
        contents[out.predictions(name)] = csv_text(list(prediction_header(regression=False)), [])
        contents.update(screening_contents(out.screening(name), None, None, probabilities=False))
    contents[out.index] = external_run_text(out.index, ExternalRun(out.arm, {}, status))
    return contents


def stale_files(out: ExternalFiles, contents: Mapping[Path, str]) -> list[Path]:
    """The files of sets that the previous run wrote (its index lists them) and this one does not.

    The stage's folders are DVC outputs kept between runs (``persist``), so a set taken out of
    params.yaml would otherwise keep its row in `dvc metrics show`.
    """
    if not out.index.is_file():
        return []
    try:
        previous = read_external_run(out.index)
    except RecordError:
        return []  # an index of another version: its files are replaced or left, never guessed at
    names = set(previous.sets)
    paths: list[Path] = []
    for name in names:
        paths += [out.metrics(name), out.predictions(name)]
        for files in (out.screening(name), out.gulshan(name)):
            paths += [files.screening, files.roc_image, files.roc_patient, files.reliability]
    return [path for path in paths if path not in contents and path.is_file()]


def validate_external(
    arm_files: ArmFiles,
    out: ExternalFiles,
    status: TrainingStatus,
    sets: Mapping[str, str],
    switches: Switches,
    cache_dir: str | None,
    batch_size: int,
    tta: bool,
    bootstrap: int,
    seed: int,
    thresholds: QualityThresholds,
) -> dict[Path, str]:
    """Grade every set of ``sets`` with the arm's ``best.pt``; the text of every file, by file.

    Args:
        arm_files: The arm's files (its ``best.pt`` and evaluate's screening record).
        out: Where the `external` stage writes the arm's files.
        status: What training recorded (checked against ``best.pt``).
        sets: params.yaml's ``external``: a set's name -> the folder `import-external` wrote.
        switches: The device and numerics (params.yaml's ``train`` switches, ``data.num_workers``).
        cache_dir: ``data.cache_dir``.
        batch_size: ``train.batch_size`` (evaluation batches are twice it).
        tta: ``evaluate.tta == "flips"``.
        bootstrap: ``evaluate.bootstrap``: resamples of patients for the intervals.
        seed: ``evaluate.seed``.
        thresholds: ``quality.thresholds``: each image's quality verdict (:func:`judge_set`).

    Raises:
        RetinopathyError: a set that was not imported, or changed since; a missing or foreign checkpoint
            or internal screening record; outputs that are not finite. All before anything is written.
    """
    data = [read_set(name, folder) for name, folder in sets.items()]  # every set checked first
    contents: dict[Path, str] = {}
    entries: dict[str, ExternalSet] = {}
    if data:
        internal = internal_points(arm_files)
        trained = load_best(arm_files, status)
        regression = trained.spec.head().regression
        for one in data:
            records = {"test": one.records}
            opened = open_grader(switches, str(one.folder), cache_dir, trained, status, records)
            graded = grade(opened, records, batch_size, tta, arm_files, one.folder / "test_img.csv")
            judged = judge_set(one, thresholds)
            agreement = quality_agreement(one, judged, thresholds)
            entry, texts = set_contents(
                out, one, graded["test"], internal, arm_files, bootstrap, seed, regression, judged, agreement
            )
            entries[one.name] = entry
            contents.update(texts)
    contents[out.index] = external_run_text(out.index, ExternalRun(out.arm, entries, None))
    return contents
