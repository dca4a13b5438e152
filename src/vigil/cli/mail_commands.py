"""``vigil mail ...``: the mail kit's Services Config and Manage User, the users' home, and
the seed's utilities (LKMoveExUsers, LKExADUtil /MSU, lkmsad_mu, SetSvcMode), all through
an agent's API."""

from __future__ import annotations

import getpass
import os
from typing import Annotated, Any
from urllib.parse import quote

import typer

from vigil.cli import output
from vigil.cli.client import EXIT_REFUSED, CliError
from vigil.cli.main import Json, Token, Url, _call, _done, app

mail_app = typer.Typer(
    help="The mail kit: services, directory account, users.", no_args_is_help=True
)
app.add_typer(mail_app, name="mail")

Server = Annotated[str | None, typer.Option("--server", help="one server (default: every server)")]


def _password(given: str | None) -> str:
    """The password from --password-file, VIGIL_BIND_PASSWORD, or a prompt (never argv)."""
    if given:
        try:
            with open(given) as handle:
                return handle.readline().rstrip("\n")
        except OSError as exc:
            raise CliError(f"cannot read {given}: {exc}", EXIT_REFUSED) from exc
    if os.environ.get("VIGIL_BIND_PASSWORD"):
        return os.environ["VIGIL_BIND_PASSWORD"]
    return getpass.getpass("directory account password: ")


@mail_app.command("user")
def user(
    tag: str,
    change_password: Annotated[
        bool, typer.Option("--change-password", help="set a new password")
    ] = False,
    bind_dn: Annotated[
        str | None, typer.Option("--bind-dn", help="change user and password")
    ] = None,
    password_file: Annotated[
        str | None, typer.Option("--password-file", help="read the password from this file")
    ] = None,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Manage User: show the directory account of TAG, or change its password (and user).

    The password comes from --password-file, $VIGIL_BIND_PASSWORD or a prompt; the new
    account must bind before anything is stored, on every server at once."""
    if not change_password and bind_dn is None:
        _done(_call("GET", f"/v1/mail/{tag}/user", url, token), as_json, _show_mapping)
        return
    body = {"bind_password": _password(password_file), "bind_dn": bind_dn}
    _done(_call("PUT", f"/v1/mail/{tag}/user", url, token, body), as_json)


@mail_app.command("services")
def services(tag: str, url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """The optional services of TAG per server, in start order (Dovecot first, Postfix
    last, always)."""

    def show(data: dict[str, list[dict[str, Any]]]) -> None:
        for server, listed in data.items():
            names = ", ".join(s["name"] for s in listed) or "(none)"
            output.console.print(f"{server:<12} dovecot -> {names} -> postfix")

    _done(_call("GET", f"/v1/mail/{tag}/services", url, token), as_json, show)


@mail_app.command("add-service")
def add_service(
    tag: str,
    name: str,
    start: Annotated[str | None, typer.Option(help="start command (unknown services)")] = None,
    stop: Annotated[str | None, typer.Option(help="stop command")] = None,
    check: Annotated[str | None, typer.Option(help="check command: exit 0 while it runs")] = None,
    server: Server = None,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Protect an optional service too (after the others in start order), on every server
    or on --server only. Test that it starts and stops before adding it."""
    spec = {"name": name, "start": start, "stop": stop, "check": check}
    body = {"service": {k: v for k, v in spec.items() if v is not None}, "server": server}
    _done(_call("POST", f"/v1/mail/{tag}/services", url, token, body), as_json)


@mail_app.command("delete-service")
def delete_service(
    tag: str, name: str, server: Server = None, url: Url = None, token: Token = None,
    as_json: Json = False,
) -> None:  # fmt: skip
    """Stop protecting an optional service (on every server, or on --server only)."""
    query = f"?server={quote(server)}" if server else ""
    _done(_call("DELETE", f"/v1/mail/{tag}/services/{name}{query}", url, token), as_json)


@mail_app.command("failed-users")
def failed_users(tag: str, url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Users that could not be moved to the server TAG is in service on (retried in the
    background until the log is empty)."""

    def show(data: dict[str, Any]) -> None:
        users = data.get("users", [])
        if not users:
            output.console.print(f"{tag}: every user is home (the failed-users log is empty)")
            return
        output.console.print(f"{tag} on {data.get('server')}: {len(users)} users not moved")
        for entry in users:
            scope = " (the whole base)" if entry.get("whole_base") else ""
            output.console.print(f"  {entry['dn']}{scope}: {entry['reason']}")

    _done(_call("GET", f"/v1/mail/{tag}/failed-users", url, token), as_json, show)


@mail_app.command("home")
def home(tag: str, user: str, url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Which server USER's mailbox is on (uid, mail address or DN)."""
    data = _call("GET", f"/v1/mail/{tag}/home?user={quote(user)}", url, token)
    _done(data, as_json, _show_mapping)


@mail_app.command("move-user")
def move_user(
    tag: str,
    user: Annotated[str, typer.Option("--user", help="uid, mail address or DN")],
    to: Annotated[str, typer.Option("--to", help="the server to home the user on")],
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Move one user's home to a server of TAG (the seed's LKExADUtil /MSU)."""
    body = {"user": user, "to": to}
    _done(_call("POST", f"/v1/mail/{tag}/move-user", url, token, body), as_json)


@mail_app.command("move-users")
def move_users(
    tag: str,
    domain: Annotated[str | None, typer.Option("--domain", help="only this mail domain")] = None,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Move every user of TAG's other servers to the server it is in service on (the
    seed's LKMoveExUsers), e.g. after the directory was down during a failover."""
    _done(_call("POST", f"/v1/mail/{tag}/move-users", url, token, {"domain": domain}), as_json)


@mail_app.command("failback-users")
def failback_users(tag: str, url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """Move every user of TAG back to its primary (the seed's lkmsad_mu): before deleting a
    hierarchy that is in service on a backup."""
    _done(_call("POST", f"/v1/mail/{tag}/failback-users", url, token), as_json)


@mail_app.command("set-queue-path")
def set_queue_path(
    first: Annotated[str, typer.Argument(help="TAG (then PATH), or PATH with --server")],
    second: Annotated[str | None, typer.Argument(help="PATH after TAG")] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="an unprotected Postfix on this server")
    ] = None,
    postfix_config: Annotated[
        str, typer.Option("--postfix-config", help="its configuration directory")
    ] = "/etc/postfix",
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Move Postfix's queue (the seed's SetSMTPQueuePath): stop Postfix, move the queue,
    set queue_directory, start it again.

    `vigil mail set-queue-path TAG PATH` moves the queue of a protected hierarchy on the
    server it is in service on (PATH must be on one of its volumes) and sets it on every
    other server; `vigil mail set-queue-path PATH --server S` moves the queue of a Postfix
    vigil does not protect yet (before creating its mail resource)."""
    if second is not None:
        if server is not None:
            raise CliError("give TAG PATH, or PATH --server SERVER, not both", EXIT_REFUSED)
        path = f"/v1/mail/{first}/queue-path"
        _done(_call("POST", path, url, token, {"path": second}), as_json)
        return
    if server is None:
        raise CliError("give TAG PATH, or PATH --server SERVER", EXIT_REFUSED)
    body = {"path": first, "postfix_config": postfix_config, "move": True}
    _done(_call("POST", f"/v1/mail/servers/{server}/queue-path", url, token, body), as_json)


@mail_app.command("set-service-mode")
def set_service_mode(
    mode: Annotated[str, typer.Argument(help="auto (start at boot) or manual")],
    server: Annotated[str, typer.Option("--server", help="the server to change")],
    service: Annotated[
        list[str] | None, typer.Option("--service", help="default: postfix and dovecot")
    ] = None,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Start the mail services at boot again (auto) after the hierarchy was deleted, or
    not (manual) before protecting them (the seed's SetSvcMode)."""
    if mode not in ("auto", "manual"):
        raise CliError(f"mode {mode!r}: use auto or manual", EXIT_REFUSED)
    body = {"mode": mode, "services": service or []}
    _done(_call("POST", f"/v1/mail/servers/{server}/service-mode", url, token, body), as_json)


def _show_mapping(data: dict[str, Any]) -> None:
    for name, value in data.items():
        output.console.print(f"{name:<16} {value}")
