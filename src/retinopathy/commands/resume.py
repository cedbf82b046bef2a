"""`retinopathy resume`: list, or prune, the unfinished runs kept in the resume store.

``retinopathy resume [list]`` lists every run in ``models/.resume/<arm>/<run>/``
(:class:`retinopathy.engine.store.CheckpointStore`): its model, last finished
epoch, size and age. ``retinopathy resume prune RUN...`` removes the named runs
(``<arm>/<run>``, as listed); ``--older-than DAYS`` those not written for that
long; ``--all`` every one (``--arm`` keeps to one arm). A run of settings that
never come back would otherwise stay there for good (hundreds of MB for ResNet50).

Only a folder of the store's own form is removed: ``<arm>/<16 hex digits>``
holding nothing but ``last.pt``, ``best.pt`` and the temporaries of their writes,
each checkpoint of the run its folder names. Anything else is listed with what is
wrong and left alone. The arm's training lock is held while its runs are removed,
so a training run of that arm is never pulled from under itself.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import TYPE_CHECKING

from retinopathy.core.config import cli_positive_float
from retinopathy.core.contract import ARMS, Layout
from retinopathy.core.errors import RetinopathyError, note
from retinopathy.core.files import exclusive_lock

if TYPE_CHECKING:  # the store imports torch: imported where it is used, so --help is instant
    from retinopathy.engine.store import StoredRun


def selected(
    runs: list[StoredRun], names: list[str], arm: str | None, older_than: float | None, everything: bool
) -> list[StoredRun]:
    """The runs a prune removes: those named, else (``--all`` or ``--older-than``) every fitting one.

    Raises:
        RetinopathyError: a named run is not in the store, or is not recognisably the store's own.
    """
    from retinopathy.engine.store import RESUME_FOLDER

    if names:
        by_name = {run.name: run for run in runs}
        chosen = []
        for name in names:
            run = by_name.get(name.strip("/").removeprefix(f"{Layout().models}/{RESUME_FOLDER}/"))
            if run is None:
                known = ", ".join(sorted(by_name)[:5]) or "none"
                raise RetinopathyError(
                    f"{name}: no such run in the resume store (runs: {known}); name a run "
                    "as `retinopathy resume list` shows it, <arm>/<run>"
                )
            if run.problem:
                raise RetinopathyError(
                    f"{run.folder}: not removed: {run.problem}; look at it, and remove it "
                    "by hand if it is not needed"
                )
            chosen.append(run)
        return chosen
    if not everything and older_than is None:
        return []
    now = time.time()
    return [
        run
        for run in runs
        if (arm is None or run.arm == arm)
        and not run.problem
        and (older_than is None or now - run.modified >= older_than * 86400)
    ]


def prune(runs: list[StoredRun]) -> int:
    """Remove ``runs`` (each arm's under its training lock); returns the bytes freed."""
    from retinopathy.engine.store import megabytes, remove_stored_run

    freed = 0
    with contextlib.ExitStack() as locks:
        for arm in sorted({run.arm for run in runs}):
            locks.enter_context(exclusive_lock(Layout().arm(arm).lock, f"training of the {arm} arm"))
        for run in runs:
            remove_stored_run(run)
            print(f"removed {run.folder} ({megabytes(run.size)})")
            freed += run.size
    return freed


def main(argv: list[str] | None = None) -> int:
    """CLI: ``retinopathy resume [list | prune RUN... | prune --older-than DAYS | prune --all] [--arm A]``."""
    parser = argparse.ArgumentParser(prog="retinopathy resume", description=__doc__.split("\n")[0])
    parser.add_argument(
        "action",
        nargs="?",
        choices=("list", "prune"),
        default="list",
        help="List the unfinished runs, or prune (remove) some of them (default: list).",
    )
    parser.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="Prune: the runs to remove, named <arm>/<run> as the list shows them.",
    )
    parser.add_argument("--arm", choices=ARMS, help="Only the runs of this arm.")
    parser.add_argument(
        "--older-than",
        type=cli_positive_float,
        metavar="DAYS",
        help="Prune: every run not written for this many days.",
    )
    parser.add_argument("--all", action="store_true", help="Prune: every run (of --arm, if given).")
    args = parser.parse_args(argv)
    if args.action == "list" and (args.runs or args.all or args.older_than is not None):
        parser.error(
            "RUN, --all and --older-than choose what `prune` removes; write `retinopathy resume prune ...`"
        )
    if args.action == "prune" and args.runs and (args.all or args.older_than is not None or args.arm):
        parser.error("name runs, or choose them with --all, --older-than or --arm; not both")
    if args.action == "prune" and not (args.runs or args.all or args.older_than is not None):
        parser.error(
            "prune needs the runs to remove: RUN... (as `retinopathy resume list` names them), "
            "--older-than DAYS or --all"
        )
    from retinopathy.engine.store import RESUME_FOLDER, megabytes, stored_runs

    store = Layout().models / RESUME_FOLDER
    runs = stored_runs(Layout().models)
    if args.action == "list":
        shown = [run for run in runs if (args.arm is None or run.arm == args.arm) and not run.problem]
        others = [run for run in runs if (args.arm is None or run.arm == args.arm) and run.problem]
        if shown:
            print(
                f"{store}: {len(shown)} unfinished run{'s' if len(shown) > 1 else ''}, "
                f"{megabytes(sum(run.size for run in shown))}, oldest first:"
            )
            for run in shown:
                print(f"  {run.describe()}")
            print(
                "A run resumes when `retinopathy train` runs with its settings again; remove those you do "
                "not need with `retinopathy resume prune RUN...` (or --older-than DAYS, or --all)"
            )
        else:
            print(f"{store}: no unfinished runs")
        if others:  # never removed by prune: the user decides
            size = megabytes(sum(run.size for run in others))
            print(f"Not the resume store's own, so left alone ({size}):")
            for run in others:
                print(f"  {run.folder}: {run.problem}")
        return 0
    chosen = selected(runs, args.runs, args.arm, args.older_than, args.all)
    freed = prune(chosen)
    print(f"freed {megabytes(freed)} in {store}" if chosen else f"{store}: nothing to prune")
    left_alone = [run for run in runs if run.problem and (args.arm is None or run.arm == args.arm)]
    for run in left_alone if not args.runs else []:
        note(f"left alone: {run.folder}: {run.problem}")
    return 0
