"""The text of compare.md: one table and one list per question, across DVC experiments.

:func:`render` writes the page (`retinopathy compare`, ``commands/compare.py``): what
differs between the experiments (:func:`settings_table`), every experiment and arm
(:func:`results_table`, with imageability and intention-to-screen sensitivity per patient),
the spread across seeds (:func:`seeds_table`) and the lab's table of models against inits
(:func:`lab_table`). Text that is not the code's own
goes through :mod:`retinopathy.reporting.escape`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from retinopathy.core.contract import ARMS
from retinopathy.core.records import EvaluationInfo
from retinopathy.core.registry import MODELS
from retinopathy.reporting.escape import md_code, md_text
from retinopathy.reporting.experiments import Experiment, SeedGroup, flatten, seed_groups
from retinopathy.reporting.results import BASELINE_RULE, Arm, at_baseline, model_name

TITLE = "# Experiments compared"  # the first line of every compare.md


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _kappa(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(value: object) -> str:
    """A param's value as a code span (or escaped text: :func:`~retinopathy.reporting.escape.md_code`)."""
    return md_code(value)


def settings_table(experiments: Sequence[Experiment], differ: Sequence[str]) -> list[str]:
    """The params that differ, one row each, one column per experiment (readable however many differ)."""
    flats = [flatten(e.params) for e in experiments]
    lines = [
        "| param | " + " | ".join(md_text(e.name) for e in experiments) + " |",
        "|---|" + "---|" * len(experiments),
    ]
    lines += [
        f"| {md_code(key)} | "
        + " | ".join(_cell(flat[key]) if key in flat else "n/a" for flat in flats)
        + " |"
        for key in differ
    ]
    return lines


def results_table(experiments: Sequence[Experiment]) -> list[str]:
    """One row per experiment and arm: the selected epoch's figures, alone and graded with both eyes."""
    header = [
        "experiment",
        "model",
        "init",
        "selected epoch",
        "selected by",
        "test accuracy",
        "kappa",
        "balanced accuracy",
        "fused acc",
        "fused kappa",
        "external referable AUC",
        "imageable patients",
        "sensitivity, intention to screen",
        "vs. majority baseline",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for experiment in experiments:
        for arm_name in ARMS:
            arm = experiment.arms[arm_name]
            if isinstance(arm.info, EvaluationInfo):
                m, info, fused = arm.metrics, arm.info, arm.fused
                flat = at_baseline(m)
                figures = [
                    str(int(m["epoch"])),
                    md_text(f"{info.selection} {info.select_by}"),
                    _pct(m["acc"]),
                    _kappa(m["kappa"]),
                    _pct(m.get("bacc")),
                    _pct(fused.metrics["acc"]) if fused else "n/a",
                    _kappa(fused.metrics["kappa"]) if fused else "n/a",
                    _external(arm),
                    _pct(_per_patient(arm, "imageability")),
                    _pct(_per_patient(arm, "sensitivity")),
                    f"**AT BASELINE** ({flat})" if flat else "above",
                ]
            else:
                figures = ["skipped"] * 11
            row = [md_text(experiment.name), md_text(model_name(arm.info.model)), arm_name, *figures]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def _per_patient(arm: Arm, key: str) -> float | None:
    """A gradability figure per patient (``imageability``, or ``sensitivity`` by intention to screen: an
    ungradable photograph counted as referred); None where the arm has no such figures."""
    part = arm.gradability
    return None if part is None else getattr(part.patient, key).value


def _external(arm: Arm) -> str:
    """Each external set's referable AUC per image: ``messidor2 0.853<br>aptos 0.912`` (n/a: none graded)."""
    if not arm.external:
        return "n/a"
    return "<br>".join(f"{md_text(name)} {_kappa(auc)}" for name, auc in arm.external.items())


def _spread(values: list[float], fmt: str) -> str:
    """``mean ± sd``: the mean and the sample standard deviation (n - 1), or the one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:{fmt}}"
    return f"{mean:{fmt}} ± {statistics.stdev(values):{fmt}}"


def _fused_auc_patient(arm: Arm) -> float | None:
    return arm.fused.figure("patient", "auc_referable") if arm.fused else None


# (column label, the figure of a trained arm or None where it has none, format)
SEED_FIGURES: tuple[tuple[str, Callable[[Arm], float | None], str], ...] = (
    ("test accuracy", lambda arm: arm.metrics["acc"], ".3f"),
    ("kappa", lambda arm: arm.metrics["kappa"], ".3f"),
    ("balanced accuracy", lambda arm: arm.metrics.get("bacc"), ".3f"),
    ("fused kappa", lambda arm: arm.fused.metrics["kappa"] if arm.fused else None, ".3f"),
    ("fused referable AUC per patient", _fused_auc_patient, ".3f"),
)


def _external_auc(name: str) -> Callable[[Arm], float | None]:
    """The referable AUC per image on external set ``name`` (None where the arm did not grade it)."""
    return lambda arm: arm.external.get(name)


def seeds_table(groups: Sequence[SeedGroup]) -> list[str]:
    """One row per group of experiments that differ only in ``train.seed``, and arm: mean ± sd (n).

    A figure some of the trained runs lack (fusion, an AUC undefined on one class) is the
    spread of those that have it, with their count: ``(n=2)``.
    """
    # Every external set any member graded: a column each (referable AUC per image).
    sets = sorted(
        {name for group in groups for e in group.members for a in e.arms.values() for name in a.external}
    )
    figures_of = [
        *SEED_FIGURES,
        *((f"external AUC {md_text(name)}", _external_auc(name), ".3f") for name in sets),
    ]
    header = ["experiments (seeds)", "model", "init", "n", *(label for label, _, _ in figures_of)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        names = ", ".join(
            f"{md_code(e.name)} ({seed})" for e, seed in zip(group.members, group.seeds, strict=True)
        )
        for arm_name in ARMS:
            trained = [e.arms[arm_name] for e in group.members if e.arms[arm_name].trained]
            model = md_text(model_name(group.members[0].arms[arm_name].info.model))
            figures = []
            for _, of, fmt in figures_of:
                values = [value for value in map(of, trained) if value is not None]
                count = "" if len(values) == len(trained) else f" (n={len(values)})"
                figures.append(_spread(values, fmt) + count if values else "n/a")
            cells = figures if trained else ["skipped"] * len(figures_of)
            lines.append("| " + " | ".join([names, model, arm_name, str(len(trained)), *cells]) + " |")
    return lines


def lab_table(experiments: Sequence[Experiment]) -> list[str] | None:
    """The course report's table: test accuracy (kappa) per model and init, for two or more models trained.

    One row per model any experiment trained, in the registry's order (an unknown name of an old run last).
    """
    cells: dict[tuple[str, str], list[str]] = {}
    for experiment in experiments:
        for arm_name, arm in experiment.arms.items():
            if arm.trained:
                label = f"{_pct(arm.metrics['acc'])} ({_kappa(arm.metrics['kappa'])})"
                cells.setdefault((arm.info.model, arm_name), []).append(
                    label if len(experiments) == 1 else f"{label} {md_text(experiment.name)}"
                )
    trained = {model for model, _ in cells}
    models = [m for m in MODELS if m in trained] + sorted(trained - set(MODELS))
    if len(models) < 2:
        return None  # one model (or none) trained: no table of models against inits
    lines = ["|  | " + " | ".join(ARMS) + " |", "|---|" + "---|" * len(ARMS)]
    for model in models:
        row = ["<br>".join(cells.get((model, arm), ["not trained"])) for arm in ARMS]
        lines.append(f"| {md_text(model_name(model))} | " + " | ".join(row) + " |")
    return lines


def render(experiments: Sequence[Experiment], differ: Sequence[str], notes: Sequence[str]) -> str:
    """The text of compare.md."""
    names = ", ".join(
        md_code(e.name) + ("" if e.kind == "experiment" else f" ({e.kind})") for e in experiments
    )
    lines = [TITLE, "", f"Compared: {names}."]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    if differ:
        lines += ["", "## What differs", "", *settings_table(experiments, differ)]
    else:
        lines += ["", "The experiments have the same params."]
    if any(
        isinstance(arm.info, EvaluationInfo) and arm.info.synthetic
        for e in experiments
        for arm in e.arms.values()
    ):
        lines += [
            "",
            "> **SYNTHETIC demo data**: these numbers show that the pipeline runs; they say "
            "nothing about retinopathy.",
        ]
    flagged = [
        f"{md_code(e.name)} {arm.name}"
        for e in experiments
        for arm in e.arms.values()
        if arm.trained and at_baseline(arm.metrics)
    ]
    if flagged:
        lines += [
            "",
            f"> **At the majority baseline** (learned nothing that always answering the commonest "
            f"grade does not give): {', '.join(flagged)}. Rule: {BASELINE_RULE}.",
        ]
    lines += [
        "",
        "Test accuracy, kappa and balanced accuracy are those of each arm's selected epoch "
        "(see each run's `metrics/<arm>.info.json` for the rule that selected it); *fused* the same "
        "test images graded with both eyes of each patient (the `fuse` stage; "
        "`metrics/fused/<arm>.json`, intervals in `metrics/fused/<arm>.screening.json`); *external* "
        "the referable AUC per image on each set of params.yaml's `external` (the `external` stage, at the "
        "internal operating points; intervals in `metrics/external/files/<arm>/<set>.screening.json`).",
        "",
        "## Every experiment and arm",
        "",
        *results_table(experiments),
        "",
    ]
    groups = seed_groups(list(experiments))
    if groups:
        lines += [
            "## Across seeds",
            "",
            "Experiments whose params differ only in `train.seed`: the mean ± the standard deviation "
            "(sample, n - 1) over the seeds, and n, the trained runs.",
            "",
            *seeds_table(groups),
            "",
        ]
        repeated = [name for group in groups for name in group.left_out]
        if repeated:
            lines += [
                f"Not counted again (same params and seed as a member): {', '.join(map(md_code, repeated))}.",
                "",
            ]
    lab = lab_table(experiments)
    if lab:
        lines += ["## With and without pretraining (test accuracy, kappa)", "", *lab, ""]
    lines += ["## Per epoch", "", "![test accuracy and kappa per epoch](compare.png)", ""]
    return "\n".join(lines)
