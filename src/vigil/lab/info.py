"""What a lab tells its users: ``LabInfo`` (a lab that is up) and ``LabStatus`` (what exists)."""

from __future__ import annotations

import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil.agent.tls import client_context
from vigil.errors import LabError

if TYPE_CHECKING:
    from vigil.lab.mail.status import MailStatus


@dataclass(frozen=True)
class ServerInfo:
    """One lab server: its names, address, API and agent."""

    name: str
    address: str
    api_url: str
    netns: str
    mount_ns: Path
    config_file: Path
    agent_out: Path
    agent_pid: int | None


@dataclass(frozen=True)
class StoreMemberInfo:
    """One etcd member of a lab on etcd: its names, address, files and process."""

    name: str
    address: str
    client_url: str
    netns: str
    mount_ns: Path
    data_dir: Path
    log_file: Path
    pid: int | None


@dataclass(frozen=True)
class LabInfo:
    """A lab that is up: where everything is and how to reach it.

    ``store`` is ``embedded`` (one SQLite file) or ``etcd`` (``store_members``, each in
    its own namespaces on the lab network; ``store_url`` names them all).
    """

    name: str
    root: Path
    subnet: str
    bridge: str
    host_address: str
    store_url: str
    client_file: Path
    tokens_file: Path
    servers: tuple[ServerInfo, ...]
    tokens: dict[str, str] = field(repr=False)
    store: str = "embedded"
    store_members: tuple[StoreMemberInfo, ...] = ()
    #: the lab's CA: every agent's certificate is signed by it
    ca_file: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the lab's agents (and nothing else)."""
        return client_context(self.ca_file)

    @property
    def url(self) -> str:
        """The API URL of the first server."""
        return self.servers[0].api_url

    @property
    def urls(self) -> list[str]:
        return [server.api_url for server in self.servers]

    def server(self, name: str) -> ServerInfo:
        for server in self.servers:
            if server.name == name:
                return server
        known = ", ".join(s.name for s in self.servers)
        raise LabError(f"lab {self.name} has no server {name!r} (it has {known})")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings, tokens included)."""
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


@dataclass(frozen=True)
class ServerStatus:
    """What exists of one server. ``api_ok`` is ``None`` when not asked or no agent runs."""

    name: str
    address: str | None
    netns: bool
    mount_ns: bool
    agent_pid: int | None
    agent_alive: bool
    processes: int
    api_ok: bool | None = None


@dataclass(frozen=True)
class StoreMemberStatus:
    """What exists of one etcd member: its namespaces and its process (pid if running)."""

    name: str
    address: str | None
    netns: bool
    mount_ns: bool
    pid: int | None
    healthy: bool | None = None


@dataclass(frozen=True)
class LabStatus:
    """What exists of a lab, found by its state file and its naming conventions."""

    name: str
    root: Path
    root_exists: bool
    state_file: bool
    bridge: bool
    servers: tuple[ServerStatus, ...]
    store_members: tuple[StoreMemberStatus, ...] = ()
    #: the mail organisation (``vigil.lab.mail``), if the lab has one
    mail: MailStatus | None = None

    @property
    def exists(self) -> bool:
        """Whether anything of the lab is left."""
        return (
            self.root_exists
            or self.bridge
            or any(s.netns for s in self.servers)
            or any(m.netns for m in self.store_members)
        )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _jsonable(asdict(self))
        data["exists"] = self.exists
        return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
