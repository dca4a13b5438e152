"""API routes of the cluster key (``vigil secrets``): which keys each agent holds (by
fingerprint: a key itself never leaves its file, nor appears in an answer or a log), and
the rotation that re-seals every stored secret with the key every server seals with.

A rotation is refused unless every running agent seals with the same key (the first line
of its key file): a secret sealed with a key one server lacks would not open there. A
server whose agent is not running is named in the answer: it must get the same key file
before it starts.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from vigil.agent.operations import Operations
from vigil.agent.rekey import reseal_store
from vigil.api.auth import Who
from vigil.api.deps import Ops
from vigil.api.forward import call_agent
from vigil.errors import ValidationError, VigilError

router = APIRouter(prefix="/v1/secrets", tags=["secrets"])


def _local(operations: Operations) -> dict[str, Any]:
    box = operations.runner.secrets
    return {
        "server": operations.server,
        "encrypting": box.encrypting,
        "key_file": str(box.key_file) if box.key_file else None,
        "keys": box.fingerprints(),
    }


@router.get("/keys/local")
async def local_keys(who: Who, operations: Ops) -> dict[str, Any]:
    """This agent's keys, by fingerprint (the first seals). Administrators only."""
    who.require("administrator", "see the cluster key's fingerprints")
    return _local(operations)


async def _every_agent(operations: Operations, request: Request) -> dict[str, Any]:
    """Each server's keys (or why it could not tell), by server."""
    cluster = await operations.cluster()
    found: dict[str, Any] = {}
    for server in sorted(cluster.servers):
        if server == operations.server:
            found[server] = _local(operations)
        elif not cluster.servers[server].alive:
            found[server] = {"server": server, "unreachable": "its agent is not running"}
        else:
            try:
                answer = await call_agent(
                    operations, server, "GET", "/v1/secrets/keys/local", None, request
                )
            except VigilError as exc:
                found[server] = {"server": server, "unreachable": str(exc)}
                continue
            found[server] = (
                answer.json()
                if answer.status_code == 200
                else {"server": server, "unreachable": f"HTTP {answer.status_code}"}
            )
    return found


@router.get("/keys")
async def keys(who: Who, operations: Ops, request: Request) -> dict[str, Any]:
    """Every server's keys, by fingerprint. Administrators only."""
    who.require("administrator", "see the cluster key's fingerprints")
    return {"servers": await _every_agent(operations, request)}


@router.post("/rotate")
async def rotate(who: Who, operations: Ops, request: Request) -> dict[str, Any]:
    """Re-seal every secret in the store with the key every running agent seals with, in
    compare-and-set transactions (``vigil.agent.rekey``). Administrators only."""
    who.require("administrator", "rotate the cluster key")
    if not operations.runner.secrets.encrypting:
        raise ValidationError(
            f"the agent of {operations.server} has no secrets_key_file: secrets are stored "
            "as given, there is nothing to rotate (configure a key file on every server)"
        )
    servers = await _every_agent(operations, request)
    primary = servers[operations.server]["keys"][0]
    problems, down = [], []
    for name, seen in sorted(servers.items()):
        if "unreachable" in seen:
            if seen["unreachable"] == "its agent is not running":
                down.append(name)
            else:
                problems.append(
                    f"{name}: cannot tell which key it seals with ({seen['unreachable']})"
                )
        elif not seen.get("keys"):
            problems.append(f"{name}: has no secrets_key_file")
        elif seen["keys"][0] != primary:
            problems.append(
                f"{name} seals with key {seen['keys'][0]}, {operations.server} with {primary}"
            )
    if problems:
        raise ValidationError(
            "not every agent seals with the same key: give every server the same key file "
            "(`vigil secrets add-key` on one, then copy it), then rotate again",
            problems,
        )
    done = await reseal_store(
        operations.store, operations.runner.secrets, operations.server, who.name
    )
    await operations.cache.changed(done.revision - 1, 5.0)
    return {
        "key": primary,
        "resealed": done.values,
        "stored_keys": len(done.keys),
        "transactions": done.transactions,
        "revision": done.revision,
        "servers": {name: seen.get("keys", []) for name, seen in servers.items()},
        "not_running": down,
        "next": (
            "every stored secret is sealed with key "
            f"{primary}; once every server (also {', '.join(down)}) has this key file, "
            "remove the older keys: `vigil secrets retire-keys --key-file FILE` on each"
            if down
            else f"every stored secret is sealed with key {primary}; remove the older keys "
            "from every server's key file: `vigil secrets retire-keys --key-file FILE`"
        ),
    }
