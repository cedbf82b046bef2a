"""The `evaluate` stage: score one arm's best checkpoint on the test split.

Writes ``metrics/<arm>.json``, numbers only under the short keys of
``contract.METRIC_KEYS`` (accuracy, balanced accuracy, quadratic weighted
kappa, per-grade recall, the majority baseline, the selected epoch, ...), so
``dvc metrics show`` reads at a glance; ``metrics/<arm>.info.json``, the words
(status, weights, data, which rule picked the epoch); the confusion matrix
twice (``metrics/confusion/<arm>_counts.csv`` and ``<arm>_normalized.csv``:
rows = true grade, columns = predicted grade, each row of the normalised one
summing to 1 as the lab defines it); ``metrics/predictions/<arm>.csv``
(per test image: ``image,patient,actual,predicted``, the head's scores and the
referable score, :func:`contract.prediction_header`; ``actual,predicted`` is
the long format DVC's ``confusion`` plot template reads) and
``<arm>.val.csv``, the same for the validation split (header only without
one), each row ending with the `quality` stage's verdict on the photograph
(``contract.QUALITY_COLUMNS``: gradable, and the reasons it is not, from
``metrics/quality/photos.csv``); and the screening files (``retinopathy.evaluation.screening_files``):
``metrics/<arm>.screening.json`` (referable and vision-threatening AUC,
sensitivity and specificity at the model's grade and at the operating points
chosen on validation, per image and per patient, with bootstrap intervals over
patients; the calibration error; imageability, the figures on gradable photographs only and
intention to screen, an ungradable photograph counted as referred), the ROC curves
``metrics/roc/<arm>_image.csv`` and ``<arm>_patient.csv``, and ``metrics/reliability/<arm>.csv``.

A skipped arm gets ``{}`` as metrics (a row of dashes), the reason and the fix
in its info, and header-only CSVs, so the report and `dvc metrics show` show the gap.

All these files change together or not at all (``files.write_together``), and
outputs that are NaN or infinite stop the stage before anything is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retinopathy.core.config import Params
from retinopathy.core.contract import Layout
from retinopathy.core.errors import note, warn
from retinopathy.pipeline.options import arm_parser, stage_params

if TYPE_CHECKING:  # the library (and torch) is imported in evaluate_arm, so that --help is instant
    from retinopathy.engine.evaluation import Evaluation, Judged

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = (
    "data.root",
    "data.on_device",
    "train.device",
    "train.precision",
    "train.channels_last",
    "train.portable",
    "train.batch_size",
    "evaluate",
)


def evaluate_arm(params: Params, arm: str, layout: Layout | None = None) -> Evaluation:
    """Evaluate the arm's ``best.pt`` on the test split and write the metrics, info and tables.

    A skipped arm gets no numbers (``{}``: a row of dashes in `dvc metrics show`),
    its reason and fix in the info, and header-only tables. All files change together.

    Raises:
        RetinopathyError: an input is missing, damaged or of another run; an output is not finite.
    """
    from retinopathy.core.files import write_together
    from retinopathy.core.records import Skipped, read_status, read_summary
    from retinopathy.data.index import read_index
    from retinopathy.engine.evaluation import evaluation, grade, load_best, open_grader, skipped
    from retinopathy.engine.runtime import Switches

    layout = layout or Layout()
    files = layout.arm(arm)
    status = read_status(files.status, arm)
    summary = read_summary(layout.summary)
    if isinstance(status, Skipped):
        result = skipped(files, status)
    else:
        trained = load_best(files, status)
        index = read_index(layout.index)
        # The validation split (data.val_fraction > 0) picks the screening operating points.
        records = {"test": index["test"], "val": index["val"]}
        train = params.train
        switches = Switches(train.device, train.precision, train.channels_last, params.data.num_workers)
        opened = open_grader(switches, params.data.root, params.data.cache_dir, trained, status, records)
        tta = params.evaluate.tta == "flips"
        graded = grade(opened, records, params.train.batch_size, tta, files, layout.index)
        result = evaluation(
            files,
            opened,
            status,
            summary,
            records,
            graded,
            params.evaluate,
            params.data.root,
            _quality(layout),
        )
    write_together(result.outputs)
    return result


def _quality(layout: Layout) -> Judged | None:
    """The `quality` stage's verdicts on the test and validation photographs (None, said, without them)."""
    from retinopathy.engine.evaluation import Judged
    from retinopathy.quality.table import read_verdicts
    from retinopathy.quality.verdict import REASONS

    path = layout.quality_photos
    if not path.is_file():  # `dvc repro` always runs the quality stage first; a hand-run pipeline may not
        note(
            f"note: {path} not found: the predictions' gradable and quality columns stay empty and the "
            "screening record has no gradability figures; run `retinopathy quality` first to have them"
        )
        return None
    verdicts = {
        split: {image: (v.gradable, v.quality) for image, v in read_verdicts(path, split).items()}
        for split in ("test", "val")
    }
    return Judged(path, verdicts, REASONS)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy evaluate --init scratch|pretrained [--params params.yaml]``."""
    from retinopathy.core.records import Skipped

    parser = arm_parser("retinopathy evaluate", __doc__.split("\n")[0], "The arm to evaluate.")
    args = parser.parse_args(argv)
    evaluation = evaluate_arm(stage_params(args), args.init)
    info, metrics = evaluation.info, evaluation.metrics
    if isinstance(info, Skipped):
        warn(f"{args.init} arm skipped: {info.reason}\n  fix: {info.fix}")
    else:
        print(
            f"{args.init}: test accuracy {metrics['acc']:.1%} (epoch {metrics['epoch']}, "
            f"{info.selection_rule}), kappa {metrics['kappa']:.3f}, "
            f"always-grade-0 baseline {metrics['base']:.1%}"
        )
        auc = evaluation.screening.patient.auc_referable.value if evaluation.screening else None
        print(
            f"{args.init}: referable DR AUC per patient "
            f"{'undefined (one class only)' if auc is None else f'{auc:.3f}'}; "
            f"see {Layout().arm(args.init).screening_files.screening}"
        )
        part = evaluation.screening.gradability if evaluation.screening else None
        if part is not None:
            image, patient = part.image.imageability.value, part.patient.imageability.value
            its = part.patient.sensitivity.value
            print(
                f"{args.init}: imageability {image or 0:.1%} per image, {patient or 0:.1%} per patient; "
                "referable DR sensitivity per patient by intention to screen (ungradable = referred) "
                f"{'undefined' if its is None else f'{its:.3f}'}"
            )
    return 0
