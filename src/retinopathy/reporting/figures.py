"""The report's figures: accuracy per epoch, confusion matrices, the best accuracy per arm, ROC, reliability.

Each function draws one PNG from checked :class:`~retinopathy.reporting.results.Arm`
data. Drawn with matplotlib's Agg backend (DVC stages and CI have no display).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

from retinopathy.core.contract import (
    GRADES,
    LEVELS,
    OPERATING_POINTS,
    REPORT_FIGURES,
    SCREENING_FIGURES,
    Layout,
    grade_label,
)
from retinopathy.core.records import Skipped
from retinopathy.evaluation.screening_files import Screening
from retinopathy.reporting.escape import plain_text
from retinopathy.reporting.external import ArmExternal
from retinopathy.reporting.markdown import figure_text
from retinopathy.reporting.results import Arm, at_baseline, majority_baseline, model_name

if TYPE_CHECKING:  # matplotlib >= 3.8; only the type checker reads it
    from matplotlib.typing import RcKeyType

matplotlib.use("Agg")  # before pyplot: DVC stages and CI have no display
from matplotlib import pyplot as plt  # noqa: E402

GRADE_LABELS = tuple(grade_label(grade) for grade in GRADES)
COLOURS = {"scratch": "tab:blue", "pretrained": "tab:orange"}
DPI = 110
STYLE: dict[RcKeyType, float] = {"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 9.5}


def _colour(arm: Arm, index: int) -> str:
    return COLOURS.get(arm.name, f"C{index + 2}")


def _save(fig: plt.Figure, path: Path) -> None:
    # No bbox_inches="tight": it would crop each figure to its content, and a skipped
    # arm's placeholder must keep the size of the heat map it stands in for.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)


def _star(ax: plt.Axes, epochs: Any, values: Any, colour: str) -> None:
    """Star the selected epoch (the evaluated checkpoint's), so the selection rule is visible."""
    ax.plot(epochs, values, ls="none", marker="*", ms=15, color=colour, mec="black", mew=0.8, zorder=5)


def _star_handle() -> Line2D:
    """The legend entry of :func:`_star`'s stars."""
    return Line2D(
        [], [], ls="none", marker="*", ms=12, color="white", mec="black", label="selected epoch (evaluated)"
    )


def _baseline(ax: plt.Axes, baseline: float) -> Line2D:
    """The majority baseline (always grade 0) as a dashed line across ``ax``, in percent."""
    return ax.axhline(
        100 * baseline, color="grey", ls="--", lw=1.2, label=f"always grade 0 ({100 * baseline:.1f}%)"
    )


def plot_accuracy(arms: Sequence[Arm], title: str, path: Path) -> None:
    """Train/test (and validation) accuracy per epoch of every arm, with the baseline."""
    fig, ax = plt.subplots(figsize=(9.5, 5), layout="constrained")
    handles: list[Line2D] = []
    starred = False
    for index, arm in enumerate(arms):
        colour = _colour(arm, index)
        if arm.history is None:
            # A legend entry without a line, so the missing arm is visible rather than forgotten.
            handles.append(
                Line2D([], [], ls="none", marker="x", color=colour, label=f"{arm.name}: skipped (see report)")
            )
            continue
        epochs = arm.history["epoch"]
        styles = [
            ("test_accuracy", "-", "test"),
            ("train_accuracy", "--", "train"),
            ("val_accuracy", ":", "validation"),
        ]
        for column, style, text in styles:
            if column in arm.history:
                (line,) = ax.plot(
                    epochs,
                    100 * arm.history[column],
                    ls=style,
                    marker="o",
                    ms=4,
                    lw=2,
                    color=colour,
                    label=f"{arm.name}: {text}",
                )
                handles.append(line)
        chosen = arm.history[arm.history["epoch"] == arm.metrics.get("epoch")]
        if not chosen.empty:
            _star(ax, chosen["epoch"], 100 * chosen["test_accuracy"], colour)
            starred = True
    baseline = majority_baseline(arms)
    if baseline is not None:
        handles.append(_baseline(ax, baseline))
    if starred:
        handles.append(_star_handle())
    ax.set(title=title, xlabel="epoch", ylabel="accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(arm.trained for arm in arms):
        low, high = ax.get_ylim()
        low, high = max(low, 0), min(high, 101)
    else:  # nothing to draw: keep a sane empty frame instead of matplotlib's 0..1 default
        low, high = 0, 100
        ax.set_xlim(0.5, 4.5)
        ax.text(
            0.5,
            0.5,
            "no arm was trained (see report)",
            ha="center",
            va="center",
            fontsize=13,
            color="grey",
            transform=ax.transAxes,
        )
    ax.set_ylim(low, high)
    # Whole percents unless the curves span only a few points (then 0.5% steps need one).
    # Ticks on multiples of 1, 2, 5 or 10 points, so whole-percent labels are exact.
    ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0 if high - low >= 5 else 1))
    ax.grid(alpha=0.3)
    # Outside the axes: with up to 3 lines per arm a legend inside always hides some points.
    # Long handles: with the short default the marker hides the gap that tells dashed from solid.
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, handlelength=4)
    _save(fig, path)


def plot_confusion(arm: Arm, model: str, path: Path) -> None:
    """The normalised confusion matrix as an annotated heat map, or why the arm is missing."""
    fig, ax = plt.subplots(figsize=(7.5, 6.2), layout="constrained")
    if arm.normalized is None or arm.counts is None:  # a skipped arm (load_arm reads a trained one's)
        words = (("Reason", arm.info.reason), ("Fix", arm.info.fix)) if isinstance(arm.info, Skipped) else ()
        ax.axis("off")
        ax.text(
            0.5,
            0.75,
            f"{arm.name} arm skipped",
            ha="center",
            va="center",
            fontsize=18,
            weight="bold",
            transform=ax.transAxes,
        )
        body = "\n\n".join(
            textwrap.fill(f"{head}: {text}", width=62, break_on_hyphens=False) for head, text in words
        )
        ax.text(
            0.5,
            0.62,
            body,
            ha="center",
            va="top",
            fontsize=10.5,
            multialignment="left",
            transform=ax.transAxes,
            bbox={"boxstyle": "round,pad=0.8", "facecolor": "#f4f4f4", "edgecolor": "grey"},
        )
        ax.set_title(f"{model}, {arm.name} arm: confusion matrix")
        _save(fig, path)
        return
    image = ax.imshow(arm.normalized, cmap="Blues", vmin=0, vmax=1)
    for (row, col), value in np.ndenumerate(arm.normalized):
        ax.text(
            col,
            row,
            f"{value:.2f}\n({arm.counts[row, col]})",
            ha="center",
            va="center",
            fontsize=10,
            color="white" if value > 0.55 else "black",
        )
    ticks = range(len(GRADE_LABELS))
    ax.set_xticks(ticks, [g.replace(" ", "\n", 1) for g in GRADE_LABELS])
    ax.set_yticks(ticks, GRADE_LABELS)
    ax.set(xlabel="predicted grade", ylabel="true grade")
    ax.set_title(
        f"{model}, {arm.name} arm: confusion matrix\n"
        f"test accuracy {100 * arm.metrics['acc']:.1f}%, "
        f"quadratic kappa {arm.metrics['kappa']:.3f}"
    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true grade")
    _save(fig, path)


def plot_best(arms: Sequence[Arm], title: str, path: Path) -> None:
    """The selected epoch's test accuracy of each arm as bars, skipped arms as labelled empty slots."""
    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    for index, arm in enumerate(arms):
        if not arm.trained:
            ax.bar(index, 100, width=0.6, color="none", edgecolor="lightgrey", ls="--", hatch="//")
            ax.text(
                index,
                50,
                "skipped",
                ha="center",
                va="center",
                fontsize=12,
                color="grey",
                bbox={"facecolor": "white", "edgecolor": "none"},
            )
            continue
        value = 100 * arm.metrics["acc"]
        ax.bar(index, value, color=_colour(arm, index), width=0.6)
        ax.text(index, value + 1.5, f"{value:.1f}%", ha="center", va="bottom", weight="bold")
        if at_baseline(arm.metrics):  # the same flag as the report's table
            ax.text(
                index,
                value / 2,
                "at the\nmajority\nbaseline",
                ha="center",
                va="center",
                fontsize=11,
                weight="bold",
                color="darkred",
                bbox={"facecolor": "white", "edgecolor": "darkred"},
            )
    baseline = majority_baseline(arms)
    if baseline is not None:
        _baseline(ax, baseline)
        # Below the axes: inside, it would cover a bar whatever corner it took.
        fig.legend(loc="outside lower center")
    ax.set_xticks(range(len(arms)), [arm.name for arm in arms])
    ax.set(title=title, ylabel="test accuracy (selected epoch)", ylim=(0, 108), xlim=(-0.6, len(arms) - 0.4))
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _percent_square(ax: plt.Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Square axes from 0 to 100% both ways (with a margin for the points on the edges), gridded."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(-2, 102), ylim=(-2, 102), aspect="equal")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.grid(alpha=0.3)


POINT_MARKERS = dict(zip(OPERATING_POINTS, ("^", "s"), strict=True))


def _roc_line(ax: plt.Axes, curve: Any, colour: str, name: str, label: str, lw: float) -> bool:
    """Draw one ROC curve in percent (``label`` in the legend); where it is empty (one class only),
    a legend mark saying so instead, and False."""
    if curve.empty:
        ax.plot([], [], ls="none", marker="x", color=colour, label=f"{name}: no curve (one class only)")
        return False
    ax.plot(100 * curve["fpr"], 100 * curve["tpr"], drawstyle="steps-post", lw=lw, color=colour, label=label)
    return True


def plot_roc(arms: Sequence[Arm], screenings: dict[str, Screening], title: str, path: Path) -> None:
    """The ROC curve of referable DR of every arm, per image and per patient (two panels).

    Each curve's label gives its AUC and 95% interval; the arm's own grade
    (predicted >= 2) is a dot, and the operating points chosen on validation
    (applied to test) are a triangle (high sensitivity) and a square (high specificity).
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 6), layout="constrained")
    for ax, level in zip(axes, LEVELS, strict=True):
        ax.plot([0, 100], [0, 100], color="grey", ls=":", lw=1, label="chance (AUC 0.5)")
        for index, arm in enumerate(arms):
            colour = _colour(arm, index)
            screening = screenings.get(arm.name)
            if screening is None:
                ax.plot(
                    [], [], ls="none", marker="x", color=colour, label=f"{arm.name}: skipped (see report)"
                )
                continue
            figures = screening.record[level]
            curve = screening.roc[level]
            auc = figure_text(figures["auc_referable"], ", ", "undefined")
            if not _roc_line(ax, curve, colour, arm.name, f"{arm.name}: AUC {auc}", lw=2):
                continue
            own = figures["sensitivity"]["value"], figures["specificity"]["value"]
            if None not in own:
                ax.plot(
                    100 * (1 - own[1]),
                    100 * own[0],
                    "o",
                    ms=9,
                    color=colour,
                    mec="black",
                    label=f"{arm.name}: its grade (>= 2)",
                )
            for point in OPERATING_POINTS:
                sens = figures.get(f"{point}_sensitivity", {}).get("value")
                spec = figures.get(f"{point}_specificity", {}).get("value")
                if sens is not None and spec is not None:
                    ax.plot(
                        100 * (1 - spec),
                        100 * sens,
                        POINT_MARKERS[point],
                        ms=10,
                        color=colour,
                        mec="black",
                        label=f"{arm.name}: {point.replace('_', '-')} point",
                    )
        n = next((s.record[level]["n"] for s in screenings.values()), None)
        unit = "images" if level == "image" else "patients (the worse eye; the higher eye score)"
        _percent_square(
            ax,
            f"per {level}" + (f": {n} {unit}" if n is not None else ""),
            "1 - specificity (false positive rate)",
            "sensitivity (true positive rate)",
        )
        ax.legend(loc="lower right", fontsize=8.5)
    fig.suptitle(title)
    _save(fig, path)


def plot_reliability(arms: Sequence[Arm], screenings: dict[str, Screening], title: str, path: Path) -> None:
    """Observed share of referable DR against the mean P(grade >= 2) in each bin, per image, every arm.

    Each point is a bin of :data:`retinopathy.evaluation.screening.CALIBRATION_BINS` equal-width
    bins, its area proportional to the bin's images; the label gives the expected
    calibration error. The diagonal is perfect calibration.
    """
    fig, ax = plt.subplots(figsize=(7.5, 6.5), layout="constrained")
    ax.plot([0, 100], [0, 100], color="grey", ls=":", lw=1, label="perfectly calibrated")
    for index, arm in enumerate(arms):
        colour = _colour(arm, index)
        screening = screenings.get(arm.name)
        bins = None if screening is None else screening.reliability.dropna()
        if bins is None or bins.empty:
            why = "skipped (see report)" if screening is None else "no probabilities (regression head)"
            ax.plot([], [], ls="none", marker="x", color=colour, label=f"{arm.name}: {why}")
            continue
        assert screening is not None  # bins came from it
        ece = screening.record["calibration"]["ece"]
        sizes = 400 * bins["count"] / bins["count"].sum()
        # The line carries the legend entry: a scatter's would be as large as its largest bin.
        ax.plot(
            100 * bins["mean_probability"],
            100 * bins["observed"],
            "-o",
            lw=1.5,
            ms=6,
            color=colour,
            mec="black",
            label=f"{arm.name}: ECE {ece:.3f}",
        )
        ax.scatter(
            100 * bins["mean_probability"],
            100 * bins["observed"],
            s=sizes + 15,
            color=colour,
            edgecolor="black",
            zorder=3,
        )
    bins_text = next(
        (
            f"{s.record['calibration']['bins']} equal-width bins; "
            for s in screenings.values()
            if not s.reliability.empty
        ),
        "",
    )
    _percent_square(
        ax,
        title,
        f"mean P(grade >= 2) in the bin ({bins_text}area: images)",
        "observed share with referable DR",
    )
    ax.legend(loc="upper left")
    _save(fig, path)


def draw_screening_figures(
    arms: Sequence[Arm], screenings: dict[str, Screening], model: str, data_label: str, folder: Path
) -> None:
    """Write roc.png and reliability.png of ``arms`` (``screenings``: the trained arms') into ``folder``."""
    try:
        with plt.rc_context(STYLE), plain_text():  # names and folders drawn as given, never as math
            roc, reliability = SCREENING_FIGURES
            name = f"{model} ({data_label})"
            plot_roc(arms, screenings, f"{name}: ROC of referable DR (grade >= 2)", folder / roc)
            plot_reliability(
                arms, screenings, f"{name}:\nreliability of P(grade >= 2) per image", folder / reliability
            )
    finally:
        plt.close("all")


def plot_external_roc(
    externals: Sequence[ArmExternal], screenings: dict[str, Screening], title: str, path: Path
) -> None:
    """The ROC curve of referable DR (grade >= 2) per image of the internal test set and every external
    set, one panel per arm that graded a set; each curve's label gives its AUC and 95% interval."""
    graded = [external for external in externals if external.sets]
    fig, axes = plt.subplots(
        1, max(1, len(graded)), figsize=(6.5 * max(1, len(graded)), 6.5), layout="constrained"
    )
    axes = np.atleast_1d(axes)
    if not graded:
        axes[0].set_axis_off()  # no axes to draw: a note in their place
        axes[0].text(0.5, 0.5, "no external set graded\n(params.yaml: external)", ha="center", va="center")
    for ax, external in zip(axes, graded, strict=False):
        ax.plot([0, 100], [0, 100], color="grey", ls=":", lw=1, label="chance (AUC 0.5)")
        internal = screenings.get(external.arm)
        curves = [("internal test", internal)] if internal else []
        curves += [(result.name, result.screening) for result in external.sets]
        for index, (name, screening) in enumerate(curves):
            if screening is None:
                continue
            curve = screening.roc["image"]
            auc = figure_text(screening.record["image"]["auc_referable"], ", ", "undefined")
            label = f"{name} ({screening.record['image']['n']} images): AUC {auc}"
            _roc_line(ax, curve, f"C{index}", name, label, lw=2.5 if index == 0 else 1.8)
        _percent_square(
            ax, external.arm, "1 - specificity (false positive rate)", "sensitivity (true positive rate)"
        )
        ax.legend(loc="lower right", fontsize=8.5)
    fig.suptitle(title)
    _save(fig, path)


def draw_external_figure(
    externals: Sequence[ArmExternal],
    screenings: dict[str, Screening],
    model: str,
    data_label: str,
    path: Path,
) -> None:
    """Write the external ROC figure (:func:`plot_external_roc`) to ``path``."""
    try:
        with plt.rc_context(STYLE), plain_text():
            title = f"{model} (trained on {data_label}):\nROC of referable DR (grade >= 2) per image, per set"
            plot_external_roc(externals, screenings, title, path)
    finally:
        plt.close("all")


def draw_report_figures(arms: Sequence[Arm], model: str, data_label: str, folder: Path) -> None:
    """Write accuracy.png, confusion_<arm>.png and best_accuracy.png of ``arms`` into ``folder``."""
    try:
        with plt.rc_context(STYLE), plain_text():  # names and folders drawn as given, never as math
            accuracy, best = REPORT_FIGURES
            plot_accuracy(arms, f"{model} ({data_label}): accuracy per epoch", folder / accuracy)
            for arm in arms:
                plot_confusion(arm, model, Layout(plots=folder).confusion_figure(arm.name))
            plot_best(arms, f"{model} ({data_label}):\ntest accuracy of the selected epoch", folder / best)
    finally:
        plt.close("all")


ARM_STYLES = {"scratch": "-", "pretrained": "--"}


def plot_curves(runs: Sequence[tuple[str, Arm]], title: str, path: Path) -> None:
    """Test accuracy and test kappa per epoch of every (experiment, arm), in one figure of two panels.

    Each line is labelled ``<experiment>: <model> <init>`` (one colour per
    experiment, one line style per init), each arm's selected epoch is starred
    on both panels, and one legend, outside the panels, names them all.

    Args:
        runs: (experiment name, its arm) pairs; skipped arms are left out of the lines.
    """
    with plt.rc_context(STYLE), plain_text():  # names and folders drawn as given, never as math
        fig, (acc_ax, kappa_ax) = plt.subplots(1, 2, figsize=(14, 5), layout="constrained")
        names = list(dict.fromkeys(name for name, _ in runs))
        handles: list[Line2D] = []
        starred = False
        for name, arm in runs:
            if arm.history is None:
                continue
            colour = f"C{names.index(name) % 10}"
            style = ARM_STYLES.get(arm.name, ":")
            label = f"{name}: {model_name(arm.info.model)} {arm.name}"
            label += " (AT BASELINE)" if at_baseline(arm.metrics) else ""
            epochs = arm.history["epoch"]
            (line,) = acc_ax.plot(
                epochs,
                100 * arm.history["test_accuracy"],
                ls=style,
                marker="o",
                ms=4,
                lw=2,
                color=colour,
                label=label,
            )
            kappa_ax.plot(epochs, arm.history["test_kappa"], ls=style, marker="o", ms=4, lw=2, color=colour)
            handles.append(line)
            chosen = arm.history[epochs == arm.metrics.get("epoch")]
            if not chosen.empty:
                for ax, values in ((acc_ax, 100 * chosen["test_accuracy"]), (kappa_ax, chosen["test_kappa"])):
                    _star(ax, chosen["epoch"], values, colour)
                starred = True
        baseline = majority_baseline([arm for _, arm in runs])
        if baseline is not None:
            handles.append(_baseline(acc_ax, baseline))
            kappa_ax.axhline(0, color="grey", ls="--", lw=1.2)
        if starred:
            handles.append(_star_handle())
        acc_ax.set(title="test accuracy per epoch", xlabel="epoch", ylabel="test accuracy")
        acc_ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
        kappa_ax.set(
            title="test quadratic weighted kappa per epoch (always grade 0: 0)",
            xlabel="epoch",
            ylabel="kappa",
        )
        for ax in (acc_ax, kappa_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        # One legend, outside both panels: inside, it would cover lines whatever corner it took.
        fig.legend(handles=handles, loc="outside right upper", handlelength=3)
        fig.suptitle(title)
        _save(fig, path)
