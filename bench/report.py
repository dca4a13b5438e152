"""The bench's table: scenario x tool x setting -> outage and runs with two servers active."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from runs import Run


@dataclass
class Row:
    scenario: str
    tool: str
    setting: str
    runs: list[Run] = field(default_factory=list)
    reason: str | None = None  # why it could not be run


def run_text(run: Run) -> str:
    if run.error:
        return f"ERROR {run.error}"
    outage = "not recovered" if run.outage is None else f"outage {run.outage:.3f}s"
    if run.diagnosis:
        outage += f" ({run.diagnosis})"
    dual = ""
    if run.dual:
        dual = (
            f"  TWO AT ONCE: address {run.address_overlap:.2f}s, service "
            f"{run.service_overlap:.2f}s, client flips {run.client_flips}"
        )
    return f"{run.active} -> {run.after}: {outage}, {run.lost} requests lost{dual}"


# --- the table ---------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = ("scenario", "tool", "setting", "runs", "min s", "median s", "max s", "two at once")
    lines = [head]
    notes = []
    for row in rows:
        good = [r for r in row.runs if not r.error]
        outages = [r.outage for r in good if r.outage is not None]
        if row.reason and not good:
            notes.append(
                f"[{len(notes) + 1}] {row.scenario}/{row.tool}/{row.setting}: {row.reason}"
            )
            lines.append(
                (row.scenario, row.tool, row.setting, "-", "-", "-", "-", f"not run [{len(notes)}]")
            )
            continue
        runs = f"{len(outages)}/{len(good)}"
        if outages:
            stats = (
                f"{min(outages):.3f}",
                f"{statistics.median(outages):.3f}",
                f"{max(outages):.3f}",
            )
        else:
            stats = ("-", "-", "-")
        dual = [r for r in good if r.dual]
        two = f"{len(dual)}/{len(good)}"
        if dual:
            kinds = []
            if any(r.address_overlap for r in dual):
                kinds.append(f"addr {sum(1 for r in dual if r.address_overlap)}")
            if any(r.service_overlap for r in dual):
                kinds.append(f"svc {sum(1 for r in dual if r.service_overlap)}")
            if any(r.client_flips for r in dual):
                kinds.append(f"client {sum(1 for r in dual if r.client_flips)}")
            two += f" ({', '.join(kinds)})"
        if row.reason or len(good) < len(row.runs):
            notes.append(
                f"[{len(notes) + 1}] {row.scenario}/{row.tool}/{row.setting}: "
                f"{len(row.runs) - len(good)} run(s) without a steady state"
                + (f"; {row.reason}" if row.reason else "")
            )
            two += f" [{len(notes)}]"
        lines.append((row.scenario, row.tool, row.setting, runs, *stats, two))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append("  ".join(str(cell).ljust(widths[j]) for j, cell in enumerate(line)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    legend = (
        "runs: recovered/steady runs (recovered: another server answered the client without "
        "a loss for the hold time). outage: the client's longest time without an answer after "
        "the fault (10 ms polls). two at once: runs where the address (addr) or the service "
        "(svc) was seen on two servers at the same time, or the client was answered by the "
        "failed server after the new one (client)."
    )
    return "\n".join([*out, "", legend, *notes])
