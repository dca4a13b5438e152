"""The agent's configuration file (TOML), parsed once at the edge into typed settings.

Example::

    server = "node1"                          # this server's name in the cluster
    store = "sqlite:////var/lib/vigil/store.db"
    state_dir = "/var/lib/vigil/node1"        # kit state, logs of kit commands
    tokens_file = "/etc/vigil/tokens.toml"    # API tokens and their roles
    addresses = ["10.0.0.1"]                  # this server's addresses (comm paths, kits)

    [api]
    listen = "10.0.0.1"
    port = 7480
    # advertise_url = "https://10.0.0.1:7480"  # how other agents and the CLI reach this one

    [lease]
    ttl = 0.8                 # seconds without renewal after which this server is dead
    renew_interval = 0.15     # how often the lease is renewed
    request_timeout = 0.15    # one renewal may take this long
    safety_margin = 0.35      # stop this long before the lease can expire elsewhere
    failsafe = true           # ride through a store outage every agent sees (below)
    failsafe_limit = 10.0     # ... for at most this long after the last renewal
    realtime_priority = 10    # SCHED_RR, as corosync: a busy machine cannot starve renewals

    [web]                     # the web UI at /ui/ (vigil.web): people log in through PAM
    pam_service = "vigil"     # /etc/pam.d/vigil, else PAM's "other" (Debian: common-auth)
    admin_group = "vigil-admin"   # operating-system groups -> the seed's roles
    operator_group = "vigil-oper"
    guest_group = "vigil-guest"
    session_timeout = 28800   # seconds a login lasts

    [tls]                     # the API and web UI over HTTPS (vigil.agent.tls)
    cert_file = "/etc/vigil/tls/node1.pem"   # this agent's certificate (vigil ca issue)
    key_file = "/etc/vigil/tls/node1.key"
    ca_file = "/etc/vigil/tls/ca.pem"        # the cluster CA: other agents are checked by it
    # plain_http = true       # no TLS at all: only when set so, with a warning in the log

The timing rule (checked here, refused when unsafe): a holder that cannot renew must have
time to take its hierarchies out of service before anyone else may take them over, so
``renew_interval + 2 * request_timeout + safety_margin <= ttl``. The holder counts from
when it sent its last successful renewal; at ``ttl - safety_margin`` after it, the agent and
its fence guard stop everything (the margin covers the guard's polling and its kills).
With these defaults a dead server is acted on about 0.8 s after its last renewal, on any
store: other agents time its heartbeat with their own clocks (``vigil.agent.liveness``).

Failsafe (``vigil.agent.failsafe``): when the store is unreachable for every agent (a leader
election, a store restart), an agent that reaches every other agent over comm paths and
hears from each that it cannot reach the store either holds its lease on, for at most
``failsafe_limit`` seconds after its last successful renewal; any doubt fences as without
it. That is what lets ``ttl`` be shorter than a store election. The store's own lease (the
backstop) is then asked for ``ttl + safety_margin + failsafe_limit``, and an agent that was
not among those a server would ask waits ``ttl + failsafe_limit`` before judging it dead.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic import ValidationError as PydanticError

from vigil.errors import ConfigError
from vigil.model.names import check_server_name

Role = Literal["administrator", "operator", "guest"]


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    listen: str = "127.0.0.1"
    port: int = Field(7480, ge=1, le=65535)
    advertise_url: str | None = None
    #: https unless the agent's [tls] says plain_http (set by ``AgentConfig``)
    _scheme: str = PrivateAttr("https")

    @property
    def url(self) -> str:
        return self.advertise_url or f"{self._scheme}://{self.listen}:{self.port}"


class LeaseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ttl: float = Field(0.8, gt=0)
    renew_interval: float = Field(0.15, gt=0)
    request_timeout: float = Field(0.15, gt=0)
    safety_margin: float = Field(0.35, ge=0.1)
    #: hold the lease through a store outage that every agent confirms (``agent.failsafe``)
    failsafe: bool = True
    #: the longest a failsafe may hold the lease past the last successful renewal
    failsafe_limit: float = Field(10.0, ge=0)
    #: SCHED_RR priority of the agent and its fence guard (0: normal; ``agent.realtime``)
    realtime_priority: int = Field(10, ge=0, le=99)

    @property
    def failsafe_hold(self) -> float:
        """How long past the last renewal a failsafe may hold the lease (0: no failsafe)."""
        return self.failsafe_limit if self.failsafe else 0.0

    @model_validator(mode="after")
    def _timing_rule(self) -> LeaseSettings:
        needed = self.renew_interval + 2 * self.request_timeout + self.safety_margin
        if needed > self.ttl + 1e-9:
            raise ValueError(
                f"unsafe lease timing: renew_interval ({self.renew_interval}s) + 2 x "
                f"request_timeout ({self.request_timeout}s) + safety_margin "
                f"({self.safety_margin}s) "
                f"= {needed}s exceeds ttl ({self.ttl}s); a server cut off from the store could "
                f"not stop its resources before another takes them over. Raise ttl to at "
                f"least {needed}s or lower the other two."
            )
        return self


class WebSettings(BaseModel):
    """The web UI: which PAM service checks passwords, which operating-system group gives
    which role (the seed's lkadmin, lkoper, lkguest), how long a login lasts."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    pam_service: str = Field("vigil", min_length=1)
    admin_group: str = "vigil-admin"
    operator_group: str = "vigil-oper"
    guest_group: str = "vigil-guest"
    session_timeout: float = Field(8 * 3600.0, gt=0)


class TlsSettings(BaseModel):
    """The API over HTTPS: this agent's certificate and key, and the CA its peers'
    certificates are checked against (none: the system's trusted CAs). ``plain_http``:
    no TLS at all, only when an administrator says so (the agent warns in its log)."""

    model_config = ConfigDict(extra="forbid")
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    plain_http: bool = False

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _consistent(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give both cert_file and key_file (or neither, with plain_http)")
        if self.plain_http and self.enabled:
            raise ValueError("plain_http = true and a certificate: choose one")
        return self

    def problem(self) -> str | None:
        """Why an agent may not run with these settings (None: it may)."""
        if self.enabled or self.plain_http:
            return None
        return (
            "the API is served over TLS: give [tls] cert_file, key_file and ca_file "
            "(`vigil ca init`, then `vigil ca issue SERVER --address ADDRESS`), or set "
            "[tls] plain_http = true to serve plain HTTP (tokens then cross the network "
            "in clear)"
        )


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: str
    store: str
    state_dir: Path
    tokens_file: Path
    addresses: list[str] = Field(default_factory=list)
    log_file: Path | None = None
    #: the cluster key that seals secret properties in the store (the same file on every
    #: server; ``vigil.agent.secrets``); none: secrets are stored as given
    secrets_key_file: Path | None = None
    api: ApiSettings = Field(default_factory=ApiSettings)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @model_validator(mode="after")
    def _names(self) -> AgentConfig:
        check_server_name(self.server)
        self.api._scheme = "http" if self.tls.plain_http else "https"
        return self


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    role: Role
    token: str = Field(min_length=16)


class TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: list[TokenEntry] = Field(default_factory=list)


def _read_toml(path: Path, what: str) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc


def _errors(exc: PydanticError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
    )


def load_config(path: Path) -> AgentConfig:
    """Read and validate an agent configuration file; ``ConfigError`` says what to fix."""
    data = _read_toml(path, "agent configuration")
    try:
        config = AgentConfig.model_validate(data)
    except PydanticError as exc:
        raise ConfigError(f"agent configuration {path}: {_errors(exc)}") from exc
    except Exception as exc:  # check_server_name raises vigil's ValidationError
        raise ConfigError(f"agent configuration {path}: {exc}") from exc
    problem = config.tls.problem()
    if problem:
        raise ConfigError(f"agent configuration {path}: {problem}")
    return config


def load_tokens(path: Path) -> TokensFile:
    """Read the API tokens file (``[[token]]`` tables with name, role, token)."""
    data = _read_toml(path, "tokens file")
    try:
        return TokensFile.model_validate(data)
    except PydanticError as exc:
        raise ConfigError(f"tokens file {path}: {_errors(exc)}") from exc
