"""The `quality` stage: judge whether every photograph of the prepared index can be graded.

Measures each photograph of the index (train, val and test: ``<data.root>/<name>.jpeg``) and judges
it against ``quality.thresholds`` (``retinopathy.quality.verdict``), matches it to its label where
``quality.labels`` names EyeQ-format labels, and writes, all together or nothing:

- ``metrics/quality/photos.csv``: one row per photograph: image, split, patient, gradable
  (true/false), quality (the reasons, ``; ``-separated, empty when gradable), each measure, and
  the EyeQ label (empty without one);
- ``metrics/quality.json``: numbers only, of the test split: imageability per image and per
  patient, the share of each reason and, with labels, the share of Reject photographs found
  ungradable (``sens``) and of Good or Usable ones kept (``spec``), each with its 95% interval
  (a bootstrap over patients, ``evaluate.bootstrap`` and ``evaluate.seed``);
- ``metrics/quality.info.json``: the words (``core.records.QualitySurvey``): the thresholds, the
  label file, its names that match no photograph, and the confusion matrix label x verdict;
- ``models/quality.json``: the learned assessor fitted on the train split's labels
  (``quality.learned``), which ``retinopathy predict --quality-model`` applies, or why there is
  none (no labels, or too few).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from retinopathy.core.contract import LEARNED_COLUMN, QUALITY_PHOTO_COLUMNS, Layout
from retinopathy.core.errors import warn
from retinopathy.core.files import check_output_file, csv_with, json_with
from retinopathy.pipeline.options import stage_params, stage_parser

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = (
    "data.root",
    "data.num_workers",
    "quality.thresholds",
    "quality.labels",
    "evaluate.bootstrap",
    "evaluate.seed",
)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy quality [--params params.yaml]``."""
    parser = stage_parser("retinopathy quality", __doc__.split("\n")[0])
    args = parser.parse_args(argv)
    # the measures (SciPy) and the decoders: imported after parsing, so that --help is instant
    from retinopathy.core.files import json_text, write_together
    from retinopathy.core.records import quality_survey_text
    from retinopathy.data.index import read_index
    from retinopathy.quality.labels import read_quality_labels
    from retinopathy.quality.learned import NOT_FITTED_KEY, assessor_text
    from retinopathy.quality.photos import cpu_workers
    from retinopathy.quality.survey import learn, photos_text, summarise, survey

    params = stage_params(args)
    layout = Layout()
    outputs = {
        layout.quality_photos: csv_with(*QUALITY_PHOTO_COLUMNS),
        layout.quality_metrics: json_with("n"),
        layout.quality_info: json_with("version", "thresholds", "confusion"),
        # the model, or the note of why there is none: a JSON of the user's with a version is neither
        layout.quality_assessor: lambda path: (
            json_with("version", "coefficients", "threshold")(path)
            or json_with("version", NOT_FITTED_KEY)(path)
        ),
    }
    for path, ours in outputs.items():  # before any work: replace only what this stage wrote
        check_output_file(path, "quality", ours, inputs=[layout.index])
    index = read_index(layout.index)
    names = [record.image for records in index.values() for record in records]
    labels_path = params.quality.labels
    labels = None if labels_path is None else read_quality_labels(Path(labels_path), names)
    if labels is not None and labels.unmatched:
        warn(
            f"{labels.unmatched} of {labels.rows} rows of {labels_path} (quality.labels) name no photograph "
            f"of {layout.index}, e.g. {', '.join(labels.unmatched_examples)}"
        )
    workers = cpu_workers(params.data.num_workers)  # the verdicts are the same whatever the count
    started = time.perf_counter()
    photos = survey(params.data.root, index, params.quality.thresholds, labels, workers)
    seconds = time.perf_counter() - started
    metrics, record = summarise(
        photos,
        params.quality.thresholds,
        labels,
        labels_path,
        params.evaluate.bootstrap,
        params.evaluate.seed,
    )
    extra = None
    assessor = None
    why: str | None = "quality.labels is null in params.yaml: no quality labels to learn from"
    if labels is not None:  # the learned assessor beside the thresholds (quality/learned.py)
        learned = learn(photos, str(labels_path))
        extra = {LEARNED_COLUMN: learned.column}
        metrics.update(learned.metrics)
        assessor, why = learned.assessor, learned.why
        if learned.assessor is None:
            said = f"learned assessor not fitted: {learned.why}"
            warn(said)
        else:
            a = learned.assessor
            said = (
                f"learned assessor (column {LEARNED_COLUMN}; l_auc, l_sens, l_spec): a logistic regression "
                f"on the measures, fitted on {a.photos} labelled train photographs ({a.rejects} Reject); it "
                f"calls a photograph ungradable at P(Reject) >= {a.threshold_probability:.3f} (train "
                f"sensitivity {a.train_sensitivity:.3f}, specificity {a.train_specificity:.3f}); the "
                "verdict and its reasons stay the thresholds'"
            )
        record = dataclasses.replace(record, notes=[*record.notes, said])
    write_together(
        {
            layout.quality_photos: photos_text(photos, extra),
            layout.quality_metrics: json_text(layout.quality_metrics, metrics),
            layout.quality_info: quality_survey_text(layout.quality_info, record),
            layout.quality_assessor: assessor_text(assessor, why, str(layout.quality_assessor)),
        }
    )
    print(
        f"judged {len(photos)} photographs in {seconds:.1f} s ({max(workers, 1)} processes); test split: "
        f"{metrics['n']:.0f} photographs, imageability {metrics.get('img', 0):.1%} per image, "
        f"{metrics.get('pat', 0):.1%} per patient"
    )
    if "sens" in metrics or "spec" in metrics:
        found = record.confusion["Reject"]
        print(
            f"against {labels_path}: {found.ungradable} of {found.ungradable + found.gradable} Reject "
            f"photographs found ungradable; {metrics.get('spec', 0):.1%} of the Good and Usable ones kept"
        )
    without = "" if assessor is not None else " (no learned assessor: it says why)"
    print(
        f"wrote {layout.quality_photos}, {layout.quality_metrics}, {layout.quality_info} and "
        f"{layout.quality_assessor}{without}"
    )
    return 0
