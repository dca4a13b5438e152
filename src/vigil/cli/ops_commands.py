"""CLI commands for operating a cluster securely: ``vigil audit``, ``vigil secrets``,
``vigil agent install`` (systemd units) and ``vigil drill TAG``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from vigil.cli import client, output
from vigil.cli.client import CliError, Connection
from vigil.cli.drill import Drill, Prober, Step, next_server, outages, where
from vigil.cli.main import Json, Token, Url, _call, _done, agent_app, app

secrets_app = typer.Typer(
    help="The cluster key that seals secrets in the store: keys and rotation.",
    no_args_is_help=True,
)
app.add_typer(secrets_app, name="secrets")

KeyFile = Annotated[
    Path, typer.Option("--key-file", help="the agent's secrets_key_file on this machine")
]


# --- audit --------------------------------------------------------------------------------


def _print_audit(items: list[dict[str, Any]]) -> None:
    for e in items:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"]))
        via = f" via {e['forwarded_by']}" if e["forwarded_by"] else ""
        style = "green" if e["outcome"] == "done" else "red"
        detail = f": {e['detail']}" if e["detail"] else ""
        output.console.print(
            f"{when} {e['who']} ({e['role']}) from {e['address']}{via} on {e['server']}: "
            f"{e['what']} [{style}]{e['outcome']}[/] ({e['status']}){detail}",
            highlight=False,
        )


@app.command()
def audit(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new entries")
    ] = False,
    limit: int = 50,
    refused: Annotated[bool, typer.Option("--refused", help="only refused requests")] = False,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """The audit log: who asked what of the agents, from where, and the outcome (every
    change and every refusal; administrators only), oldest first."""
    last = ""
    while True:
        items = _call("GET", f"/v1/audit?limit={limit}&after={last}", url, token)
        shown = [e for e in items if not refused or e["outcome"] != "done"]
        if as_json:
            for item in shown:
                output.print_json(item)
        else:
            _print_audit(shown)
        if items:
            last = items[-1]["id"]
        if not follow:
            return
        time.sleep(1.0)


# --- secrets ------------------------------------------------------------------------------


@secrets_app.command("add-key")
def secrets_add_key(key_file: KeyFile, as_json: Json = False) -> None:
    """Put a new key first in this machine's key file (it seals from now on; the older
    keys still open). Then copy the file to every server and run `vigil secrets rotate`."""
    from vigil.agent.secrets import add_key

    new = add_key(key_file)
    _done(
        {"key_file": str(key_file), "key": new},
        as_json,
        lambda d: output.console.print(
            f"new key {d['key']} first in {d['key_file']}: copy this file to every server "
            "(mode 0600), then run `vigil secrets rotate`",
            highlight=False,
        ),
    )


@secrets_app.command("retire-keys")
def secrets_retire_keys(key_file: KeyFile, as_json: Json = False) -> None:
    """Keep only the first key of this machine's key file (after `vigil secrets rotate`:
    a secret still sealed with a removed key no longer opens)."""
    from vigil.agent.secrets import retire_keys

    removed = retire_keys(key_file)
    _done(
        {"key_file": str(key_file), "removed": removed},
        as_json,
        lambda d: output.console.print(
            f"removed from {d['key_file']}: {', '.join(d['removed']) or 'nothing'}",
            highlight=False,
        ),
    )


@secrets_app.command("keys")
def secrets_keys(url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Each server's keys by fingerprint (the first seals)."""
    data = _call("GET", "/v1/secrets/keys", url, token)

    def show(d: dict[str, Any]) -> None:
        for name, seen in sorted(d["servers"].items()):
            keys = seen.get("keys")
            text = ", ".join(keys) if keys else seen.get("unreachable") or "no key file"
            output.console.print(f"{name:<10} {text}", highlight=False)

    _done(data, as_json, show)


@secrets_app.command("rotate")
def secrets_rotate(url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Re-seal every secret in the store with the key every agent seals with (refused
    unless they all have the same first key)."""
    data = _call("POST", "/v1/secrets/rotate", url, token)
    _done(
        data,
        as_json,
        lambda d: output.console.print(
            f"{d['resealed']} secret(s) in {d['stored_keys']} stored value(s) re-sealed with "
            f"key {d['key']} ({d['transactions']} transaction(s)). {d['next']}",
            highlight=False,
        ),
    )


# --- systemd ------------------------------------------------------------------------------


@agent_app.command("install")
def agent_install(
    config: Annotated[Path, typer.Option("--config", help="agent configuration (TOML)")],
    unit_dir: Annotated[Path, typer.Option("--unit-dir", help="where to write the units")] = Path(
        "/etc/systemd/system"
    ),
    no_systemctl: Annotated[
        bool, typer.Option("--no-systemctl", help="only write the units")
    ] = False,
    start: Annotated[bool, typer.Option("--start", help="start them now too")] = False,
    as_json: Json = False,
) -> None:
    """Write the systemd units of this machine's agent and its fence guard, enable them
    (and with --start, start them)."""
    from vigil.agent.config import load_config
    from vigil.agent.systemd import install

    settings = load_config(config)  # ConfigError: a configuration the agent would refuse
    done = install(settings, config, unit_dir, systemctl=not no_systemctl, start=start)
    data = {"units": [str(f) for f in done.files], "ran": done.commands}

    def show(d: dict[str, Any]) -> None:
        output.console.print(f"wrote {', '.join(d['units'])}", highlight=False)
        for command in d["ran"]:
            output.console.print(f"ran: {command}", highlight=False)
        if not d["ran"]:
            output.console.print(
                "then: systemctl daemon-reload && systemctl enable --now "
                "vigil-fenceguard.service vigil-agent.service",
                highlight=False,
            )

    _done(data, as_json, show)


# --- drill --------------------------------------------------------------------------------


def _health(conn: Connection, api_url: str, name: str, timeout: float) -> float | None:
    """Seconds until ``api_url`` says the hierarchy is in service and protected there."""
    started = time.monotonic()
    with httpx.Client(timeout=2.0, trust_env=False, verify=conn.verify()) as http:
        while time.monotonic() - started < timeout:
            try:
                if http.get(f"{api_url}/v1/health/hierarchy/{name}").status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    return None


def _settle(prober: Prober | None, timeout: float = 30.0) -> None:
    """Wait until the probe succeeds again (the end of the client's outage)."""
    deadline = time.monotonic() + timeout
    while prober is not None and time.monotonic() < deadline:
        if prober.samples and prober.samples[-1][1]:
            return
        time.sleep(0.05)


def _step(
    conn: Connection, name: str, source: str, target: str, urls: dict[str, str], **opts: Any
) -> Step:
    prober: Prober | None = opts["prober"]
    started = time.monotonic()
    ok, detail = True, ""
    try:
        body = {"server": target, "timeout": opts["timeout"]}
        client.request(conn, "POST", f"/v1/hierarchies/{name}/in-service", body)
    except CliError as exc:
        ok, detail = False, str(exc)
    seconds = time.monotonic() - started
    healthy = _health(conn, urls[target], name, opts["timeout"]) if ok else None
    healthy_after = seconds + healthy if healthy is not None else None
    _settle(prober)
    end = time.monotonic()
    found = outages(prober.samples, started, end) if prober else []
    return Step(
        source=source,
        target=target,
        seconds=round(seconds, 3),
        healthy_after=round(healthy_after, 3) if healthy_after is not None else None,
        outage=round(max((o.seconds for o in found), default=0.0), 3) if prober else None,
        failed_probes=sum(
            1 for at, up in (prober.samples if prober else []) if not up and started <= at <= end
        ),
        ok=ok and healthy is not None,
        detail=detail or ("" if healthy is not None else f"not healthy on {target} in time"),
    )


def _show_drill(data: dict[str, Any]) -> None:
    table = Table(title=f"drill of {data['hierarchy']}: {data['home']} -> {data['away']} -> back")
    for column in (
        "step",
        "switchover",
        "in service (s)",
        "healthy (s)",
        "client outage (s)",
        "result",
    ):
        table.add_column(column)
    for number, s in enumerate(data["steps"], 1):
        outage = "-" if s["outage"] is None else f"{s['outage']:.2f}"
        healthy = "-" if s["healthy_after"] is None else f"{s['healthy_after']:.2f}"
        result = "[green]ok[/]" if s["ok"] else f"[red]failed[/] {s['detail']}"
        table.add_row(
            str(number),
            f"{s['source']} -> {s['target']}",
            f"{s['seconds']:.2f}",
            healthy,
            outage,
            result,
        )
    output.console.print(table)


@contextlib.contextmanager
def _probing(target: str | None, interval: float) -> Iterator[Prober | None]:
    if target is None:
        yield None
        return
    with Prober(target, interval) as prober:
        yield prober


@app.command()
def drill(
    tag: str,
    to: Annotated[str | None, typer.Option("--to", help="the server to switch to")] = None,
    probe: Annotated[
        str | None,
        typer.Option("--probe", help="HOST:PORT (TCP) or an http(s) URL clients use"),
    ] = None,
    interval: Annotated[float, typer.Option(help="seconds between probes")] = 0.1,
    pause: Annotated[float, typer.Option(help="seconds between the two steps")] = 2.0,
    timeout: float = 300.0,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Rehearse a switchover of TAG's hierarchy: to the next server and back, timed, with
    the client's outage when --probe is given (the seed's "Testing Your Hierarchy")."""
    conn = client.connection(url, token)
    status = client.request(conn, "GET", "/v1/status")
    try:
        name, home, servers = where(status, tag)
    except LookupError:
        raise CliError(f"no hierarchy has the resource {tag}", client.EXIT_REFUSED) from None
    if home is None:
        raise CliError(
            f"{name} is not in service anywhere: bring it in service before a drill",
            client.EXIT_REFUSED,
        )
    known = {s["name"]: s for s in status["servers"]}

    def usable(server: str) -> bool:
        seen = known.get(server)
        return bool(seen and seen["state"].startswith("ALIVE") and not seen["maintenance"])

    away = to or next_server(servers, home, usable)
    if away is None or away == home or away not in servers:
        raise CliError(
            f"no server to switch {name} to: it is extended to {', '.join(servers)}, and no "
            "other one is alive and out of maintenance",
            client.EXIT_REFUSED,
        )
    urls = {s: known[s]["api_url"] for s in servers if s in known}
    plan = Drill(name, home, away)
    with _probing(probe, interval) as prober:
        time.sleep(min(1.0, 5 * interval) if prober else 0)  # a baseline before the first step
        for source, target in ((home, away), (away, home)):
            step = _step(conn, name, source, target, urls, prober=prober, timeout=timeout)
            plan.steps.append(step)
            if not step.ok:
                break
            if target == away:
                time.sleep(pause)
    data = plan.to_dict()
    _done(data, as_json, _show_drill)
    if not data["ok"]:
        raise typer.Exit(client.EXIT_FAILED)
