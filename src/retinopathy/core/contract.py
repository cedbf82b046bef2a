"""The on-disk contract: every fact that a writer and a reader share, written once.

Grades, arm names, the output paths of each stage and the columns of
every CSV the pipeline writes live here, and both sides import them: the stage
that writes a file and the stage (or command, or test) that reads it. dvc.yaml
names the same paths; a test checks that it agrees with :class:`Layout`.

This module imports neither torch nor anything heavy, so a command that only
reads results (the report) does not pay for importing torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# The International Clinical Diabetic Retinopathy scale, grade 0-4.
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
NUM_GRADES = len(GRADE_NAMES)
GRADES = tuple(range(NUM_GRADES))
# A regression output v is graded by how many thresholds lie below it; these round it.
ROUNDING_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
REFERABLE_GRADE = 2  # moderate or worse: the usual screening threshold for referral
VISION_THREATENING_GRADE = 3  # severe or proliferative
# Gulshan et al. 2016's two operating points, chosen on validation by a target sensitivity or specificity
# (params `evaluate.operating_points`) and applied unchanged to test.
OPERATING_POINTS = ("high_sensitivity", "high_specificity")
COURSE_IMAGE_SIZE = 512  # the course's images (and import-kaggle's default): square crops of the fundus
# The largest network input side accepted (params `data.image_size`, a checkpoint's spec): a
# ResNet50 batch of 4 at 4096 px already needs about 100 GB of activations to train.
MAX_IMAGE_SIZE = 4096

ARMS = ("scratch", "pretrained")  # how an arm's network starts: random, or train.weights
# Fetching ImageNet weights (models/build.py, the `weights` stage): set the variable to 1 on machines
# where a download attempt would hang (e.g. a firewall that drops packets); the timeout is the
# seconds of silence from the server before a download gives up.
NO_DOWNLOAD_ENV = "RETINOPATHY_NO_DOWNLOAD"
DOWNLOAD_TIMEOUT = 60.0
SPLITS = ("train", "val", "test")  # of the prepared index; val is empty unless data.val_fraction > 0
NORMALIZATIONS = ("imagenet", "none")  # of the network's input, after scaling pixels to [0, 1]
PREPROCESSES = ("none", "graham")  # of the pixels before that (graham: local average colour subtracted)
LOSSES = ("cross_entropy", "regression")  # the head: 5 logits, or 1 value rounded into 0-4
SCHEDULES = ("constant", "cosine")  # the learning rate per batch
# data.split: the course's lists as they are, or a re-split keeping each patient's eyes on one side
DATA_SPLITS = ("lists", "patients")
# Which epoch training keeps: the best on this split (validation when there is one) by this figure
# (train.select_by); the records of train and evaluate say which.
SELECTION_SPLITS = ("validation", "test")
SELECT_BY = ("accuracy", "kappa")
TTAS = ("none", "flips")  # evaluate.tta: test-time augmentation, none or the mean over the four flips

INDEX_COLUMNS = ("split", "image", "label")
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "train_kappa",
    "test_loss",
    "test_accuracy",
    "test_kappa",
)
VAL_COLUMNS = ("val_loss", "val_accuracy", "val_kappa")  # appended when there is a validation split
CONFUSION_COLUMNS = ("actual", *(str(grade) for grade in GRADES))  # rows: true grade; columns: predicted
PREDICTION_COLUMNS = ("actual", "predicted")  # one row per test image, the long format of `dvc plots`
PROBABILITY_COLUMNS = tuple(f"p{grade}" for grade in GRADES)  # the classifier's P(grade)


# metrics/predictions/<arm>.csv in full: the image, its patient, the grades, the head's scores
# (PROBABILITY_COLUMNS, or "value" for the regression head), the referable score
# (P(grade >= 2) = p2 + p3 + p4, or the value) and the quality verdict (QUALITY_COLUMNS, below:
# empty where the photograph was not judged), from which every screening figure is recomputed.
def prediction_header(regression: bool) -> tuple[str, ...]:
    """The predictions CSV's columns for a classifier or (``regression``) a regression head."""
    return (
        "image",
        "patient",
        *PREDICTION_COLUMNS,
        *(("value",) if regression else PROBABILITY_COLUMNS),
        "referable_score",
        *QUALITY_COLUMNS,
    )


ROC_COLUMNS = ("fpr", "tpr", "threshold")  # metrics/roc/<arm>_<level>.csv: the ROC of referable DR
# metrics/reliability/<arm>.csv: the reliability diagram of P(grade >= 2), one row per bin
RELIABILITY_COLUMNS = ("low", "high", "count", "mean_probability", "observed")
LEVELS = ("image", "patient")  # the screening figures are given per image and per patient

# Grading with both eyes (the `fuse` stage, retinopathy.fusion): how each test image's grade was given.
FUSION_METHODS = ("none", "blend")  # none: each photograph alone; blend: [this eye, other eye, side] -> grade
FUSION_INPUTS = ("features", "scores")  # what the blend reads per eye: pooled penultimate layer, or scores
FUSION_SOURCES = ("single", "fused", "single-no-partner")  # the network alone; the blend; alone, no partner


def fused_prediction_columns(regression: bool) -> tuple[str, ...]:
    """``metrics/predictions/<arm>.fused.csv``'s header: one row per test image.

    ``p0``..``p4`` are the grade probabilities (``value`` for the regression head);
    ``referable_score`` is P(grade >= 2), the sum of p2..p4 (regression: the value itself,
    a score, not a probability); ``patient`` is the EyePACS patient (data.labels.patient_of);
    ``source`` is one of :data:`FUSION_SOURCES`. Evaluate's predictions' columns less the quality
    verdict (:data:`QUALITY_COLUMNS`), then ``source``.
    """
    scores = ("value",) if regression else tuple(f"p{grade}" for grade in GRADES)
    return ("image", "patient", "actual", "predicted", *scores, "referable_score", "source")


# metrics/fused/<arm>.json: the test split graded with both eyes, under the headline keys of
# metrics/<arm>.json (METRIC_KEYS) only, so that `dvc metrics show` gains rows, not columns.
FUSED_METRIC_KEYS = ("acc", "bacc", "kappa", *(f"r{grade}" for grade in GRADES))
# The `fusion` entry of metrics/fused/<arm>.screening.json: what the blend did, beside the figures.
FUSION_FACTS: dict[str, str] = {
    "method": "fuse.method: none (each photograph alone) or blend",
    "selection": "how the blend was kept (its epoch and the rule), in words",
    "epoch": "the blend's kept epoch (0: no blend)",
    "images": "test images",
    "fused": "test images graded by the blend (their patient's other eye is in the test split too)",
    "single_no_partner": "test images graded by the network alone: their other eye is not in the test split",
    "val_images": "validation images graded (both eyes where there) to choose the operating points on",
}


def recall_key(grade: int) -> str:
    """The metrics key of grade ``grade``'s recall: ``r0`` ... ``r4``."""
    return f"r{grade}"


# metrics/<arm>.json holds numbers only, under short keys, so that `dvc metrics show` of
# both arms, single-eye and fused (metrics/fused/<arm>.json), fits in 120 columns (the test
# accuracy after the last epoch is in the history and the report, not here); the words about
# the run (status, weights, the selection rule, why an arm was skipped) are in
# metrics/<arm>.info.json.
METRIC_KEYS: dict[str, str] = {
    "acc": "test accuracy of the selected epoch (under the lab's rule: the highest test accuracy)",
    "bacc": "balanced accuracy on the test split: the mean of the per-grade recalls",
    "base": "majority baseline: the test accuracy of always answering the commonest training grade",
    "epoch": "the selected epoch (the one evaluated)",
    "kappa": "quadratic weighted kappa on the test split (Kaggle 2015's metric)",
    **{
        recall_key(grade): f"recall of grade {grade}: the share of its test images graded {grade}"
        for grade in GRADES
    },
    "train": "training accuracy in the selected epoch (running, as the lab reports it)",
    "val": "validation accuracy of the selected epoch (only with data.val_fraction > 0)",
}
METRIC_DECIMALS = 3  # a person compares these at a glance; the history and predictions keep the rest


# `retinopathy import-external`: a public set that is not the training data, written as a test-only
# folder in the course layout (the test split's two lists and <name>.jpeg) plus the files of
# ImportedSet, for the pipeline's external validation to read.
# params.yaml's `external:` names a set for the pipeline's external validation: the name becomes a
# file name under metrics/external/ and part of a DVC stage's name (external@<arm>-<set>), so it is
# the image-name rule of data/labels.py without its `.` and `+` (a dot would read as a suffix, a
# key path or an interpolation in dvc.yaml).
EXTERNAL_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,59}")
EXTERNAL_SET_RULE = (
    "a set's name holds only ASCII letters, digits, _ and - (at most 60), and starts with a letter "
    "or a digit (e.g. messidor2, aptos-2019)"
)
EXTERNAL_FORMATS = ("aptos2019", "messidor2", "idrid", "ddr", "deepdrid", "eyepacs")
# Why a photograph of the set is not in the test split: the set calls it ungradable (it is still
# written, for quality.csv), it has no grade, or its file is missing (only with --allow-missing).
LEFT_OUT_REASONS = ("ungradable", "unlabelled", "missing file")
QUALITY_HEADER = ("", "image", "quality", "DR_grade")  # EyeQ's Label_EyeQ_{train,test}.csv (Fu et al. 2019)
QUALITY_LEVELS = ("Good", "Usable", "Reject")  # EyeQ's quality 0, 1, 2
# quality.ungradable: what predict does with a photograph the assessor finds ungradable (flag: grade it and
# mark it; withhold: leave its grade empty, as a screening device does)
UNGRADABLE_POLICIES = ("flag", "withhold")
# Beside the grade, every predictions CSV (evaluate's, external's, predict's) says whether the photograph
# could be graded: gradable true/false; quality, the reasons (quality.verdict.REASONS) joined by "; "
QUALITY_COLUMNS = ("gradable", "quality")
GRADABLE_CELLS = ("false", "true")  # a `gradable` cell, by the verdict: GRADABLE_CELLS[gradable]
# The learned assessor's column (quality.learned: P(EyeQ Reject), 4 decimals), after the others in
# metrics/quality/photos.csv and in predict's CSV with --quality-model.
LEARNED_COLUMN = "learned_reject"
QUALITY_REASON_SEPARATOR = "; "  # between the reasons of a `quality` cell
# metrics/quality/photos.csv (the `quality` stage): one row per photograph of the prepared index, these
# columns first, then each measure of quality.measures.Measures by its name, then QUALITY_LABEL_COLUMN (the
# EyeQ level's name of quality.labels, empty without one), then any other assessor's columns.
QUALITY_PHOTO_COLUMNS = ("image", "split", "patient", *QUALITY_COLUMNS)
QUALITY_LABEL_COLUMN = "label"
# One row per photograph the set lists or holds: written (status "test" or "ungradable") or left out.
SOURCE_COLUMNS = ("image", "status", "source", "split", "patient", "eye", "grade", "dme", "sha256")


@dataclass(frozen=True)
class ImportedSet:
    """The files of a folder written by `import-external`, beside the course layout's test lists.

    The test split itself is ``test_img.csv`` / ``test_label.csv``
    (``retinopathy.data.labels.SPLIT_FILES["test"]``, read by ``parse_split(folder, "test")``)
    and ``<name>.jpeg`` for every listed name.
    """

    folder: Path

    @property
    def dme(self) -> Path:
        """Referable diabetic macular edema (1) or not (0), one line per line of ``test_img.csv``
        (only for a set with DME labels)."""
        return self.folder / "test_dme.csv"

    @property
    def quality(self) -> Path:
        """EyeQ's format (:data:`QUALITY_HEADER`), gradable and ungradable photographs (only for a
        set with quality labels)."""
        return self.folder / "quality.csv"

    @property
    def summary(self) -> Path:
        """The import's record (``core.records.ImportSummary``)."""
        return self.folder / "import.json"

    @property
    def sources(self) -> Path:
        """:data:`SOURCE_COLUMNS`: every photograph of the set, where it came from and what became of it."""
        return self.folder / "sources.csv"


REPORT_FIGURES = ("accuracy.png", "best_accuracy.png")  # the report's figures of both arms together
SCREENING_FIGURES = ("roc.png", "reliability.png")  # the report's screening figures of both arms together
EXTERNAL_FIGURE = "roc_external.png"  # the report's ROC of referable DR of every external set (and internal)

# The synthetic demo's folder carries a README whose first line is this marker.
DEMO_README = "README.txt"
DEMO_MARKER = "SYNTHETIC DEMO DATASET"
# Beside the course layout, the demo's folder holds every photo's quality in EyeQ's format
# (QUALITY_HEADER) and what the painter knows: the true grade and the camera's fault.
DEMO_QUALITY = "quality.csv"
DEMO_TRUTH = "truth.csv"
# demo-data writes the demo's shifted set (another camera, another population, in APTOS 2019's
# layout) beside the demo's folder, under the folder's name and this suffix.
SHIFTED_SUFFIX = "-shifted"


def shifted_folder(demo: str | Path) -> Path:
    """Where `demo-data` writes the shifted set of the demo at ``demo``: beside it, named + SHIFTED_SUFFIX."""
    path = Path(demo)
    if path.name in ("", ".", ".."):  # `--out .` or `--out ..` still names a folder
        path = Path(os.path.abspath(path))
    return path.with_name(path.name + SHIFTED_SUFFIX)


def grade_label(grade: int) -> str:
    """``"2 Moderate"``: the grade's number and name, for tables and figures."""
    return f"{grade} {GRADE_NAMES[grade]}"


def is_demo_dataset(folder: str | Path) -> bool:
    """Whether ``folder`` holds the synthetic demo (its README starts with :data:`DEMO_MARKER`)."""
    readme = Path(folder) / DEMO_README
    return readme.is_file() and readme.read_text(errors="replace").startswith(DEMO_MARKER)


@dataclass(frozen=True)
class ScreeningFiles:
    """The screening files of one set of grades (``retinopathy.evaluation.screening_files``).

    Attributes:
        screening: The screening figures with their intervals (``retinopathy.evaluation.screening``).
        roc_image: The ROC curve of referable DR per image (``ROC_COLUMNS``).
        roc_patient: The same per patient.
        reliability: The reliability diagram's bins of P(grade >= 2) (``RELIABILITY_COLUMNS``).
    """

    screening: Path
    roc_image: Path
    roc_patient: Path
    reliability: Path

    def roc(self, level: str) -> Path:
        """The ROC curve's file of ``level`` (one of ``LEVELS``)."""
        return {"image": self.roc_image, "patient": self.roc_patient}[level]

    @classmethod
    def of(cls, folder: Path, arm: str) -> ScreeningFiles:
        """``arm``'s files under ``folder``: evaluate's in ``metrics/``, fuse's in ``metrics/fused/``."""
        return cls(
            folder / f"{arm}.screening.json",
            folder / "roc" / f"{arm}_image.csv",
            folder / "roc" / f"{arm}_patient.csv",
            folder / "reliability" / f"{arm}.csv",
        )


@dataclass(frozen=True)
class ExternalFiles:
    """The `external` stage's files of one arm (``metrics/external/``): per set, evaluate's files.

    Attributes:
        arm: The arm.
        folder: ``metrics/external/files/<arm>``: the index, the screening files, the predictions.
        headline: ``metrics/external/<arm>``: ``<set>.json`` only (a row of `dvc metrics show` each).
    """

    arm: str
    folder: Path
    headline: Path

    @property
    def index(self) -> Path:
        """The sets graded and how (``core.records.ExternalRun``), or why none."""
        return self.folder / "index.json"

    def metrics(self, name: str) -> Path:
        """The headline numbers of set ``name`` (:data:`FUSED_METRIC_KEYS`)."""
        return self.headline / f"{name}.json"

    def screening(self, name: str) -> ScreeningFiles:
        """Set ``name``'s screening files, as evaluate's: referable = grade >= 2."""
        return ScreeningFiles.of(self.folder, name)

    def gulshan(self, name: str) -> ScreeningFiles:
        """The same with Gulshan et al.'s referable (moderate DR or worse, or referable DME)."""
        return ScreeningFiles.of(self.folder / "gulshan", name)

    def predictions(self, name: str) -> Path:
        """Set ``name``'s predictions (:func:`prediction_header`), one row per image."""
        return self.folder / "predictions" / f"{name}.csv"


@dataclass(frozen=True)
class ArmFiles:
    """Every file of one arm (``scratch`` or ``pretrained``), from training to evaluation.

    Attributes:
        last: The checkpoint after the last finished epoch (model, optimizer, history, ...).
        best: The checkpoint of the selected epoch: what evaluate, predict and export use.
        status: What train did (trained or skipped, the best epoch, the history), for evaluate.
        lock: Held by the training run of the arm, so a second one fails at once (beside
            ``model_dir``, not in it: it is no part of the DVC output).
        history: Loss and accuracy per epoch (``HISTORY_COLUMNS``, then ``VAL_COLUMNS``).
        metrics: evaluate's numbers for `dvc metrics show` (``METRIC_KEYS``).
        info: evaluate's words about the run (status, weights, selection rule, ...).
        confusion_counts: The confusion matrix in counts (``CONFUSION_COLUMNS``).
        confusion_normalized: The same, each row divided by the true grade's count.
        predictions: :func:`prediction_header` per test image.
        val_predictions: The same per validation image (header only without a validation split).
        screening_files: evaluate's screening files of the arm (the network alone): the figures
            with their intervals, the ROC curves and the reliability diagram.
    """

    arm: str
    model_dir: Path
    last: Path
    best: Path
    status: Path
    lock: Path
    history: Path
    metrics: Path
    info: Path
    confusion_counts: Path
    confusion_normalized: Path
    predictions: Path
    val_predictions: Path
    screening_files: ScreeningFiles


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (the working directory).

    dvc.yaml lists the same paths (tests/test_dvc_yaml.py checks it). Output
    paths never contain the model name, so ``dvc exp show`` lines the same
    metric up across experiments with different models (`-S model=...`).
    """

    demo: Path = Path("data/demo")
    prepared: Path = Path("data/prepared")
    manifests: Path = Path("models/init")
    models: Path = Path("models")
    metrics: Path = Path("metrics")
    plots: Path = Path("plots")

    @property
    def demo_shifted(self) -> Path:
        """The demo's shifted set, written by `demo-data` with the demo (:func:`shifted_folder`)."""
        return shifted_folder(self.demo)

    @property
    def index(self) -> Path:
        """``split,image,label`` for every record (see :data:`INDEX_COLUMNS`)."""
        return self.prepared / "index.csv"

    @property
    def summary(self) -> Path:
        """Counts per grade and split, the majority baseline, notes on the input."""
        return self.prepared / "summary.json"

    @property
    def quality_photos(self) -> Path:
        """The `quality` stage's verdict on every photograph of the index (:data:`QUALITY_PHOTO_COLUMNS`)."""
        return self.metrics / "quality" / "photos.csv"

    @property
    def quality_metrics(self) -> Path:
        """The `quality` stage's numbers: imageability, the reasons' shares, the agreement with labels."""
        return self.metrics / "quality.json"

    @property
    def quality_info(self) -> Path:
        """The `quality` stage's words (``core.records.QualitySurvey``): thresholds, labels, confusion."""
        return self.metrics / "quality.info.json"

    @property
    def quality_assessor(self) -> Path:
        """The `quality` stage's learned assessor (``quality.learned``): the model, or why there is none."""
        return self.models / "quality.json"

    @property
    def report(self) -> Path:
        """The report (Markdown); its figures are :data:`REPORT_FIGURES` and each arm's confusion matrix."""
        return self.plots / "report.md"

    def figure(self, name: str) -> Path:
        """A figure of the report, by file name."""
        return self.plots / name

    def confusion_figure(self, arm: str) -> Path:
        return self.plots / f"confusion_{arm}.png"

    def explanation(self, arm: str) -> Path:
        """Test images of ``arm`` with the Grad-CAM heat maps of its grades (the `explain` stage)."""
        return self.plots / f"explain_{arm}.png"

    def blend(self, arm: str) -> Path:
        """The `fuse` stage's blend of ``arm`` (beside the arm's folder, which is train's output)."""
        return self.models / f"{arm}.fuse.pt"

    def fused_predictions(self, arm: str) -> Path:
        """:func:`fused_prediction_columns` per test image of ``arm``, graded with both eyes."""
        return self.metrics / "predictions" / f"{arm}.fused.csv"

    def fused_metrics(self, arm: str) -> Path:
        """:data:`FUSED_METRIC_KEYS` of ``arm`` graded with both eyes (a row of `dvc metrics show`)."""
        return self.metrics / "fused" / f"{arm}.json"

    def fused(self, arm: str) -> ScreeningFiles:
        """The screening files of ``arm`` graded with both eyes (the `fuse` stage), as evaluate's."""
        return ScreeningFiles.of(self.metrics / "fused", arm)

    def external_metrics(self, arm: str) -> Path:
        """The `external` stage's headline numbers of ``arm``: ``<set>.json`` per set
        (:data:`FUSED_METRIC_KEYS`), nothing else, so that `dvc metrics show` reads the folder."""
        return self.metrics / "external" / arm

    def external(self, arm: str) -> ExternalFiles:
        """Every other file the `external` stage writes for ``arm``."""
        return ExternalFiles(arm, self.metrics / "external" / "files" / arm, self.external_metrics(arm))

    def manifest(self, arm: str) -> Path:
        """Where the initial weights of ``arm`` come from (written by the `weights` stage)."""
        return self.manifests / f"{arm}.json"

    def arm(self, arm: str) -> ArmFiles:
        """The files of ``arm``."""
        model_dir = self.models / arm
        return ArmFiles(
            arm=arm,
            model_dir=model_dir,
            last=model_dir / "last.pt",
            best=model_dir / "best.pt",
            status=model_dir / "status.json",
            lock=self.models / f"{arm}.lock",
            history=self.metrics / "history" / f"{arm}.csv",
            metrics=self.metrics / f"{arm}.json",
            info=self.metrics / f"{arm}.info.json",
            confusion_counts=self.metrics / "confusion" / f"{arm}_counts.csv",
            confusion_normalized=self.metrics / "confusion" / f"{arm}_normalized.csv",
            predictions=self.metrics / "predictions" / f"{arm}.csv",
            val_predictions=self.metrics / "predictions" / f"{arm}.val.csv",
            screening_files=ScreeningFiles.of(self.metrics, arm),
        )
