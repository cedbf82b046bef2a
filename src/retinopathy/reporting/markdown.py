"""The text of the report (``plots/report.md``): its sections, from the arms that the readers checked.

:func:`render_markdown` writes the whole page: the title and the data it was run on,
the patients line, the results table (:func:`results_table`), the screening section
(:func:`screening_section`: the figures with their intervals, the operating points,
prepare's count of patients on both sides of the split), gradability (passed in), grading with both eyes
(:func:`fusion_section`), the confusion matrices, the heat maps and the skipped arms.
The figures are linked by their file names; `retinopathy report` draws them
(:mod:`retinopathy.reporting.figures`). Text that is not the code's own goes through
:mod:`retinopathy.reporting.escape`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from retinopathy.core.contract import GRADES, LEVELS, OPERATING_POINTS, Layout, grade_label, recall_key
from retinopathy.core.errors import RetinopathyError
from retinopathy.core.records import EvaluationInfo, Skipped
from retinopathy.data.patients import leakage_warning
from retinopathy.reporting.escape import md_code, md_prose, md_text
from retinopathy.reporting.results import BASELINE_RULE, Arm, at_baseline, model_name

if TYPE_CHECKING:  # only its type: the report's readers load the files
    from retinopathy.evaluation.screening_files import Screening

TITLE_MARK = ": diabetic retinopathy grading, "  # in the first line of every report.md


def describe_data(arms: Sequence[Arm]) -> tuple[str, str, str, bool]:
    """What the arms were run on, checked to be one model: shown in every figure's title and the report.

    Returns:
        The model's name, the data folder (or ""), the label of the data in titles, and
        whether it is the synthetic demo.

    Raises:
        RetinopathyError: the arms were run with different models (one arm's metrics are stale).
    """
    models = {arm.info.model for arm in arms}
    if len(models) > 1:
        raise RetinopathyError(
            f"the arms were run with different models ({', '.join(sorted(models))}): the metrics "
            "of one arm are stale; run `dvc repro` to bring both up to date"
        )
    trained = [arm.info for arm in arms if isinstance(arm.info, EvaluationInfo)]
    synthetic = any(info.synthetic for info in trained)
    data = next((info.data for info in trained if info.data), "")
    label = "synthetic demo data" if synthetic else (data or "unknown data")
    return model_name(models.pop()), data, label, synthetic


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, int | float) else "n/a"


def _cell(value: Any) -> str:
    return "n/a" if value is None else md_text(value)


def figure_text(entry: dict | None, between: str = "-", undefined: str = "undefined (one class only)") -> str:
    """``0.912 [0.871-0.950]``: a screening figure and its 95% interval (``between`` the bounds).

    Args:
        entry: The figure as the screening file holds it (``value``, ``low``, ``high``); None: ``n/a``.
        between: What separates the bounds (the figures' legends write ``[0.871, 0.950]``).
        undefined: The words for a figure without a value (one class only).
    """
    if entry is None:
        return "n/a"
    if entry.get("value") is None:
        return undefined
    interval = f" [{entry['low']:.3f}{between}{entry['high']:.3f}]" if entry.get("low") is not None else ""
    return f"{entry['value']:.3f}{interval}"


SCREENING_ROWS = (  # (key of each level's figures, label)
    ("auc_referable", "referable DR AUC (grade >= 2; score P(>=2))"),
    ("auc_vision_threatening", "vision-threatening DR AUC (grade >= 3; score P(>=3))"),
    ("sensitivity", "sensitivity at its grade (predicted >= 2)"),
    ("specificity", "specificity at its grade (predicted < 2)"),
    *(
        (f"{point}_{which}", f"{which} at the {point.replace('_', '-')} point")
        for point in OPERATING_POINTS
        for which in ("sensitivity", "specificity")
    ),
    ("accuracy", "accuracy (5 grades)"),
    ("kappa", "quadratic weighted kappa"),
)


def screening_section(
    arms: Sequence[Arm], screenings: dict[str, Screening], leakage: Sequence[str] = ()
) -> list[str]:
    """The report's "Screening" section: the figures with their intervals, the operating points, the notes.

    Args:
        arms: Every arm, in display order (skipped ones show as "skipped").
        screenings: The trained arms' screening files, by arm name.
        leakage: Lines on patients shared between the splits (prepare's leakage count), placed
            before the table; empty until prepare reports it.
    """
    if not screenings:
        return []
    first = next(iter(screenings.values())).record
    boot = first["bootstrap"]
    lines = [
        "## Screening",
        "",
        "Referable diabetic retinopathy is grade 2 (moderate) or worse, vision-threatening grade 3 or "
        "worse. *Per image* counts each photograph; *per patient* counts each person once: the truth "
        "is the worse eye's grade, the score the higher eye score and the call the worse predicted eye "
        "(referred when either eye is), as the IDx-DR trial reports.",
        "",
    ]
    lines += [*leakage, *([""] if leakage else [])]
    if boot["resamples"]:
        lines += [
            f"In brackets: {100 * boot['confidence']:g}% intervals, percentile bootstrap over "
            f"{boot['resamples']} resamples of the test patients (both eyes together; seed "
            f"{boot['seed']}; `evaluate.bootstrap`, `evaluate.seed`).",
            "",
        ]
    else:
        lines += ["No intervals: `evaluate.bootstrap` is 0.", ""]
    lines += [
        "| figure | " + " | ".join(f"{a.name}, per {level}" for a in arms for level in LEVELS) + " |",
        "|---|" + "---|" * (len(arms) * len(LEVELS)),
    ]

    def cells(render: Any) -> list[str]:
        return [
            render(screenings[a.name].record[level]) if a.name in screenings else "skipped"
            for a in arms
            for level in LEVELS
        ]

    lines.append(
        "| test size (referable) | "
        + " | ".join(cells(lambda figures: f"{figures['n']} ({figures['referable']})"))
        + " |"
    )
    for key, label in SCREENING_ROWS:
        lines.append(
            f"| {label} | " + " | ".join(cells(lambda figures, key=key: figure_text(figures.get(key)))) + " |"
        )
    lines.append(
        "| expected calibration error of P(>=2) | "
        + " | ".join(
            (_calibration(screenings[a.name].record) if level == "image" else "-")
            if a.name in screenings
            else "skipped"
            for a in arms
            for level in LEVELS
        )
        + " |"
    )
    lines += [
        "",
        "### Operating points",
        "",
        "Score thresholds on P(grade >= 2) (the regression value for a regression head), chosen on the "
        "validation split per image and applied unchanged to test (Gulshan et al. 2016): the "
        "high-sensitivity point is the highest threshold with at least the target sensitivity, the "
        "high-specificity point the lowest with at least the target specificity "
        "(`evaluate.operating_points`). A patient is referred when either eye's score reaches it.",
        "",
    ]
    for arm in arms:
        if arm.name not in screenings:
            continue
        points = screenings[arm.name].record["operating_points"]
        if not points:
            lines.append(f"- {arm.name}: none (no validation split; set `data.val_fraction` > 0)")
            continue
        for point in OPERATING_POINTS:
            chosen = points[point]
            head = f"- {arm.name}, {point.replace('_', '-')} (target {chosen['target']:g})"
            if chosen["threshold"] is None:
                lines.append(f"{head}: none, the validation split has only one class")
            else:
                lines.append(
                    f"{head}: threshold {chosen['threshold']:.4f}; on validation "
                    f"({points['val_images']} images) sensitivity {chosen['val_sensitivity']:.3f}, "
                    f"specificity {chosen['val_specificity']:.3f}"
                )
    notes = [
        (arm.name, note)
        for arm in arms
        if arm.name in screenings
        for note in screenings[arm.name].record.get("notes", [])
    ]
    if notes:
        lines += ["", "Notes:", "", *(f"- {name}: {md_prose(note)}" for name, note in notes)]
    lines += [
        "",
        "![ROC of referable DR, per image and per patient](roc.png)",
        "",
        "![reliability of P(grade >= 2)](reliability.png)",
        "",
    ]
    return lines


FUSION_ROWS = (  # (key of each level's figures, label): what fusion changes, single vs both eyes
    ("accuracy", "accuracy (5 grades)"),
    ("kappa", "quadratic weighted kappa"),
    ("auc_referable", "referable DR AUC (grade >= 2)"),
    ("sensitivity", "sensitivity at its grade (predicted >= 2)"),
    ("specificity", "specificity at its grade (predicted < 2)"),
)


def fusion_section(arms: Sequence[Arm], screenings: dict[str, Screening]) -> list[str]:
    """The report's "Both eyes (fusion)" section: each trained arm alone and with both eyes, side by side.

    Args:
        arms: Every arm, in display order (a skipped arm, or one not fused yet, says so).
        screenings: The trained arms' screening files of the network alone (evaluate's), by arm name.
    """
    if not any(arm.trained for arm in arms):
        return []
    lines = [
        "## Both eyes (fusion)",
        "",
        "The `fuse` stage grades each test image from its own features, its patient's other eye's "
        "and which eye it is (a small blend learned after training on the training split's two-eyed "
        "patients; `fuse` in params.yaml); an image whose other eye is not in the test split keeps "
        "the network's grade. *Alone* is the network on each photograph (the Screening section); "
        "*both eyes* the same test images graded with fusion, with the same bootstrap of patients "
        "and operating points chosen on the validation split graded the same way.",
        "",
    ]
    for arm in arms:
        fused = arm.fused
        if not arm.trained:
            lines += [f"- {arm.name}: skipped (the arm was not trained)", ""]
            continue
        if arm.unfused is not None:  # no two-eyed patient in training: nothing to put side by side
            lines += [f"- {arm.name}: not graded with both eyes: {_cell(arm.unfused.selection)}", ""]
            continue
        if fused is None or arm.name not in screenings:
            lines += [f"- {arm.name}: not graded with both eyes yet; run `dvc repro fuse@{arm.name}`", ""]
            continue
        lines += [f"### {arm.name}", ""]
        if fused.facts.method == "none":
            lines += [
                f"`fuse.method` is none: every one of the {fused.facts.images} test images is graded "
                "alone, so both columns agree up to test-time augmentation.",
                "",
            ]
        else:
            lines += [
                f"Test images: {fused.facts.images}; graded with both eyes {fused.facts.fused}, alone for "
                f"want of the other eye {fused.facts.single_no_partner}. The blend's selection rule: "
                f"{_cell(fused.facts.selection)}.",
                "",
            ]
        single = screenings[arm.name].record
        lines += [
            "| figure | "
            + " | ".join(f"{which}, per {level}" for level in LEVELS for which in ("alone", "both eyes"))
            + " |",
            "|---|" + "---|" * (2 * len(LEVELS)),
        ]
        for key, label in FUSION_ROWS:
            lines.append(
                f"| {label} | "
                + " | ".join(
                    figure_text(record[level].get(key))
                    for level in LEVELS
                    for record in (single, fused.screening)
                )
                + " |"
            )
        lines.append("")
    return lines


def _calibration(record: dict) -> str:
    calibration = record.get("calibration") or {}
    if calibration.get("ece") is None:
        return "n/a (no probabilities)"
    return f"{calibration['ece']:.3f} ({calibration['bins']} bins)"


def results_table(arms: Sequence[Arm]) -> list[str]:
    """The report's Results table: one column per arm, one row per figure of the selected epoch."""
    trained = [arm for arm in arms if arm.trained]
    lines: list[str] = []

    def row(label: str, values: Sequence[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    def words(key: str) -> list[str]:
        return [_cell(getattr(a.info, key)) if a.trained else "skipped" for a in arms]

    def numbers(key: str, fmt: Any = _pct) -> list[str]:
        return [fmt(a.metrics.get(key)) if a.trained else "skipped" for a in arms]

    def highest(arm: Arm) -> str:
        return _pct(float(arm.history["test_accuracy"].max())) if arm.history is not None else "skipped"

    lines += [row("", [a.name for a in arms]), "|---|" + "---|" * len(arms)]
    lines.append(row("status", ["trained" if a.trained else "skipped" for a in arms]))
    lines.append(row("weights", words("weights")))
    lines.append(
        row(
            "selected epoch",
            [
                f"{a.metrics.get('epoch', 'n/a')} of {a.info.epochs}"
                if isinstance(a.info, EvaluationInfo)
                else "skipped"
                for a in arms
            ],
        )
    )
    lines.append(row("selection rule", words("selection_rule")))
    if any("val" in a.metrics for a in trained):
        lines.append(row("validation accuracy (selected epoch)", numbers("val")))
    lines.append(row("**test accuracy (selected epoch)**", numbers("acc")))
    # Equal to the above under the lab's rule; with a validation split the selected
    # epoch's is the honest estimate and the highest one is picked with hindsight.
    lines.append(row("highest test accuracy (any epoch)", [highest(a) for a in arms]))
    lines.append(
        row(
            "final test accuracy",
            [
                _pct(float(a.history["test_accuracy"].iloc[-1]))
                if a.trained and a.history is not None and len(a.history)
                else "skipped"
                for a in arms
            ],
        )
    )
    lines.append(row("train accuracy", numbers("train")))
    lines.append(row("balanced accuracy", numbers("bacc")))
    lines.append(
        row("quadratic weighted kappa", numbers("kappa", lambda v: f"{v:.3f}" if v is not None else "n/a"))
    )
    for grade in GRADES:
        lines.append(row(f"recall {grade_label(grade)}", numbers(recall_key(grade))))
    lines.append(row("majority baseline (always grade 0)", numbers("base")))
    lines.append(
        row(
            "beats the majority baseline?",
            [
                ("**no: at the baseline**" if at_baseline(a.metrics) else "yes") if a.trained else "skipped"
                for a in arms
            ],
        )
    )
    return lines


def render_markdown(
    arms: Sequence[Arm],
    explained: Collection[str] = (),
    screenings: dict[str, Screening] | None = None,
    external: Sequence[str] = (),
    gradability: Sequence[str] = (),
) -> str:
    """The text of report.md (figures are linked by their file names).

    Args:
        arms: Every arm, in display order, as :func:`~retinopathy.reporting.results.load_arm` read it.
        explained: The arms whose heat maps (the `explain` stage's) are beside the report.
        screenings: The trained arms' screening files, by arm name.
        external: The lines of the "External validation" section
            (:func:`retinopathy.reporting.external.external_section`), after fusion's.
        gradability: The lines of the "Gradability" section
            (:func:`retinopathy.reporting.gradability.gradability_section`), after the screening section.

    Raises:
        RetinopathyError: the arms were run with different models (:func:`describe_data`).
    """
    model, data, data_label, synthetic = describe_data(arms)
    trained = [arm for arm in arms if arm.trained]
    infos = [arm.info for arm in arms if isinstance(arm.info, EvaluationInfo)]
    lines = [f"# {md_text(model)}{TITLE_MARK}" + " vs ".join(a.name for a in arms), ""]
    if synthetic:
        lines += [
            f"> **SYNTHETIC demo data** ({md_code(data or 'data/demo')}): these numbers show "
            "that the pipeline runs; they say nothing about retinopathy.",
            "",
        ]
    else:
        lines += [f"Data: {md_code(data_label)}.", ""]
    if infos:
        lines += [f"Test images: {infos[0].test_size}.", ""]
    lines += patients_section(infos)
    if any(info.selection == "test" for info in infos):
        lines += [
            "The selected epoch is the one with the highest *test* accuracy (the lab's rule), "
            "so its test accuracy is optimistic; set `data.val_fraction` > 0 in "
            "params.yaml to choose the epoch on a validation split instead.",
            "",
        ]
    flagged = [(arm.name, at_baseline(arm.metrics)) for arm in trained if at_baseline(arm.metrics)]
    if flagged:
        which = "; ".join(f"{name} ({why})" for name, why in flagged)
        lines += [
            f"> **At the majority baseline: {', '.join(name for name, _ in flagged)}.** Its selected "
            "epoch is no better than always answering the commonest grade: it has learned nothing "
            f"useful. {which}. Rule: {BASELINE_RULE}.",
            "",
        ]
    lines += [
        "![accuracy per epoch](accuracy.png)",
        "",
        "![test accuracy of the selected epoch per arm](best_accuracy.png)",
        "",
        "## Results",
        "",
        *results_table(arms),
    ]
    lines += ["", *screening_section(arms, screenings or {}, leakage_lines(infos))]
    lines += gradability
    lines += fusion_section(arms, screenings or {})
    lines += external
    lines += [
        "## Confusion matrices",
        "",
        "Rows are the true grade, columns the predicted grade; each cell is the fraction of "
        "the true grade's test images (count in brackets).",
        "",
    ]
    for arm in arms:
        lines += [f"![{arm.name} confusion matrix](confusion_{arm.name}.png)", ""]
    if trained:
        lines += [
            "## What the model looks at",
            "",
            "Three test images of every true grade (rows), chosen by `train.seed`, among them one "
            "the arm graded right (green title) and one it graded wrong (red) where there are "
            "such, with the Grad-CAM heat map of the grade it gave: red where the evidence for "
            "that grade was strongest.",
            "",
        ]
        for arm in trained:
            name = Layout().explanation(arm.name).name
            lines += [
                f"![{arm.name}: where the model looked]({name})"
                if arm.name in explained
                else f"{arm.name}: no heat maps yet; run `dvc repro explain@{arm.name}`",
                "",
            ]
    skipped = [(arm.name, arm.info) for arm in arms if isinstance(arm.info, Skipped)]
    if skipped:
        lines += ["## Skipped arms", ""]
        for name, info in skipped:
            lines += [
                f"### {name}",
                "",
                f"- Reason: {md_prose(info.reason)}",
                f"- Fix: {md_prose(info.fix)}",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def patients_section(infos: Sequence[EvaluationInfo]) -> list[str]:
    """The report's Patients line: patients per split, and a warning where one straddles a split."""
    if not infos:
        return []
    counts = infos[0].patients
    per_split = ", ".join(f"{name} {n}" for name, n in counts.count.items() if n)
    pairs = counts.train_pairs
    alike = (
        (
            f"; {pairs.same_grade:.1%} of the {pairs.pairs} training patients with both eyes listed "
            "have one grade in both"
        )
        if pairs.pairs
        else ""
    )
    split = md_code(f"data.split: {counts.split}")
    lines = [f"Patients ({split}): {per_split}{alike}.", ""]
    if not counts.named_by_patient:
        lines[0] = lines[0][:-1] + " (the image names carry no patient: `<patient>_left|right`)."
    warning = leakage_warning(counts)
    if warning:
        lines += [f"> **WARNING: patients on both sides of the split.** {warning}.", ""]
    return lines


def leakage_lines(infos: Sequence[EvaluationInfo]) -> list[str]:
    """The top of the Screening section: prepare's count of patients on both sides of the split."""
    if not infos:
        return []
    counts = infos[0].patients
    warning = leakage_warning(counts)
    if not warning:
        split = md_code(f"data.split: {counts.split}")
        return [f"Patient leakage: none; no patient has eyes on both sides of the split ({split})."]
    return [f"> **Patient leakage.** {warning}."]
