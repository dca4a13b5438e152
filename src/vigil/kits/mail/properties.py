"""The mail kit's properties: the seed's "Create Protected Application" fields for Linux.

=======================  ==================================================================
seed (Exchange kit)      mail kit property
=======================  ==================================================================
core services            Postfix and Dovecot: always protected (``postfix_config``,
                         ``dovecot_config`` name their configuration)
optional services        ``services`` (per server, in start order): a known add-on by
                         name (``opendkim``, ``rspamd``, ``clamav-daemon``) or any daemon
                         given by its start, stop and check commands
MAXWAIT                  ``max_wait`` (seconds per service start or stop; 900)
Exchange admin user      ``directory_urls``, ``bind_dn``, ``bind_password`` (secret)
users' home server       ``users_base_dn``, ``user_filter``, ``home_attribute``
                         (``mailHost``) and ``home_server`` (per server: this server's
                         value; proposed on extend)
IP / DNS resources       ``ip_resource``, ``dns_resources``: become children at create
=======================  ==================================================================

``expected_settings`` is not set by the administrator: ``create`` records there the
primary's settings that every backup must match (queue and mail locations, domains and
maps, Dovecot namespaces: the seed's storage groups and stores), and ``can_extend``
compares a backup's running configuration with them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from vigil.kits.base import KitProperties
from vigil.kits.volume.properties import canonical_path

__all__ = ["DEFAULT_MAX_WAIT", "HomeMode", "MailProperties", "OptionalService"]

#: the seed's MAXWAIT: seconds one service may take to start or to stop
DEFAULT_MAX_WAIT = 900.0
_PER_SERVER: dict[str, Any] = {"per_server": True}
_SECRET: dict[str, Any] = {"secret": True}
_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_LDAP_URL = re.compile(r"ldaps?://[^\s/]+(:\d+)?/?")
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,63}")


class HomeMode(StrEnum):
    """How users' home server is named in the directory.

    ``server`` (the seed's way): each server has its own value (``home_server``) and users
    are moved to the value of the server the hierarchy comes in service on. ``service``:
    users' home is the hierarchy's own name or address (``service_home``), which follows
    the hierarchy through its ip or dns resources; nobody is moved.
    """

    SERVER = "server"
    SERVICE = "service"


class OptionalService(BaseModel):
    """An optional service (the seed's "Optional Services"): started after Dovecot and
    before Postfix, in the order given, stopped in reverse.

    A known add-on (``opendkim``, ``rspamd``, ``clamav-daemon``) needs only its name; any
    other daemon gives its ``start``, ``stop`` and ``check`` shell commands (``check``
    exits 0 while it runs). The name has no spaces (as in the seed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Service name, without spaces (e.g. opendkim).")
    start: str | None = Field(None, description="Shell command that starts it (daemonizes).")
    stop: str | None = Field(None, description="Shell command that stops it.")
    check: str | None = Field(None, description="Shell command: exit 0 while it runs.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _SERVICE_NAME.fullmatch(value):
            raise ValueError(
                f"service name {value!r}: use the service's short name, without spaces "
                "(letters, digits, '_', '.', '@', '-'), not its display name"
            )
        return value


class MailProperties(KitProperties):
    """A Postfix + Dovecot mail server whose users live in an LDAP directory."""

    postfix_config: str = Field(
        "/etc/postfix",
        description="Postfix's configuration directory (postfix -c DIR; main.cf is in it).",
    )
    dovecot_config: str = Field(
        "/etc/dovecot/dovecot.conf",
        description="Dovecot's configuration file (dovecot -c FILE).",
    )
    services: list[OptionalService] = Field(
        default_factory=list,
        description=(
            "Optional services protected with Postfix and Dovecot, in start order (per "
            "server: the seed's Services Config may update one server or all)."
        ),
        json_schema_extra=_PER_SERVER,
    )
    max_wait: float = Field(
        DEFAULT_MAX_WAIT,
        gt=0,
        le=86400,
        description=(
            "Seconds one service may take to start or to stop before it is a failure (the "
            "seed's MAXWAIT, 900 by default; lower it while troubleshooting)."
        ),
    )
    directory_urls: list[str] = Field(
        description="LDAP directory server URL(s), tried in order (ldap://HOST[:PORT]).",
    )
    bind_dn: str = Field(description="The directory account vigil binds as to move users.")
    bind_password: SecretStr = Field(
        description="Its password. Never shown or logged; encrypted at rest.",
        json_schema_extra=_SECRET,
    )
    users_base_dn: str = Field(description="Where the mail users are (a search base).")
    user_filter: str = Field(
        "(objectClass=inetLocalMailRecipient)",
        description="LDAP filter selecting the mail users under users_base_dn.",
    )
    home_attribute: str = Field(
        "mailHost",
        description="The attribute naming a user's home server (front-ends route by it).",
    )
    home_mode: HomeMode = Field(
        HomeMode.SERVER,
        description=(
            "server: each server has its own home_server value and users are moved to it "
            "(the seed's way; needed for N+1 and WAN); service: users' home is "
            "service_home, which follows the hierarchy (nobody is moved)."
        ),
    )
    home_server: str | None = Field(
        None,
        description=(
            "This server's value of home_attribute (home_mode server): what front-ends "
            "use to reach the mail service on this server. Per server; proposed on "
            "extend (the server's first address)."
        ),
        json_schema_extra=_PER_SERVER,
    )
    service_home: str | None = Field(
        None,
        description="home_mode service: the hierarchy's own home value (its name or address).",
    )
    frontends: list[str] = Field(
        default_factory=list,
        description=(
            "Front-end (smart host) SMTP servers, HOST[:PORT], asked with ETRN to deliver "
            "at once the mail they hold for the moved users."
        ),
    )
    etrn_domains: list[str] = Field(
        default_factory=list,
        description="Domains named in ETRN (default: the primary's virtual_mailbox_domains).",
    )
    probe_user: str | None = Field(
        None,
        description=(
            "Login of a mailbox the deep check sends a message to and reads back over IMAP "
            "(end to end). Without it the deep check greets each listener."
        ),
    )
    probe_address: str | None = Field(None, description="The probe mailbox's mail address.")
    probe_password: SecretStr | None = Field(
        None, description="The probe mailbox's password (secret).", json_schema_extra=_SECRET
    )
    ip_resource: str | None = Field(
        None,
        description=(
            "At create: the tag of an ip resource clients use; it becomes a child, and the "
            "checks connect to its address."
        ),
    )
    dns_resources: list[str] = Field(
        default_factory=list, description="At create: dns resources that become children."
    )
    expected_settings: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Recorded by create: the primary's settings every backup must match (not set "
            "by hand; extend compares against it)."
        ),
    )

    @field_validator("postfix_config", "dovecot_config")
    @classmethod
    def _paths(cls, value: str) -> str:
        return canonical_path(value, "a configuration path")

    @field_validator("directory_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one directory server (ldap://HOST[:PORT])")
        for url in value:
            if not _LDAP_URL.fullmatch(url):
                raise ValueError(f"{url!r} is not an LDAP URL like ldap://10.0.0.5:389")
        return value

    @field_validator("home_attribute")
    @classmethod
    def _attribute(cls, value: str) -> str:
        if not _ATTRIBUTE.fullmatch(value):
            raise ValueError(f"{value!r} is not an LDAP attribute name like mailHost")
        return value

    @field_validator("user_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        value = value.strip()
        if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(
            ")"
        ):
            raise ValueError(f"{value!r} is not an LDAP filter like (objectClass=person)")
        return value

    @field_validator("services")
    @classmethod
    def _unique_services(cls, value: list[OptionalService]) -> list[OptionalService]:
        names = [s.name for s in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"service {twice[0]} is listed twice")
        if {"postfix", "dovecot"} & set(names):
            raise ValueError("Postfix and Dovecot are core services: do not list them")
        return value

    @model_validator(mode="after")
    def _probe(self) -> MailProperties:
        given = [self.probe_user, self.probe_address, self.probe_password]
        if any(v is not None for v in given) and not all(v is not None for v in given):
            raise ValueError(
                "the end-to-end deep check needs probe_user, probe_address and probe_password "
                "together (or none of them)"
            )
        if self.home_mode is HomeMode.SERVICE and not self.service_home:
            raise ValueError("home_mode service needs service_home (the hierarchy's home value)")
        return self

    @property
    def has_probe(self) -> bool:
        return self.probe_password is not None

    def setting(self, name: str, default: str = "") -> str:
        """A recorded setting of the primary (``expected_settings``)."""
        return self.expected_settings.get(name, default)
