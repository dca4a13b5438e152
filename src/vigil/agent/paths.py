"""Heartbeats over comm paths.

For every comm path with an end on this server, the agent opens a TCP connection from the
path's local address to the remote agent's API port on the path's remote address, once per
heartbeat interval. A path is ALIVE while the last successful heartbeat is more recent
than ``interval * max_missed``. The state is written to the store when it changes (and the
heartbeat time refreshed now and then), so every server shows every path's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from vigil.aio import within
from vigil.errors import StoreError
from vigil.model.cluster import Cluster, CommPath
from vigil.model.records import PathRecord, key
from vigil.model.states import PathState
from vigil.store.base import Store

log = logging.getLogger("vigil.agent.paths")

#: refresh the stored heartbeat time at most this often while the state does not change
_REFRESH = 10.0


class PathMonitor:
    def __init__(self, store: Store, server: str, default_port: int) -> None:
        self.store = store
        self.server = server
        self.default_port = default_port
        self.last_ok: dict[str, float] = {}
        self.written: dict[str, tuple[PathState, float]] = {}

    async def run(self, cluster: Callable[[], Cluster]) -> None:
        while True:
            view = cluster()
            mine = [p for p in view.comm_paths if self.server in (p.server_a, p.server_b)]
            await asyncio.gather(*(self._beat(view, path) for path in mine))
            await self._forget([p.id for p in mine])
            interval = min((p.heartbeat_interval for p in mine), default=1.0)
            await asyncio.sleep(interval)

    async def _beat(self, cluster: Cluster, path: CommPath) -> None:
        local_address, remote, remote_address = path.end(self.server)
        port = self._port(cluster, remote)
        now = time.time()
        try:
            _, writer = await within(
                asyncio.open_connection(remote_address, port, local_addr=(local_address, 0)),
                path.heartbeat_interval,
            )
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self.last_ok[path.id] = now
        except (OSError, TimeoutError):
            pass
        last = self.last_ok.get(path.id, 0.0)
        alive = now - last <= path.heartbeat_interval * path.max_missed
        state = PathState.ALIVE if alive else PathState.DEAD
        await self._write(path, state, last)

    def _port(self, cluster: Cluster, remote: str) -> int:
        server = cluster.servers.get(remote)
        if server:
            port = urlsplit(server.api_url).port
            if port:
                return port
        return self.default_port

    async def _write(self, path: CommPath, state: PathState, last: float) -> None:
        previous = self.written.get(path.id)
        if previous and previous[0] == state and last - previous[1] < _REFRESH:
            return
        if previous is None or previous[0] != state:
            log.info("comm path %s is %s", path.id, state)
        try:
            await self.store.put(
                key("paths", self.server, path.id),
                PathRecord(state=state, last_heartbeat=last).dump(),
            )
            self.written[path.id] = (state, last)
        except StoreError as exc:
            log.warning("could not record the state of comm path %s: %s", path.id, exc)

    async def _forget(self, current: list[str]) -> None:
        for path_id in [p for p in self.written if p not in current]:
            del self.written[path_id]
            self.last_ok.pop(path_id, None)
            with contextlib.suppress(StoreError):
                await self.store.delete(key("paths", self.server, path_id))
