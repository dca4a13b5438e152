"""CLI commands for recovery and failover: policies, confirm-failover, agent stop/start
(maintenance), events --follow, why, plan."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from vigil.cli import client, output
from vigil.cli.client import CliError
from vigil.cli.main import Json, Props, Token, Url, _call, _done, _properties, agent_app, app

server_app = typer.Typer(help="Servers: policies.", no_args_is_help=True)
app.add_typer(server_app, name="server")


def _show_policy(data: dict[str, Any]) -> None:
    for name, value in sorted(data.items()):
        output.console.print(f"{name:<24} {value}")


@server_app.command("policy")
def server_policy(
    server: str, prop: Props = None, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Show a server's policies, or set them with --property NAME=VALUE:
    local_recovery, failover, confirm_failover, confirm_timeout, confirm_default
    (proceed|block), block_resource_failover, shutdown_strategy (hold|switchover)."""
    values = _properties(prop)
    if not values:
        _done(_call("GET", f"/v1/servers/{server}/policies", url, token), as_json, _show_policy)
        return
    _done(_call("PATCH", f"/v1/servers/{server}/policies", url, token, values), as_json)


@app.command("policy")
def resource_policy(
    tag: str, prop: Props = None, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Show a resource's policies, or set them with --property NAME=VALUE: local_recovery,
    failover, recovery_limit, recovery_period, quick_check_interval, deep_check_interval;
    on a hierarchy's root: switchback (intelligent|automatic), automatic_failover, n_plus_one."""
    values = _properties(prop)
    if not values:
        data = _call("GET", f"/v1/resources/{tag}", url, token)
        _done(data.get("policies", {}), as_json, _show_policy)
        return
    _done(_call("PATCH", f"/v1/resources/{tag}/policies", url, token, values), as_json)


@app.command("confirm-failover")
def confirm_failover(
    tag: str,
    yes: Annotated[bool, typer.Option("--yes", help="let the failover proceed")] = False,
    no: Annotated[bool, typer.Option("--no", help="block the failover")] = False,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Answer a failover of TAG's hierarchy that waits for an operator."""
    if yes == no:
        raise CliError("give exactly one of --yes and --no", client.EXIT_REFUSED)
    _done(
        _call("POST", f"/v1/hierarchies/{tag}/confirm-failover", url, token, {"proceed": yes}),
        as_json,
    )


@agent_app.command("stop")
def agent_stop(
    server: Annotated[str, typer.Option("--server", help="whose agent to stop")],
    leave_resources: Annotated[
        bool,
        typer.Option("--leave-resources", help="maintenance: resources keep running, unmonitored"),
    ] = False,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Stop a server's agent: its hierarchies go out of service (or, with
    --leave-resources, keep running and nobody takes them over until it is back)."""
    body = {"leave_resources": leave_resources}
    _done(_call("POST", f"/v1/servers/{server}/stop", url, token, body), as_json)


@agent_app.command("start")
def agent_start(
    config: Annotated[Path, typer.Option("--config", help="agent configuration (TOML)")],
) -> None:
    """Start the agent of this machine in the background (it probes what runs first)."""
    from vigil.agent.config import load_config

    settings = load_config(config)
    log = settings.state_dir / "agent.out"
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "vigil", "agent", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    output.console.print(f"agent of {settings.server} started (pid {agent.pid}); output in {log}")


@app.command()
def why(tag: str, url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """The chain of decisions and events that put TAG's hierarchy where it is now."""
    data = _call("GET", f"/v1/hierarchies/{tag}/why", url, token)

    def show(d: dict[str, Any]) -> None:
        where = d["wanted_on"] or "out of service"
        output.console.print(
            f"[bold]{d['hierarchy']}[/] ({', '.join(d['resources'])}): wanted on {where}"
        )
        output.console.print(f"  because: {d['because']}")
        if d["failover_origin"]:
            output.console.print(
                f"  failover from {d['failover_origin']}; tried: {', '.join(d['tried'])}"
            )
        _print_events(d["events"])

    _done(data, as_json, show)


@app.command()
def plan(
    fail: Annotated[str, typer.Option("--fail", help="the server to imagine dead")],
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """What the engine would do if a server died now."""
    data = _call("GET", f"/v1/plan?fail={fail}", url, token)

    def show(items: list[dict[str, Any]]) -> None:
        if not items:
            output.console.print(f"nothing is in service on {fail}")
        for item in items:
            goes = f"→ {item['target']}" if item["target"] else "stays out of service"
            output.console.print(f"{item['hierarchy']}: {goes} ({item['why']})")

    _done(data, as_json, show)


def _print_events(items: list[dict[str, Any]]) -> None:
    for e in items:
        when = time.strftime("%H:%M:%S", time.localtime(e["at"]))
        output.console.print(
            f"{when} {e['server']:<8} {e['kind']:<18} {e['message']}", highlight=False
        )


@app.command()
def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events")
    ] = False,
    limit: int = 50,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """The cluster event log, oldest first (with --follow, then every new event)."""
    items = _call("GET", f"/v1/events?limit={limit}", url, token)
    _emit(items, as_json)
    last = items[-1]["id"] if items else ""
    while follow:
        items = _call("GET", f"/v1/events?after={last}&wait=30", url, token)
        _emit(items, as_json)
        if items:
            last = items[-1]["id"]


def _emit(items: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for item in items:
            output.print_json(item)
    else:
        _print_events(items)
