"""`retinopathy <command>`: a thin dispatcher over each module's ``main(argv)``.

Each command lives in its own module with its own argparse ``main``; this file
only maps names to modules, so ``retinopathy train`` in a DVC stage and
``retinopathy.stages.train.main([...])`` in a test run exactly the same code.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from importlib import metadata

from retinopathy.core import portable
from retinopathy.core.errors import RetinopathyError

# command -> (module, one-line description). Modules are imported lazily so that
# `retinopathy --help` does not pay for importing torch.
_STAGES = "retinopathy.stages."  # the DVC pipeline's stages
_COMMANDS = "retinopathy.commands."  # the commands that are no stage
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-data": (_STAGES + "demo_data", "write the synthetic demo dataset (course layout)"),
    "import-kaggle": (
        _COMMANDS + "import_kaggle",
        "build the course's 512x512 dataset from Kaggle's download",
    ),
    "import-external": (
        _COMMANDS + "import_external",
        "write a public DR set (APTOS, Messidor-2, IDRiD, DDR, ...) as a test set",
    ),
    "prepare": (_STAGES + "prepare", "check the raw data and write the index and summary"),
    "quality": (_STAGES + "quality", "judge whether each photograph can be graded, and why not"),
    "weights": (_STAGES + "weights", "resolve the initial weights of each arm and write manifests"),
    "train": (_STAGES + "train", "train one arm (scratch or pretrained), resuming from its checkpoint"),
    "evaluate": (_STAGES + "evaluate", "evaluate the best checkpoint of one arm on the test split"),
    "fuse": (_STAGES + "fuse", "grade each test image with both eyes of its patient (a blend)"),
    "external": (
        _STAGES + "external",
        "grade the external sets of params.yaml with one arm's best checkpoint",
    ),
    "report": (_STAGES + "report", "draw the figures and write plots/report.md"),
    "explain": (_STAGES + "explain", "draw test images with the heat maps of one arm's grades"),
    "compare": (_COMMANDS + "compare", "one table and one figure across DVC experiments"),
    "predict": (_COMMANDS + "predict", "grade new photographs with a trained arm (CSV, heat maps)"),
    "export": (_COMMANDS + "export", "write a trained arm as ONNX or TorchScript with a model card"),
    "bench": (_COMMANDS + "bench", "measure input-pipeline and training throughput"),
    "resume": (_COMMANDS + "resume", "list or prune the unfinished training runs kept for resuming"),
}


def module_of(command: str) -> str:
    """The module that implements ``command``: ``retinopathy.stages.<name>`` or ``.commands.<name>``."""
    return COMMANDS[command][0]


def version() -> str:
    """The installed package's version (``importlib.metadata``), or a note that it is not installed."""
    try:
        return metadata.version("retinopathy")
    except metadata.PackageNotFoundError:  # run from a source tree without `pip install -e .`
        return "unknown (not installed; run `pip install -e .`)"


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: retinopathy [--version] <command> [options]", "", "Commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [
        "",
        "Options:",
        f"  {'-h, --help':<{width}}  Show this message and exit.",
        f"  {'--version':<{width}}  Print the version and exit.",
        "",
        "`retinopathy <command> --help` describes each command's options.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``retinopathy <command> [options]`` and return the exit status.

    Bare ``retinopathy`` and ``--help`` print the usage and exit 0; ``--version``
    prints the version. No stage module is imported for these.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        print(f"retinopathy {version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"retinopathy: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    portable.prepare(rest)  # train.portable's CPU pins, before any stage module imports torch
    module = importlib.import_module(module_of(name))
    try:
        return int(module.main(rest) or 0)
    except RetinopathyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # A path the user typed with a name over the filesystem's limit: every output is checked
        # before any work (core.files.check_name_length), and this catches the inputs, whose stat fails.
        if error.errno != errno.ENAMETOOLONG:
            raise
        name = os.fsdecode(error.filename or "")
        shown = name if len(name) <= 120 else f"{name[:58]}...{name[-58:]}"
        print(
            f"error: {shown}: a name in this path is over the filesystem's limit (255 bytes per file name "
            "on most), so no such file can exist; pass a shorter path",
            file=sys.stderr,
        )
        return 2
