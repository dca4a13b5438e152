"""The coordination store: the contract (``vigil.store.base``) and its backends.

``open_store(url)`` picks the backend from the URL scheme:

* ``sqlite:///ABSOLUTE/PATH`` — the embedded backend (one host, several processes);
* ``etcd://HOST:PORT[,HOST:PORT...][?OPTIONS]`` — etcd v3 (a cluster of machines), over
  plain HTTP; ``etcds://`` for the same over TLS (https). Members are tried in the order
  given. Options, each at most once (``vigil.store.etcd`` says more):

  - ``username=NAME`` and ``password_file=PATH`` — etcd authentication; the file holds the
    password (its first line), so that no password appears in a URL, a log or ``ps``;
  - ``ca_file=PATH`` — the CA of the members' certificates (default: the system's);
  - ``cert_file=PATH`` and ``key_file=PATH`` — this client's certificate and key, for an
    etcd started with ``--client-cert-auth``.

  Example: ``etcds://10.0.0.1:2379,10.0.0.2:2379?username=vigil&password_file=/etc/vigil/etcd.pw``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from vigil.errors import ConfigError
from vigil.store.base import (
    Compare,
    Delete,
    EventType,
    KeyValue,
    Lease,
    Put,
    Snapshot,
    Store,
    StoreCapabilities,
    TxnResult,
    WatchBatch,
    WatchEvent,
)


async def open_store(url: str, *, request_timeout: float = 2.0) -> Store:
    """Open a store client for ``url``. Raises ``ConfigError`` for an unknown scheme."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(
            f"store URL {url!r} has no scheme: use sqlite:///PATH or etcd://HOST:PORT"
        )
    path = embedded_path(url)
    if path is not None:
        from vigil.store.embedded import EmbeddedStore

        return await EmbeddedStore.open(path, request_timeout=request_timeout)
    if scheme in ("etcd", "etcds"):
        return await _open_etcd(url, request_timeout=request_timeout)
    raise ConfigError(
        f"store URL {url!r}: unknown scheme {scheme!r} (supported: sqlite, etcd, etcds)"
    )


def embedded_path(url: str) -> str | None:
    """The database file of a ``sqlite:///PATH`` URL; ``None`` for any other scheme.
    Raises ``ConfigError`` for a relative path."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "sqlite":
        return None
    if not rest.startswith("/"):
        raise ConfigError(f"store URL {url!r}: the SQLite path must be absolute (sqlite:///PATH)")
    # sqlite:///var/x and sqlite:////var/x both name /var/x
    return "/" + rest.lstrip("/")


_ETCD_OPTIONS = ("username", "password_file", "ca_file", "cert_file", "key_file")


async def _open_etcd(url: str, *, request_timeout: float) -> Store:
    """``etcd://`` and ``etcds://`` URLs: see the module docstring."""
    from vigil.store.etcd import EtcdStore

    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.fragment or "@" in parts.netloc:
        raise ConfigError(
            f"store URL {url!r}: expected {parts.scheme}://HOST:PORT[,HOST:PORT...][?OPTIONS]"
            " (credentials go in the username and password_file options)"
        )
    hosts = [host.strip() for host in parts.netloc.split(",") if host.strip()]
    if not hosts:
        raise ConfigError(f"store URL {url!r}: name at least one etcd member (HOST:PORT)")
    options = _etcd_options(url, parts.query)
    password = _read_password(url, options["password_file"]) if "password_file" in options else None
    if ("username" in options) != (password is not None):
        raise ConfigError(f"store URL {url!r}: give both username and password_file, or neither")
    http = "https" if parts.scheme == "etcds" else "http"
    return await EtcdStore.open(
        [f"{http}://{_with_port(url, host)}" for host in hosts],
        request_timeout=request_timeout,
        username=options.get("username"),
        password=password,
        ca_file=options.get("ca_file"),
        cert_file=options.get("cert_file"),
        key_file=options.get("key_file"),
    )


def _etcd_options(url: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise ConfigError(f"store URL {url!r}: bad options {query!r}: {exc}") from exc
    for name, values in parsed.items():
        if name not in _ETCD_OPTIONS:
            known = ", ".join(_ETCD_OPTIONS)
            raise ConfigError(f"store URL {url!r}: unknown option {name!r} (known: {known})")
        if len(values) != 1 or not values[0]:
            raise ConfigError(f"store URL {url!r}: give option {name!r} exactly once, not empty")
        options[name] = values[0]
    return options


def _read_password(url: str, path: str) -> str:
    """The first line of a password file (read once, when the store is opened)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"store URL {url!r}: cannot read the password file: {exc}") from exc
    return lines[0] if lines else ""


def _with_port(url: str, host: str) -> str:
    """``host:port``, adding etcd's client port 2379 when the URL gives none."""
    try:
        port = urlsplit(f"//{host}").port
    except ValueError as exc:
        raise ConfigError(f"store URL {url!r}: bad member address {host!r}: {exc}") from exc
    return host if port is not None else f"{host}:2379"


__all__ = [
    "Compare",
    "Delete",
    "EventType",
    "KeyValue",
    "Lease",
    "Put",
    "Snapshot",
    "Store",
    "StoreCapabilities",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "open_store",
]
