"""``GET /metrics``: the agent's metrics in Prometheus' text format (no token needed, as
Patroni's; nothing secret: names, states, counts and durations).

What the agent counted and timed itself (``vigil.agent.metrics``: store requests, lease
renewals, failovers, local recoveries, checks, kit actions), then, computed at each scrape
from the agent's view of the cluster, with ha_cluster_exporter's conventions (one line per
possible state, 1 for the current one, 0 for the others):

* ``ha_cluster_vigil_nodes{node,status}``: alive, dead, maintenance;
* ``ha_cluster_vigil_resources{node,resource,hierarchy,agent,status}``: each instance's
  state (ISP, ISU, OSU, OSF, UNKNOWN; ``agent`` is the kit);
* ``ha_cluster_vigil_hierarchies{hierarchy,node,status}``: each hierarchy's state on each
  server it is extended to (its top resource's);
* ``ha_cluster_vigil_hierarchy_status{hierarchy,status}``: Normal, Warning, Failed, Unknown;
* ``ha_cluster_vigil_comm_paths{path,node,peer_node,status}``: each comm path's state;
* ``ha_cluster_vigil_mirror_out_of_sync_bytes{resource,node,peer_node}`` and
  ``ha_cluster_vigil_mirror_connections{resource,node,peer_node,status}``: for each mirror
  whose source runs on this server, what each target lacks and its state;
* ``ha_cluster_scrape_duration_seconds`` and ``ha_cluster_scrape_success``
  (``collector="vigil"``), as ha_cluster_exporter reports its own scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vigil.agent.metrics import NAMESPACE, AgentMetrics
from vigil.agent.operations import Operations
from vigil.api.views import path_view
from vigil.engine.status import hierarchy_status
from vigil.model.cluster import Cluster
from vigil.model.states import HierarchyStatus, InstanceState, PathState

router = APIRouter(tags=["health"])
log = logging.getLogger("vigil.api")

NODE_STATES = ("alive", "dead", "maintenance")


def _one_of(family: GaugeMetricFamily, labels: list[str], states: Any, current: str) -> None:
    for state in states:
        family.add_metric([*labels, str(state)], 1.0 if str(state) == current else 0.0)


def _node_status(cluster: Cluster, name: str) -> str:
    server = cluster.servers[name]
    if server.maintenance:
        return "maintenance"
    return "alive" if server.alive else "dead"


def cluster_families(cluster: Cluster) -> list[GaugeMetricFamily]:
    """The state gauges of ``cluster`` (pure)."""
    nodes = GaugeMetricFamily(
        f"{NAMESPACE}_nodes", "Servers of the cluster and their status", labels=["node", "status"]
    )
    for name in sorted(cluster.servers):
        _one_of(nodes, [name], NODE_STATES, _node_status(cluster, name))
    resources = GaugeMetricFamily(
        f"{NAMESPACE}_resources",
        "Each resource instance's state on each server",
        labels=["node", "resource", "hierarchy", "agent", "status"],
    )
    hierarchies = GaugeMetricFamily(
        f"{NAMESPACE}_hierarchies",
        "Each hierarchy's state on each server (its top resource's)",
        labels=["hierarchy", "node", "status"],
    )
    statuses = GaugeMetricFamily(
        f"{NAMESPACE}_hierarchy_status",
        "Each hierarchy's global status",
        labels=["hierarchy", "status"],
    )
    for hierarchy in cluster.hierarchies:
        name = hierarchy.name
        for tag in sorted(hierarchy.tags):
            resource = cluster.resources[tag]
            for server in resource.servers_by_priority:
                state = str(cluster.state_of(server, tag).state)
                _one_of(resources, [server, tag, name, resource.kit], InstanceState, state)
        for server in cluster.resources[name].servers_by_priority:
            state = str(cluster.state_of(server, name).state)
            _one_of(hierarchies, [name, server], InstanceState, state)
        status = str(hierarchy_status(cluster, hierarchy).status)
        _one_of(statuses, [name], HierarchyStatus, status)
    paths = GaugeMetricFamily(
        f"{NAMESPACE}_comm_paths",
        "Each communication path's state",
        labels=["path", "node", "peer_node", "status"],
    )
    for path in cluster.comm_paths:
        view = path_view(cluster, path)
        _one_of(paths, [path.id, path.server_a, path.server_b], PathState, view.state)
    return [nodes, resources, hierarchies, statuses, paths]


def mirror_families(cluster: Cluster, server: str, state_dir: Path) -> list[GaugeMetricFamily]:
    """Each mirror whose source runs here: what each target lacks, and its state."""
    from vigil.kits.mirror.ops import local_view

    lacking = GaugeMetricFamily(
        f"{NAMESPACE}_mirror_out_of_sync_bytes",
        "Bytes of a mirror a target does not have yet, as its source sees it",
        labels=["resource", "node", "peer_node"],
    )
    connections = GaugeMetricFamily(
        f"{NAMESPACE}_mirror_connections",
        "Each mirror target's state, as its source sees it",
        labels=["resource", "node", "peer_node", "status"],
    )
    for tag, resource in sorted(cluster.resources.items()):
        if resource.kit != "mirror" or server not in resource.instances:
            continue
        process = local_view(state_dir / "kits" / tag).get("process") or {}
        if process.get("role") != "source":
            continue
        for target, seen in sorted((process.get("targets") or {}).items()):
            lacking.add_metric([tag, server, target], float(seen.get("dirty_bytes") or 0))
            connections.add_metric([tag, server, target, str(seen.get("state") or "unknown")], 1)
    return [lacking, connections]


class _Snapshot(Collector):
    """The families of one scrape, with its duration and success."""

    def __init__(self, operations: Operations) -> None:
        self.operations = operations

    def collect(self) -> Iterator[GaugeMetricFamily]:
        started, ok = time.perf_counter(), True
        families: list[GaugeMetricFamily] = []
        cache = self.operations.cache
        cluster = cache.cluster if cache.loaded else Cluster()
        try:
            families += cluster_families(cluster)
        except Exception:  # a scrape must answer: what failed is in the log
            log.exception("metrics: the cluster's state could not be collected")
            ok = False
        try:
            state_dir = self.operations.runner.state_dir
            families += mirror_families(cluster, self.operations.server, state_dir)
        except Exception:
            log.exception("metrics: the mirrors' state could not be collected")
            ok = False
        yield from families
        duration = GaugeMetricFamily(
            "ha_cluster_scrape_duration_seconds",
            "Duration of a collector scrape",
            labels=["collector"],
        )
        duration.add_metric(["vigil"], time.perf_counter() - started)
        success = GaugeMetricFamily(
            "ha_cluster_scrape_success", "Whether a collector succeeded", labels=["collector"]
        )
        success.add_metric(["vigil"], 1.0 if ok else 0.0)
        yield duration
        yield success


def render(metrics: AgentMetrics, operations: Operations) -> bytes:
    """The whole text exposition: the agent's instruments, then the scrape's gauges."""
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Snapshot(operations))
    return generate_latest(metrics.registry) + generate_latest(snapshot)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this agent and its view of the cluster (no token needed)."""
    instruments: AgentMetrics = request.app.state.metrics
    operations: Operations = request.app.state.operations
    body = await asyncio.to_thread(render, instruments, operations)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
