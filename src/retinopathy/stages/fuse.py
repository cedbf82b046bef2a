"""The `fuse` stage: grade each test image with both of its patient's eyes (a blend after the network).

``retinopathy fuse --init scratch|pretrained`` reads the arm's ``best.pt``,
extracts every image's features and outputs once (eval mode, no
augmentation) for the train, validation and test splits, and learns a small
blend (:mod:`retinopathy.fusion.blend`) from [this eye, the other eye, which
eye] to this eye's grade, with the arm's head, on the training split's
two-eyed patients only; a validation split (``data.val_fraction > 0``) picks
its epoch, else the last of ``fuse.epochs`` is kept. The test split is graded
after, never seen while learning. Eyes are paired within a split by EyePACS
name (:mod:`retinopathy.fusion.pairs`).

Writes the blend (``models/<arm>.fuse.pt``), ``metrics/predictions/<arm>.fused.csv``
(one row per test image: :func:`~retinopathy.core.contract.fused_prediction_columns`;
``source`` says whether the blend graded it (``fused``), or the network alone
because its other eye is not in the test split (``single-no-partner``) or
fusion is off (``single``, ``fuse.method: none``)), ``metrics/fused/<arm>.json``
(:data:`~retinopathy.core.contract.FUSED_METRIC_KEYS`: the headline keys of evaluate's
``metrics/<arm>.json``, so ``dvc metrics show`` puts the fused grades in a row of their own)
and the screening files of the fused grades (``contract.Layout.fused``: the figures
of :mod:`retinopathy.evaluation.screening` per image and per patient with their
patient-bootstrap intervals, ``evaluate.bootstrap`` and ``evaluate.seed`` as
evaluate's; the operating points chosen on the validation split graded the same
way, never on test; ROC and reliability CSVs), whose ``fusion`` entry holds
:data:`~retinopathy.core.contract.FUSION_FACTS`. The files change together or not
at all (``files.write_together``): a full disk never leaves a new blend beside
the old metrics. A blend that diverged (NaN or infinite weights: too high a
``fuse.lr``) is refused, and so are features, outputs or scores that are not finite.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from retinopathy.core.config import Params, load_params
from retinopathy.core.contract import (
    ARMS,
    FUSED_METRIC_KEYS,
    METRIC_DECIMALS,
    REFERABLE_GRADE,
    Layout,
)
from retinopathy.core.contract import fused_prediction_columns as columns
from retinopathy.core.errors import RetinopathyError, warn
from retinopathy.core.files import csv_text, json_text, write_together
from retinopathy.core.records import FusedScreeningRecord, FusionFacts, Skipped, TrainingStatus, read_status
from retinopathy.data.index import read_index
from retinopathy.data.labels import patient_of
from retinopathy.engine import checkpoint
from retinopathy.engine.batches import eval_batches, open_sources
from retinopathy.engine.runtime import Switches, runtime_of
from retinopathy.evaluation.scoring import confusion_tables, scores
from retinopathy.evaluation.screening import Scored, record, scored
from retinopathy.evaluation.screening_files import screening_contents
from retinopathy.fusion.blend import BlendRecord, Pairs, fused_scores, learn, state_of, thresholds_for
from retinopathy.fusion.features import Extracted, blend_inputs, extract
from retinopathy.fusion.pairs import partners
from retinopathy.models.head import Head, require_finite

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = (
    "fuse",
    "data.root",
    "data.on_device",
    "train.device",
    "train.precision",
    "train.channels_last",
    "train.portable",
    "train.batch_size",
    "train.loss",
    "evaluate.operating_points",
    "evaluate.bootstrap",
    "evaluate.seed",
)


def load_arm(layout: Layout, arm: str, status: TrainingStatus) -> checkpoint.Trained:
    """The arm's ``best.pt`` (checkpoint, spec, grader), checked to be of the run ``status`` records."""
    files = layout.arm(arm)
    trained = checkpoint.load_trained(
        files.best,
        fix=(
            f"restore it with `dvc checkout {files.model_dir}`, or run `dvc repro train@{arm}` to train again"
        ),
    )
    if trained.state.fingerprint != status.fingerprint:
        raise RetinopathyError(
            f"{files.best}: of run {trained.state.fingerprint}, but {files.status} is "
            f"of run {status.fingerprint}; run `dvc repro train@{arm}` to finish training"
        )
    return trained


def referable(scores: torch.Tensor, head: Head) -> np.ndarray:
    """P(grade >= 2) per image (regression: the value itself, a score)."""
    return (scores if head.regression else scores[:, REFERABLE_GRADE:].sum(1)).numpy().astype(np.float64)


def _rows(
    names: list[str],
    actual: np.ndarray,
    grades: np.ndarray,
    scores: torch.Tensor,
    refer: np.ndarray,
    sources: list[str],
    head: Head,
) -> list[list]:
    rows = []
    for i, name in enumerate(names):
        values = [f"{float(scores[i]):.6f}"] if head.regression else [f"{p:.6f}" for p in scores[i].tolist()]
        rows.append(
            [name, patient_of(name), int(actual[i]), int(grades[i]), *values, f"{refer[i]:.6f}", sources[i]]
        )
    return rows


def _skipped(params: Params, layout: Layout, arm: str, reason: str) -> dict[str, float]:
    blend = BlendRecord(
        "none", params.fuse.inputs, params.train.loss, None, 0, 0, "", 0, f"arm skipped: {reason}", 0, 0
    )
    write_together(
        {
            layout.blend(arm): blend.to_bytes(layout.blend(arm)),
            layout.fused_predictions(arm): csv_text(list(columns(params.train.loss == "regression")), []),
            **screening_contents(layout.fused(arm), None, None, probabilities=False),
            layout.fused_metrics(arm): json_text(layout.fused_metrics(arm), {}),
        }
    )
    return {}


# What to do when the arm's blend gives scores that are not finite (its weights are finite: checked).
BLEND_FIX = "lower fuse.lr in params.yaml and run the `fuse` stage again"


def _graded(
    outputs: torch.Tensor, head: Head, names: list[str], record: BlendRecord, pairs: Pairs | None, blend: Path
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One split's scores, grades and sources: the blend's where the other eye is in the split, else alone."""
    scores_, grades = head.scores(outputs), head.grades(outputs)
    partner, _ = partners(names)
    if not record.learned or pairs is None:
        return scores_, grades, ["single"] * len(names)
    rows = [i for i, p in enumerate(partner) if p >= 0]
    if rows:
        fused_s, fused_g = fused_scores(record, pairs.this, pairs.other, pairs.side, blend, BLEND_FIX)
        index = torch.tensor(rows)
        scores_, grades = scores_.clone(), grades.clone()
        scores_[index], grades[index] = fused_s, fused_g
    return scores_, grades, ["fused" if p >= 0 else "single-no-partner" for p in partner]


def _scored(
    names: list[str], actual: np.ndarray, grades: torch.Tensor, scores_: torch.Tensor, head: Head
) -> Scored:
    return scored(
        [patient_of(name) for name in names], actual, grades.numpy(), scores_.numpy(), head.regression
    )


def fuse_arm(params: Params, arm: str, layout: Layout | None = None) -> dict[str, float]:
    """Learn the arm's blend, grade its test split with both eyes; write the blend, CSV and figures."""
    layout = layout or Layout()
    status = read_status(layout.arm(arm).status, arm)
    if isinstance(status, Skipped):
        return _skipped(params, layout, arm, status.reason)
    trained = load_arm(layout, arm, status)  # the one place this stage loads the trained grader
    best, spec = trained.state, trained.spec
    head, fuse, train = spec.head(), params.fuse, params.train
    runtime = runtime_of(
        Switches(train.device, train.precision, train.channels_last, params.data.num_workers)
    )
    runtime.configure_backends()
    grader = runtime.place(trained.grader)
    records = read_index(layout.index)
    if fuse.method == "none":  # the validation split still picks the operating points
        records = {"test": records["test"], "val": records["val"]}
    sources, _ = open_sources(
        params.data.root, records, spec.image_size, status.resident, runtime, params.data.cache_dir
    )
    lower = f"train.batch_size in params.yaml (now {train.batch_size}; these batches are twice it)"
    extracted: dict[str, Extracted] = {
        split: extract(
            grader, eval_batches(source, train.batch_size, runtime), runtime, f"features {split}", lower
        )
        for split, source in sources.items()
    }
    names = {split: [record.image for record in records[split]] for split in sources}
    for split, found in extracted.items():  # before any of them is blended or graded
        require_finite(
            torch.cat([found.features, found.outputs], 1),
            layout.arm(arm).best,
            f"its weights are finite, but the network overflows on these images; train the arm "
            f"again (`dvc repro -f train@{arm}`)",
            names[split],
        )

    blend = BlendRecord(
        "none",
        fuse.inputs,
        spec.loss,
        None,
        0,
        0,
        best.fingerprint,
        0,
        "none: fuse.method is none, every image graded alone",
        0,
        0,
    )
    pairs: dict[str, Pairs] = {}
    if fuse.method == "blend":
        pairs = {
            split: Pairs.of(
                blend_inputs(extracted[split], fuse.inputs, head),
                extracted[split].labels,
                *partners(names[split]),
            )
            for split in extracted
        }
        val = pairs.get("val")
        if not len(pairs["train"]):
            raise RetinopathyError(
                f"{layout.index}: no patient has both eyes in the training split (EyePACS names "
                "`<id>_left` and `<id>_right`), so the blend has nothing to learn; set fuse.method to none "
                "in params.yaml to grade each photograph alone"
            )
        model, epoch, rule = learn(
            pairs["train"],
            val,
            head,
            hidden=fuse.hidden,
            epochs=fuse.epochs,
            lr=fuse.lr,
            weight_decay=fuse.weight_decay,
            batch_size=fuse.batch_size,
            seed=fuse.seed,
        )
        blend = BlendRecord(
            "blend",
            fuse.inputs,
            spec.loss,
            thresholds_for(model, val, head),
            pairs["train"].this.shape[1],
            fuse.hidden,
            best.fingerprint,
            epoch,
            rule,
            len(pairs["train"]),
            len(val) if val is not None else 0,
            state_of(model),
        )

    graded = {
        split: _graded(
            extracted[split].outputs, head, names[split], blend, pairs.get(split), layout.blend(arm)
        )
        for split in ("test", "val")
        if split in extracted and len(names[split])
    }
    test_scores, test_grades, test_sources = graded["test"]
    actual = extracted["test"].labels.numpy()
    test = _scored(names["test"], actual, test_grades, test_scores, head)
    val_scored = (
        _scored(names["val"], extracted["val"].labels.numpy(), graded["val"][1], graded["val"][0], head)
        if "val" in graded
        else None
    )
    settings = params.evaluate
    screening = record(
        test,
        val_scored,
        settings.operating_points,
        settings.bootstrap,
        settings.seed,
        probabilities=not head.regression,
    )
    fused = FusedScreeningRecord.of(
        screening,
        FusionFacts(
            method=blend.method,
            selection=blend.selection,
            epoch=blend.epoch,
            images=len(test_sources),
            fused=test_sources.count("fused"),
            single_no_partner=test_sources.count("single-no-partner"),
            val_images=len(val_scored) if val_scored is not None else 0,
        ),
    )
    numbers = scores(actual, test_grades.numpy(), confusion_tables(actual, test_grades.numpy()))
    metrics = {
        key: round(float(numbers[key]), METRIC_DECIMALS) for key in FUSED_METRIC_KEYS if key in numbers
    }
    # All four outputs change together, or none does (a full disk must not leave a new blend
    # beside the old metrics, which then no longer describe it).
    write_together(
        {
            layout.blend(arm): blend.to_bytes(layout.blend(arm)),
            layout.fused_predictions(arm): csv_text(
                list(columns(head.regression)),
                _rows(
                    names["test"],
                    actual,
                    test_grades.numpy(),
                    test_scores,
                    referable(test_scores, head),
                    test_sources,
                    head,
                ),
            ),
            **screening_contents(layout.fused(arm), fused, test, probabilities=not head.regression),
            layout.fused_metrics(arm): json_text(layout.fused_metrics(arm), metrics),
        }
    )
    print(f"{arm}: blend {blend.selection}" if blend.learned else f"{arm}: {blend.selection}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy fuse --init scratch|pretrained [--params params.yaml]``."""
    parser = argparse.ArgumentParser(prog="retinopathy fuse", description=__doc__.split("\n")[0])
    parser.add_argument("--init", choices=ARMS, required=True, help="The arm whose grades to fuse.")
    parser.add_argument(
        "--params", default="params.yaml", metavar="FILE", help="The parameters file (default: params.yaml)."
    )
    args = parser.parse_args(argv)
    metrics = fuse_arm(load_params(args.params), args.init)
    if not metrics:
        warn(f"{args.init} arm skipped: nothing to fuse (see metrics/{args.init}.info.json)")
    else:
        print(
            f"{args.init}: both eyes {metrics['acc']:.1%} accuracy, kappa {metrics['kappa']:.3f}; "
            f"see {Layout().fused(args.init).screening} for the screening figures and their intervals"
        )
    return 0
