"""The bench's table: scenario x tool x setting -> outage and runs with two servers active."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from runs import Run

HEAD = (
    "scenario",
    "tool",
    "setting",
    "runs",
    "outage min",
    "median",
    "max",
    "takeover median",
    "two at once",
)
LEGEND = (
    "runs: recovered/steady runs (recovered: another server answered the client without a "
    "loss for the hold time). outage (s): the client's longest time without an answer after "
    "the fault (polls every 10 ms). takeover (s): from the fault to the first answer by "
    "another server. two at once: runs where the address (addr) or the service (svc) was "
    "seen on two servers at the same time, or the client was answered by the failed server "
    "after the new one (client)."
)


@dataclass
class Row:
    scenario: str
    tool: str
    setting: str
    runs: list[Run] = field(default_factory=list)
    reason: str | None = None  # why it could not be run (or was cut short)
    note: str | None = None  # what the numbers mean for this tool and scenario


def run_text(run: Run) -> str:
    """One line for the progress log."""
    if run.error:
        return f"ERROR {run.error}"
    outage = "not recovered" if run.outage is None else f"outage {run.outage:.3f}s"
    if run.takeover is not None:
        outage += f", takeover {run.takeover:.3f}s"
    if run.diagnosis:
        outage += f" ({run.diagnosis})"
    dual = ""
    if run.dual:
        dual = (
            f"  TWO AT ONCE: address {run.address_overlap:.2f}s, service "
            f"{run.service_overlap:.2f}s, client flips {run.client_flips}"
        )
    return f"{run.active} -> {run.after}: {outage}, {run.lost} requests lost{dual}"


def _dual_text(good: list[Run]) -> str:
    dual = [r for r in good if r.dual]
    text = f"{len(dual)}/{len(good)}"
    kinds = [
        f"{label} {count}"
        for label, count in (
            ("addr", sum(1 for r in dual if r.address_overlap)),
            ("svc", sum(1 for r in dual if r.service_overlap)),
            ("client", sum(1 for r in dual if r.client_flips)),
        )
        if count
    ]
    return f"{text} ({', '.join(kinds)})" if kinds else text


def _cells(row: Row, notes: list[str]) -> tuple[str, ...]:
    marks = []
    if row.note:
        notes.append(f"[{len(notes) + 1}] {row.scenario}/{row.tool}/{row.setting}: {row.note}")
        marks.append(len(notes))
    good = [r for r in row.runs if not r.error]
    if row.reason and not good:
        notes.append(f"[{len(notes) + 1}] {row.scenario}/{row.tool}/{row.setting}: {row.reason}")
        marks.append(len(notes))
        refs = "".join(f"[{m}]" for m in marks)
        return (row.scenario, row.tool, row.setting, "-", "-", "-", "-", "-", f"not run {refs}")
    failed = len(row.runs) - len(good)
    if row.reason or failed:
        why = f"{failed} run(s) without a steady state" + (f"; {row.reason}" if row.reason else "")
        notes.append(f"[{len(notes) + 1}] {row.scenario}/{row.tool}/{row.setting}: {why}")
        marks.append(len(notes))
    outages = [r.outage for r in good if r.outage is not None]
    takeovers = [r.takeover for r in good if r.takeover is not None and r.outage is not None]
    stats = ("-", "-", "-")
    if outages:
        stats = (
            f"{min(outages):.3f}",
            f"{statistics.median(outages):.3f}",
            f"{max(outages):.3f}",
        )
    takeover = f"{statistics.median(takeovers):.3f}" if takeovers else "-"
    refs = " " + "".join(f"[{m}]" for m in marks) if marks else ""
    runs = f"{len(outages)}/{len(good)}"
    return (row.scenario, row.tool, row.setting, runs, *stats, takeover, _dual_text(good) + refs)


def table(rows: list[Row]) -> str:
    """The table, its legend and its notes."""
    notes: list[str] = []
    lines = [HEAD, *(_cells(row, notes) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(line)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join([*out, "", LEGEND, *notes])
