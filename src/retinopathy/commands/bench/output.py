"""The text report of a run: the machine, the settings and one table row per comparison."""

from __future__ import annotations

from retinopathy.commands.bench.inputs import OUR_LOADER, REFERENCE_LOADER
from retinopathy.commands.bench.machine import load_warning, machine_line
from retinopathy.commands.bench.results import SECTIONS, BenchResult


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def format_result(result: BenchResult) -> str:
    """The machine, the settings and one table row per comparison."""
    m, s = result.machine, result.settings
    load = f"load average (1 min) {m['load_average_start']} at start"
    if m.get("load_average_end") is not None:
        load += f", {m['load_average_end']} at end"
    if s.get("wall_seconds") is not None:
        load += f"; the run took {s['wall_seconds']:g} s"
    if m.get("other_processes_cores") is not None:
        load += (
            f"; other processes used {m['other_processes_cores']:g} of "
            f"{m['logical_cores']} cores on average meanwhile"
        )
    lines = [
        f"machine: {machine_line(m)}",
        f"         {load}",
        f"data:    {s['images']} synthetic {s['source_size']}x{s['source_size']} JPEGs "
        f"(quality {s['jpeg_quality']}); input batch {s['input_batch']}; training batch "
        f"{s['batch']} at {s['size']} px",
        f"timing:  {s['seconds']:g} s per side in {s['rounds']} alternating rounds after warm-up; "
        "images/s; ratio = candidate / baseline (per-round range)",
        "",
    ]
    titles = {
        "input": "(a) input pipeline, loading only",
        "models": "(b) training step, ours vs torchvision",
        "fastpath": "(c) fast path vs plain fp32 loop",
        "feed": "(d) feeding the GPU: streaming vs nvJPEG vs resident",
        "compile": "(e) the training step: eager vs torch.compile",
    }
    rows = [["comparison", "baseline", "img/s", "candidate", "img/s", "ratio", "rounds", "target"]]
    notes = []
    for section in SECTIONS:
        chosen = [c for c in result.comparisons if c.section == section]
        if not chosen:
            continue
        rows.append([titles[section], "", "", "", "", "", "", ""])
        for c in chosen:
            spread = c.round_ratios
            target = "" if c.target is None else (f">= {c.target:.2f}x {'met' if c.met else 'NOT met'}")
            rows.append(
                [
                    f"  {c.name}",
                    c.baseline.label,
                    f"{c.baseline.rate:.1f}",
                    c.candidate.label,
                    f"{c.candidate.rate:.1f}",
                    f"{c.ratio:.2f}x",
                    f"{min(spread):.2f}-{max(spread):.2f}",
                    target,
                ]
            )
            if c.note:
                notes.append(f"  {c.section} / {c.name}: {c.note}")
    lines += _table(rows, right={2, 4, 5, 6})
    if any(c.section == "input" for c in result.comparisons):
        notes += [f"  reference = {REFERENCE_LOADER}", f"  ours = {OUR_LOADER}"]
    if notes:
        lines += ["", "notes:", *notes]
    warning = load_warning(m)
    if warning:
        lines += ["", f"WARNING: {warning}"]
    return "\n".join(lines)
