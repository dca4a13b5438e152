"""Leases judged by the observer's clock: each agent decides for itself when another
server's heartbeat has stopped, and ends that server's lease with a compare-and-delete.

Why not just the store's lease: etcd grants leases in whole seconds (1 s at the least, and
only with tuned election timeouts), and extends them all at a leader change, so a server's
death would be seen 2 s or more after its last renewal. As in Kubernetes leader election,
the holder instead advances a key with every renewal (``alive/<server>``, bound to its store
lease, carrying the TTL it counts on), and every other agent times the key's revision with
its own monotonic clock: a revision first seen at ``t`` cannot have been sent after ``t``,
so when it has not advanced by ``t + ttl``, the holder has stopped trusting its lease (at
``sent + ttl - safety_margin``) and its fence guard has fenced (half a margin later).

The observer then deletes the dead server's ``alive`` key and its owner keys in one
transaction, guarded by the revision it timed: if the server renewed meanwhile, nothing is
deleted. That deletion is what every agent acts on (a server without ``alive`` is down), and
the holder's next renewal finds its key gone and fences itself. The store's lease stays as
the backstop: when every observer is gone too, it still expires.

Failsafe (``vigil.agent.failsafe``) changes two things, both so that a server holding its
lease on comm-path confirmations during a store outage is never judged dead for it:

* a server's heartbeat names the servers it would ask (``members``) and how long a failsafe
  may last (``failsafe``). An observer among the members times it against ``ttl``; any
  other observer (one that joined since, which the server would not ask) against
  ``ttl + failsafe``;
* an agent that confirms another's failsafe ("I cannot reach the store either") restarts
  that server's clock at that moment (``heard``): the confirmation counts as a heartbeat.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from vigil.agent.storeio import event_operation
from vigil.errors import StoreError
from vigil.model.cluster import Cluster
from vigil.model.records import key
from vigil.store.base import Compare, Delete, Operation, Store

log = logging.getLogger("vigil.agent")


@dataclass
class _Seen:
    revision: int
    since: float  # observer's monotonic clock: when this revision was first seen (or heard)
    limit: float  # silence after which this observer may end the lease (0: never)


class HeartbeatTracker:
    """Times every other server's heartbeat revision on this agent's clock."""

    def __init__(self, me: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def limit(self, ttl: float, failsafe: float = 0.0, members: Iterable[str] = ()) -> float:
        """How long a heartbeat published with ``ttl``, ``failsafe`` and ``members`` must
        stand still before this agent may end that lease: ``ttl`` when the server would ask
        this agent before holding on in failsafe (or has no failsafe), else ``ttl +
        failsafe``; 0 (never) for a server that publishes no ttl."""
        if ttl <= 0:
            return 0.0
        if failsafe <= 0 or self.me in members:
            return ttl
        return ttl + failsafe

    def saw(
        self,
        server: str,
        revision: int,
        ttl: float,
        failsafe: float = 0.0,
        members: Iterable[str] = (),
    ) -> bool:
        """A heartbeat revision of ``server`` (published with ``ttl``, ``failsafe`` and
        ``members``) was read or watched now. True when the server was not known alive
        before (a join, which can change decisions)."""
        if server == self.me or revision <= 0:
            return False
        seen = self._seen.get(server)
        if seen is None or revision > seen.revision:
            limit = self.limit(ttl, failsafe, tuple(members))
            self._seen[server] = _Seen(revision, self.clock(), limit)
        return seen is None

    def heard(self, server: str) -> None:
        """This agent has just confirmed ``server``'s failsafe (it cannot reach the store
        either): restart its clock now, as a heartbeat would. The server's failsafe round
        began before this moment, and it holds on at most ``ttl - safety_margin`` from
        that beginning, so it stops before this clock can run out."""
        seen = self._seen.get(server)
        if seen is not None:
            seen.since = max(seen.since, self.clock())

    def gone(self, server: str) -> None:
        """The server's heartbeat key was deleted (it stopped, or its lease ended)."""
        self._seen.pop(server, None)

    def sync(self, cluster: Cluster) -> None:
        """Take the heartbeats of a full read (servers that left are forgotten)."""
        for name in set(self._seen) - set(cluster.servers):
            self.gone(name)
        for name, server in cluster.servers.items():
            if server.alive:
                self.saw(name, server.heartbeat, server.ttl, server.failsafe, server.members)
            else:
                self.gone(name)

    def silent(self) -> dict[str, tuple[int, float]]:
        """Servers whose heartbeat has not advanced for their limit (``limit``): revision
        timed, and for how long it has been silent."""
        now = self.clock()
        return {
            server: (seen.revision, now - seen.since)
            for server, seen in self._seen.items()
            if seen.limit > 0 and now - seen.since >= seen.limit
        }

    def next_due(self) -> float | None:
        """Seconds until the next server would become silent (None when none is timed)."""
        now = self.clock()
        dues = [seen.since + seen.limit - now for seen in self._seen.values() if seen.limit > 0]
        return max(0.0, min(dues)) if dues else None


async def end_lease(
    store: Store, cluster: Cluster, server: str, revision: int, silent_for: float, me: str
) -> bool:
    """End the lease of ``server``, silent since heartbeat ``revision``: delete its heartbeat
    and its owner keys, and record why, only if none of them changed since it was read.
    True when this agent ended it; False when the server renewed meanwhile, another agent
    got there first, or ownership changed (the caller reads again and retries)."""
    owned = sorted((tag, o.epoch) for tag, o in cluster.owners.items() if o.server == server)
    ttl = cluster.servers[server].ttl if server in cluster.servers else 0.0
    compares = [Compare(key("alive", server), revision)]
    # an owner key is written once, at its creation: its epoch is also its mod revision
    compares += [Compare(key("owner", tag), epoch) for tag, epoch in owned]
    message = (
        f"{server} is down: its heartbeat did not advance for {silent_for:.2f}s by {me}'s "
        f"clock (ttl {ttl:g}s); its lease is ended"
        + (f" and it no longer owns {', '.join(t for t, _ in owned)}" if owned else "")
    )
    ops: list[Operation] = [Delete(key("alive", server))]
    ops += [Delete(key("owner", tag)) for tag, _ in owned]
    ops.append(event_operation(me, "server-down", message))
    try:
        ended = (await store.txn(compares, ops)).succeeded
    except StoreError as exc:
        log.warning("could not end the lease of silent %s: %s", server, exc)
        return False
    if ended:
        log.warning("%s", message)
    return ended
