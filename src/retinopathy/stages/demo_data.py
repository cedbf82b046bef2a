"""The `demo-data` stage: write the synthetic demo dataset in the course layout.

The images are patients' two eyes, ``demo_<patient>_left`` and
``demo_<patient>_right``, both in the same split (sizes are image counts: two
per patient), with the grades of both eyes drawn as often alike as in the
course's train split (:func:`~retinopathy.data.synthetic.pair_counts`). Images
are painted by :mod:`retinopathy.data.synthetic`, one per record, each seeded
from (seed, split, image number), so the same settings give byte-identical
files. The folder is built under a temporary name and swapped in whole, and a
README whose first line is ``contract.DEMO_MARKER`` marks it as synthetic
(prepare notes it; the report labels every figure with it).
"""

from __future__ import annotations

from pathlib import Path

from retinopathy.core.contract import DEMO_README, Layout, is_demo_dataset
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import check_name_length, staged_folder
from retinopathy.pipeline.options import stage_params, stage_parser

# The params keys this stage reads (retinopathy.pipeline.paramkeys checks the code against it);
# `python -m retinopathy.pipeline.dvcyaml` writes them, less the speed-only ones, into dvc.yaml.
PARAMS = ("demo",)


def _check_size(
    name: str, value: object, minimum: int, maximum: int | None = None, even: bool = False
) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
        or (even and value % 2)
    ):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        what = "an even integer" if even else "an integer"
        why = " (two eyes per patient)" if even else ""
        raise RetinopathyError(
            f"demo: {name} must be {what} {bound}{why}, got {value!r}; fix `demo.{name}` in params.yaml"
        )
    return value


def write_demo_dataset(
    out: str | Path, *, seed: int, train_size: int, test_size: int, image_size: int, variation: bool
) -> None:
    """Write the demo dataset to ``out``, atomically and deterministically.

    The folder is built next to ``out`` under a temporary name and then swapped
    in, so an interrupted run never leaves a half-written dataset. Each image is
    seeded from (seed, split, image number), so the same arguments give byte-identical files
    (with the same numpy and Pillow: their float maths and JPEG encoder make the bytes).

    Args:
        out: Destination folder; an existing demo folder there is replaced entirely.
        seed: Integer 0 <= seed < 2**32.
        train_size: Number of training images: two per patient, an even number >= 10 (so
            every grade occurs).
        test_size: Number of test images (even, >= 10); their patients follow train's.
        image_size: Width and height of the images in pixels (32-2048).
        variation: Vary the photos as cameras do (:func:`~retinopathy.data.synthetic.vary`).

    Raises:
        RetinopathyError: on a bad setting, or if ``out`` exists and is not a demo
            folder (refusing to delete what this command did not write).
    """
    _check_size("seed", seed, 0, 2**32 - 1)
    _check_size("train_size", train_size, 10, even=True)
    _check_size("test_size", test_size, 10, even=True)
    _check_size("image_size", image_size, 32, 2048)
    _check_replaceable(Path(out))
    from retinopathy.data.demo import readme, write_split  # numpy and Pillow: not for --help

    with staged_folder(out, "demo-data", is_demo_dataset) as work:
        sizes = {"train": train_size, "test": test_size}
        counts = {
            "train": write_split(work, "train", seed, 0, train_size, image_size, variation),
            "test": write_split(work, "test", seed, train_size // 2, test_size, image_size, variation),
        }
        (work / DEMO_README).write_text(readme(seed, sizes, counts, image_size, variation), encoding="utf-8")


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier demo dataset."""
    check_name_length(out)  # first: even a stat of an over-long name fails with an OSError
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise RetinopathyError(f"{out}: exists and is not a folder; remove it or pass --out DIR")
    if any(out.iterdir()) and not is_demo_dataset(out):
        raise RetinopathyError(
            f"{out}: exists and is not a demo dataset (no {DEMO_README} from `retinopathy "
            "demo-data`); refusing to replace it. Pass another --out, or delete the folder."
        )


def main(argv: list[str] | None = None) -> int:
    """CLI ``retinopathy demo-data [--params params.yaml] [--out data/demo]``.

    Args:
        argv: Arguments after the command name; None reads ``sys.argv``.

    Returns:
        The exit status (0).
    """
    parser = stage_parser(
        "retinopathy demo-data",
        "Write the synthetic demo dataset (course layout) from the `demo` section of params.yaml.",
    )
    parser.add_argument(
        "--out",
        default=str(Layout.demo),
        metavar="DIR",
        help=f"The output folder, replaced (default: {Layout.demo}).",
    )
    args = parser.parse_args(argv)
    demo = stage_params(args).demo
    write_demo_dataset(
        args.out,
        seed=demo.seed,
        train_size=demo.train_size,
        test_size=demo.test_size,
        image_size=demo.image_size,
        variation=demo.variation,
    )
    print(
        f"wrote {demo.train_size} train + {demo.test_size} test synthetic images (two eyes per patient) "
        f"({demo.image_size} px, seed {demo.seed}) to {args.out}"
    )
    return 0
