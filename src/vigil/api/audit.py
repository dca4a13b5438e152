"""Auditing the API (``vigil.agent.audit``): a middleware that records every request that
asks for a change (any method but GET, HEAD, OPTIONS) and every refused one (401 or 403
for any method), and the route that shows the log (``GET /v1/audit``, administrators).

What is recorded of a request body is a summary that holds no value of a property: the
names of the properties given, the other fields with their values, and every field whose
name says it is a secret (password, secret, token, key) masked. Headers are never recorded
(a token, a session cookie). A request this agent forwarded to another (``forward_to``) is
recorded by the agent that carried it out, with the caller's own address: an agent's
``x-vigil-forwarded-for`` header is believed only from the address of a cluster server.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vigil.agent.audit import AuditEntry, AuditLog, outcome_of
from vigil.agent.operations import Operations
from vigil.agent.secrets import SEALED_PREFIX
from vigil.api.auth import Who
from vigil.api.forward import FORWARDED_BY, FORWARDED_FOR

router = APIRouter(tags=["audit"])

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_BODY = 64 * 1024
MAX_ANSWER = 4096
MAX_VALUE = 80
_SECRET_NAME = re.compile(r"pass|secret|token|key|cookie|csrf", re.IGNORECASE)
_NAMES_ONLY = ("properties", "server_properties", "values")
#: a sealed secret (``vigil.agent.secrets``) quoted anywhere in what is recorded
_SEALED = re.compile(re.escape(SEALED_PREFIX) + r"[A-Za-z0-9_=\-]*")


def _masked(text: str) -> str:
    return _SEALED.sub("********", text)


def _value(name: str, value: Any) -> str:
    if _SECRET_NAME.search(name):
        return f"{name}=********"
    if isinstance(value, dict):
        if name in _NAMES_ONLY or any(isinstance(v, dict) for v in value.values()):
            return f"{name}: {_names(value)}"
        return f"{name}: {{{', '.join(_value(str(k), v) for k, v in value.items())}}}"
    if isinstance(value, list):
        return f"{name}=[{len(value)} items]"
    text = json.dumps(value, ensure_ascii=False)
    return f"{name}={text[:MAX_VALUE]}{'...' if len(text) > MAX_VALUE else ''}"


def _names(values: dict[str, Any]) -> str:
    """Only the names of ``values`` (and of the values of nested tables)."""
    parts = [
        f"{k} ({_names(v)})" if isinstance(v, dict) and v else str(k) for k, v in values.items()
    ]
    return "[" + ", ".join(parts) + "]"


def summarize(body: bytes, content_type: str) -> str:
    """What the audit log keeps of a request body: never a property's value, never a
    secret."""
    if not body:
        return ""
    if "x-www-form-urlencoded" in content_type:
        fields = dict(parse_qsl(body.decode(errors="replace")))
        return ", ".join(f"{k}=********" if _SECRET_NAME.search(k) else k for k in fields)
    try:
        data = json.loads(body)
    except ValueError:
        return f"({len(body)} bytes, not JSON)"
    if not isinstance(data, dict):
        return f"({type(data).__name__})"
    return ", ".join(_value(str(k), v) for k, v in data.items())


def _error_of(answer: bytes) -> str:
    try:
        data = json.loads(answer)
    except ValueError:
        return ""
    message = data.get("error") if isinstance(data, dict) else None
    return str(message)[:500] if message else ""


def _login_user(path: str, body: bytes, headers: dict[str, str]) -> str:
    """Who a request without valid credentials claims to be: the user name of a web login
    (its password is never read here), else nobody."""
    if path == "/ui/login" and "x-www-form-urlencoded" in headers.get("content-type", ""):
        user = dict(parse_qsl(body.decode(errors="replace"))).get("user", "").strip()
        if user:
            return f"{user[:64]} (web login)"
    return "(no valid credentials)"


def _cluster_addresses(operations: Operations | None) -> set[str]:
    """The addresses of the cluster's servers (whose forwarding headers are believed)."""
    if operations is None or not operations.cache.loaded:
        return set()
    found: set[str] = set()
    for server in operations.cache.cluster.servers.values():
        found.update(server.addresses)
        host = server.api_url.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
        found.add(host)
    return found


class AuditMiddleware:
    """Records audited requests in the app's ``AuditLog`` (``app.state.audit``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        body, answer = bytearray(), bytearray()
        status = 0

        async def receive_copy() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < MAX_BODY:
                body.extend(message.get("body", b"")[: MAX_BODY - len(body)])
            return message

        async def send_copy(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status >= 400:
                answer.extend(message.get("body", b"")[: MAX_ANSWER - len(answer)])
            await send(message)

        try:
            await self.app(scope, receive_copy, send_copy)
        except Exception:
            status = status or 500
            raise
        finally:
            self._record(scope, state, status, bytes(body), bytes(answer))

    def _record(
        self, scope: Scope, state: dict[str, Any], status: int, body: bytes, answer: bytes
    ) -> None:
        method = scope["method"]
        if method in SAFE_METHODS and status not in (401, 403):
            return
        if state.get("forwarded_to"):
            return  # the agent it was forwarded to carried it out and records it
        app_state = scope["app"].state
        audit: AuditLog | None = getattr(app_state, "audit", None)
        if audit is None:
            return
        operations: Operations | None = getattr(app_state, "operations", None)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        address = scope["client"][0] if scope.get("client") else "unknown"
        forwarded_by = ""
        if FORWARDED_BY in headers and address in _cluster_addresses(operations):
            forwarded_by = headers[FORWARDED_BY]
            address = headers.get(FORWARDED_FOR) or address
        caller = state.get("caller")
        who = getattr(caller, "name", None) or _login_user(scope["path"], body, headers)
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope["path"] + (f"?{query}" if query else "")
        summary = summarize(body, headers.get("content-type", ""))
        audit.record(
            AuditEntry(
                at=time.time(),
                server=audit.server,
                who=who,
                role=getattr(caller, "role", "-"),
                address=address,
                forwarded_by=forwarded_by,
                method=method,
                path=path,
                what=_masked(f"{method} {path}" + (f" ({summary})" if summary else "")),
                outcome=outcome_of(status),
                status=status,
                detail=_masked(_error_of(answer)),
            )
        )


class AuditView(BaseModel):
    """One audit entry, as the API shows it."""

    id: str
    at: float
    server: str
    who: str
    role: str
    address: str
    forwarded_by: str
    what: str
    outcome: str
    status: int
    detail: str


@router.get("/v1/audit", response_model=list[AuditView])
async def audit(who: Who, request: Request, limit: int = 100, after: str = "") -> list[AuditView]:
    """The newest ``limit`` audit entries (after the entry id ``after``), oldest first:
    who asked what, from where, and the outcome. Administrators only."""
    who.require("administrator", "read the audit log")
    log: AuditLog = request.app.state.audit
    return [
        AuditView(id=e.id, **e.entry.model_dump(exclude={"schema_version", "method", "path"}))
        for e in await log.entries(max(0, min(limit, 10_000)), after)
    ]
