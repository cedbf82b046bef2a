"""The `weights` stage: resolve the initial weights of each arm and write a manifest per arm.

It always runs (``always_changed`` in dvc.yaml): ImageNet weights may appear in
torchvision's cache, or a file named in ``train.weights`` may change, without
any dependency DVC could see. The manifests only change when the weights do,
so the pretrained arm reruns exactly then. Being the stage that runs before
train and evaluate on every `dvc repro`, it first runs
:func:`~retinopathy.engine.preflight.preflight`.
"""

from __future__ import annotations

import os
from pathlib import Path

from retinopathy.core.config import cli_positive_float
from retinopathy.core.contract import ARMS, DOWNLOAD_TIMEOUT, NO_DOWNLOAD_ENV, Layout
from retinopathy.core.errors import warn
from retinopathy.core.files import check_output_file, json_with
from retinopathy.pipeline.options import stage_params, stage_parser

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = ("model", "train.weights", "train.seed", "train.zero_init_residual", "train.device")


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy weights [--params params.yaml] [--out models/init]``."""
    parser = stage_parser("retinopathy weights", __doc__.split("\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Layout.manifests,
        metavar="DIR",
        help=f"The folder of the manifests (default: {Layout.manifests}).",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="Only look in the torchvision cache; never download "
        f"(also when the environment sets {NO_DOWNLOAD_ENV}=1).",
    )
    parser.add_argument(
        "--download-timeout",
        type=cli_positive_float,
        default=DOWNLOAD_TIMEOUT,
        metavar="SECONDS",
        help="Give up a download after this long without data (default: %(default)g).",
    )
    args = parser.parse_args(argv)
    # torch and torchvision: imported after parsing, so that --help is instant
    from retinopathy.engine.preflight import preflight
    from retinopathy.models.manifest import Unavailable, describe_pretrained, describe_scratch, write_manifest

    download = not (args.no_download or os.environ.get(NO_DOWNLOAD_ENV) == "1")
    params = stage_params(args)
    layout = Layout(manifests=args.out)
    preflight(params.train.device, params.data.cache_dir, layout)  # always runs, before train and evaluate
    for arm in ARMS:  # a file of that name that is not a manifest is not replaced
        check_output_file(layout.manifest(arm), "weights", json_with("arm", "available"))
    manifests = {
        "scratch": describe_scratch(
            params.model, params.train.seed, params.train.zero_init_for(params.model)
        ),
        "pretrained": describe_pretrained(
            params.model,
            params.train.weights_for(params.model),
            download=download,
            timeout=args.download_timeout,
        ),
    }
    assert tuple(manifests) == ARMS
    for arm, manifest in manifests.items():
        write_manifest(layout.manifest(arm), manifest)
        state = (
            f"UNAVAILABLE: {manifest.reason}" if isinstance(manifest, Unavailable) else manifest.description
        )
        print(f"{arm}: {state}")
    pretrained = manifests["pretrained"]
    if isinstance(pretrained, Unavailable):
        warn(f"the pretrained arm will be skipped. Fix: {pretrained.fix}")
    return 0
