"""The `external` stage: grade every set of params.yaml's ``external`` with one arm's best checkpoint.

``retinopathy external --init scratch|pretrained`` reads each configured folder (written by
`retinopathy import-external`; a folder without its ``import.json`` is refused, naming the key),
grades its test images as evaluate grades the test split, and writes for each set ``<set>``:

- ``metrics/external/<arm>/<set>.json``: the headline keys of the fused grades
  (:data:`~retinopathy.core.contract.FUSED_METRIC_KEYS`), a row of `dvc metrics show` per set and arm;
- ``metrics/external/files/<arm>/<set>.screening.json``, ``roc/<set>_image.csv``,
  ``roc/<set>_patient.csv`` and ``reliability/<set>.csv``: evaluate's screening files (same schema,
  same code), per image and per patient, with bootstrap intervals over patients, at the
  operating points the arm chose on the INTERNAL validation split, applied unchanged;
- ``gulshan/<set>.screening.json`` (and its curves) where the set has DME labels: referable as
  Gulshan et al. 2016 define it (moderate DR or worse, or referable macular edema);
- ``predictions/<set>.csv``: evaluate's predictions columns, one row per image;
- ``index.json`` (:class:`~retinopathy.core.records.ExternalRun`): the sets graded and how.

With ``external: {}`` it writes the index alone. A skipped arm writes each set's files empty and
its reason, as evaluate does. Every file changes together (``files.write_together``); the files of
a set taken out of params.yaml are removed (this stage wrote them).
"""

from __future__ import annotations

from retinopathy.core.config import Params
from retinopathy.core.contract import Layout
from retinopathy.core.errors import warn
from retinopathy.pipeline.options import arm_parser, stage_params

# The library (and torch) is imported in external_arm, so that --help is instant.

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
# No evaluate.operating_points: the points come from evaluate's record of the internal validation split.
PARAMS = (
    "external",
    "data.on_device",
    "train.device",
    "train.precision",
    "train.channels_last",
    "train.portable",
    "train.batch_size",
    "evaluate.tta",
    "evaluate.bootstrap",
    "evaluate.seed",
    "quality.thresholds",
)


def external_arm(params: Params, arm: str, layout: Layout | None = None) -> list[str]:
    """Grade every configured set with the arm's ``best.pt`` and write its files; the sets graded.

    Raises:
        RetinopathyError: a set folder that was not imported, a missing input, an output not finite;
            nothing is written then.
    """
    from retinopathy.core.files import write_together
    from retinopathy.core.records import Skipped, read_status
    from retinopathy.engine.external import skipped_contents, stale_files, validate_external
    from retinopathy.engine.runtime import Switches

    layout = layout or Layout()
    files, out = layout.arm(arm), layout.external(arm)
    status = read_status(files.status, arm)
    sets = params.external
    if isinstance(status, Skipped):
        contents = skipped_contents(out, status, list(sets))
    else:
        train = params.train
        switches = Switches(train.device, train.precision, train.channels_last, params.data.num_workers)
        evaluate = params.evaluate
        contents = validate_external(
            files,
            out,
            status,
            sets,
            switches,
            params.data.cache_dir,
            train.batch_size,
            evaluate.tta == "flips",
            evaluate.bootstrap,
            evaluate.seed,
            params.quality.thresholds,
        )
    stale = stale_files(out, contents)
    out.headline.mkdir(
        parents=True, exist_ok=True
    )  # a DVC output even with no set: `dvc metrics show` reads it
    write_together(contents)
    for path in stale:
        path.unlink()
    return [] if isinstance(status, Skipped) else list(sets)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy external --init scratch|pretrained [--params params.yaml]``."""
    parser = arm_parser(
        "retinopathy external", __doc__.split("\n")[0], "The arm whose best.pt grades the sets."
    )
    args = parser.parse_args(argv)
    params = stage_params(args)
    graded = external_arm(params, args.init)
    out = Layout().external(args.init)
    if not params.external:
        print(
            f"{args.init}: no external set configured (params.yaml's external is {{}}); add one with "
            "`retinopathy import-external FORMAT --root DIR --out DIR` and `external: {NAME: DIR}`"
        )
    elif not graded:
        warn(f"{args.init} arm skipped (not trained): its external files are empty; see {out.index}")
    else:
        print(f"{args.init}: graded {', '.join(graded)}; see {out.headline} and {out.folder}")
    return 0
