"""Printing: Rich tables for people, JSON for scripts (``--json``)."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True)

STATE_STYLE = {
    "ISP": "bold green",
    "ISU": "yellow",
    "OSU": "dim",
    "OSF": "bold red",
    "UNKNOWN": "magenta",
    "Normal": "green",
    "Warning": "yellow",
    "Failed": "bold red",
    "Unknown": "magenta",
    "ALIVE": "green",
    "ALIVE-with-warning": "yellow",
    "DEAD": "bold red",
}


def styled(value: str) -> str:
    style = STATE_STYLE.get(value)
    return f"[{style}]{value}[/]" if style else value


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def print_result(data: dict[str, Any]) -> None:
    console.print(f"[green]✓[/] {data.get('summary', '')}")
    if data.get("detail"):
        console.print(f"  {data['detail']}")


def print_status(status: dict[str, Any]) -> None:
    servers = Table(title="Servers", title_justify="left")
    for column in ("server", "state", "reason", "API"):
        servers.add_column(column)
    for s in status["servers"]:
        servers.add_row(s["name"], styled(s["state"]), s["reason"], s["api_url"])
    console.print(servers)
    print_paths(status["comm_paths"])
    names = [s["name"] for s in status["servers"]]
    table = Table(title="Hierarchies", title_justify="left")
    table.add_column("hierarchy / resource")
    table.add_column("kit")
    for name in names:
        table.add_column(name)
    for h in status["hierarchies"]:
        table.add_row(f"[bold]{h['name']}[/] {styled(h['status'])}", "", *["" for _ in names])
        for r in h["resources"]:
            cells = []
            by_server = {i["server"]: i for i in r["instances"]}
            for name in names:
                i = by_server.get(name)
                cells.append(
                    f"{styled(i['state'])} ({i['priority']})\n[dim]{i['reason']}[/]" if i else ""
                )
            depth = "  └ " if r["parents"] else "  "
            table.add_row(depth + r["tag"], r["kit"], *cells)
        table.add_row(f"  [dim]{h['reason']}[/]", "", *["" for _ in names])
    if not status["hierarchies"]:
        console.print("No hierarchies yet.")
    else:
        console.print(table)


def print_paths(paths: list[dict[str, Any]]) -> None:
    table = Table(title="Comm paths", title_justify="left")
    for column in ("id", "between", "state", "last heartbeat"):
        table.add_column(column)
    for p in paths:
        last = max((e["last_heartbeat"] for e in p["ends"]), default=0.0)
        seen = f"{time.time() - last:.1f}s ago" if last else "never"
        between = f"{p['server_a']} {p['address_a']} ↔ {p['server_b']} {p['address_b']}"
        table.add_row(p["id"], between, styled(p["state"]), seen)
    if paths:
        console.print(table)
    else:
        console.print("No comm paths.")
