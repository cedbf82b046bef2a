"""`retinopathy report`: the figures and the Markdown report of both arms.

Reads what the train and evaluate stages wrote (``metrics/history/<arm>.csv``,
``metrics/<arm>.json``, ``metrics/confusion/<arm>_{normalized,counts}.csv``),
checks it, and writes ``accuracy.png``, ``confusion_<arm>.png``,
``best_accuracy.png`` and ``report.md`` into the output folder. Everything is
read and checked before anything is drawn, and the figures are drawn into a
temporary folder that replaces the output folder only once all of it is
written, so a failure never leaves a half-updated report behind.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator, PercentFormatter

from retinopathy.errors import RetinopathyError
from retinopathy.files import staged_folder

matplotlib.use("Agg")  # before pyplot: DVC stages and CI have no display
from matplotlib import pyplot as plt  # noqa: E402

GRADES = ("0 No DR", "1 Mild", "2 Moderate", "3 Severe", "4 Proliferative")
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
CONFUSION_COLUMNS = ("actual", "0", "1", "2", "3", "4")
# Keys of a trained arm's JSON that the figures need; the table shows "n/a" for others.
REQUIRED_TRAINED = ("best_test_accuracy", "test_accuracy", "quadratic_kappa", "majority_baseline")
COLOURS = {"scratch": "tab:blue", "pretrained": "tab:orange"}
DPI = 110
STYLE = {"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 9.5}
ROW_SUM_TOLERANCE = 0.01  # normalised rows are written rounded; 0.01 still catches a counts file
EVALUATE_FIX = "run `dvc repro evaluate` first"


@dataclass
class Arm:
    """Everything the report shows about one arm; the tables are None for a skipped arm."""

    name: str
    info: dict[str, Any]
    history: pd.DataFrame | None = None
    normalized: np.ndarray | None = None
    counts: np.ndarray | None = None

    @property
    def trained(self) -> bool:
        return self.info["status"] == "trained"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RetinopathyError(f"{path}: metrics file not found: {EVALUATE_FIX}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RetinopathyError(f"{path}: not valid JSON ({error}): {EVALUATE_FIX}") from None
    if not isinstance(info, dict) or info.get("status") not in ("trained", "skipped"):
        raise RetinopathyError(
            f"{path}: expected an object with status 'trained' or 'skipped': {EVALUATE_FIX}"
        )
    if "model" not in info:
        raise RetinopathyError(f"{path}: the key 'model' is missing: {EVALUATE_FIX}")
    if info["status"] == "trained":
        for key in REQUIRED_TRAINED:
            value = info.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RetinopathyError(
                    f"{path}: '{key}' is missing or not a number: {EVALUATE_FIX}"
                )
        for key in ("best_test_accuracy", "test_accuracy", "majority_baseline"):
            # Fractions, not percent: a 88.5 here would draw an axis up to 8850%.
            if not 0 <= info[key] <= 1:
                raise RetinopathyError(
                    f"{path}: '{key}' is {info[key]}, expected a fraction in [0, 1]"
                )
    return info


def _read_csv(path: Path, columns: Sequence[str], fix: str) -> pd.DataFrame:
    if not path.is_file():
        raise RetinopathyError(f"{path}: file not found: {fix}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise RetinopathyError(f"{path}: not a readable CSV ({error}): {fix}") from None
    frame.columns = [str(name).strip() for name in frame.columns]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise RetinopathyError(
            f"{path}: column(s) {', '.join(missing)} missing (header: {','.join(frame.columns)}; "
            f"expected {','.join(columns)}): {fix}"
        )
    try:
        return frame.astype(float)
    except ValueError:
        raise RetinopathyError(f"{path}: a value is not a number: {fix}") from None


def _read_history(path: Path) -> pd.DataFrame:
    fix = "run `dvc repro train` first"
    frame = _read_csv(path, HISTORY_COLUMNS, fix)
    if frame.empty:
        raise RetinopathyError(f"{path}: no epochs, but the arm's JSON says it was trained: {fix}")
    accuracies = [c for c in frame.columns if c.endswith("_accuracy")]
    if not frame[accuracies].stack().between(0, 1).all():
        raise RetinopathyError(f"{path}: accuracies must be fractions in [0, 1]: {fix}")
    return frame.sort_values("epoch")


def _read_confusion(path: Path, normalized: bool) -> np.ndarray:
    frame = _read_csv(path, CONFUSION_COLUMNS, EVALUATE_FIX)
    if sorted(frame["actual"].tolist()) != list(range(len(GRADES))):
        raise RetinopathyError(
            f"{path}: expected one row per true grade 0-4 in the column 'actual': {EVALUATE_FIX}"
        )
    matrix = frame.sort_values("actual")[list(CONFUSION_COLUMNS[1:])].to_numpy()
    if (matrix < 0).any():
        raise RetinopathyError(f"{path}: negative entries: {EVALUATE_FIX}")
    if normalized:
        sums = matrix.sum(axis=1)
        # A grade with no test images has an all-zero row; every other row sums to 1.
        bad = [g for g, s in enumerate(sums) if abs(s - 1) > ROW_SUM_TOLERANCE and s != 0]
        if bad:
            rows = ", ".join(f"grade {g} sums to {sums[g]:.3f}" for g in bad)
            raise RetinopathyError(
                f"{path}: rows must sum to 1 (normalised per true grade) but {rows}: {EVALUATE_FIX}"
            )
    elif not np.allclose(matrix, np.round(matrix)):
        raise RetinopathyError(f"{path}: counts must be whole numbers: {EVALUATE_FIX}")
    return matrix


def load_arm(metrics_dir: Path, name: str) -> Arm:
    """Read and check one arm's metrics; a skipped arm needs only its JSON.

    Raises:
        RetinopathyError: a file is missing or malformed (the message names it).
    """
    arm = Arm(name, _read_json(metrics_dir / f"{name}.json"))
    if not arm.trained:
        return arm
    arm.history = _read_history(metrics_dir / "history" / f"{name}.csv")
    confusion = metrics_dir / "confusion"
    arm.normalized = _read_confusion(confusion / f"{name}_normalized.csv", normalized=True)
    arm.counts = _read_confusion(confusion / f"{name}_counts.csv", normalized=False).astype(int)
    # Both files come from the same evaluation; if they disagree one of them is stale.
    totals = arm.counts.sum(axis=1, keepdims=True)
    expected = np.divide(arm.counts, totals, out=np.zeros(arm.normalized.shape), where=totals > 0)
    if not np.allclose(expected, arm.normalized, atol=ROW_SUM_TOLERANCE):
        raise RetinopathyError(
            f"{confusion / f'{name}_normalized.csv'} does not match "
            f"{confusion / f'{name}_counts.csv'} (one of them is stale): {EVALUATE_FIX}"
        )
    return arm


def _model_name(model: str) -> str:
    return model.replace("resnet", "ResNet")


def _describe_data(arms: Sequence[Arm]) -> tuple[str, str, str, bool]:
    """(model, data folder or "", title label, synthetic?) shared by all arms, checked for consistency."""
    models = {arm.info["model"] for arm in arms}
    if len(models) > 1:
        raise RetinopathyError(
            f"the arms were run with different models ({', '.join(sorted(models))}): the metrics "
            "of one arm are stale; run `dvc repro` to bring both up to date"
        )
    trained = [arm for arm in arms if arm.trained]
    synthetic = any(arm.info.get("synthetic") for arm in trained)
    data = next((str(arm.info["data"]) for arm in trained if arm.info.get("data")), "")
    label = "synthetic demo data" if synthetic else (data or "unknown data")
    return _model_name(models.pop()), data, label, synthetic


def _baseline(arms: Sequence[Arm]) -> float | None:
    # Every arm is evaluated on the same test split, so any trained arm's baseline will do.
    return next((arm.info["majority_baseline"] for arm in arms if arm.trained), None)


def _colour(arm: Arm, index: int) -> str:
    return COLOURS.get(arm.name, f"C{index + 2}")


def _save(fig: plt.Figure, path: Path) -> None:
    # No bbox_inches="tight": it would crop each figure to its content, and a skipped
    # arm's placeholder must keep the size of the heat map it stands in for.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)


def plot_accuracy(arms: Sequence[Arm], title: str, path: Path) -> None:
    """Train/test (and validation) accuracy per epoch of every arm, with the baseline."""
    fig, ax = plt.subplots(figsize=(9.5, 5), layout="constrained")
    handles: list[Line2D] = []
    starred = False
    for index, arm in enumerate(arms):
        colour = _colour(arm, index)
        if arm.history is None:
            # A legend entry without a line, so the missing arm is visible rather than forgotten.
            handles.append(Line2D([], [], ls="none", marker="x", color=colour,
                                  label=f"{arm.name}: skipped (see report)"))
            continue
        epochs = arm.history["epoch"]
        styles = [("test_accuracy", "-", "test"), ("train_accuracy", "--", "train"),
                  ("val_accuracy", ":", "validation")]
        for column, style, text in styles:
            if column in arm.history:
                (line,) = ax.plot(epochs, 100 * arm.history[column], ls=style, marker="o",
                                  ms=4, lw=2, color=colour, label=f"{arm.name}: {text}")
                handles.append(line)
        # Star the epoch whose checkpoint was evaluated, so the selection rule is visible.
        chosen = arm.history[arm.history["epoch"] == arm.info.get("best_epoch")]
        if not chosen.empty:
            ax.plot(chosen["epoch"], 100 * chosen["test_accuracy"], ls="none", marker="*",
                    ms=15, color=colour, mec="black", mew=0.8, zorder=5)
            starred = True
    baseline = _baseline(arms)
    if baseline is not None:
        handles.append(ax.axhline(100 * baseline, color="grey", ls="--", lw=1.2,
                                  label=f"always grade 0 ({100 * baseline:.1f}%)"))
    if starred:
        handles.append(Line2D([], [], ls="none", marker="*", ms=12, color="white", mec="black",
                              label="best epoch (evaluated)"))
    ax.set(title=title, xlabel="epoch", ylabel="accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if any(arm.trained for arm in arms):
        low, high = ax.get_ylim()
        low, high = max(low, 0), min(high, 101)
    else:  # nothing to draw: keep a sane empty frame instead of matplotlib's 0..1 default
        low, high = 0, 100
        ax.set_xlim(0.5, 4.5)
        ax.text(0.5, 0.5, "no arm was trained (see report)", ha="center", va="center",
                fontsize=13, color="grey", transform=ax.transAxes)
    ax.set_ylim(low, high)
    # Whole percents unless the curves span only a few points (then 0.5% steps need one).
    # Ticks on multiples of 1, 2, 5 or 10 points, so whole-percent labels are exact.
    ax.yaxis.set_major_locator(MaxNLocator(steps=[1, 2, 5, 10]))
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0 if high - low >= 5 else 1))
    ax.grid(alpha=0.3)
    # Outside the axes: with up to 3 lines per arm a legend inside always hides some points.
    # Long handles: with the short default the marker hides the gap that tells dashed from solid.
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
              handlelength=4)
    _save(fig, path)


def plot_confusion(arm: Arm, model: str, path: Path) -> None:
    """The normalised confusion matrix as an annotated heat map, or why the arm is missing."""
    fig, ax = plt.subplots(figsize=(7.5, 6.2), layout="constrained")
    if arm.normalized is None or arm.counts is None:
        ax.axis("off")
        ax.text(0.5, 0.75, f"{arm.name} arm skipped", ha="center", va="center",
                fontsize=18, weight="bold", transform=ax.transAxes)
        body = "\n\n".join(
            textwrap.fill(f"{head}: {arm.info.get(key, 'not given')}", width=62,
                          break_on_hyphens=False)
            for head, key in (("Reason", "reason"), ("Fix", "fix"))
        )
        ax.text(0.5, 0.62, body, ha="center", va="top", fontsize=10.5, multialignment="left",
                transform=ax.transAxes,
                bbox={"boxstyle": "round,pad=0.8", "facecolor": "#f4f4f4", "edgecolor": "grey"})
        ax.set_title(f"{model}, {arm.name} arm: confusion matrix")
        _save(fig, path)
        return
    image = ax.imshow(arm.normalized, cmap="Blues", vmin=0, vmax=1)
    for (row, col), value in np.ndenumerate(arm.normalized):
        ax.text(col, row, f"{value:.2f}\n({arm.counts[row, col]})", ha="center", va="center",
                fontsize=10, color="white" if value > 0.55 else "black")
    ticks = range(len(GRADES))
    ax.set_xticks(ticks, [g.replace(" ", "\n", 1) for g in GRADES])
    ax.set_yticks(ticks, GRADES)
    ax.set(xlabel="predicted grade", ylabel="true grade")
    info = arm.info
    ax.set_title(f"{model}, {arm.name} arm: confusion matrix\n"
                 f"test accuracy {100 * info['test_accuracy']:.1f}%, "
                 f"quadratic kappa {info['quadratic_kappa']:.3f}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true grade")
    _save(fig, path)


def plot_best(arms: Sequence[Arm], title: str, path: Path) -> None:
    """The highest test accuracy of each arm as bars, skipped arms as labelled empty slots."""
    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    for index, arm in enumerate(arms):
        if not arm.trained:
            ax.bar(index, 100, width=0.6, color="none", edgecolor="lightgrey", ls="--", hatch="//")
            ax.text(index, 50, "skipped", ha="center", va="center", fontsize=12, color="grey",
                    bbox={"facecolor": "white", "edgecolor": "none"})
            continue
        value = 100 * arm.info["best_test_accuracy"]
        ax.bar(index, value, color=_colour(arm, index), width=0.6)
        ax.text(index, value + 1.5, f"{value:.1f}%", ha="center", va="bottom", weight="bold")
    baseline = _baseline(arms)
    if baseline is not None:
        ax.axhline(100 * baseline, color="grey", ls="--", lw=1.2,
                   label=f"always grade 0 ({100 * baseline:.1f}%)")
        # Below the axes: inside, it would cover a bar whatever corner it took.
        fig.legend(loc="outside lower center")
    ax.set_xticks(range(len(arms)), [arm.name for arm in arms])
    ax.set(title=title, ylabel="highest test accuracy", ylim=(0, 108), xlim=(-0.6, len(arms) - 0.4))
    ax.yaxis.set_major_formatter(PercentFormatter(100, decimals=0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "n/a"


def _cell(value: Any) -> str:
    return "n/a" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(arms: Sequence[Arm], model: str, data: str, data_label: str, synthetic: bool) -> str:
    """The text of report.md (figures are linked by their file names)."""
    trained = [arm for arm in arms if arm.trained]
    lines = [f"# {model}: diabetic retinopathy grading, " + " vs ".join(a.name for a in arms), ""]
    if synthetic:
        lines += [f"> **SYNTHETIC demo data** (`{data or 'data/demo'}`): these numbers show "
                  "that the pipeline runs; they say nothing about retinopathy.", ""]
    else:
        lines += [f"Data: `{data_label}`.", ""]
    test_size = next((a.info["test_size"] for a in trained if "test_size" in a.info), None)
    if test_size is not None:
        lines += [f"Test images: {test_size}.", ""]
    if any(arm.info.get("selection") == "test" for arm in trained):
        lines += ["The best epoch is the one with the highest *test* accuracy (the lab's rule), so "
                  "the highest test accuracy is optimistic; set `data.val_fraction` > 0 in "
                  "params.yaml to choose the epoch on a validation split instead.", ""]
    lines += ["![accuracy per epoch](accuracy.png)", "", "![highest test accuracy per arm]"
              "(best_accuracy.png)", "", "## Results", ""]

    def row(label: str, values: Sequence[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    def field(key: str, fmt: Any = _cell) -> list[str]:
        return [fmt(a.info.get(key)) if a.trained else "skipped" for a in arms]

    lines += [row("", [a.name for a in arms]), "|---|" + "---|" * len(arms)]
    lines.append(row("status", [a.info["status"] for a in arms]))
    lines.append(row("weights", field("weights")))
    lines.append(row("best epoch", [f"{a.info.get('best_epoch', 'n/a')} of "
                                    f"{a.info.get('epochs', 'n/a')}" if a.trained else "skipped"
                                    for a in arms]))
    lines.append(row("selection rule", field("selection_rule")))
    if any("best_val_accuracy" in a.info for a in trained):
        lines.append(row("highest validation accuracy", field("best_val_accuracy", _pct)))
    lines.append(row("**highest test accuracy**", field("best_test_accuracy", _pct)))
    # Equal to the highest test accuracy under the lab's rule; with a validation split it
    # is the honest estimate, the highest one is then picked with hindsight.
    lines.append(row("test accuracy at the best epoch", field("test_accuracy", _pct)))
    lines.append(row("final test accuracy", field("final_test_accuracy", _pct)))
    lines.append(row("train accuracy", field("train_accuracy", _pct)))
    lines.append(row("balanced accuracy", field("balanced_accuracy", _pct)))
    lines.append(row("quadratic weighted kappa",
                     field("quadratic_kappa", lambda v: f"{v:.3f}" if v is not None else "n/a")))
    for grade, name in enumerate(GRADES):
        lines.append(row(f"recall {name}", [_pct((a.info.get("recall") or {}).get(str(grade)))
                                            if a.trained else "skipped" for a in arms]))
    lines.append(row("majority baseline (always grade 0)", field("majority_baseline", _pct)))
    lines += ["", "## Confusion matrices", "",
              "Rows are the true grade, columns the predicted grade; each cell is the fraction of "
              "the true grade's test images (count in brackets).", ""]
    for arm in arms:
        lines += [f"![{arm.name} confusion matrix](confusion_{arm.name}.png)", ""]
    skipped = [arm for arm in arms if not arm.trained]
    if skipped:
        lines += ["## Skipped arms", ""]
        for arm in skipped:
            lines += [f"### {arm.name}", "", f"- Reason: {arm.info.get('reason', 'not given')}",
                      f"- Fix: {arm.info.get('fix', 'not given')}", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    metrics_dir: str | Path = "metrics",
    out: str | Path = "plots",
    arms: Sequence[str] = ("scratch", "pretrained"),
) -> None:
    """Write accuracy.png, confusion_<arm>.png, best_accuracy.png and report.md into ``out``.

    The folder ``out`` is replaced as a whole (it belongs to this stage), and only
    after every file is written; on any error it is left as it was.

    Args:
        metrics_dir: the folder the train and evaluate stages wrote.
        out: the output folder.
        arms: the arms to compare, in display order.

    Raises:
        RetinopathyError: an input is missing, malformed or inconsistent.
    """
    metrics_dir, out = Path(metrics_dir), Path(out)
    if out.exists() and not out.is_dir():
        raise RetinopathyError(f"{out} exists and is not a folder: remove it or pass another --out")
    loaded = [load_arm(metrics_dir, name) for name in arms]
    model, data, data_label, synthetic = _describe_data(loaded)
    try:
        with staged_folder(out) as staging, plt.rc_context(STYLE):
            plot_accuracy(loaded, f"{model} ({data_label}): accuracy per epoch",
                          staging / "accuracy.png")
            for arm in loaded:
                plot_confusion(arm, model, staging / f"confusion_{arm.name}.png")
            plot_best(loaded, f"{model} ({data_label}):\nhighest test accuracy per arm",
                      staging / "best_accuracy.png")
            text = render_markdown(loaded, model, data, data_label, synthetic)
            (staging / "report.md").write_text(text, encoding="utf-8")
    finally:
        plt.close("all")


def main(argv: list[str] | None = None) -> int:
    """``retinopathy report [--metrics metrics] [--out plots]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="retinopathy report", description="draw the figures and write plots/report.md"
    )
    parser.add_argument(
        "--metrics", default="metrics", help="metrics folder (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="plots", help="output folder, replaced as a whole (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    write_report(args.metrics, args.out)
    print(f"wrote {Path(args.out) / 'report.md'} and its figures")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
