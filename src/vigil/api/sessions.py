"""Sessions of people logged in to the web UI: the API's second way to authenticate.

Scripts send ``Authorization: Bearer TOKEN`` (``vigil.api.auth``); a person logs in once
(``vigil.web.login``: a password checked through PAM, a role from their groups) and the
browser then sends a session cookie. A session is kept in the coordination store under
``SESSIONS_PREFIX`` (``/vigil-sessions/``, outside the cluster the agents watch), keyed by
the SHA-256 of the cookie's value (the store never holds the cookie itself), so every agent
honours it: a create or extend forwarded to the target server's agent carries the cookie
along.

CSRF: the cookie is ``SameSite=Strict`` and ``HttpOnly`` (``Secure`` under TLS), and every
request that changes something (any method but GET, HEAD, OPTIONS) must also send the
session's own CSRF token in the ``X-CSRF-Token`` header, which a page of another site can
neither read nor set. A bearer token needs no CSRF token: browsers never send it by
themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict

from vigil.agent.config import WebSettings
from vigil.agent.operations import Operations
from vigil.errors import AuthError
from vigil.store.base import Store

SESSIONS_PREFIX = "/vigil-sessions/"
#: the session cookie's name
COOKIE = "vigil_session"
#: the header that carries the session's CSRF token on every change
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SessionRecord(BaseModel):
    """One login, as stored (JSON, with a schema version)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    schema_version: int = 1
    user: str
    role: str
    csrf: str
    created: float
    expires: float
    server: str = ""  # the agent the person logged in on

    def dump(self) -> bytes:
        return self.model_dump_json().encode()


def _key(session_id: str) -> str:
    return SESSIONS_PREFIX + hashlib.sha256(session_id.encode()).hexdigest()


def settings_of(request: Request) -> WebSettings:
    """The web settings the agent was configured with (defaults when it gave none)."""
    settings = getattr(request.app.state, "web", None)
    return settings if isinstance(settings, WebSettings) else WebSettings()


def store_of(request: Request) -> Store:
    operations: Operations = request.app.state.operations
    return operations.store


async def open_session(
    store: Store, user: str, role: str, timeout: float, server: str
) -> tuple[str, SessionRecord]:
    """Record a new session for ``user`` (already authenticated) with ``role``; returns the
    cookie value and the record. Expired sessions are swept on the way (logins are rare)."""
    now = time.time()
    session_id = secrets.token_urlsafe(32)
    record = SessionRecord(
        user=user,
        role=role,
        csrf=secrets.token_urlsafe(24),
        created=now,
        expires=now + timeout,
        server=server,
    )
    await _sweep(store, now)
    await store.put(_key(session_id), record.dump())
    return session_id, record


async def _sweep(store: Store, now: float) -> None:
    snapshot = await store.get_prefix(SESSIONS_PREFIX)
    for item in snapshot.items:
        try:
            expired = SessionRecord.model_validate_json(item.value).expires <= now
        except ValueError:
            expired = True
        if expired:
            await store.delete(item.key)


async def close_session(store: Store, session_id: str) -> None:
    """Forget a session (logout); nothing if it is unknown."""
    await store.delete(_key(session_id))


async def find_session(store: Store, session_id: str) -> SessionRecord | None:
    """The live session of this cookie value, or None (unknown, expired, unreadable)."""
    if not session_id:
        return None
    item = await store.get(_key(session_id))  # StoreError: the caller's 503
    if item is None:
        return None
    try:
        record = SessionRecord.model_validate_json(item.value)
    except ValueError:
        return None
    return record if record.expires > time.time() else None


async def request_session(request: Request) -> SessionRecord | None:
    """The session of the request's cookie, or None."""
    return await find_session(store_of(request), request.cookies.get(COOKIE, ""))


async def session_caller(request: Request) -> tuple[str, str]:
    """(user, role) of the request's session, for the API's authentication: ``AuthError``
    when the session is unknown or expired, or when a change comes without its CSRF token."""
    record = await request_session(request)
    if record is None:
        raise AuthError("your web session has expired or was closed: log in again at /ui/login")
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), record.csrf.encode()):
            raise AuthError(
                "this change came without the session's CSRF token: reload the page and try again",
                forbidden=True,
            )
    return record.user, record.role


def set_cookie(response: Response, request: Request, session_id: str, timeout: float) -> None:
    """Put the session cookie on ``response``: HttpOnly, SameSite=Strict, Secure under TLS."""
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(timeout),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
