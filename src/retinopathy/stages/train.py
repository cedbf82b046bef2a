"""The `train` stage: train one arm (scratch or pretrained), resuming where it stopped.

``retinopathy train --init scratch|pretrained`` reads its settings from params.yaml and
hands them to the trainer (:func:`retinopathy.engine.trainer.train`), which builds the
model, trains and evaluates it epoch by epoch, and writes after every epoch
``models/<arm>/{last,best}.pt`` and ``metrics/history/<arm>.csv`` through its checkpoint
store (:mod:`retinopathy.engine.store`: a kill at any moment resumes with the same
history), and ``models/<arm>/status.json`` at the end. Under ``torchrun
--nproc_per_node=N`` it trains with DistributedDataParallel.

torch is imported when training starts, not with this module: ``--help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from retinopathy.core.config import Params
from retinopathy.core.contract import Layout
from retinopathy.pipeline.options import arm_parser, stage_params

if TYPE_CHECKING:
    from retinopathy.core.records import Skipped, TrainingStatus
    from retinopathy.engine.trainer import TrainSettings

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = (
    "model",
    "data.root",
    "data.image_size",
    "data.val_fraction",
    "data.on_device",
    "data.preprocess",
    "train.epochs",
    "train.batch_size",
    "train.lr",
    "train.momentum",
    "train.weight_decay",
    "train.seed",
    "train.precise_bn_images",
    "train.device",
    "train.normalize",
    "train.precision",
    "train.channels_last",
    "train.compile",
    "train.portable",
    "train.schedule",
    "train.warmup_epochs",
    "train.nesterov",
    "train.zero_init_residual",
    "train.loss",
    "train.tune_thresholds",
    "train.class_balance",
    "train.select_by",
    "augment",
)


def settings(params: Params) -> TrainSettings:
    """The trainer's settings: every params key this stage reads is read here."""
    from retinopathy.engine.runtime import Switches
    from retinopathy.engine.trainer import TrainSettings

    model, data, train = params.model, params.data, params.train
    return TrainSettings(
        model=model,
        epochs=train.epochs_for(model),
        batch_size=train.batch_size,
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.nesterov,
        schedule=train.schedule,
        warmup_epochs=train.warmup_epochs,
        seed=train.seed,
        loss=train.loss,
        class_balance=train.class_balance,
        select_by=train.select_by,
        tune_thresholds=train.tune_thresholds,
        precise_bn_images=train.precise_bn_images,
        zero_init_residual=train.zero_init_for(model),
        normalize=train.normalize,
        compile=train.compile,
        augment=params.augment,
        root=data.root,
        image_size=data.image_size,
        preprocess=data.preprocess,
        on_device=data.on_device,
        cache_dir=data.cache_dir,
        val_fraction=data.val_fraction,
        switches=Switches(train.device, train.precision, train.channels_last, data.num_workers),
        config=params.to_dict(),  # the whole file, as a record: fingerprinted and kept in last.pt
    )


def train_arm(
    params: Params, arm: str, layout: Layout | None = None, params_path: Path | None = None
) -> TrainingStatus | Skipped:
    """Train (or resume, or skip) one arm; returns the record written to ``status.json``.

    Args:
        params: The settings.
        arm: ``scratch`` or ``pretrained``.
        layout: Where the files are (default: the project's).
        params_path: The file ``params`` came from: read again before every epoch and at
            the end, to stop when another command changes it.
    """
    from retinopathy.engine.trainer import train

    return train(settings(params), arm, layout or Layout(), params_path)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy train --init scratch|pretrained [--params params.yaml]``."""
    parser = arm_parser(
        "retinopathy train",
        __doc__.split("\n")[0],
        "The arm: scratch (random initialisation) or pretrained (train.weights).",
    )
    args = parser.parse_args(argv)
    train_arm(stage_params(args), args.init, params_path=Path(args.params))
    return 0
