"""The REST API every agent serves (FastAPI; OpenAPI at ``/openapi.json``), assembled from
one router per area (health, status, comm paths, resources, hierarchies, recovery, mail,
mirror, audit, secrets, metrics) and the web UI's (``vigil.web``). Every change asked and
every refusal is recorded in the audit log (``vigil.api.audit``).

Any agent answers for the whole cluster: status views come from the agent's cached view of
the store (kept current by its watch), changes are validated on a fresh read and written
by the agent that receives them, except ``create`` and ``extend``, whose kit checks must
run on the target server: they are forwarded to that server's agent. Routers reach the
store only through ``Operations`` (and its siblings ``RecoveryOperations``,
``MailOperations`` and ``MirrorOperations``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from vigil import __version__, web
from vigil.agent.audit import AuditLog
from vigil.agent.metrics import AgentMetrics
from vigil.agent.operations import Operations
from vigil.api import (
    audit,
    commpaths,
    health,
    hierarchies,
    mail,
    metrics,
    mirror,
    recovery,
    resources,
    schemas,
    secrets,
    status,
)
from vigil.api.auth import Authenticator
from vigil.api.results import OperationFailed
from vigil.errors import (
    AuthError,
    Conflict,
    NotFound,
    StoreUnavailable,
    ValidationError,
    VigilError,
)


def create_app(
    operations: Operations, auth: Authenticator, stop_agent: Callable[[bool], None] | None = None
) -> FastAPI:
    """The API of this agent: every area's router, the error handlers. ``operations`` is
    the routers' only way to the store; ``stop_agent(leave_resources)`` stops this agent."""
    app = FastAPI(
        title="vigil",
        version=__version__,
        description="High-availability cluster manager: resource hierarchies, extend, switchover.",
    )
    _install_error_handlers(app)
    app.state.auth = auth
    app.state.operations = operations
    app.state.stop_agent = stop_agent or (lambda leave_resources: None)
    # every change asked and every refusal, kept apart from the event log (vigil.api.audit)
    app.state.audit = AuditLog(operations.store, operations.server)
    app.state.metrics = AgentMetrics(operations.server)  # the agent gives its own
    app.add_middleware(audit.AuditMiddleware)
    for area in (recovery, mail, mirror, web, health, status, commpaths, resources, hierarchies):
        app.include_router(area.router)
    for area in (audit, secrets, metrics):  # issue 13: audit, key rotation, /metrics
        app.include_router(area.router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def body(message: str, problems: list[str] | None = None) -> dict[str, Any]:
        return schemas.ErrorBody(error=message, problems=problems or [message]).model_dump()

    @app.exception_handler(AuthError)
    async def auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse(body(str(exc)), status_code=403 if exc.forbidden else 401)

    @app.exception_handler(ValidationError)
    async def refused(_: Request, exc: ValidationError) -> JSONResponse:
        code = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400
        return JSONResponse(body(str(exc), exc.problems), status_code=code)

    @app.exception_handler(OperationFailed)
    async def failed(_: Request, exc: OperationFailed) -> JSONResponse:
        content = body(exc.outcome.detail) | {"summary": exc.outcome.summary}
        return JSONResponse(content, status_code=500)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(body(str(exc)), status_code=503)

    @app.exception_handler(VigilError)
    async def other(_: Request, exc: VigilError) -> JSONResponse:
        return JSONResponse(body(str(exc)), status_code=500)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        ]
        return JSONResponse(
            body("malformed request: " + "; ".join(problems), problems), status_code=422
        )
