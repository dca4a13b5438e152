"""Translation between the store contract's types and etcd's gateway JSON.

The gateway maps etcd's protobuf messages to JSON: ``bytes`` fields (keys, values) are
base64, 64-bit integers (revisions, lease ids, TTLs) are decimal strings, and fields at
their zero value are left out (an empty value, ``"succeeded": false``, a PUT event type).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from vigil.store.base import Compare, KeyValue, Operation, Put

JSON = dict[str, Any]


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_value(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def decode_key(text: str) -> str:
    # Keys written by vigil are UTF-8; a foreign key that is not still decodes (and
    # round-trips through encode_key) instead of breaking a whole read.
    return decode_value(text).decode("utf-8", "surrogateescape")


def encode_key(key: str) -> str:
    return encode(key.encode("utf-8", "surrogateescape"))


def prefix_end(prefix: bytes) -> bytes:
    """etcd's ``range_end`` for every key starting with ``prefix`` (``\\0``: to the end)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def range_request(key: str, *, prefix: bool) -> JSON:
    """A range (or delete-range) request for one key or every key under a prefix."""
    raw = key.encode("utf-8", "surrogateescape")
    if not prefix:
        return {"key": encode(raw)}
    return {"key": encode(raw or b"\0"), "range_end": encode(prefix_end(raw))}


def key_value(raw: JSON) -> KeyValue:
    return KeyValue(
        key=decode_key(raw.get("key", "")),
        value=decode_value(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


def header_revision(answer: JSON) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def txn_request(
    compares: Sequence[Compare], success: Sequence[Operation], failure: Sequence[Operation]
) -> JSON:
    """A ``/v3/kv/txn`` body. etcd compares an absent key's ``mod_revision`` as 0, which is
    exactly the contract's ``Compare.absent``."""
    return {
        "compare": [
            {
                "key": encode_key(compare.key),
                "target": "MOD",
                "result": "EQUAL",
                "mod_revision": str(compare.mod_revision),
            }
            for compare in compares
        ],
        "success": [_request_op(op) for op in success],
        "failure": [_request_op(op) for op in failure],
    }


def _request_op(op: Operation) -> JSON:
    if isinstance(op, Put):
        put: JSON = {"key": encode_key(op.key), "value": encode(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    return {"request_delete_range": range_request(op.key, prefix=op.prefix)}
