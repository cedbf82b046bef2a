"""The `weights` stage: resolve the initial weights of each arm and write a manifest per arm.

It always runs (``always_changed`` in dvc.yaml): ImageNet weights may appear in
torchvision's cache, or a file named in ``train.weights`` may change, without
any dependency DVC could see. The manifests only change when the weights do,
so the pretrained arm reruns exactly then.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from retinopathy.config import load_params
from retinopathy.contract import ARMS, Layout
from retinopathy.errors import warn
from retinopathy.files import write_json_atomic
from retinopathy.models.build import NO_DOWNLOAD_ENV
from retinopathy.models.manifest import describe_pretrained, describe_scratch


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy weights [--params params.yaml] [--out models/init]``."""
    parser = argparse.ArgumentParser(prog="retinopathy weights", description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    parser.add_argument("--out", type=Path, default=Layout.manifests,
                        help=f"folder of the manifests (default: {Layout.manifests})")
    parser.add_argument("--no-download", action="store_true",
                        help="only look in the torchvision cache; never download "
                             f"(also when the environment sets {NO_DOWNLOAD_ENV}=1)")
    args = parser.parse_args(argv)
    download = not (args.no_download or os.environ.get(NO_DOWNLOAD_ENV) == "1")
    params = load_params(args.params)
    manifests = {
        "scratch": describe_scratch(params.model, params.train.seed),
        "pretrained": describe_pretrained(params.model, params.train.weights_for(params.model),
                                          download=download),
    }
    assert tuple(manifests) == ARMS
    layout = Layout(manifests=args.out)
    for arm, manifest in manifests.items():
        write_json_atomic(layout.manifest(arm), manifest)
        state = manifest.get("description") or f"UNAVAILABLE: {manifest['reason']}"
        print(f"{arm}: {state}")
    if not manifests["pretrained"]["available"]:
        warn(f"the pretrained arm will be skipped. Fix: {manifests['pretrained']['fix']}")
    return 0
