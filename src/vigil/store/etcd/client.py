"""HTTP plumbing of the etcd backend: endpoints, failover, authentication, error translation.

``GatewayClient`` talks to etcd's grpc-gateway (JSON over HTTP/1.1, ``/v3/...``) with one
``httpx.AsyncClient``. It knows nothing of the store contract: it posts JSON, returns JSON,
and turns every failure into one of vigil's errors, naming the endpoint.

Failover: endpoints are tried in order, starting from the one that answered last, within
one request timeout for the whole call. A call moves on to the next endpoint when the
current one cannot be connected to (nothing was sent, so trying elsewhere is always safe).
When an endpoint accepted the request but gave no answer in time, or answered "no leader" /
"timed out", only *idempotent* calls (reads, lease grants, renewals and revocations) move
on, each endpoint getting an equal share of the time left; a write raises
``StoreUnavailable`` at once, since it may have been applied and the contract leaves the
retry to the caller.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from vigil.aio import within
from vigil.errors import LeaseLost, StoreError, StoreUnavailable

JSON = dict[str, Any]

#: gRPC status codes etcd returns through the gateway (``{"code": N, "message": ...}``)
_NOT_FOUND = 5
PERMISSION_DENIED = 7
_UNAUTHENTICATED = 16
_RETRYABLE_CODES = frozenset({4, 14})  # DEADLINE_EXCEEDED, UNAVAILABLE (no leader, timed out)
#: messages meaning "authenticate again": the token expired or the auth store changed
_REAUTH_MARKERS = ("invalid auth token", "auth store is old", "user name is empty")

#: gRPC metadata "hasleader" (the gateway forwards Grpc-Metadata-* headers as metadata)
_REQUIRE_LEADER = "Grpc-Metadata-hasleader"
#: a silent peer (host down, network cut) breaks an idle connection after about 11 s
_KEEPALIVE = [
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
]


class GatewayError(StoreError):
    """etcd answered with an error status (translated by the caller when it means more)."""

    def __init__(self, message: str, *, code: int, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(message)


class _Unreachable(Exception):
    """Nothing reached the endpoint (connection refused or not established in time)."""


class _NoAnswer(Exception):
    """The endpoint took the request but gave no usable answer; it may have been applied."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


class GatewayClient:
    """Posts JSON to etcd's gateway over several endpoints; see the module docstring."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        request_timeout: float,
        credentials: Credentials | None,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.endpoints = endpoints
        self.request_timeout = request_timeout
        self._credentials = credentials
        self._current = 0
        self._token: str | None = None
        self._auth_lock = asyncio.Lock()
        transport = httpx.AsyncHTTPTransport(
            verify=ssl_context if ssl_context is not None else True,
            socket_options=_KEEPALIVE,
            retries=0,
        )
        self._http = httpx.AsyncClient(transport=transport, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- unary calls ----------------------------------------------------------------

    async def call(self, path: str, body: JSON, *, idempotent: bool) -> JSON:
        """POST ``body`` to ``path`` and return the answer, within the request timeout.

        Raises ``StoreUnavailable`` (no endpoint answered in time), ``GatewayError`` (etcd
        refused the request) or ``LeaseLost`` (etcd does not know a lease of the request).
        """
        deadline = time.monotonic() + self.request_timeout
        problems: list[str] = []
        order = self._rotation()
        for tried, index in enumerate(order):
            endpoint = self.endpoints[index]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Leave time for the other endpoints: a write gets all of it once sent, since it
            # is never sent to another endpoint after that.
            share = remaining / (len(order) - tried)
            timeout = share if idempotent else remaining
            try:
                return await self._call_endpoint(endpoint, path, body, timeout, share)
            except _Unreachable as exc:
                problems.append(f"{endpoint}: {exc}")
                self._failed(index)
            except _NoAnswer as exc:
                problems.append(f"{endpoint}: {exc}")
                self._failed(index)
                if not idempotent:
                    note = "the request may or may not have been applied"
                    raise self._unavailable(problems, note) from exc
        raise self._unavailable(problems, "")

    async def _call_endpoint(
        self, endpoint: str, path: str, body: JSON, timeout: float, connect_timeout: float
    ) -> JSON:
        """One endpoint, within ``timeout`` in all: authenticating again once if etcd says
        the token expired."""
        end = time.monotonic() + timeout
        for attempt in range(2):
            token = await self._token_for(endpoint, timeout)
            left = end - time.monotonic()
            if left <= 0:
                raise _NoAnswer(f"no answer within {timeout:.3g} s (authenticating)")
            try:
                return await self._post(
                    endpoint, path, body, token, left, min(connect_timeout, left)
                )
            except GatewayError as exc:
                if attempt == 0 and self._needs_reauth(exc):
                    await self._forget_token(token)
                    continue
                raise
        raise AssertionError("unreachable")

    async def _post(
        self,
        endpoint: str,
        path: str,
        body: JSON,
        token: str | None,
        timeout: float,
        connect_timeout: float,
    ) -> JSON:
        headers = {"Authorization": token} if token else {}
        limits = httpx.Timeout(timeout, connect=connect_timeout)
        try:
            # in a task of its own (vigil.aio): httpx's own timeout and this one, with the
            # same deadline, would both cancel the caller's task on Python 3.11
            response = await within(
                self._http.post(endpoint + path, json=body, headers=headers, timeout=limits),
                timeout,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _Unreachable(_describe(exc)) from exc
        except ssl.SSLError as exc:
            # httpcore lets a TLS alert that arrives with the answer through untranslated:
            # etcd refused the connection (a missing client certificate), not the request.
            raise _Unreachable(_describe(exc)) from exc
        except (httpx.TransportError, TimeoutError, OSError) as exc:
            raise _NoAnswer(f"no answer within {timeout:.3g} s ({_describe(exc)})") from exc
        return self._decode(endpoint, response.status_code, response.content)

    def _decode(self, endpoint: str, status: int, content: bytes) -> JSON:
        """The JSON answer; etcd's errors raised (a stream answer is unwrapped)."""
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            if status >= 500:  # not etcd's answer: a proxy or a member shutting down
                raise _NoAnswer(f"HTTP {status} without an etcd answer")
            raise StoreError(
                f"etcd {endpoint}: unexpected answer (HTTP {status}): {content[:200]!r};"
                " is this an etcd v3.4+ client URL?"
            )
        error = answer.get("error")
        if isinstance(error, dict):  # an error inside a stream: {"error": {"grpc_code": ...}}
            raise self._gateway_error(endpoint, error.get("grpc_code", 2), error.get("message"))
        if error is not None or status != 200:
            raise self._gateway_error(endpoint, answer.get("code", 2), answer.get("message"))
        result = answer.get("result")  # the first message of a stream: {"result": {...}}
        return result if isinstance(result, dict) else answer

    def _gateway_error(self, endpoint: str, code: object, detail: object) -> Exception:
        code, detail = int(code) if isinstance(code, int | str) else 2, str(detail or "")
        if code in _RETRYABLE_CODES:
            return _NoAnswer(f"etcd answered {detail!r}")
        if code == _NOT_FOUND and "lease not found" in detail:
            return LeaseLost(f"etcd {endpoint}: {detail}")
        hint = ""
        if any(marker in detail for marker in _REAUTH_MARKERS) or code == _UNAUTHENTICATED:
            hint = "; check the store URL's username and password_file"
        return GatewayError(
            f"etcd {endpoint} refused the request: {detail}{hint}", code=code, detail=detail
        )

    # --- streams --------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, path: str, body: JSON) -> AsyncIterator[tuple[str, AsyncIterator[str]]]:
        """POST ``body`` to a streaming ``path``; yields the endpoint and the answer's lines.

        Connecting (with failover) is bounded by the request timeout; reading is not (a
        watch may stay quiet for hours). Reading errors are raised as httpx errors; the
        caller translates them (it knows what the stream was for).
        """
        deadline = time.monotonic() + self.request_timeout
        problems: list[str] = []
        order = self._rotation()
        for tried, index in enumerate(order):
            endpoint = self.endpoints[index]
            share = (deadline - time.monotonic()) / (len(order) - tried)
            if share <= 0:
                break
            stack = AsyncExitStack()
            try:
                async with asyncio.timeout(share):
                    token = await self._token_for(endpoint, share)
                    headers = {"Authorization": token} if token else {}
                    # etcd ends the stream when this member loses its leader, instead of
                    # keeping a member cut off from the cluster silently quiet.
                    headers[_REQUIRE_LEADER] = "true"
                    limits = httpx.Timeout(share, read=None)
                    request = self._http.stream(
                        "POST", endpoint + path, json=body, headers=headers, timeout=limits
                    )
                    response = await stack.enter_async_context(request)
                    if response.status_code != 200:
                        self._decode(endpoint, response.status_code, await response.aread())
            except (httpx.TransportError, OSError, _NoAnswer, _Unreachable) as exc:
                await stack.aclose()
                problems.append(f"{endpoint}: {_describe(exc)}")
                self._failed(index)
                continue
            except BaseException:
                await stack.aclose()
                raise
            async with stack:
                yield endpoint, response.aiter_lines()
            return
        raise self._unavailable(problems, "")

    def stream_failed(self, endpoint: str) -> None:
        """A stream from ``endpoint`` broke: start the next calls at the next endpoint."""
        if endpoint in self.endpoints:
            self._failed(self.endpoints.index(endpoint))

    # --- authentication -------------------------------------------------------------

    async def reauthenticate(self, used_token: str | None) -> None:
        """Drop ``used_token`` (rejected by etcd) so that the next call authenticates."""
        await self._forget_token(used_token)

    @property
    def token(self) -> str | None:
        return self._token

    def _needs_reauth(self, exc: GatewayError) -> bool:
        markers = any(marker in exc.detail for marker in _REAUTH_MARKERS)
        return self._credentials is not None and (exc.code == _UNAUTHENTICATED or markers)

    async def _token_for(self, endpoint: str, timeout: float) -> str | None:
        if self._credentials is None:
            return None
        async with self._auth_lock:
            if self._token is None:
                body = {"name": self._credentials.username, "password": self._credentials.password}
                answer = await self._post(
                    endpoint, "/v3/auth/authenticate", body, None, timeout, timeout
                )
                self._token = str(answer.get("token", ""))
            return self._token

    async def _forget_token(self, token: str | None) -> None:
        async with self._auth_lock:
            if self._token == token:  # another task may have renewed it already
                self._token = None

    # --- endpoints ------------------------------------------------------------------

    def _rotation(self) -> list[int]:
        """Endpoint indexes to try, starting with the one that worked last."""
        count = len(self.endpoints)
        return [(self._current + step) % count for step in range(count)]

    def _failed(self, index: int) -> None:
        if self._current == index:
            self._current = (index + 1) % len(self.endpoints)

    def _unavailable(self, problems: list[str], note: str) -> StoreUnavailable:
        if not problems:
            problems = [f"{', '.join(self.endpoints)}: not tried, no time left"]
        where = "; ".join(problems)
        note = f" ({note})" if note else ""
        return StoreUnavailable(
            f"etcd unavailable within {self.request_timeout:g} s: {where}{note}; check that"
            " etcd runs, has a leader and is reachable from this server, then retry"
        )


def _describe(exc: BaseException) -> str:
    """What went wrong, in a few words: the most specific error in the chain."""
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timed out"
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for error in chain:
        if isinstance(error, ssl.SSLError):
            return f"TLS failed ({error}); check ca_file, cert_file and key_file"
    deepest = next((error for error in reversed(chain) if str(error)), exc)
    if isinstance(deepest, ConnectionRefusedError):
        return "connection refused"
    if isinstance(deepest, BrokenPipeError | ConnectionResetError):
        return f"connection closed by etcd ({deepest}; a TLS member may require cert_file/key_file)"
    return str(deepest) or type(deepest).__name__
