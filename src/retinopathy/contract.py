"""The on-disk contract: every fact that a writer and a reader share, written once.

Grades, arm names, the output paths of each stage and the columns of
every CSV the pipeline writes live here, and both sides import them: the stage
that writes a file and the stage (or command, or test) that reads it. dvc.yaml
names the same paths; a test checks that it agrees with :class:`Layout`.

This module imports neither torch nor anything heavy, so a command that only
reads results (the report) does not pay for importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The International Clinical Diabetic Retinopathy scale, grade 0-4.
GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
NUM_GRADES = len(GRADE_NAMES)
GRADES = tuple(range(NUM_GRADES))
# A regression output v is graded by how many thresholds lie below it; these round it.
ROUNDING_THRESHOLDS = (0.5, 1.5, 2.5, 3.5)
REFERABLE_GRADE = 2  # moderate or worse: the usual screening threshold for referral
COURSE_IMAGE_SIZE = 512  # the course's images (and import-kaggle's default): square crops of the fundus
# The largest network input side accepted (params `data.image_size`, a checkpoint's spec): a
# ResNet50 batch of 4 at 4096 px already needs about 100 GB of activations to train.
MAX_IMAGE_SIZE = 4096

ARMS = ("scratch", "pretrained")  # how an arm's network starts: random, or train.weights
SPLITS = ("train", "val", "test")  # of the prepared index; val is empty unless data.val_fraction > 0
NORMALIZATIONS = ("imagenet", "none")  # of the network's input, after scaling pixels to [0, 1]
PREPROCESSES = ("none", "graham")  # of the pixels before that (graham: local average colour subtracted)
LOSSES = ("cross_entropy", "regression")  # the head: 5 logits, or 1 value rounded into 0-4
SCHEDULES = ("constant", "cosine")  # the learning rate per batch

INDEX_COLUMNS = ("split", "image", "label")
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "train_kappa", "test_loss", "test_accuracy",
                   "test_kappa")
VAL_COLUMNS = ("val_loss", "val_accuracy", "val_kappa")  # appended when there is a validation split
CONFUSION_COLUMNS = ("actual", *(str(grade) for grade in GRADES))  # rows: true grade; columns: predicted
PREDICTION_COLUMNS = ("actual", "predicted")  # one row per test image, the long format of `dvc plots`

def recall_key(grade: int) -> str:
    """The metrics key of grade ``grade``'s recall: ``r0`` ... ``r4``."""
    return f"r{grade}"


# metrics/<arm>.json holds numbers only, under short keys, so that `dvc metrics show`
# of both arms fits in 120 columns; the words about the run (status, weights, the
# selection rule, why an arm was skipped) are in metrics/<arm>.info.json.
METRIC_KEYS: dict[str, str] = {
    "acc": "test accuracy of the selected epoch (under the lab's rule: the highest test accuracy)",
    "bacc": "balanced accuracy on the test split: the mean of the per-grade recalls",
    "base": "majority baseline: the test accuracy of always answering the commonest training grade",
    "epoch": "the selected epoch (the one evaluated)",
    "final": "test accuracy after the last epoch",
    "kappa": "quadratic weighted kappa on the test split (Kaggle 2015's metric)",
    **{recall_key(grade): f"recall of grade {grade}: the share of its test images graded {grade}"
       for grade in GRADES},
    "train": "training accuracy in the selected epoch (running, as the lab reports it)",
    "val": "validation accuracy of the selected epoch (only with data.val_fraction > 0)",
}
METRIC_DECIMALS = 3  # a person compares these at a glance; the history and predictions keep the rest


REPORT_FIGURES = ("accuracy.png", "best_accuracy.png")  # the report's figures of both arms together

# The synthetic demo's folder carries a README whose first line is this marker.
DEMO_README = "README.txt"
DEMO_MARKER = "SYNTHETIC DEMO DATASET"


def grade_label(grade: int) -> str:
    """``"2 Moderate"``: the grade's number and name, for tables and figures."""
    return f"{grade} {GRADE_NAMES[grade]}"


def is_demo_dataset(folder: str | Path) -> bool:
    """Whether ``folder`` holds the synthetic demo (its README starts with :data:`DEMO_MARKER`)."""
    readme = Path(folder) / DEMO_README
    return readme.is_file() and readme.read_text(errors="replace").startswith(DEMO_MARKER)


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
        predictions: ``PREDICTION_COLUMNS`` per test image.
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
    def index(self) -> Path:
        """``split,image,label`` for every record (see :data:`INDEX_COLUMNS`)."""
        return self.prepared / "index.csv"

    @property
    def summary(self) -> Path:
        """Counts per grade and split, the majority baseline, notes on the input."""
        return self.prepared / "summary.json"

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
        )
