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
the old metrics. An arm whose training split has no two-eyed patient (a user
training on APTOS or IDRiD) is not fused, as an arm skipped offline is not: its
files are header-only, and the screening file's ``fusion`` entry says why
(:func:`~retinopathy.fusion.grading.unfused`). A blend that diverged (NaN or
infinite weights: too high a ``fuse.lr``) is refused, and so are features, outputs
or scores that are not finite.
"""

from __future__ import annotations

from retinopathy.core.config import Params
from retinopathy.core.contract import Layout
from retinopathy.core.errors import warn
from retinopathy.pipeline.options import arm_parser, stage_params

# The library (and torch) is imported in fuse_arm, so that --help is instant.

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


def fuse_arm(params: Params, arm: str, layout: Layout | None = None) -> dict[str, float]:
    """Learn the arm's blend, grade its test split with both eyes; write the blend, CSV and figures.

    Returns:
        The fused metrics (``metrics/fused/<arm>.json``); empty for a skipped arm.

    Raises:
        RetinopathyError: an input is missing, damaged or of another run; the blend has nothing to
            learn or diverged; an output is not finite. Nothing is written then.
    """
    from retinopathy.core.files import write_together
    from retinopathy.core.records import Skipped, read_status
    from retinopathy.data.index import read_index
    from retinopathy.engine.evaluation import load_best, open_grader
    from retinopathy.engine.runtime import Switches
    from retinopathy.fusion.grading import (
        NO_PAIRS,
        extract_splits,
        fused,
        has_pairs,
        learn_blend,
        skipped,
        unfused,
    )

    layout = layout or Layout()
    files = layout.arm(arm)
    status = read_status(files.status, arm)
    if isinstance(status, Skipped):
        result = skipped(layout, arm, params.fuse.inputs, params.train.loss, status.reason)
        write_together(result.outputs)
        warn(f"{arm} arm skipped: nothing to fuse (see {files.info})")
        return result.metrics
    trained = load_best(files, status)  # the one place this stage loads the trained grader
    records = read_index(layout.index)
    if params.fuse.method == "blend" and not has_pairs([record.image for record in records["train"]]):
        result = unfused(layout, arm, params.fuse.inputs, params.train.loss, trained.state.fingerprint)
        write_together(result.outputs)
        warn(f"{arm}: fusion skipped: {NO_PAIRS}")
        return result.metrics
    if params.fuse.method == "none":  # the validation split still picks the operating points
        records = {"test": records["test"], "val": records["val"]}
    train = params.train
    switches = Switches(train.device, train.precision, train.channels_last, params.data.num_workers)
    opened = open_grader(switches, params.data.root, params.data.cache_dir, trained, status, records)
    extracted = extract_splits(opened, records, params.train.batch_size, files.best, arm)
    names = {split: [record.image for record in records[split]] for split in extracted}
    spec, fingerprint = trained.spec, trained.state.fingerprint
    blend, pairs = learn_blend(
        extracted, names, params.fuse, opened.head, spec.loss, fingerprint, layout.index
    )
    evaluate = params.evaluate
    result = fused(
        layout,
        arm,
        blend,
        pairs,
        extracted,
        names,
        opened.head,
        evaluate.operating_points,
        evaluate.bootstrap,
        evaluate.seed,
    )
    write_together(result.outputs)
    print(f"{arm}: blend {blend.selection}" if blend.learned else f"{arm}: {blend.selection}")
    return result.metrics


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy fuse --init scratch|pretrained [--params params.yaml]``."""
    parser = arm_parser("retinopathy fuse", __doc__.split("\n")[0], "The arm whose grades to fuse.")
    args = parser.parse_args(argv)
    metrics = fuse_arm(stage_params(args), args.init)
    if metrics:  # else fuse_arm said why nothing was fused
        print(
            f"{args.init}: both eyes {metrics['acc']:.1%} accuracy, kappa {metrics['kappa']:.3f}; "
            f"see {Layout().fused(args.init).screening} for the screening figures and their intervals"
        )
    return 0
