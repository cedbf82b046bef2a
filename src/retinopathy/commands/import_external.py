"""The `import-external` command: a public DR set as a test-only folder in the course layout.

`retinopathy import-external FORMAT --root DIR --out DIR [--size N]` reads one of the
sets in ``contract.EXTERNAL_FORMATS`` as its users unpack it and writes the folder that the
pipeline validates on (:mod:`retinopathy.data.external.importer` says what it holds). The
command only parses its arguments; the readers and the writer are library code.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from retinopathy.core.config import cli_positive_int
from retinopathy.core.contract import COURSE_IMAGE_SIZE, EXTERNAL_FORMATS
from retinopathy.data.external.importer import import_external

# It reads no params.yaml: dvc.yaml's `demo-shifted` stage runs it on the demo's shifted set
# (retinopathy.pipeline.paramkeys reads this declaration).
PARAMS: tuple[str, ...] = ()


def main(argv: list[str] | None = None) -> int:
    """``retinopathy import-external``: parse the command line and run ``import_external``."""
    parser = argparse.ArgumentParser(
        prog="retinopathy import-external",
        description="Write a public diabetic retinopathy set (as its users unpack it) as a test-only folder "
        "in the course layout: test_img.csv, test_label.csv and <name>.jpeg (cropped, squared and resized "
        "as import-kaggle does), with test_dme.csv, quality.csv, sources.csv and import.json. Nothing is "
        "written unless every label and every listed image is there and valid.",
    )
    parser.add_argument("format", metavar="FORMAT", help=f"The set's format: {', '.join(EXTERNAL_FORMATS)}.")
    parser.add_argument(
        "--root",
        type=Path,
        required=True,
        metavar="DIR",
        help="The folder the set was unpacked into (README: what each format holds).",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="The folder to create (new or empty)."
    )
    parser.add_argument(
        "--size",
        type=cli_positive_int,
        default=COURSE_IMAGE_SIZE,
        help=f"The output side in pixels (default: {COURSE_IMAGE_SIZE}).",
    )
    parser.add_argument(
        "--workers", type=cli_positive_int, default=1, help="Parallel processes (default: 1)."
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="Leave out listed images whose file is missing (counted in import.json) instead of refusing.",
    )
    args = parser.parse_args(argv)
    import_external(
        args.format,
        args.root,
        args.out,
        size=args.size,
        workers=args.workers,
        allow_missing=args.allow_missing,
    )
    return 0
