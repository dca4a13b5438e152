"""Forwarding a request to the agent of the server it concerns.

Kit checks (create, extend) and agent control (stop) must run on the target server; any
agent accepts the request and passes it on unchanged, its credentials included (a token, or
a web session's cookie and CSRF token: sessions are in the store, every agent knows them).

Over TLS, the other agent's certificate is checked against the cluster CA of this agent's
``[tls] ca_file`` (``app.state.peer_verify``), address included: a request with the
caller's credentials never goes to a server that cannot prove it is that agent."""

from __future__ import annotations

import ssl
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import JSONResponse

from vigil.agent.operations import Operations
from vigil.agent.tls import describe_tls_error
from vigil.engine import changes
from vigil.errors import StoreUnavailable

FORWARD_TIMEOUT = 300.0
#: seconds this agent's cached view may take to show a change another agent made
CATCH_UP = 5.0
#: headers one agent adds when it forwards a request to another (for the audit log)
FORWARDED_BY = "x-vigil-forwarded-by"
FORWARDED_FOR = "x-vigil-forwarded-for"


def peer_verify(request: Request) -> ssl.SSLContext | bool:
    """How this agent checks another agent's certificate: the cluster CA's context the
    agent was started with (default: the system's trusted CAs)."""
    verify = getattr(request.app.state, "peer_verify", True)
    return verify if isinstance(verify, ssl.SSLContext | bool) else True


def _unreachable(server: str, url: str, exc: httpx.HTTPError) -> StoreUnavailable:
    why = describe_tls_error(exc)
    detail = f"{why} ({exc})" if why else str(exc)
    return StoreUnavailable(f"could not reach the agent of {server} at {url}: {detail}")


def forwarded_by(request: Request, server: str) -> dict[str, str]:
    """Headers that tell the other agent who forwarded the request, for whom (its audit
    log records the caller's own address)."""
    client = request.client.host if request.client else ""
    return {FORWARDED_BY: server, FORWARDED_FOR: client}


def credentials(request: Request) -> dict[str, str]:
    """The caller's credentials, to pass on: its token, or its session cookie and CSRF
    token."""
    names = ("authorization", "cookie", "x-csrf-token")
    return {name: request.headers[name] for name in names if name in request.headers}


async def call_agent(
    operations: Operations, server: str, method: str, path: str, body: Any, request: Request
) -> httpx.Response:
    """A request of this agent's own to ``server``'s agent, with the caller's token (an
    operation that fans out, as the queue path set on every backup)."""
    cluster = await operations.cluster()
    changes.require_alive(cluster, server)
    url = cluster.servers[server].api_url + path
    headers = {**credentials(request), **forwarded_by(request, operations.server)}
    try:
        async with httpx.AsyncClient(
            timeout=FORWARD_TIMEOUT, trust_env=False, verify=peer_verify(request)
        ) as client:
            return await client.request(method, url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise _unreachable(server, url, exc) from exc


async def forward_to(operations: Operations, server: str, request: Request) -> JSONResponse | None:
    """Forward to ``server``'s agent when it is not this one (kit checks run there)."""
    if server == operations.server:
        return None
    cluster = await operations.cluster()
    changes.require_alive(cluster, server)
    url = cluster.servers[server].api_url + request.url.path
    if request.url.query:
        url += f"?{request.url.query}"
    headers = {
        **credentials(request),
        **forwarded_by(request, operations.server),
        "content-type": "application/json",
    }
    try:
        async with httpx.AsyncClient(
            timeout=FORWARD_TIMEOUT, trust_env=False, verify=peer_verify(request)
        ) as client:
            answer = await client.request(
                request.method, url, content=await request.body(), headers=headers
            )
    except httpx.HTTPError as exc:
        raise _unreachable(server, url, exc) from exc
    request.state.forwarded_to = server  # the other agent audits it
    body = answer.json()
    revision = body.get("revision") if isinstance(body, dict) else None
    if isinstance(revision, int) and operations.cache.revision < revision:
        # read your writes through this agent too: the next request asked of it (a status
        # after an extend) must see the change the other agent made
        await operations.cache.changed(revision - 1, CATCH_UP)
    return JSONResponse(body, status_code=answer.status_code)
