"""The `demo-data` stage: write the synthetic demo dataset in the course layout, and its shifted set.

It checks the `demo` settings and the destination folders, then has
:func:`retinopathy.data.demo.write_demo` paint the patients' two eyes (one grader's
labels, ``truth.csv``, ``quality.csv``) into a folder built under a temporary name
and swapped in whole, and the shifted set from another camera (APTOS 2019's layout)
into ``--shifted``. A README whose first line is ``contract.DEMO_MARKER`` marks both
as synthetic (prepare notes it; the report labels every figure with it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from retinopathy.core.contract import DEMO_README, SHIFTED_SUFFIX, Layout, is_demo_dataset, shifted_folder
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import check_name_length, staged_folder
from retinopathy.pipeline.options import stage_params, stage_parser

if TYPE_CHECKING:
    from retinopathy.data.demo_grader import Grader

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
    out: str | Path,
    *,
    seed: int,
    train_size: int,
    test_size: int,
    image_size: int,
    variation: bool,
    subtlety: float = 0.0,
    grader: Grader | None = None,
    ungradable: float = 0.0,
    usable: float = 0.0,
    shifted_size: int = 0,
    shifted_out: str | Path | None = None,
) -> None:
    """Write the demo dataset to ``out`` and its shifted set to ``shifted_out``, deterministically.

    Each folder is built under a temporary name and swapped in (the shifted set's first), so an
    interrupted run leaves no half-written dataset; each image is seeded from (seed, split,
    image number), so the same arguments (and numpy and Pillow) give byte-identical files.

    Args:
        out: Destination folder; an existing demo folder there is replaced entirely.
        seed: Integer 0 <= seed < 2**32.
        train_size: Number of training images: two per patient, an even number >= 10.
        test_size: Number of test images (even, >= 10); their patients follow train's.
        image_size: Width and height of the images in pixels (32-2048).
        variation: Vary the photos as cameras do (:func:`~retinopathy.data.synthetic.vary`).
        subtlety: 0-1: smaller, fainter and fewer lesions (:func:`~retinopathy.data.synthetic.render_fundus`).
        grader: Draws each label from the painted grade; None labels every image with its painted grade.
        ungradable: Share of each split's photos given a camera fault that makes them ungradable.
        usable: Share of each split's photos given a mild camera fault (still gradable).
        shifted_size: Photos of the shifted set (:mod:`retinopathy.data.demo_camera`); 0: none.
        shifted_out: Its folder, replaced entirely (required when ``shifted_size`` > 0).

    Raises:
        RetinopathyError: on a bad setting, or if ``out`` or ``shifted_out`` exists and is not
            a demo folder (refusing to delete what this command did not write).
    """
    _check_size("seed", seed, 0, 2**32 - 1)
    _check_size("train_size", train_size, 10, even=True)
    _check_size("test_size", test_size, 10, even=True)
    _check_size("image_size", image_size, 32, 2048)
    if shifted_size:
        _check_size("shifted_size", shifted_size, 10)
    _check_replaceable(Path(out))
    if shifted_out is not None:
        _check_apart(Path(out), Path(shifted_out))
        _check_replaceable(Path(shifted_out), "--shifted")
    elif shifted_size:
        raise RetinopathyError("demo: a shifted set (shifted_size > 0) needs its folder, shifted_out")
    # numpy and Pillow: not for --help. The faults are quality/'s, handed to data/ (which sits below it).
    from retinopathy.data.demo import Look, write_demo
    from retinopathy.data.demo_grader import Grader
    from retinopathy.quality.degrade import FAULTS

    look = Look(subtlety, grader if grader is not None else Grader(), ungradable, usable, FAULTS)
    with contextlib.ExitStack() as stack:
        work = stack.enter_context(staged_folder(out, "demo-data", is_demo_dataset))
        # Entered second, so it is swapped in first: the demo's folder, the one the
        # pipeline reads, changes last.
        other = (
            None
            if shifted_out is None
            else stack.enter_context(staged_folder(shifted_out, "demo-data", is_demo_dataset))
        )
        write_demo(
            work,
            other,
            seed=seed,
            sizes={"train": train_size, "test": test_size},
            image_size=image_size,
            variation=variation,
            look=look,
            shifted_size=shifted_size,
        )


def _check_replaceable(out: Path, option: str = "--out") -> None:
    """Refuse to replace anything but an empty folder or an earlier demo dataset."""
    check_name_length(out)  # first: even a stat of an over-long name fails with an OSError
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise RetinopathyError(f"{out}: exists and is not a folder; remove it or pass {option} DIR")
    if any(out.iterdir()) and not is_demo_dataset(out):
        raise RetinopathyError(
            f"{out}: exists and is not a demo dataset (no {DEMO_README} from `retinopathy "
            f"demo-data`); refusing to replace it. Pass another {option}, or delete the folder."
        )


def _check_apart(out: Path, shifted: Path) -> None:
    """Refuse a shifted set's folder that is the demo's, inside it or holding it (one replaces the other)."""
    a, b = Path(os.path.abspath(out)), Path(os.path.abspath(shifted))
    if a == b or a in b.parents or b in a.parents:
        raise RetinopathyError(
            f"--shifted {shifted}: must be a folder apart from --out {out} (not the same, inside it or "
            f"holding it); pass another --shifted (default: {shifted_folder(out)})"
        )


def main(argv: list[str] | None = None) -> int:
    """CLI ``retinopathy demo-data [--params params.yaml] [--out data/demo] [--shifted DIR]``.

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
    parser.add_argument(
        "--shifted",
        metavar="DIR",
        help=f"The shifted set's folder, replaced (default: beside --out, its name + {SHIFTED_SUFFIX}).",
    )
    args = parser.parse_args(argv)
    demo = stage_params(args).demo
    from retinopathy.data.demo_grader import Grader  # numpy: not for --help

    shifted = Path(args.shifted) if args.shifted is not None else shifted_folder(args.out)
    write_demo_dataset(
        args.out,
        seed=demo.seed,
        train_size=demo.train_size,
        test_size=demo.test_size,
        image_size=demo.image_size,
        variation=demo.variation,
        subtlety=demo.subtlety,
        grader=Grader(demo.grader_misses, demo.grader_slips, demo.grader_artefacts),
        ungradable=demo.ungradable,
        usable=demo.usable,
        shifted_size=demo.shifted_size,
        shifted_out=shifted,
    )
    print(
        f"wrote {demo.train_size} train + {demo.test_size} test synthetic images (two eyes per patient) "
        f"({demo.image_size} px, seed {demo.seed}) to {args.out}, and {demo.shifted_size} photos from "
        f"another camera (APTOS 2019's layout) to {shifted}"
    )
    return 0
