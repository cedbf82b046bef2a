"""The report's "External validation" section: the internal test set and every external set side by side.

:func:`load_external` reads what the `external` stage wrote for each arm (its ``index.json`` and,
per set, the screening files: evaluate's schema, read by evaluate's reader);
:func:`external_section` writes the table (per image: referable AUC, sensitivity and specificity at
the grade and at the two operating points chosen on the internal validation split, kappa, each
with its 95% interval and its difference from the internal test set), with the definition of
referable beside every row; :func:`plot_external_roc` (in :mod:`retinopathy.reporting.figures`)
draws the ROC curves of every set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from retinopathy.core.contract import EXTERNAL_FIGURE, OPERATING_POINTS, Layout
from retinopathy.core.records import ExternalRun, ExternalSet, ReadText, read_external_run, read_working_tree
from retinopathy.evaluation.screening_files import Screening, load_screening
from retinopathy.reporting.escape import md_code, md_text
from retinopathy.reporting.markdown import figure_text
from retinopathy.reporting.results import EXTERNAL_FIX

# The section's one line when no set is configured (the figure is drawn all the same: it is an output).
NO_EXTERNAL = (
    "No external set configured: import one with `retinopathy import-external FORMAT --root DIR "
    "--out DIR` and name it in params.yaml's `external:` (README: Validate on other data)."
)
INTERNAL = "internal test"
REFERABLE_WORDS = "grade >= 2"
GULSHAN_WORDS = "Gulshan: grade >= 2 or referable DME"
# (key of the per-image figures, column label); each cell has its interval and its change from internal
COLUMNS = (
    ("auc_referable", "referable AUC"),
    ("sensitivity", "sens. at its grade"),
    ("specificity", "spec. at its grade"),
    *(
        (f"{point}_{which}", f"{which[:4]}. at {point.replace('_', '-')}")
        for point in OPERATING_POINTS
        for which in ("sensitivity", "specificity")
    ),
    ("kappa", "kappa"),
)


@dataclass(frozen=True)
class SetResult:
    """One set as one arm graded it: its index entry and screening files (and Gulshan's, with DME labels)."""

    name: str
    entry: ExternalSet
    screening: Screening
    gulshan: Screening | None


@dataclass(frozen=True)
class ArmExternal:
    """An arm's external validation: the sets it graded (none: no set, or the arm was skipped)."""

    arm: str
    run: ExternalRun | None  # None: the `external` stage has not run (results from before it)
    sets: list[SetResult]


def load_external(layout: Layout, arm: str, read: ReadText = read_working_tree) -> ArmExternal:
    """The `external` stage's files of ``arm``, checked (None as ``run`` where it has not run).

    Raises:
        RetinopathyError: an index or screening file that is damaged or missing where the index lists it.
    """
    files = layout.external(arm)
    try:
        read(files.index)
    except FileNotFoundError:
        return ArmExternal(arm, None, [])
    run = read_external_run(files.index, read)
    results = []
    for name, entry in run.sets.items():
        screening = load_screening(files.screening(name), EXTERNAL_FIX)
        gulshan = load_screening(files.gulshan(name), EXTERNAL_FIX) if entry.gulshan else None
        results.append(SetResult(name, entry, screening, gulshan))
    return ArmExternal(arm, run, results)


def _cell(entry: dict | None, internal: dict | None) -> str:
    text = figure_text(entry, undefined="undefined")
    if entry is None or internal is None or entry.get("value") is None or internal.get("value") is None:
        return text
    return f"{text} ({entry['value'] - internal['value']:+.3f})"


# Gulshan's rows count a DME-referable image as grade 2: their kappa is not of the set's grades.
GRADE_FIGURES = ("kappa",)
# From each record's gradability part (per image; "n/a" where the images were not judged for quality).
GRADABILITY_COLUMNS = (("imageability", "imageability"), ("sensitivity", "sens. intention to screen"))


def _gradability(record: dict | None) -> dict | None:
    part = (record or {}).get("gradability")
    return part["image"] if part else None


def _row(
    arm: str, label: str, record: dict, internal_record: dict | None, referable_only: bool = False
) -> str:
    figures, internal = record["image"], (internal_record or {}).get("image")
    cells = [
        "n/a"
        if referable_only and key in GRADE_FIGURES
        else _cell(figures.get(key), internal.get(key) if internal else None)
        for key, _ in COLUMNS
    ]
    judged, internal_judged = _gradability(record), _gradability(internal_record)
    cells += [
        "n/a"
        if judged is None
        else _cell(judged.get(key), internal_judged.get(key) if internal_judged else None)
        for key, _ in GRADABILITY_COLUMNS
    ]
    return f"| {arm} | {label} | {figures['n']} | " + " | ".join(cells) + " |"


def external_section(screenings: dict[str, Screening], externals: Sequence[ArmExternal]) -> list[str]:
    """The "External validation" section: one table of every trained arm's internal and external sets.

    Args:
        screenings: The trained arms' internal screening files (evaluate's), by arm name.
        externals: Each arm's external validation (:func:`load_external`), in display order.
    """
    lines = ["## External validation", ""]
    not_run = [e.arm for e in externals if e.run is None]
    if not_run:
        lines += [f"Not graded yet ({', '.join(not_run)}): {EXTERNAL_FIX}.", ""]
    graded = [e for e in externals if e.sets]
    if not graded:
        if not_run:  # its figure says that no set was graded yet
            return lines + [f"![ROC of referable DR per set]({EXTERNAL_FIGURE})", ""]
        return lines + [NO_EXTERNAL, ""]
    lines += [
        "Each arm's selected checkpoint graded every set of params.yaml's `external`, at the operating "
        "points it chose on the internal validation split, applied unchanged (never chosen on the "
        "set). Per image; 95% bootstrap intervals over patients; in brackets after each figure, its "
        "change from the internal test set. Published for comparison: Gulshan et al. 2016, referable "
        "AUC 0.991 (EyePACS-1) and 0.990 (Messidor-2); Voets et al. 2019, 0.951 (Kaggle test) and "
        "0.853 (Messidor-2).",
        "",
        "| arm | set (referable) | images | "
        + " | ".join(label for _, label in (*COLUMNS, *GRADABILITY_COLUMNS))
        + " |",
        "|---|---|---:|" + "---:|" * (len(COLUMNS) + len(GRADABILITY_COLUMNS)),
    ]
    for external in graded:
        own = screenings.get(external.arm)
        internal = own.record if own else None
        if internal is not None:
            lines.append(_row(external.arm, f"{INTERNAL} ({REFERABLE_WORDS})", internal, None))
        for result in external.sets:
            label = f"{md_text(result.name)} ({REFERABLE_WORDS})"
            lines.append(_row(external.arm, label, result.screening.record, internal))
            if result.gulshan is not None:
                label = f"{md_text(result.name)} ({GULSHAN_WORDS})"
                lines.append(_row(external.arm, label, result.gulshan.record, internal, referable_only=True))
    lines += [""]
    definitions = {r.entry.gulshan for e in graded for r in e.sets if r.entry.gulshan}
    lines += [f"- {REFERABLE_WORDS}: referable DR, moderate non-proliferative DR or worse."]
    lines += [
        "- imageability: the share of the set's images the quality assessor finds gradable; sens. "
        "intention to screen: sensitivity with an ungradable image counted as referred (section "
        "Gradability). The set's own quality labels chose which photographs were imported."
    ]
    lines += [
        f"- {GULSHAN_WORDS} (the sets with DME labels): {md_text(words)}; "
        "its kappa is n/a (not of the set's grades)."
        for words in sorted(definitions)
    ]
    for result in graded[0].sets:  # the verdicts are the same for every arm: the first arm's
        counts = result.entry.quality
        if counts:
            said = ", ".join(
                f"{level} {c.ungradable} of {c.gradable + c.ungradable}" for level, c in counts.items()
            )
            lines += [
                f"- {md_text(result.name)}'s own quality labels against the quality assessor: found "
                f"ungradable, per label: {said}."
            ]
    first = graded[0]

    def described(result: SetResult) -> str:
        entry = result.entry
        patients = f"{entry.patients} patients" if entry.patients is not None else "no patients named"
        return (
            f"{md_text(result.name)} ({md_text(entry.format)}, {md_code(entry.folder)}, "
            f"{entry.images} images, {patients})"
        )

    folder = md_code(str(Layout().external(first.arm).folder.parent))
    lines += [
        f"- The sets: {'; '.join(described(r) for r in first.sets)}. Per patient, and every file: {folder}.",
        "",
        f"![ROC of referable DR per set]({EXTERNAL_FIGURE})",
        "",
    ]
    return lines
