"""The `explain` stage: what the model looks at, for the report.

``retinopathy explain --init scratch|pretrained`` takes three test images of
every true grade, chosen by ``train.seed`` (among them one the arm graded
right and one it graded wrong, where there are such), and draws them with the
Grad-CAM heat map of the grade the arm predicted (:mod:`retinopathy.models.gradcam`) into
``plots/explain_<arm>.png``. The grades are those `evaluate` wrote to
``metrics/predictions/<arm>.csv``; the heat maps come from the eager fp32
network of ``best.pt``. A skipped arm gets a figure that says so.
"""

from __future__ import annotations

from pathlib import Path

from retinopathy.core.config import Params
from retinopathy.core.contract import GRADES, Layout, grade_label
from retinopathy.pipeline.options import arm_parser, stage_params

# The library (and torch) is imported in explain_arm, so that --help is instant.

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = ("data.root", "train.seed", "train.device", "train.portable")


def explain_arm(params: Params, arm: str, layout: Layout | None = None) -> Path:
    """Draw ``plots/explain_<arm>.png``; returns its path.

    Raises:
        RetinopathyError: an input is missing or damaged, or the network's scores are not finite.
    """
    import torch

    from retinopathy.core.files import atomic_file
    from retinopathy.core.records import Skipped, read_info
    from retinopathy.core.registry import title
    from retinopathy.data.dataset import RetinopathyDataset
    from retinopathy.data.index import read_index
    from retinopathy.engine import checkpoint
    from retinopathy.engine.runtime import resolve_device
    from retinopathy.reporting.heatmaps import PER_GRADE, choose, read_grades, save_grid, save_message, tiles

    layout = layout or Layout()
    files, out = layout.arm(arm), layout.explanation(arm)
    info = read_info(files.info, arm)
    if isinstance(info, Skipped):
        with atomic_file(out, "wb") as stream:
            save_message(stream, f"{arm} arm: not trained", info.reason)
        return out
    trained = checkpoint.load_trained(files.best, fix=f"restore it with `dvc checkout {files.model_dir}`")
    spec = trained.spec
    device = resolve_device(params.train.device)
    grader = trained.grader.to(device)  # eager fp32: Grad-CAM's hooks
    records = read_index(layout.index)["test"]
    actual, predicted = read_grades(files.predictions, len(records))
    dataset = RetinopathyDataset(
        params.data.root, "test", spec.image_size, records=records, dtype=torch.uint8
    )
    overflow = (
        "its weights are finite, but the network "
        f"overflows on this image; train the arm again (`dvc repro -f train@{arm}`)"
    )
    chosen = choose(actual, predicted, params.train.seed)
    drawn = tiles(
        grader, spec.head(), dataset, records, actual, predicted, chosen, device, files.best, overflow
    )
    heading = (
        f"{title(spec.model)}, {arm} arm: where it looked on test images\n"
        f"(Grad-CAM of the grade it gave; green: graded right, red: graded wrong)"
    )
    with atomic_file(out, "wb") as stream:
        save_grid(stream, drawn, PER_GRADE, [f"true {grade_label(g)}" for g in GRADES], heading)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy explain --init scratch|pretrained [--params params.yaml]``."""
    parser = arm_parser("retinopathy explain", __doc__.split("\n")[0], "The arm whose heat maps to draw.")
    args = parser.parse_args(argv)
    print(f"wrote {explain_arm(stage_params(args), args.init)}")
    return 0
