"""What an agent measures for Prometheus (``GET /metrics``, ``vigil.api.metrics``).

Names follow ha_cluster_exporter's conventions: the namespace ``ha_cluster``, then a
subsystem (``vigil``), snake_case, the label ``node`` for a server and ``resource`` for a
resource; a state is one line per possible state with the value 1 for the current one and
0 for the others. Counters and histograms count what this agent did since it started
(Prometheus handles restarts): sum them over the agents for the cluster.

Measured here, by the agent's own parts:

* ``InstrumentedStore`` wraps a store connection: every request's latency by operation
  (``ha_cluster_vigil_store_request_duration_seconds``), and on the lease connection every
  renewal (``keep_alive``: ``ha_cluster_vigil_lease_renewals_total`` by outcome and
  ``ha_cluster_vigil_lease_renewal_duration_seconds``); every event this agent writes to
  the cluster event log is counted by kind, which gives the failovers it started
  (``ha_cluster_vigil_failovers_total``, by hierarchy and the server it went to) and its
  local recoveries (``ha_cluster_vigil_local_recoveries_total``, by outcome);
* ``AgentMetrics.kit_action`` (called by the kit runner after every kit action): action
  and check durations, and failed checks (``ha_cluster_vigil_check_failures_total``).

The state gauges (resources, hierarchies, nodes, mirrors) are computed at each scrape from
the agent's view of the cluster (``vigil.api.metrics``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

from vigil.model.records import EVENTS_PREFIX, PREFIX
from vigil.store.base import (
    Compare,
    KeyValue,
    Lease,
    Operation,
    Put,
    Snapshot,
    Store,
    TxnResult,
    WatchBatch,
)

__all__ = ["AgentMetrics", "InstrumentedStore"]

NAMESPACE = "ha_cluster_vigil"
#: store requests and renewals: most take milliseconds, a slow one matters near the TTL
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
#: kit actions and checks: from a fraction of a second to minutes
ACTION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
RECOVERY_KINDS = {"recovered": "recovered", "recovery-failed": "failed"}
FAILOVER_KINDS = frozenset({"failover-started"})


class AgentMetrics:
    """The agent's instruments, in a registry of its own (several agents may share a
    process in tests)."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.store_latency = Histogram(
            f"{NAMESPACE}_store_request_duration_seconds",
            "Latency of the agent's requests to the coordination store",
            ["node", "connection", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            f"{NAMESPACE}_store_request_errors_total",
            "Store requests that failed (unavailable, lease lost, compacted)",
            ["node", "connection", "operation"],
            registry=r,
        )
        self.renewals = Counter(
            f"{NAMESPACE}_lease_renewals_total",
            "Renewals of the agent's lease in the store, by outcome",
            ["node", "outcome"],
            registry=r,
        )
        self.renewal_latency = Histogram(
            f"{NAMESPACE}_lease_renewal_duration_seconds",
            "Latency of the agent's lease renewals",
            ["node"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.failovers = Counter(
            f"{NAMESPACE}_failovers_total",
            "Failovers this agent started, by hierarchy and the server it went to",
            ["hierarchy", "node"],
            registry=r,
        )
        self.recoveries = Counter(
            f"{NAMESPACE}_local_recoveries_total",
            "Local recoveries on this server, by hierarchy and outcome",
            ["hierarchy", "node", "outcome"],
            registry=r,
        )
        self.events = Counter(
            f"{NAMESPACE}_events_total",
            "Events this agent wrote to the cluster event log, by kind",
            ["node", "kind"],
            registry=r,
        )
        self.check_duration = Histogram(
            f"{NAMESPACE}_check_duration_seconds",
            "Duration of resource checks on this server",
            ["node", "resource", "agent", "check"],
            buckets=ACTION_BUCKETS,
            registry=r,
        )
        self.check_failures = Counter(
            f"{NAMESPACE}_check_failures_total",
            "Resource checks on this server that did not find the resource running",
            ["node", "resource", "agent", "check", "status"],
            registry=r,
        )
        self.action_duration = Histogram(
            f"{NAMESPACE}_action_duration_seconds",
            "Duration of kit actions on this server (restore, remove, recover...)",
            ["node", "resource", "agent", "action", "outcome"],
            buckets=ACTION_BUCKETS,
            registry=r,
        )

    def instrument(self, store: Store, connection: str) -> InstrumentedStore:
        """``store`` measured as connection ``connection`` (general, lease)."""
        return InstrumentedStore(store, self, connection)

    def kit_action(self, action: str, kit: str, tag: str, seconds: float, outcome: str) -> None:
        """A kit action ended after ``seconds``: ``outcome`` is ok, timeout, error, or for
        a check its status (running, stopped, failed)."""
        if action in ("quick_check", "deep_check"):
            check = action.removesuffix("_check")
            self.check_duration.labels(self.server, tag, kit, check).observe(seconds)
            if outcome != "running":
                self.check_failures.labels(self.server, tag, kit, check, outcome).inc()
            return
        self.action_duration.labels(self.server, tag, kit, action, outcome).observe(seconds)

    def committed(self, ops: Sequence[Operation]) -> None:
        """A transaction of this agent's succeeded: count the events it wrote."""
        intents: dict[str, str] = {}
        events = []
        for op in ops:
            if not isinstance(op, Put):
                continue
            if op.key.startswith(EVENTS_PREFIX):
                events.append(op.value)
            elif op.key.startswith(PREFIX + "intent/"):
                intents[op.key[len(PREFIX + "intent/") :]] = op.value.decode(errors="replace")
        for raw in events:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            kind, hierarchy = str(event.get("kind", "")), str(event.get("hierarchy") or "")
            self.events.labels(self.server, kind).inc()
            if kind in FAILOVER_KINDS and hierarchy:
                self.failovers.labels(hierarchy, _target(intents.get(hierarchy))).inc()
            elif kind in RECOVERY_KINDS:
                self.recoveries.labels(hierarchy, self.server, RECOVERY_KINDS[kind]).inc()


def _target(intent: str | None) -> str:
    """The server an intent record names ("" when unknown)."""
    try:
        return str(json.loads(intent or "{}").get("server") or "")
    except ValueError:
        return ""


class InstrumentedStore(Store):
    """A store connection whose requests are timed and counted; everything else is the
    wrapped store's (its capabilities, errors and guarantees)."""

    def __init__(self, store: Store, metrics: AgentMetrics, connection: str) -> None:
        self.inner = store
        self.metrics = metrics
        self.connection = connection
        self.capabilities = store.capabilities

    def _observe(self, operation: str, started: float, failed: bool) -> None:
        labels = (self.metrics.server, self.connection, operation)
        self.metrics.store_latency.labels(*labels).observe(time.perf_counter() - started)
        if failed:
            self.metrics.store_errors.labels(*labels).inc()

    async def get(self, key: str) -> KeyValue | None:
        started, failed = time.perf_counter(), True
        try:
            result = await self.inner.get(key)
            failed = False
            return result
        finally:
            self._observe("get", started, failed)

    async def get_prefix(self, prefix: str) -> Snapshot:
        started, failed = time.perf_counter(), True
        try:
            result = await self.inner.get_prefix(prefix)
            failed = False
            return result
        finally:
            self._observe("get_prefix", started, failed)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation] = (),
    ) -> TxnResult:
        started, failed = time.perf_counter(), True
        try:
            result = await self.inner.txn(compares, success, failure)
            failed = False
        finally:
            self._observe("txn", started, failed)
        self.metrics.committed(success if result.succeeded else failure)
        return result

    async def grant_lease(self, ttl: float) -> Lease:
        started, failed = time.perf_counter(), True
        try:
            result = await self.inner.grant_lease(ttl)
            failed = False
            return result
        finally:
            self._observe("grant_lease", started, failed)

    async def keep_alive(self, lease_id: int) -> int:
        started, outcome = time.perf_counter(), "failed"
        try:
            result = await self.inner.keep_alive(lease_id)
            outcome = "ok"
            return result
        except BaseException as exc:
            outcome = "lost" if type(exc).__name__ == "LeaseLost" else "failed"
            raise
        finally:
            seconds = time.perf_counter() - started
            self._observe("keep_alive", started, outcome != "ok")
            self.metrics.renewals.labels(self.metrics.server, outcome).inc()
            if outcome == "ok":
                self.metrics.renewal_latency.labels(self.metrics.server).observe(seconds)

    async def revoke_lease(self, lease_id: int) -> None:
        started, failed = time.perf_counter(), True
        try:
            await self.inner.revoke_lease(lease_id)
            failed = False
        finally:
            self._observe("revoke_lease", started, failed)

    def watch_batches(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchBatch, None]:
        return self.inner.watch_batches(prefix, start_revision)

    async def close(self) -> None:
        await self.inner.close()
