"""Failsafe: riding through a store outage that every agent sees (as Patroni's
``failsafe_mode``).

When the store cannot be reached (an etcd leader election, a member or whole-store
restart), no lease can be renewed, and without more every owner would take its hierarchies
out of service at ``ttl - safety_margin``: an outage caused by the store alone. With
failsafe, an agent whose renewals fail asks every other agent, over comm paths, whether it
can reach the store. If **every** one answers that it cannot either, the agent holds its
lease on as if it had renewed at the moment it asked; any doubt (one agent that reaches the
store, one that does not answer, a server without a path, an answer that fails
authentication) fences as without failsafe. So a real partition still fails over: a server
cut off from the store *and* from the others hears from nobody and fences at its deadline,
and a server cut off from the store alone hears "I can reach it" and fences too.

The exchange (one *round*): the asker sends ``ask`` datagrams (UDP, to the agent's API port
on each comm path's remote address, from the path's local address; to the address in a
server's API URL when it has no comm path), three times within ``request_timeout``, each
with the round's nonce; the other agent answers ``unreachable`` when its own renewal is
failing or overdue, else ``reachable``. Messages carry an HMAC-SHA256 keyed with the
cluster's shared secret (the secrets key file, else the API tokens: the same on every
server), so nobody else can confirm a failsafe.

Who is asked: every renewal's heartbeat (``alive/<server>``) publishes ``members`` (the
servers alive in this agent's view) and ``failsafe`` (``failsafe_limit``). A round asks every
server published in any heartbeat written or attempted since the last successful renewal.

What holds the lease on. The lease keeper (``vigil.agent.lease``) trusts its lease until
``base + ttl - safety_margin``, where ``base`` is the later of the send time of its last
successful renewal (``last_sent``) and the start of its last confirmed round
(``held_from``); a round is started only before that deadline and only while ``now <=
last_sent + failsafe_limit``, and counts only if its answers arrive before the deadline.
The fence guard's deadline follows (half a margin later), and the guard also refuses a
deadline past ``last_sent + ttl - safety_margin / 2 + failsafe_limit``: the agent can extend
the guard's deadline only by renewing or by a confirmed round, and a frozen or dead agent
does neither, so the guard kills as before.

Why nobody else acts on the owner's lease meanwhile, nor afterwards on a lease that only
*looked* expired. Another server may restore a hierarchy only after claiming its owner
keys, which are bound to the owner A's lease: they vanish only when A revokes it (after
taking everything out of service), when an observer ends it (``liveness.end_lease``, a
compare-and-delete on the heartbeat revision ``r`` it timed), or when the store expires it.
Each of the last two happens no earlier than ``base + ttl``, i.e. after A's trust ended and
its guard fenced (times on different monotonic clocks; the safety margin covers their
rates, as for renewals):

1. An observer O listed in ``members`` of ``r`` times ``r`` against ``ttl`` from the later of
   when it first saw ``r`` and when it last confirmed A's failsafe (``HeartbeatTracker.heard``:
   a confirmation counts as a heartbeat). ``r`` was written after A sent it, so at or after
   ``last_sent``; and every confirmed round asked O (``r``'s members are among those asked)
   and O confirmed after the round began, so O's clock restarted at or after ``held_from``.
   O ends the lease at ``>= base + ttl``.
2. An observer not listed in ``r`` (it joined since, or A did not know it yet) times ``r``
   against ``ttl + failsafe_limit`` from when it first saw it (``>= last_sent``): it ends the
   lease at ``>= last_sent + failsafe_limit + ttl >= base + ttl``, as rounds start no later
   than ``last_sent + failsafe_limit``.
3. The store's own lease (the backstop) is asked for ``ttl + safety_margin +
   failsafe_limit`` (``LeaseKeeper._ask``, rounded up; the start-up check refuses a shorter
   grant), counted from the last keep-alive it received (sent at or after ``last_sent``);
   an etcd leader change only pushes it out. It expires after ``base + ttl`` too.

When the store comes back, A's next renewal (within ``renew_interval``) advances its
heartbeat, so an observer that ends leases on a stale revision fails its compare; the
observers' clocks for A restarted at their last confirmation, so none of them can judge A
silent for the outage. If instead A's failsafe ended (a doubt, or ``failsafe_limit``
reached), A took its hierarchies out of service at its deadline, before any of 1-3 lets
another server take them over. The other servers cannot take anything over during the
outage anyway: every claim is a compare-and-set in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Collection
from typing import Any, cast
from urllib.parse import urlsplit

from vigil.agent.config import AgentConfig, load_tokens
from vigil.errors import ConfigError
from vigil.model.cluster import Cluster

__all__ = ["Failsafe", "failsafe_key"]

log = logging.getLogger("vigil.agent.failsafe")

#: the version of the datagrams' format
VERSION = 1
#: asks sent per round (spread over its timeout), in case a datagram is lost
SENDS = 3
#: a confirmation given to one server is logged at most this often
LOG_EVERY = 5.0
#: authentication failures are logged at most this often
WARN_EVERY = 10.0

#: (local address or None, remote address, port): one way to reach a server
Route = tuple[str | None, str, int]


def failsafe_key(config: AgentConfig) -> bytes | None:
    """The key of the failsafe's messages, derived from the cluster's shared secret: the
    secrets key file when there is one, else the API tokens file (the same on every
    server). None when neither holds a secret."""
    if config.secrets_key_file is not None:
        try:
            secret = config.secrets_key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the secrets key file {config.secrets_key_file}: {exc}"
            ) from exc
    else:
        tokens = sorted(entry.token for entry in load_tokens(config.tokens_file).token)
        secret = "\0".join(tokens).encode()
    if not secret:
        return None
    return hashlib.sha256(b"vigil failsafe v1\0" + secret).digest()


class Failsafe:
    """One agent's side of failsafe: asks the others in rounds (``confirm``), answers their
    asks (``listen``), and names who it would ask (``members``)."""

    def __init__(
        self,
        server: str,
        key: bytes,
        view: Callable[[], Cluster],
        default_port: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.view = view
        self.default_port = default_port
        self.clock = clock
        self._key = key
        self._listening: asyncio.DatagramTransport | None = None
        self._confirmed_at: dict[str, float] = {}
        self._warned_at = 0.0

    @classmethod
    def for_agent(cls, config: AgentConfig, view: Callable[[], Cluster]) -> Failsafe | None:
        """The failsafe of an agent with ``config`` (None when ``[lease] failsafe`` is off,
        or when there is no shared secret to authenticate its messages, which is logged)."""
        if not config.lease.failsafe:
            return None
        key = failsafe_key(config)
        if key is None:
            log.warning(
                "failsafe is off: no shared secret to authenticate it (no secrets key file, "
                "and the tokens file %s holds no token)",
                config.tokens_file,
            )
            return None
        return cls(config.server, key, view, config.api.port)

    # --- who to ask -------------------------------------------------------------------

    def members(self) -> tuple[str, ...]:
        """The servers this agent would ask in a round now: every other server alive in its
        view (published in each heartbeat)."""
        servers = self.view().servers
        return tuple(sorted(n for n, s in servers.items() if s.alive and n != self.server))

    def routes(self, cluster: Cluster, server: str) -> list[Route]:
        """Where to ask ``server``: each comm path to it (from the path's local address),
        else the address of its API URL."""
        port = self.default_port
        url = None
        if server in cluster.servers:
            url = urlsplit(cluster.servers[server].api_url)
            port = url.port or port
        routes: list[Route] = []
        for path in cluster.comm_paths:
            if {path.server_a, path.server_b} == {self.server, server}:
                local, _, remote = path.end(self.server)
                routes.append((local, remote, port))
        if not routes and url is not None and url.hostname:
            routes.append((None, url.hostname, port))
        return routes

    # --- messages ---------------------------------------------------------------------

    def seal(self, message: dict[str, Any]) -> bytes:
        body = json.dumps({"v": VERSION, **message}, sort_keys=True, separators=(",", ":"))
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        return body.encode() + b"\n" + mac.encode()

    def open(self, data: bytes, sender: object) -> dict[str, Any] | None:
        """The message in ``data`` if its HMAC is right and it is meant for this server."""
        body, _, mac = data.rpartition(b"\n")
        expected = hmac.new(self._key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, expected):
            now = self.clock()
            if now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "failsafe: a datagram from %s failed authentication (is the secrets key "
                    "file or the tokens file the same on every server?)",
                    sender,
                )
            return None
        try:
            message = json.loads(body)
        except ValueError:
            return None
        if not isinstance(message, dict) or message.get("v") != VERSION:
            return None
        if message.get("to") != self.server:
            return None
        return message

    # --- asking -----------------------------------------------------------------------

    async def confirm(self, servers: Collection[str], timeout: float) -> str | None:
        """One round: ask each of ``servers`` whether it can reach the store. None when
        every one answered, within ``timeout`` seconds, that it cannot; else the doubt, in
        words. No servers to ask: None (nobody else could act on this lease in time; see
        the module docstring, 2 and 3)."""
        asked = sorted(set(servers) - {self.server})
        if not asked:
            return None
        cluster = self.view()
        routes = {server: self.routes(cluster, server) for server in asked}
        unroutable = [server for server, found in routes.items() if not found]
        if unroutable:
            return f"no comm path or address to ask {', '.join(unroutable)}"
        loop = asyncio.get_running_loop()
        asking = _Round(self, secrets.token_hex(8), asked)
        transports: dict[str | None, asyncio.DatagramTransport] = {}
        try:
            for local in sorted({r[0] for found in routes.values() for r in found}, key=str):
                with contextlib.suppress(OSError):
                    transport, _ = await loop.create_datagram_endpoint(
                        lambda: asking, local_addr=(local or "0.0.0.0", 0), family=_family(local)
                    )
                    transports[local] = transport
            start = loop.time()
            for attempt in range(SENDS):
                for server in sorted(asking.pending):
                    for local, address, port in routes[server]:
                        sender = transports.get(local)
                        if sender is not None:
                            with contextlib.suppress(OSError):
                                sender.sendto(asking.ask(server), (address, port))
                until = start + timeout * (attempt + 1) / SENDS
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(until):
                        await asking.done.wait()
                if asking.done.is_set():
                    break
        finally:
            for transport in transports.values():
                transport.close()
        return asking.doubt(routes, timeout)

    # --- answering --------------------------------------------------------------------

    async def listen(
        self, host: str, port: int, unreachable: Callable[[], bool], heard: Callable[[str], None]
    ) -> None:
        """Answer other agents' asks on UDP ``host``:``port`` (the API's address and port):
        ``unreachable`` says whether this agent cannot reach the store now; ``heard`` is
        called with the asker's name before a confirmation is sent (it restarts the asker's
        heartbeat clock here). A port that cannot be bound is logged: the others then
        get no confirmation from this server, and fence."""
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Answers(self, unreachable, heard),
                local_addr=(host, port),
                family=_family(host),
            )
        except OSError as exc:
            log.error(
                "failsafe: cannot listen on UDP %s:%d (%s): other servers cannot hold on "
                "through a store outage",
                host,
                port,
                exc,
            )
            return
        self._listening = transport
        log.info("failsafe: answering on UDP %s:%d", host, port)

    def close(self) -> None:
        if self._listening is not None:
            self._listening.close()
            self._listening = None

    def confirmed(self, asker: str) -> None:
        """Log a confirmation given to ``asker`` (at most once per ``LOG_EVERY`` each)."""
        now = self.clock()
        if now - self._confirmed_at.get(asker, -LOG_EVERY) >= LOG_EVERY:
            self._confirmed_at[asker] = now
            log.info(
                "failsafe: told %s that %s cannot reach the store either; %s may hold its "
                "lease on meanwhile",
                asker,
                self.server,
                asker,
            )


class _Round(asyncio.DatagramProtocol):
    """The answers of one round."""

    def __init__(self, failsafe: Failsafe, nonce: str, servers: list[str]) -> None:
        self.failsafe = failsafe
        self.nonce = nonce
        self.pending = set(servers)
        self.reachable: list[str] = []
        self.done = asyncio.Event()

    def ask(self, server: str) -> bytes:
        return self.failsafe.seal(
            {"op": "ask", "from": self.failsafe.server, "to": server, "nonce": self.nonce}
        )

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        message = self.failsafe.open(data, addr)
        if message is None or message.get("op") != "answer" or message.get("nonce") != self.nonce:
            return
        server = message.get("from")
        if server not in self.pending:
            return
        self.pending.discard(server)
        if message.get("store") != "unreachable":
            self.reachable.append(str(server))
        if self.reachable or not self.pending:
            self.done.set()

    def doubt(self, routes: dict[str, list[Route]], timeout: float) -> str | None:
        if self.reachable:
            return f"{', '.join(sorted(self.reachable))} can reach the store"
        if self.pending:
            where = "; ".join(
                f"{server} at {', '.join(r[1] for r in routes[server])}"
                for server in sorted(self.pending)
            )
            return f"no answer within {timeout:.2g}s from {where}"
        return None


class _Answers(asyncio.DatagramProtocol):
    """Answers asks: ``unreachable`` (after restarting the asker's clock) or ``reachable``."""

    def __init__(
        self, failsafe: Failsafe, unreachable: Callable[[], bool], heard: Callable[[str], None]
    ) -> None:
        self.failsafe = failsafe
        self.unreachable = unreachable
        self.heard = heard
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a datagram transport (Python 3.11's selector one does not say so by its class)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        message = self.failsafe.open(data, addr)
        if message is None or message.get("op") != "ask" or self.transport is None:
            return
        asker = str(message.get("from", ""))
        if not asker or asker == self.failsafe.server:
            return
        cannot = self.unreachable()
        if cannot:
            self.heard(asker)  # before the answer leaves: the asker counts on it
            self.failsafe.confirmed(asker)
        answer = {
            "op": "answer",
            "from": self.failsafe.server,
            "to": asker,
            "nonce": message.get("nonce"),
            "store": "unreachable" if cannot else "reachable",
        }
        with contextlib.suppress(OSError):
            self.transport.sendto(self.failsafe.seal(answer), addr)


def _family(address: str | None) -> int:
    return socket.AF_INET6 if address and ":" in address else socket.AF_INET
