"""The coordination store: the contract (``vigil.store.base``) and its backends.

``open_store(url)`` picks the backend from the URL scheme:

* ``sqlite:///ABSOLUTE/PATH`` — the embedded backend (one host, several processes);
* ``etcd://HOST:PORT[,HOST:PORT...]`` — etcd v3 (a later backend).
"""

from __future__ import annotations

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
    WatchEvent,
)


async def open_store(url: str, *, request_timeout: float = 2.0) -> Store:
    """Open a store client for ``url``. Raises ``ConfigError`` for an unknown scheme."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(
            f"store URL {url!r} has no scheme: use sqlite:///PATH or etcd://HOST:PORT"
        )
    if scheme == "sqlite":
        from vigil.store.embedded import EmbeddedStore

        if not rest.startswith("/"):
            raise ConfigError(
                f"store URL {url!r}: the SQLite path must be absolute (sqlite:///PATH)"
            )
        # sqlite:///var/x and sqlite:////var/x both name /var/x
        return await EmbeddedStore.open("/" + rest.lstrip("/"), request_timeout=request_timeout)
    raise ConfigError(f"store URL {url!r}: unknown scheme {scheme!r} (supported: sqlite)")


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
    "WatchEvent",
    "open_store",
]
