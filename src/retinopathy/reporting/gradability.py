"""The report's "Gradability" section: what photographs that cannot be graded do to the screening figures.

Per arm, per image and per patient, from the ``gradability`` part of each arm's screening file
(``evaluation.screening``): imageability, sensitivity and specificity of referable DR on gradable
photographs only and by intention to screen (an ungradable photograph counted as referred), each
with its interval; the test photographs per reason; and, from the `quality` stage's record
(``core.records.QualitySurvey``), the quality confusion matrix of the EyeQ labels against the verdicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from retinopathy.core.contract import LEVELS, OPERATING_POINTS, QUALITY_LEVELS
from retinopathy.core.records import QualitySurvey
from retinopathy.reporting.escape import md_code, md_prose
from retinopathy.reporting.markdown import figure_text

if TYPE_CHECKING:  # only its type: the report's readers load the files
    from retinopathy.evaluation.screening_files import Screening

MEANING = (
    "A photograph is *ungradable* when the quality assessor (`retinopathy quality`, thresholds "
    "`quality.thresholds`) finds a reason: no fundus, off-field, dark, overexposed, blur or flare. "
    "*Imageability* is the gradable share (a patient counts when every photograph of theirs is gradable). "
    "*Gradable only* leaves the ungradable photographs out, as a device that answers them with "
    '"ungradable" instead of a grade; *intention to screen* counts an ungradable photograph as '
    "referred, as a screening programme sends the patient on to be examined (a patient is referred when "
    "any photograph is referred or ungradable). To compare: IDx-DR's imageability 96.1% (94.6-97.3), "
    "EyeArt's 87.4% undilated."
)

ROWS = (  # (where in a level's gradability part, label)
    (("imageability",), "imageability"),
    (("gradable_only", "sensitivity"), "sensitivity at its grade, gradable only"),
    (("gradable_only", "specificity"), "specificity at its grade, gradable only"),
    (("sensitivity",), "sensitivity at its grade, intention to screen"),
    (("specificity",), "specificity at its grade, intention to screen"),
    *(
        row
        for point in OPERATING_POINTS
        for which in ("sensitivity", "specificity")
        for row in (
            (
                ("gradable_only", f"{point}_{which}"),
                f"{which} at the {point.replace('_', '-')} point, gradable only",
            ),
            ((f"{point}_{which}",), f"{which} at the {point.replace('_', '-')} point, intention to screen"),
        )
    ),
    (("gradable_only", "auc_referable"), "referable DR AUC, gradable only"),
)


def _entry(part: Mapping[str, Any] | None, path: tuple[str, ...]) -> Any:
    value: Any = part
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def gradability_section(
    arms: Sequence[str], screenings: Mapping[str, Screening], survey: QualitySurvey | None
) -> list[str]:
    """The lines of the "Gradability" section.

    Args:
        arms: Every arm's name, in display order (an arm without screening files shows as skipped).
        screenings: The trained arms' screening files, by arm name.
        survey: The `quality` stage's record (``metrics/quality.info.json``); None when it has not run.
    """
    lines = ["## Gradability", "", MEANING, ""]
    if survey is None:
        return [*lines, "No quality verdicts: run `dvc repro quality` (then evaluate) to have them.", ""]
    parts: dict[str, dict[str, Any] | None] = {
        name: screenings[name].record.get("gradability") if name in screenings else None for name in arms
    }
    judged = {name: part for name, part in parts.items() if part is not None}
    if judged:
        lines += [
            "| figure | " + " | ".join(f"{name}, per {level}" for name in arms for level in LEVELS) + " |",
            "|---|" + "---|" * (len(arms) * len(LEVELS)),
        ]

        def cells(render: Any) -> str:
            return " | ".join(
                render(judged[name][level])
                if name in judged
                else ("skipped" if name not in screenings else "not judged")
                for name in arms
                for level in LEVELS
            )

        lines.append(
            "| test cases (gradable) | " + cells(lambda part: f"{part['n']} ({part['gradable']})") + " |"
        )
        for path, label in ROWS:
            if all(_entry(part[level], path) is None for part in judged.values() for level in LEVELS):
                continue  # an operating point no arm has
            lines.append(
                f"| {label} | " + cells(lambda part, path=path: figure_text(_entry(part, path))) + " |"
            )
        lines.append("")
    else:
        lines += ["No arm's screening file has gradability figures yet: run `dvc repro evaluate`.", ""]
    reasons = ", ".join(f"{reason} {count}" for reason, count in survey.reasons.items())
    lines += [
        f"Ungradable test photographs: {survey.ungradable['test']} of {survey.photos['test']}; by reason "
        f"(one may have several): {reasons}.",
        "",
    ]
    lines += _confusion(survey)
    return lines


def _confusion(survey: QualitySurvey) -> list[str]:
    """The quality confusion matrix (EyeQ label x verdict on the test split), or why there is none."""
    if survey.labels is None:
        return ["No quality labels (`quality.labels` is null): no confusion matrix.", ""]
    lines = [
        f"### Quality labels against the verdicts (test split, {md_code(survey.labels)})",
        "",
        "| EyeQ label | gradable | ungradable |",
        "|---|---|---|",
        *(
            f"| {level} | {survey.confusion[level].gradable} | {survey.confusion[level].ungradable} |"
            for level in QUALITY_LEVELS
            if level in survey.confusion
        ),
        "",
    ]
    if survey.unmatched:
        lines += [
            f"{survey.unmatched} label rows name no photograph of the index (e.g. "
            f"{md_prose(', '.join(survey.unmatched_examples))}); {survey.unlabelled} photographs have "
            "no label.",
            "",
        ]
    return lines
