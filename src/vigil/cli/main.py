"""The ``vigil`` command line (Typer). Every cluster command goes through an agent's API."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vigil.cli import client, output
from vigil.cli.client import CliError

app = typer.Typer(
    name="vigil",
    help="vigil: a high-availability cluster manager for Linux.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
commpath_app = typer.Typer(help="Communication paths between servers.", no_args_is_help=True)
resource_app = typer.Typer(help="Resources: create, show, properties.", no_args_is_help=True)
dependency_app = typer.Typer(help="Dependencies between resources.", no_args_is_help=True)
agent_app = typer.Typer(help="The agent (the daemon on each server).", no_args_is_help=True)
app.add_typer(commpath_app, name="commpath")
app.add_typer(resource_app, name="resource")
app.add_typer(dependency_app, name="dependency")
app.add_typer(agent_app, name="agent")

Url = Annotated[
    str | None, typer.Option("--url", help="agent API URL(s), comma-separated", envvar="VIGIL_URL")
]
Token = Annotated[str | None, typer.Option("--token", help="API token", envvar="VIGIL_TOKEN")]
Json = Annotated[bool, typer.Option("--json", help="print JSON instead of tables")]
Props = Annotated[
    list[str] | None, typer.Option("--property", "-p", help="NAME=VALUE (VALUE may be JSON)")
]


def _call(method: str, path: str, url: str | None, token: str | None, body: Any = None) -> Any:
    return client.request(client.connection(url, token), method, path, body)


def _properties(pairs: list[str] | None) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--property {pair!r}: expected NAME=VALUE", client.EXIT_REFUSED)
        try:
            values[name] = json.loads(raw)
        except ValueError:
            values[name] = raw
    return values


def _done(data: Any, as_json: bool, show: Callable[[Any], None] = output.print_result) -> None:
    if as_json:
        output.print_json(data)
    else:
        show(data)


# --- status and views -----------------------------------------------------------------------


@app.command()
def status(url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Hierarchies and their instances on every server; servers and comm paths."""
    _done(_call("GET", "/v1/status", url, token), as_json, output.print_status)


@app.command()
def kits(url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """The recovery kits the agent has loaded (and any that failed to load)."""
    data = _call("GET", "/v1/kits", url, token)

    def show(d: dict[str, Any]) -> None:
        for kit in d["kits"]:
            output.console.print(f"[bold]{kit['name']}[/]: {kit['description']}")
        for error in d["errors"]:
            output.errors.print(f"[red]kit failed to load:[/] {error}")

    _done(data, as_json, show)


# --- comm paths ----------------------------------------------------------------------------------


@commpath_app.command("create")
def commpath_create(
    local: Annotated[str, typer.Option(help="server at one end")],
    local_address: Annotated[str, typer.Option(help="its address for this path")],
    remote: Annotated[str, typer.Option(help="server at the other end")],
    remote_address: Annotated[str, typer.Option(help="its address for this path")],
    heartbeat_interval: float = 1.0,
    max_missed: int = 5,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Create a comm path between two servers (both ends at once)."""
    body = {
        "local": local,
        "local_address": local_address,
        "remote": remote,
        "remote_address": remote_address,
        "heartbeat_interval": heartbeat_interval,
        "max_missed": max_missed,
    }
    _done(_call("POST", "/v1/commpaths", url, token, body), as_json)


@commpath_app.command("delete")
def commpath_delete(
    path_id: str, force: bool = False, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Delete a comm path (refused for the last path between servers sharing a hierarchy)."""
    _done(
        _call("DELETE", f"/v1/commpaths/{path_id}?force={str(force).lower()}", url, token), as_json
    )


@commpath_app.command("list")
def commpath_list(url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Comm paths with their state."""
    _done(_call("GET", "/v1/commpaths", url, token), as_json, output.print_paths)


# --- resources and dependencies --------------------------------------------------------------


@resource_app.command("create")
def resource_create(
    tag: str,
    kit: Annotated[str, typer.Option(help="recovery kit, e.g. app")],
    server: Annotated[str, typer.Option(help="server to create it on")],
    prop: Props = None,
    timeout: float = 120.0,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Create a resource on a server (priority 1) and bring it in service there."""
    body = {
        "tag": tag,
        "kit": kit,
        "server": server,
        "properties": _properties(prop),
        "timeout": timeout,
    }
    _done(_call("POST", "/v1/resources", url, token, body), as_json)


@resource_app.command("show")
def resource_show(tag: str, url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """A resource, its properties and its instances."""
    data = _call("GET", f"/v1/resources/{tag}", url, token)
    _done(data, as_json, lambda d: output.console.print_json(json.dumps(d)))


@resource_app.command("properties")
def resource_properties(
    tag: str,
    prop: Props = None,
    server: Annotated[
        str | None, typer.Option(help="set per-server values for this server")
    ] = None,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """View properties, or edit them with --property NAME=VALUE (null removes one)."""
    values = _properties(prop)
    if not values:
        data = _call("GET", f"/v1/resources/{tag}", url, token)
        view = {"properties": data["properties"], "server_properties": data["server_properties"]}
        _done(view, as_json, lambda d: output.console.print_json(json.dumps(d)))
        return
    body = {"server_properties": {server: values}} if server else {"properties": values}
    _done(_call("PATCH", f"/v1/resources/{tag}/properties", url, token, body), as_json)


@dependency_app.command("create")
def dependency_create(
    parent: str, child: str, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Make PARENT depend on CHILD (on every server)."""
    _done(
        _call("POST", "/v1/dependencies", url, token, {"parent": parent, "child": child}), as_json
    )


@dependency_app.command("delete")
def dependency_delete(
    parent: str, child: str, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Remove the dependency of PARENT on CHILD."""
    _done(_call("DELETE", f"/v1/dependencies/{parent}/{child}", url, token), as_json)


# --- hierarchies -----------------------------------------------------------------------------


@app.command()
def extend(
    tag: str,
    to: Annotated[str, typer.Option("--to", help="the backup server")],
    priority: Annotated[int | None, typer.Option(help="1-999; default 10 or the next free")] = None,
    prop: Annotated[
        list[str] | None, typer.Option("--property", "-p", help="TAG.NAME=VALUE on the new server")
    ] = None,
    fix: Annotated[
        bool,
        typer.Option("--fix", help="let the kits correct what the pre-extend checks found"),
    ] = False,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Extend the whole hierarchy of TAG to a backup server (after the kits' pre-extend
    checks; with --fix, a kit that can correct what they found does so first)."""
    per_tag: dict[str, dict[str, Any]] = {}
    for name, value in _properties(prop).items():
        member, sep, field = name.partition(".")
        if not sep:
            raise CliError(f"--property {name}: expected TAG.NAME=VALUE", client.EXIT_REFUSED)
        per_tag.setdefault(member, {})[field] = value
    body = {"server": to, "priority": priority, "properties": per_tag, "fix": fix}
    _done(_call("POST", f"/v1/hierarchies/{tag}/extend", url, token, body), as_json)


@app.command()
def unextend(
    tag: str,
    from_: Annotated[str, typer.Option("--from", help="the server to remove it from")],
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Remove the hierarchy of TAG from a server where it is not in service."""
    _done(_call("POST", f"/v1/hierarchies/{tag}/unextend", url, token, {"server": from_}), as_json)


@app.command()
def delete(
    tag: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="delete even where a kit warns against it")
    ] = False,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Delete the hierarchy of TAG from every server (its children too unless shared)."""
    if not yes and not typer.confirm(f"Delete {tag} and the resources below it from every server?"):
        raise typer.Exit(1)
    query = "?force=true" if force else ""
    _done(_call("DELETE", f"/v1/hierarchies/{tag}{query}", url, token), as_json)


@app.command("in-service")
def in_service(
    tag: str,
    on: Annotated[
        str, typer.Option("--on", help="server (a switchover if it is in service elsewhere)")
    ],
    timeout: float = 120.0,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Bring the hierarchy of TAG in service on a server."""
    _done(
        _call(
            "POST",
            f"/v1/hierarchies/{tag}/in-service",
            url,
            token,
            {"server": on, "timeout": timeout},
        ),
        as_json,
    )


@app.command("out-of-service")
def out_of_service(
    tag: str, timeout: float = 120.0, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Take the hierarchy of TAG out of service."""
    _done(
        _call("POST", f"/v1/hierarchies/{tag}/out-of-service", url, token, {"timeout": timeout}),
        as_json,
    )


# --- the agent --------------------------------------------------------------------------------


@agent_app.command("run")
def agent_run(
    config: Annotated[Path, typer.Option("--config", help="agent configuration (TOML)")],
) -> None:
    """Run the agent in the foreground until SIGTERM."""
    from vigil.agent.main import main as agent_main

    raise typer.Exit(agent_main(config))


def _register() -> None:
    from vigil.cli import (  # noqa: F401  (they add commands)
        ca_commands,
        lab_commands,
        mail_commands,
        mirror_commands,
        ops_commands,
        recovery_commands,
    )

    app.add_typer(lab_commands.app, name="lab")
    app.add_typer(ca_commands.app, name="ca")


def run() -> None:
    """Entry point: run the app, turning errors into one line and an exit code."""
    from vigil.errors import VigilError

    _register()
    try:
        code = app(standalone_mode=False)
    except CliError as exc:
        output.errors.print(f"[red]error:[/] {exc}")
        for problem in exc.problems[1:] if len(exc.problems) > 1 else []:
            output.errors.print(f"  - {problem}")
        raise SystemExit(exc.exit_code) from None
    except VigilError as exc:
        output.errors.print(f"[red]error:[/] {exc}")
        raise SystemExit(client.EXIT_FAILED) from None
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(1) from None
    except typer.exceptions.TyperException as exc:  # usage errors (Typer's own Click)
        show = getattr(exc, "show", None)
        if not callable(show):
            raise
        show()
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    if isinstance(code, int) and code:
        raise SystemExit(code)
