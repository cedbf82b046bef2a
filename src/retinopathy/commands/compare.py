"""`retinopathy compare`: one table and one figure across DVC experiments, the course report's centre.

``retinopathy compare [REVISION ...] --out DIR`` reads, through DVC's Python
API, the workspace, the current commit (``main``) and every experiment of
that commit, or those named (experiment names, branches, tags, commits,
``workspace``), and writes ``DIR/compare.md``: one row per experiment and arm
(model, init, the selected epoch, test accuracy, kappa, balanced accuracy,
the test accuracy and kappa graded with both eyes (the `fuse` stage; ``n/a``
for an experiment without it), and a flag on any result at the majority
baseline), one row per param that
differs between them, the lab's table of models against inits (one row per
model the experiments trained, scratch / pretrained) when they trained two or
more, the mean, standard deviation and number of runs of experiments that
differ only in ``train.seed`` (queued with ``dvc exp run --queue -S
train.seed=N``; with the kappa and the referable AUC per patient graded with
both eyes), and ``DIR/compare.png``: the test accuracy and kappa per
epoch of all of them, each line labelled
``<name>: <model> <init>``, the selected epoch starred. No ``dvc exp save``
is needed. The folder is replaced as a whole, and only once every file is
written; it must be absent, empty or an earlier output of compare (nothing
else is ever deleted).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from retinopathy.core.errors import RetinopathyError, note
from retinopathy.core.files import Ours, check_output_folder, holds_only, staged_folder, starts_with
from retinopathy.reporting.escape import md_code
from retinopathy.reporting.experiments import WORKSPACE

if TYPE_CHECKING:  # the readers, DVC and matplotlib are imported in compare, so that --help is instant
    from retinopathy.reporting.experiments import Experiment


def _ours() -> Ours:
    """What compare writes: only a folder holding nothing else is replaced (nothing else is deleted)."""
    from retinopathy.reporting.comparison import TITLE

    return holds_only(
        {"compare.md": starts_with(TITLE.encode() + b"\n"), "compare.png": starts_with(b"\x89PNG")}
    )


def compare(names: list[str] | None, out: Path, repo: str = ".") -> list[Experiment]:
    """Write compare.md and compare.png for the experiments into ``out`` (replaced as a whole).

    ``out`` must be absent, empty or an earlier output of compare (:func:`_ours`), checked first.
    """
    from retinopathy.reporting.comparison import render
    from retinopathy.reporting.experiments import differing_params, load_experiments, same_results
    from retinopathy.reporting.figures import plot_curves

    ours = _ours()
    check_output_folder(out, "compare", ours)
    experiments, notes = load_experiments(names, repo)
    if not names and len(experiments) > 1 and experiments[0].kind == WORKSPACE:
        workspace, rest = experiments[0], experiments[1:]
        twin = next((e for e in rest if same_results(workspace, e)), None)
        if twin is not None:  # `dvc exp run` leaves its last experiment applied to the workspace
            experiments = rest
            notes = [
                *notes,
                f"The workspace is left out: it holds the same params and results as {md_code(twin.name)}.",
            ]
    if not any(arm.trained for e in experiments for arm in e.arms.values()):
        raise RetinopathyError(
            "no arm of these experiments was trained: run `dvc repro` or `dvc exp run` first"
        )
    differ = differing_params(experiments)
    with staged_folder(out, "compare", ours) as staging:
        runs = [(e.name, arm) for e in experiments for arm in e.arms.values()]
        plot_curves(
            runs,
            f"{len(experiments)} experiment(s), {sum(a.trained for _, a in runs)} trained arms",
            staging / "compare.png",
        )
        (staging / "compare.md").write_text(render(experiments, differ, notes), encoding="utf-8")
    return experiments


def build_parser() -> argparse.ArgumentParser:
    """The command's options (built without importing DVC)."""
    parser = argparse.ArgumentParser(prog="retinopathy compare", description=__doc__.split("\n")[0])
    parser.add_argument(
        "experiments",
        nargs="*",
        metavar="REVISION",
        help=f"Experiment names, branches, tags, commits or `{WORKSPACE}` (default: the "
        "workspace, the current commit and every experiment of it).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="Output folder, replaced as a whole: absent, empty or an earlier output of compare.",
    )
    parser.add_argument(
        "--repo", default=".", metavar="DIR", help="The DVC project (default: the current folder)."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy compare [REVISION ...] --out DIR``."""
    args = build_parser().parse_args(argv)
    experiments = compare(args.experiments or None, args.out, args.repo)
    note(f"compared {', '.join(e.name for e in experiments)}")
    print(f"wrote {args.out / 'compare.md'} and {args.out / 'compare.png'}")
    return 0
