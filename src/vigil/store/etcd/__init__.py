"""The etcd backend of the store contract: etcd v3 through its JSON gateway, with httpx.

Use it for a cluster of machines (the embedded backend is for one host). etcd 3.4 or
later is needed (Debian 12 ships 3.4.23); vigil speaks to the grpc-gateway that every etcd
serves on its client URLs (``POST /v3/kv/range``, ``/v3/kv/txn``, ``/v3/lease/...``,
``/v3/watch``), as Patroni does, so no gRPC library is needed.

Settings (``EtcdStore.open``, or the ``etcd://`` store URL, see ``vigil.store``):

* ``endpoints`` — client URLs of the members (``http://10.0.0.1:2379``, or ``https://``;
  a bare ``host:port`` is https when a CA or client certificate is given, else http).
  Calls start at the endpoint that answered last and fail over to the next one in order.
* ``request_timeout`` — bound of every call, failover included (default 2 s). Keep it
  above etcd's election timeout, so a call made during a leader election can still succeed.
* ``username`` / ``password`` — etcd's authentication (``/v3/auth/authenticate``); the
  token is renewed by itself when etcd says it expired.
* ``ca_file``, ``cert_file``, ``key_file`` — TLS: the CA that signed the members'
  certificates, and this client's certificate and key when etcd checks them.

etcd tuning for vigil's short leases. etcd refuses leases shorter than 1.5 x its election
timeout, rounded up to whole seconds (2 s with the defaults ``--heartbeat-interval=100``
``--election-timeout=1000``), silently raising shorter asks; ``open`` asks etcd for a
1-second lease once to learn the real floor (``capabilities.min_lease_ttl``). For leases
of 1-3 s, run etcd with ``--heartbeat-interval=50 --election-timeout=500`` (a low-latency
network: the heartbeat should be about the round-trip time between members, the election
timeout at least ten heartbeats). A leader change pushes every lease's deadline out by one
election timeout (etcd's lease checkpoints are off by default), so the store may delete an
owner's keys later than its TTL, never earlier. Watch history lasts until etcd compacts it
(``--auto-compaction-retention``); a watch older than that raises ``Compacted``. etcd
drops a deletion made at exactly the compaction revision together with the history below
it, so history is whole from the compaction revision + 1 (puts at that revision remain).

Errors: ``StoreUnavailable`` names the endpoints tried and what each did; a write that
reached an endpoint but got no answer is not sent elsewhere (it may have been applied).
Watches ask etcd to require a leader (gRPC metadata ``hasleader``, passed by the gateway),
so a watch on a member cut off from the majority ends with ``StoreUnavailable`` within a
few election timeouts instead of going silent; a dead peer is noticed by TCP keepalive.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections.abc import AsyncGenerator, Awaitable, Sequence
from contextlib import suppress
from typing import TypeVar

from vigil.errors import ConfigError, LeaseLost, StoreError
from vigil.store.base import (
    Compare,
    KeyValue,
    Lease,
    Operation,
    Put,
    Snapshot,
    Store,
    StoreCapabilities,
    StoreStats,
    TxnResult,
    WatchBatch,
)
from vigil.store.etcd import codec
from vigil.store.etcd.client import PERMISSION_DENIED, Credentials, GatewayClient, GatewayError
from vigil.store.etcd.watch import WatchItem, pump

__all__ = ["EtcdStore"]

T = TypeVar("T")


class EtcdStore(Store):
    """A client of one etcd cluster. Create it with ``await EtcdStore.open(endpoints)``."""

    capabilities = StoreCapabilities(min_lease_ttl=2, networked=True, single_host=False)

    def __init__(self, client: GatewayClient) -> None:
        self.stats = StoreStats()
        self._client = client
        self._closed = False
        self._pumps: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        endpoints: list[str],
        *,
        request_timeout: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> EtcdStore:
        """Connect to the cluster at ``endpoints`` and learn its shortest lease.

        Raises ``ConfigError`` for unusable settings (no endpoint, unreadable certificate
        files, a password without user name), ``StoreUnavailable`` when no endpoint
        answers within ``request_timeout``, ``StoreError`` when etcd refuses the client
        (for instance a wrong password).
        """
        if not endpoints:
            raise ConfigError("etcd store: give at least one endpoint (host:port or URL)")
        if request_timeout <= 0:
            raise ConfigError(
                f"etcd store: request_timeout must be positive, not {request_timeout}"
            )
        if (username is None) != (password is None):
            raise ConfigError("etcd store: give both a user name and a password, or neither")
        tls = ca_file is not None or cert_file is not None
        client = GatewayClient(
            [_endpoint_url(endpoint, tls) for endpoint in endpoints],
            request_timeout=request_timeout,
            credentials=(
                Credentials(username, password)
                if username is not None and password is not None
                else None
            ),
            ssl_context=_ssl_context(ca_file, cert_file, key_file),
        )
        store = cls(client)
        try:
            probe = await store.grant_lease(1)
            await store.revoke_lease(probe.id)
            await store._check_access()
        except BaseException:
            await store.close()
            raise
        store.capabilities = StoreCapabilities(
            min_lease_ttl=probe.ttl, networked=True, single_host=False
        )
        return store

    @property
    def endpoints(self) -> list[str]:
        return list(self._client.endpoints)

    # --- the contract ---------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """The current value of ``key`` or None; a linearizable read (through the leader)."""
        answer = await self._call("/v3/kv/range", codec.range_request(key, prefix=False))
        kvs = answer.get("kvs", ())
        return codec.key_value(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> Snapshot:
        """Keys under ``prefix``, sorted, at the revision etcd read them (its header's)."""
        answer = await self._call("/v3/kv/range", codec.range_request(prefix, prefix=True))
        items = tuple(codec.key_value(raw) for raw in answer.get("kvs", ()))
        return Snapshot(codec.header_revision(answer), items)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        """One etcd transaction; see ``Store.txn``. Never sent twice (not idempotent)."""
        body = codec.txn_request(compares, success, failure)
        try:
            answer = await self._call("/v3/kv/txn", body, idempotent=False)
        except LeaseLost as exc:
            leases = sorted({op.lease for op in (*success, *failure) if isinstance(op, Put)} - {0})
            raise LeaseLost(
                f"lease {', '.join(map(str, leases))} has expired or was revoked ({exc});"
                " nothing was written: grant a new lease and write the keys again"
            ) from exc
        return TxnResult(bool(answer.get("succeeded", False)), codec.header_revision(answer))

    async def grant_lease(self, ttl: float) -> Lease:
        """A lease of at least ``ttl`` seconds (rounded up to whole seconds, and raised by
        etcd to its minimum); the TTL etcd granted is returned."""
        if not math.isfinite(ttl):
            raise ValueError(f"lease TTL must be finite, not {ttl!r}")
        ask = max(math.ceil(ttl), 1)
        # Idempotent enough: a lease granted by a lost request expires by itself.
        answer = await self._call("/v3/lease/grant", {"TTL": str(ask)})
        if answer.get("error"):
            raise StoreError(f"etcd refused a lease of {ask} s: {answer['error']}")
        return Lease(int(answer["ID"]), int(answer.get("TTL", 0)))

    async def keep_alive(self, lease_id: int) -> int:
        """Renew ``lease_id`` (one ``/v3/lease/keepalive`` exchange); returns its TTL.

        Raises ``LeaseLost`` when etcd answers a TTL of 0 (it no longer knows the lease)."""
        answer = await self._call("/v3/lease/keepalive", {"ID": str(lease_id)})
        ttl = int(answer.get("TTL", 0))
        if ttl <= 0:
            raise LeaseLost(
                f"lease {lease_id} has expired or was revoked (etcd {', '.join(self.endpoints)});"
                " its keys are gone: grant a new lease and re-create them"
            )
        return ttl

    async def revoke_lease(self, lease_id: int) -> None:
        """Revoke ``lease_id``, deleting its keys. Idempotent (an unknown lease is fine)."""
        with suppress(LeaseLost):
            await self._call("/v3/lease/revoke", {"ID": str(lease_id)})

    async def watch_batches(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[WatchBatch, None]:
        """Changes under ``prefix`` from ``start_revision`` on, in batches of whole
        revisions; see ``Store.watch_batches``.

        One stream per watch, read by its own task; closing the generator (or cancelling
        the consumer) stops it. Each batch is one message of the stream: etcd never splits
        a revision's events between messages (unless a watch asks for fragments, which
        this one does not). Raises ``Compacted``, ``StoreUnavailable`` when the stream
        breaks, and ``StoreError`` when this client is closed.
        """
        self._check_open()
        queue: asyncio.Queue[WatchItem] = asyncio.Queue()
        task = asyncio.create_task(pump(self._client, prefix, start_revision, queue))
        self._pumps.add(task)
        task.add_done_callback(lambda done: self._pump_ended(done, queue))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield tuple(item)
        finally:
            task.cancel()

    async def close(self) -> None:
        """Stop every watch of this client and close its connections. Idempotent; does not
        revoke leases."""
        if self._closed:
            return
        self._closed = True
        pumps = list(self._pumps)
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await self._client.aclose()

    # --- plumbing -------------------------------------------------------------------

    async def _check_access(self) -> None:
        """Fail at open, not at the first read, when etcd wants credentials (lease calls
        need none). A user without permission on this probe's key is still let in."""
        try:
            await self._call("/v3/kv/range", {"key": codec.encode(b"\0"), "count_only": True})
        except GatewayError as exc:
            if exc.code != PERMISSION_DENIED:
                raise

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"etcd store client ({', '.join(self.endpoints)}) is closed")

    async def _call(self, path: str, body: codec.JSON, *, idempotent: bool = True) -> codec.JSON:
        return await self._counted(self._client.call(path, body, idempotent=idempotent))

    async def _counted(self, call: Awaitable[T]) -> T:
        if self._closed:
            if asyncio.iscoroutine(call):
                call.close()
            self._check_open()
        self.stats.requests += 1
        try:
            return await call
        except BaseException:
            self.stats.errors += 1
            if self._closed:  # closed while the call ran: say so, not "unavailable"
                raise StoreError(
                    f"etcd store client ({', '.join(self.endpoints)}) is closed"
                ) from None
            raise

    def _pump_ended(self, task: asyncio.Task[None], queue: asyncio.Queue[WatchItem]) -> None:
        self._pumps.discard(task)
        if task.cancelled():
            reason: BaseException = StoreError(
                f"etcd store client ({', '.join(self.endpoints)}) closed while watching"
            )
        else:
            reason = task.exception() or StoreError("etcd watch ended without a reason")
        queue.put_nowait(reason)


def _endpoint_url(endpoint: str, tls: bool) -> str:
    """``http(s)://host:port`` for an endpoint given as URL or bare ``host:port``."""
    endpoint = endpoint.strip().rstrip("/")
    if "://" not in endpoint:
        endpoint = ("https://" if tls else "http://") + endpoint
    scheme, _, rest = endpoint.partition("://")
    if scheme not in ("http", "https") or not rest or "/" in rest:
        raise ConfigError(
            f"etcd endpoint {endpoint!r}: expected host:port, http://host:port or https://host:port"
        )
    return endpoint


def _ssl_context(
    ca_file: str | None, cert_file: str | None, key_file: str | None
) -> ssl.SSLContext | None:
    if ca_file is None and cert_file is None:
        if key_file is not None:
            raise ConfigError("etcd store: key_file needs cert_file")
        return None
    try:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"etcd store: cannot load the TLS files (ca {ca_file}, cert {cert_file},"
            f" key {key_file}): {exc}"
        ) from exc
    return context
