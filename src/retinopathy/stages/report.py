"""`retinopathy report`: the figures and the Markdown report of both arms.

Reads what the train and evaluate stages wrote (``metrics/history/<arm>.csv``,
``metrics/<arm>.json``, ``metrics/confusion/<arm>_{normalized,counts}.csv``,
and the screening files: ``metrics/<arm>.screening.json``, ``metrics/roc/``,
``metrics/reliability/``; and the `fuse` stage's, ``metrics/fused/``), checks it, and writes ``accuracy.png``,
``confusion_<arm>.png``, ``best_accuracy.png``, ``roc.png``, ``reliability.png``,
``roc_external.png`` (the `external` stage's sets, ``metrics/external/``) and ``report.md``
(with the `quality` stage's ``metrics/quality.info.json``: the Gradability section)
into the output folder. Everything is
read and checked before anything is drawn, and the figures are drawn into a
temporary folder that replaces the output folder only once all of it is
written, so a failure never leaves a half-updated report behind.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from retinopathy.core.contract import ARMS, EXTERNAL_FIGURE, REPORT_FIGURES, SCREENING_FIGURES, Layout
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.files import Ours, check_name_length, check_output_file, staged_files

# The readers, matplotlib and the Markdown are imported in write_report, so that --help is instant.

# The params keys this stage reads: none (its inputs are the metrics and figures of the arms).
PARAMS: tuple[str, ...] = ()


def _our_report(path: Path) -> bool:
    """A report.md of ours: its title line carries :data:`~retinopathy.reporting.markdown.TITLE_MARK`."""
    from retinopathy.reporting.markdown import TITLE_MARK

    try:
        with open(path, "rb") as stream:
            first = stream.readline(1000)
    except OSError:
        return False
    return first.startswith(b"# ") and TITLE_MARK.encode() in first


def _our_figure(path: Path) -> bool:
    """A figure of ours: a PNG linked from the report (ours) beside it."""
    report = path.with_name(Layout().report.name)
    return (
        path.is_file()
        and path.read_bytes()[:4] == b"\x89PNG"
        and _our_report(report)
        and f"]({path.name})" in report.read_text(encoding="utf-8", errors="replace")
    )


def _our_external_figure(path: Path) -> bool:
    """The external ROC figure of ours: linked from our report, or drawn beside a report without sets."""
    from retinopathy.reporting.external import NO_EXTERNAL

    report = path.with_name(Layout().report.name)
    return (
        _our_figure(path)
        or path.is_file()
        and path.read_bytes()[:4] == b"\x89PNG"
        and _our_report(report)
        and NO_EXTERNAL in report.read_text(encoding="utf-8", errors="replace")
    )


def outputs(arms: Sequence[str]) -> dict[str, Ours]:
    """The files report writes into its folder, each with how an earlier one of them is recognised."""
    names = [*REPORT_FIGURES, *SCREENING_FIGURES, *(Layout().confusion_figure(arm).name for arm in arms)]
    return {
        Layout().report.name: _our_report,
        **dict.fromkeys(names, _our_figure),
        EXTERNAL_FIGURE: _our_external_figure,
    }


def write_report(
    metrics_dir: str | Path = Layout.metrics,
    out: str | Path = Layout.plots,
    arms: Sequence[str] = ARMS,
) -> None:
    """Write accuracy.png, confusion_<arm>.png, best_accuracy.png and report.md into ``out``.

    Everything is drawn first into a temporary folder; only when all of it is
    written does each file replace its namesake in ``out`` (which also holds
    the `explain` stage's heat maps, linked from the report when present).
    On any error ``out`` is left as it was. A file there of the same name that
    report did not write (:func:`outputs`) is refused before anything is drawn.

    Args:
        metrics_dir: the folder the train and evaluate stages wrote.
        out: the output folder.
        arms: the arms to compare, in display order.

    Raises:
        RetinopathyError: an input is missing, malformed or inconsistent.
    """
    from retinopathy.core.records import read_quality_survey
    from retinopathy.evaluation.screening_files import load_screening
    from retinopathy.reporting.external import external_section, load_external
    from retinopathy.reporting.figures import (
        draw_external_figure,
        draw_report_figures,
        draw_screening_figures,
    )
    from retinopathy.reporting.gradability import gradability_section
    from retinopathy.reporting.markdown import describe_data, render_markdown
    from retinopathy.reporting.results import load_arm

    metrics_dir, out = Path(metrics_dir), Path(out)
    check_name_length(out, temporaries=False)  # a folder it fills: first, a stat of an over-long name fails
    if out.exists() and not out.is_dir():
        raise RetinopathyError(f"{out} exists and is not a folder: remove it or pass another --out")
    layout = Layout(metrics=metrics_dir)
    loaded = [load_arm(layout, name) for name in arms]
    screenings = {
        arm.name: load_screening(layout.arm(arm.name).screening_files) for arm in loaded if arm.trained
    }
    externals = [load_external(layout, name) for name in arms]
    # Without the quality stage's record (a pipeline run by hand) the section says to run it.
    survey = read_quality_survey(layout.quality_info) if layout.quality_info.is_file() else None
    model, _, data_label, _ = describe_data(loaded)  # before anything is drawn: one model for all arms
    ours = outputs(arms)
    for name, recognise in ours.items():  # before drawing: replace only what report wrote
        check_output_file(out / name, "report", recognise)
    explained = {arm.name for arm in loaded if Layout(plots=out).explanation(arm.name).is_file()}
    with staged_files(out, "report", ours) as staging:
        draw_report_figures(loaded, model, data_label, staging)
        draw_screening_figures(loaded, screenings, model, data_label, staging)
        draw_external_figure(externals, screenings, model, data_label, staging / EXTERNAL_FIGURE)
        gradability = gradability_section(list(arms), screenings, survey)
        text = render_markdown(
            loaded, explained, screenings, external_section(screenings, externals), gradability
        )
        (staging / Layout().report.name).write_text(text, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = argparse.ArgumentParser(prog="retinopathy report", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--metrics",
        default=str(Layout.metrics),
        metavar="DIR",
        help="The metrics folder that train and evaluate wrote (default: %(default)s).",
    )
    parser.add_argument(
        "--out", default=str(Layout.plots), metavar="DIR", help="The output folder (default: %(default)s)."
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``retinopathy report [--metrics metrics] [--out plots]``; returns the exit status."""
    args = build_parser().parse_args(argv)
    write_report(args.metrics, args.out)
    print(f"wrote {Path(args.out) / 'report.md'} and its figures")
    return 0
