"""``vigil lab``: build, use, inspect and tear down a lab cluster on this machine."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from vigil.agent.config import LeaseSettings
from vigil.errors import VigilError
from vigil.lab import Lab, LabInfo, LabStatus
from vigil.lab.mail import MailOrgInfo, MailStatus

app = typer.Typer(
    help="A lab: a cluster of N servers on this machine (network + mount namespaces on a "
    "private bridge, one agent each). Needs root.",
    no_args_is_help=True,
)

NameOption = Annotated[str, typer.Option("--name", help="Name of the lab (at most 9 characters).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]

_out = Console()
_err = Console(stderr=True)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn vigil errors into one clear message on stderr and exit status 1."""
    try:
        yield
    except VigilError as exc:
        _err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _yes_no(value: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[value]


def _show_info(info: LabInfo) -> None:
    table = Table(
        title=f"lab {info.name} ({info.subnet}, bridge {info.bridge})", box=box.SIMPLE_HEAD
    )
    for column in ("server", "address", "API URL", "agent pid"):
        table.add_column(column, no_wrap=True)
    for server in info.servers:
        pid = str(server.agent_pid) if server.agent_pid else "-"
        table.add_row(server.name, server.address, server.api_url, pid)
    _out.print(table)
    _out.print(f"host address: {info.host_address}", highlight=False)
    _out.print(f"store ({info.store}): {info.store_url}", highlight=False, soft_wrap=True)
    for member in info.store_members:
        running = f"pid {member.pid}" if member.pid else "not running"
        _out.print(f"etcd member {member.name}: {member.client_url} ({running})", highlight=False)
    _out.print(f"client file (URLs and tokens): {info.client_file}", highlight=False)


def _show_mail(org: MailOrgInfo, disabled_units: list[str]) -> None:
    directory, front = org.directory, org.frontend
    lines = [
        f"mail organisation {org.domain}: {len(org.users)} users + probe "
        f"{org.probe_user.address}, homed on {org.primary} "
        f"(mailHost {org.home_value(org.primary)})",
        f"  directory: {directory.url} (slapd in {directory.where}), base {directory.base_dn}",
        f"    bind DN {directory.bind_dn}, password in {directory.bind_password_file}",
        f"    admin DN {directory.admin_dn}, password in {directory.admin_password_file}",
        f"    users' passwords in {directory.users_password_file}",
        f"  front-end: {front.address} (in {front.where}): SMTP {front.smtp_port} (relay, "
        f"ETRN), IMAP {front.imap_port} and POP3 {front.pop3_port} (proxy)",
        f"    Postfix {front.postfix_dir}, Dovecot {front.dovecot_conf}",
        f"  on every server: Postfix -c {org.postfix_dir}, Dovecot -c {org.dovecot_conf}",
        f"  home values: {', '.join(f'{s}={org.home_value(s)}' for s in org.servers)}",
        f"  mail store: {org.mail_root} (queue {org.queue_dir}, mailboxes {org.vmail_dir}) on "
        f"{org.disk.image}, mounted on {org.primary} ({org.disk.device(org.primary)}); "
        "Postfix and Dovecot stopped",
        "  start on a server: " + "; ".join(" ".join(a) for a in org.commands["start"]),
        "  stop on a server:  " + "; ".join(" ".join(a) for a in org.commands["stop"]),
    ]
    if disabled_units:
        lines.append(
            f"  disabled the system's units {', '.join(disabled_units)} (systemctl disable: "
            "nothing started or stopped; only vigil starts these services)"
        )
    for line in lines:
        _out.print(line, highlight=False, soft_wrap=True)


def _show_mail_status(mail: MailStatus) -> None:
    slapd = f"slapd pid {mail.directory_pid}" if mail.directory_pid else "[red]slapd not running[/]"
    front = (
        f"{len(mail.frontend_pids)} of 2 daemons running"
        if mail.frontend_pids
        else "[red]not running[/]"
    )
    _out.print(
        f"mail: directory {mail.directory_url} ({slapd}), front-end "
        f"{mail.frontend_address or '-'} ({front})",
        highlight=False,
        soft_wrap=True,
    )
    for server in mail.servers:
        _out.print(
            f"  {server.name}: store {'mounted' if server.store_mounted else 'not mounted'}, "
            f"postfix {'running' if server.postfix else 'stopped'}, "
            f"dovecot {'running' if server.dovecot else 'stopped'}",
            highlight=False,
        )


def _show_status(status: LabStatus) -> None:
    if not status.exists:
        _out.print(f"lab {status.name}: nothing exists")
        return
    _out.print(
        f"lab {status.name}: root {status.root} {_yes_no(status.root_exists)}, "
        f"state file {_yes_no(status.state_file)}, bridge {_yes_no(status.bridge)}",
        highlight=False,
    )
    table = Table(box=box.SIMPLE_HEAD)
    columns = ("server", "address", "netns", "mount ns", "agent pid", "agent", "API", "procs")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for server in status.servers:
        table.add_row(
            server.name,
            server.address or "-",
            _yes_no(server.netns),
            _yes_no(server.mount_ns),
            str(server.agent_pid) if server.agent_pid else "-",
            "running" if server.agent_alive else ("[red]gone[/]" if server.agent_pid else "-"),
            _yes_no(server.api_ok),
            str(server.processes),
        )
    _out.print(table)
    for member in status.store_members:
        _out.print(
            f"etcd member {member.name}: address {member.address or '-'}, netns "
            f"{_yes_no(member.netns)}, mount ns {_yes_no(member.mount_ns)}, "
            f"pid {member.pid or '-'}, healthy {_yes_no(member.healthy)}",
            highlight=False,
        )
    if status.mail is not None:
        _show_mail_status(status.mail)


@app.command()
def up(
    servers: Annotated[
        int, typer.Option("--servers", "-n", min=1, max=99, help="Number of servers.")
    ] = 3,
    name: NameOption = "lab",
    subnet_index: Annotated[
        int,
        typer.Option("--subnet-index", min=0, max=255, help="The lab uses 10.213.<index>.0/24."),
    ] = 0,
    agents: Annotated[
        bool, typer.Option("--agents/--no-agents", help="Start an agent on each server.")
    ] = True,
    keep_on_failure: Annotated[
        bool,
        typer.Option("--keep-on-failure", help="Leave a lab that failed to start, to debug it."),
    ] = False,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            help="The agents' store: embedded (one SQLite file) or etcd (members in "
            "namespaces of their own on the lab network, at 10.213.<index>.151...).",
        ),
    ] = "embedded",
    store_members: Annotated[
        int, typer.Option("--store-members", help="etcd members (1, 3 or 5) with --store etcd.")
    ] = 1,
    lease_ttl: Annotated[
        float | None,
        typer.Option(
            "--lease-ttl",
            help="The agents' lease TTL in seconds (default: the agent's, 1.5); on etcd, 3 "
            "rides through etcd leader changes and restarts.",
        ),
    ] = None,
    mail: Annotated[
        bool,
        typer.Option(
            "--mail/--no-mail",
            help="Also build a mail organisation: an LDAP directory, a front-end (Postfix "
            "relay, Dovecot proxy), each server's Postfix and Dovecot configuration, the "
            "queue and mailboxes on a shared disk mounted on node1. Disables the system's "
            "postfix, dovecot and slapd units (systemctl disable: starts and stops nothing).",
        ),
    ] = False,
    mail_users: Annotated[
        int, typer.Option("--mail-users", min=1, max=100_000, help="Mail users with --mail.")
    ] = 20,
    json_output: JsonOption = False,
) -> None:
    """Build a lab of N servers (node1..nodeN) and start their agents.

    With --mail, also the mail organisation the mail kit protects (see `--mail`); it
    disables the system's postfix, dovecot and slapd units, which the Debian packages
    enable, so that nothing but vigil starts these services (`systemctl disable` starts
    and stops nothing), and says so.
    """
    with _errors():
        if store not in ("embedded", "etcd"):
            raise typer.BadParameter(f"{store!r}: use embedded or etcd", param_hint="--store")
        try:
            lease = None if lease_ttl is None else LeaseSettings(ttl=lease_ttl)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--lease-ttl") from None
        lab = Lab(name, subnet_index)
        info = lab.up(
            servers,
            start_agents=agents,
            keep_on_failure=keep_on_failure,
            store="etcd" if store == "etcd" else "embedded",
            store_members=store_members,
            lease=lease,
        )
        org = _add_mail(lab, mail_users, keep_on_failure) if mail else None
    if json_output:
        data = info.to_dict()
        if org is not None:
            data["mail"] = {**org.to_dict(), "disabled_units": lab.disabled_units}
        _print_json(data)
    else:
        _show_info(info)
        if org is not None:
            _show_mail(org, lab.disabled_units)


def _add_mail(lab: Lab, users: int, keep_on_failure: bool) -> MailOrgInfo:
    """``Lab.add_mail_org``; a lab whose mail organisation failed goes down with it,
    as a lab that fails to come up does."""
    try:
        return lab.add_mail_org(users=users)
    except BaseException:
        if not keep_on_failure:
            lab.down()
        raise


@app.command()
def down(name: NameOption = "lab", json_output: JsonOption = False) -> None:
    """Stop everything in the lab and remove it without leftovers (also after a crash)."""
    with _errors():
        Lab(name).down()
    if json_output:
        _print_json({"name": name, "down": True})
    else:
        _out.print(f"lab {name} is down: nothing of it is left", highlight=False)


@app.command(
    "exec",
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "allow_interspersed_args": False,
    },
)
def exec_(
    server: Annotated[str, typer.Argument(help="The server, e.g. node1.")],
    command: Annotated[list[str], typer.Argument(help="The command (after `--`).")],
    name: NameOption = "lab",
) -> None:
    """Run a command inside a server: `vigil lab exec node1 -- ip -br addr`.

    Its stdin, stdout and stderr are this terminal's; its exit status is returned.
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _err.print("error: no command given: vigil lab exec SERVER -- COMMAND...")
        raise typer.Exit(2)
    with _errors():
        done = Lab(name).exec(server, command)
    raise typer.Exit(done.returncode)


@app.command()
def status(
    name: NameOption = "lab",
    check_api: Annotated[
        bool, typer.Option("--check-api/--no-check-api", help="Ask each agent's health check.")
    ] = True,
    json_output: JsonOption = False,
) -> None:
    """Show what exists of the lab: namespaces, bridge, agents and whether they answer."""
    with _errors():
        result = Lab(name).status(check_api=check_api)
    if json_output:
        _print_json(result.to_dict())
    else:
        _show_status(result)
