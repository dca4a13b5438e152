"""Files a lab writes under its root: state (lab.json), tokens, agent configs, client file.

The agent configuration and tokens file follow ``vigil.agent.config``; each agent
configuration is read back through ``load_config`` so a lab never starts an agent on a
file the agent would refuse.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from vigil.agent.config import LeaseSettings, TlsSettings, load_config, load_tokens
from vigil.errors import ConfigError, LabError

#: token names and their roles, in the order they are written
TOKEN_ROLES = (("admin", "administrator"), ("operator", "operator"), ("guest", "guest"))
STATE_SCHEMA_VERSION = 1


class HostState(BaseModel):
    """A namespace host of the lab on its bridge: its name, address and namespaces."""

    model_config = ConfigDict(extra="forbid")
    name: str
    address: str
    netns: str
    mount_ns: str
    host_veth: str


class ServerState(HostState):
    agent_pid: int | None = None


class StoreMemberState(HostState):
    """One etcd member of a lab on etcd (``vigil.lab.etcd``)."""

    pid: int | None = None


class DnsServerState(BaseModel):
    """A BIND of the lab (``vigil.lab.dns``); its TSIG secret stays in its directory."""

    model_config = ConfigDict(extra="forbid")
    where: str
    address: str
    port: int
    zone: str
    reverse_zone: str
    key_name: str
    algorithm: str
    directory: str
    pid: int | None = None


class SharedDiskState(BaseModel):
    """A shared disk of the lab (``vigil.lab.disk``): its image and loop devices."""

    model_config = ConfigDict(extra="forbid")
    image: str
    size_mb: int
    uuid: str
    mmp: bool
    devices: dict[str, str] = Field(default_factory=dict)


class LocalDiskState(BaseModel):
    """A server's own disk (``vigil.lab.localdisk``): its image and loop device."""

    model_config = ConfigDict(extra="forbid")
    image: str
    device: str
    size_mb: int


class MailDirectoryState(BaseModel):
    """The mail organisation's directory (slapd, ``vigil.lab.mail.directory``); its
    passwords stay in files in ``directory``."""

    model_config = ConfigDict(extra="forbid")
    where: str
    address: str
    directory: str
    pid: int | None = None


class MailFrontendState(BaseModel):
    """The mail front-end (Postfix relay and Dovecot proxy, ``vigil.lab.mail.frontend``)."""

    model_config = ConfigDict(extra="forbid")
    where: str
    address: str
    directory: str
    postfix_pid: int | None = None
    dovecot_pid: int | None = None


class MailOrgState(BaseModel):
    """The lab's mail organisation (``vigil.lab.mail``): its hosts, the servers given a
    mail configuration, and its shared disk (the image of one of ``shared_disks``)."""

    model_config = ConfigDict(extra="forbid")
    domain: str
    primary: str
    users: int
    directory: MailDirectoryState
    frontend: MailFrontendState | None = None
    servers: list[str] = Field(default_factory=list)
    disk_image: str | None = None


class LabState(BaseModel):
    """``lab.json``: what a lab has built so far, rewritten after each step.

    ``store`` is the agents' store: ``embedded`` (``store_url`` None: the SQLite file under
    the root) or ``etcd`` (``store_url`` names every member of ``store_members``).
    ``dns_servers`` (by where they run), ``shared_disks`` and ``mail``: added after ``up``.
    """

    model_config = ConfigDict(extra="forbid")
    schema_version: int = STATE_SCHEMA_VERSION
    name: str
    subnet: str
    subnet_index: int
    bridge: str
    host_address: str
    servers: dict[str, ServerState] = Field(default_factory=dict)
    store: Literal["embedded", "etcd"] = "embedded"
    store_url: str | None = None
    store_members: dict[str, StoreMemberState] = Field(default_factory=dict)
    dns_servers: dict[str, DnsServerState] = Field(default_factory=dict)
    shared_disks: list[SharedDiskState] = Field(default_factory=list)
    #: each server's own disk (a mirror's), by server
    local_disks: dict[str, LocalDiskState] = Field(default_factory=dict)
    mail: MailOrgState | None = None


def _write_atomically(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _toml_str(value: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(value, ensure_ascii=True)


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def save_state(path: Path, state: LabState) -> None:
    _write_atomically(path, state.model_dump_json(indent=2) + "\n")


def load_state(path: Path) -> LabState | None:
    """The lab state, ``None`` if there is no state file; ``LabError`` if it is unreadable."""
    try:
        return LabState.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, PydanticError) as exc:
        raise LabError(f"lab state {path} is unreadable: {exc}") from exc


def write_tokens(path: Path) -> dict[str, str]:
    """Write a tokens file with a fresh random token per role; returns role → token."""
    tokens = {role: secrets.token_urlsafe(24) for _, role in TOKEN_ROLES}
    blocks = [
        f"[[token]]\nname = {_toml_str(name)}\nrole = {_toml_str(role)}\n"
        f"token = {_toml_str(tokens[role])}\n"
        for name, role in TOKEN_ROLES
    ]
    _write_atomically(path, "# API tokens of this lab\n\n" + "\n".join(blocks), 0o600)
    return tokens


def read_tokens(path: Path) -> dict[str, str]:
    """role → token from a tokens file written by ``write_tokens`` ({} if missing)."""
    try:
        entries = load_tokens(path).token
    except ConfigError:
        return {}
    return {entry.role: entry.token for entry in entries}


def write_agent_config(
    path: Path,
    *,
    server: str,
    address: str,
    port: int,
    store_url: str,
    state_dir: Path,
    tokens_file: Path,
    log_file: Path,
    tls: TlsSettings,
    lease: LeaseSettings | None = None,
    secrets_key_file: Path | None = None,
) -> None:
    """Write one agent's configuration and check that the agent would accept it.

    ``tls``: its ``[tls]`` table (the lab's: a certificate from the lab's CA);
    ``lease``: a ``[lease]`` table with these settings (none: the agent's defaults);
    ``secrets_key_file``: the cluster key that seals secret properties in the store."""
    text = (
        f"# vigil agent of lab server {server}\n"
        f"server = {_toml_str(server)}\n"
        f"store = {_toml_str(store_url)}\n"
        f"state_dir = {_toml_str(str(state_dir))}\n"
        f"tokens_file = {_toml_str(str(tokens_file))}\n"
        f"addresses = {_toml_list([address])}\n"
        f"log_file = {_toml_str(str(log_file))}\n"
    )
    if secrets_key_file is not None:
        text += f"secrets_key_file = {_toml_str(str(secrets_key_file))}\n"
    text += f"\n[api]\nlisten = {_toml_str(address)}\nport = {port}\n"
    text += "\n[tls]\n" + "".join(
        f"{field} = {_toml_str(str(value)) if isinstance(value, Path) else json.dumps(value)}\n"
        for field, value in tls.model_dump(exclude_none=True).items()
    )
    if lease is not None:
        text += "\n[lease]\n" + "".join(
            f"{field} = {json.dumps(value)}\n" for field, value in lease.model_dump().items()
        )
    _write_atomically(path, text)
    try:
        load_config(path)
    except ConfigError as exc:
        raise LabError(f"the lab wrote an agent configuration the agent refuses: {exc}") from exc


def write_client_file(
    path: Path, urls: list[str], tokens: dict[str, str], ca_file: Path | None = None
) -> None:
    """Write the client file the CLI and tests use to find the lab's agents; ``ca_file``:
    the CA their certificates are checked against."""
    lines = [
        "# how to reach this lab's agents (vigil CLI, tests)",
        f"url = {_toml_str(urls[0])}",
        f"urls = {_toml_list(urls)}",
        *([f"ca_file = {_toml_str(str(ca_file))}"] if ca_file else []),
        "",
        "[tokens]",
        *(f"{role} = {_toml_str(tokens[role])}" for _, role in TOKEN_ROLES if role in tokens),
    ]
    _write_atomically(path, "\n".join(lines) + "\n", 0o600)
