"""Watches over etcd's streaming gateway endpoint (``POST /v3/watch``, JSON lines).

A watch runs in its own task (the *pump*): it opens the stream, reads one JSON message per
line and hands each batch of events to the iterator the caller consumes through a queue.
The pump ends with an exception, never silently: ``Compacted`` (etcd cancelled the watch
because its start revision was compacted), ``StoreUnavailable`` (the stream broke or
ended), or ``StoreError`` (the client was closed, etcd refused the watch).

etcd sends the events of one revision together, in one message (a message may hold several
revisions, never part of one: vigil does not ask for fragmented responses), in the order the
transaction wrote them; the pump sorts each message by revision, then key, which is the
contract's order, and queues it as one batch (``Store.watch_batches``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from vigil.errors import Compacted, StoreError, StoreUnavailable
from vigil.store.base import EventType, WatchEvent
from vigil.store.etcd.client import GatewayClient
from vigil.store.etcd.codec import decode_key, decode_value, encode, prefix_end

#: an item of a watch queue: a batch of events, or why the watch ended
WatchItem = list[WatchEvent] | BaseException


def watch_request(prefix: str, start_revision: int) -> dict[str, Any]:
    """The ``create_request`` of a watch of every key under ``prefix`` from a revision."""
    key = prefix.encode()
    return {
        "create_request": {
            "key": encode(key or b"\0"),
            "range_end": encode(prefix_end(key)),
            "start_revision": str(max(start_revision, 1)),
        }
    }


async def pump(
    client: GatewayClient, prefix: str, start_revision: int, queue: asyncio.Queue[WatchItem]
) -> None:
    """Read the watch stream into ``queue`` until it fails; see the module docstring."""
    for attempt in range(2):
        async with client.stream("/v3/watch", watch_request(prefix, start_revision)) as (
            endpoint,
            lines,
        ):
            token = client.token  # the one this stream was opened with
            try:
                await _read(endpoint, prefix, start_revision, lines, queue)
            except _AuthExpired:
                if attempt == 0:
                    await client.reauthenticate(token)
                    continue
                raise StoreError(
                    f"etcd {endpoint} refused a watch of {prefix!r}: the authentication token"
                    " was rejected twice; check the store URL's username and password_file"
                ) from None
            except (httpx.TransportError, httpx.StreamError, OSError) as exc:
                client.stream_failed(endpoint)
                raise StoreUnavailable(
                    f"etcd {endpoint}: the watch of {prefix!r} was cut off"
                    f" ({exc or type(exc).__name__}); resume from the revision after the last"
                    " event received"
                ) from exc
            client.stream_failed(endpoint)
            raise StoreUnavailable(
                f"etcd {endpoint}: the watch of {prefix!r} ended (etcd stopping?); resume"
                " from the revision after the last event received"
            )


class _AuthExpired(Exception):
    """etcd refused to create the watch because the token is no longer valid."""


async def _read(
    endpoint: str,
    prefix: str,
    start_revision: int,
    lines: Any,
    queue: asyncio.Queue[WatchItem],
) -> None:
    async for line in lines:
        if not line.strip():
            continue
        message = json.loads(line)
        error = message.get("error")
        if error:
            detail = error.get("message", error) if isinstance(error, dict) else error
            raise StoreUnavailable(
                f"etcd {endpoint}: the watch of {prefix!r} failed: {detail}; resume from the"
                " revision after the last event received"
            )
        result = message.get("result", {})
        if result.get("canceled"):
            _cancelled(endpoint, prefix, start_revision, result)
        events = [_event(raw) for raw in result.get("events", ())]
        if events:
            events.sort(key=lambda event: (event.mod_revision, event.key))
            queue.put_nowait(events)


def _cancelled(endpoint: str, prefix: str, start_revision: int, result: dict[str, Any]) -> None:
    compacted = int(result.get("compact_revision", 0))
    if compacted:
        raise Compacted(
            f"etcd {endpoint}: a watch of {prefix!r} asked for revision {start_revision}, but"
            f" history before {compacted} was compacted; re-read with get_prefix and watch"
            " from its revision + 1",
            compacted,
        )
    reason = str(result.get("cancel_reason", ""))
    if "Unauthenticated" in reason or "invalid auth token" in reason:
        raise _AuthExpired(reason)
    raise StoreError(f"etcd {endpoint} cancelled a watch of {prefix!r}: {reason or 'no reason'}")


def _event(raw: dict[str, Any]) -> WatchEvent:
    kv = raw.get("kv", {})
    deleted = raw.get("type") == "DELETE"
    return WatchEvent(
        EventType.DELETE if deleted else EventType.PUT,
        decode_key(kv.get("key", "")),
        b"" if deleted else decode_value(kv.get("value", "")),
        int(kv.get("mod_revision", 0)),
    )
