"""The REST API every agent serves (FastAPI; OpenAPI at ``/openapi.json``).

Any agent answers for the whole cluster: status views come from the agent's cached view of
the store (kept current by its watch), changes are validated on a fresh read and written
by the agent that receives them, except ``create`` and ``extend``,
whose kit checks must run on the target server: they are forwarded to that server's agent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from vigil import __version__, web
from vigil.agent.operations import Operations
from vigil.api import mail, mirror, recovery, schemas, views
from vigil.api.auth import Authenticator, Who
from vigil.api.forward import forward_to
from vigil.api.results import OperationFailed
from vigil.api.results import result as _result
from vigil.engine import changes
from vigil.errors import (
    AuthError,
    Conflict,
    NotFound,
    StoreUnavailable,
    ValidationError,
    VigilError,
)
from vigil.model.cluster import Cluster


def create_app(
    operations: Operations, auth: Authenticator, stop_agent: Callable[[bool], None] | None = None
) -> FastAPI:
    app = FastAPI(
        title="vigil",
        version=__version__,
        description="High-availability cluster manager: resource hierarchies, extend, switchover.",
    )
    _install_error_handlers(app)
    app.state.auth = auth
    app.state.operations = operations
    app.state.stop_agent = stop_agent or (lambda leave_resources: None)
    app.include_router(recovery.router)
    app.include_router(mail.router)
    app.include_router(mirror.router)
    app.include_router(web.router)

    @app.get("/v1/health", tags=["health"])
    async def health() -> dict[str, str]:
        """Liveness of this agent (no token needed)."""
        return {"server": operations.server, "status": "ok", "version": __version__}

    @app.get("/v1/status", response_model=schemas.StatusView, tags=["status"])
    async def status(who: Who) -> schemas.StatusView:
        return views.status_view(await _cached(operations), operations.secret_fields)

    @app.get("/v1/kits", tags=["status"])
    async def kits(who: Who) -> dict[str, Any]:
        registry = operations.runner.kits
        return {
            "kits": [registry.get(name).describe() for name in registry.names()],
            "errors": [str(error) for error in registry.errors],
        }

    # --- comm paths -----------------------------------------------------------------------

    @app.get("/v1/commpaths", response_model=list[schemas.CommPathView], tags=["comm paths"])
    async def list_paths(who: Who) -> list[schemas.CommPathView]:
        cluster = await _cached(operations)
        return [views.path_view(cluster, p) for p in cluster.comm_paths]

    @app.post("/v1/commpaths", response_model=schemas.OperationResult, tags=["comm paths"])
    async def create_path(body: schemas.CommPathCreate, who: Who) -> schemas.OperationResult:
        who.require("administrator", "create comm paths")
        return _result(
            await operations.configure(
                changes.create_comm_path,
                who.name,
                body.local,
                body.local_address,
                body.remote,
                body.remote_address,
                body.heartbeat_interval,
                body.max_missed,
            )
        )

    @app.delete(
        "/v1/commpaths/{path_id}", response_model=schemas.OperationResult, tags=["comm paths"]
    )
    async def delete_path(path_id: str, who: Who, force: bool = False) -> schemas.OperationResult:
        who.require("administrator", "delete comm paths")
        return _result(
            await operations.configure(changes.delete_comm_path, who.name, path_id, force=force)
        )

    # --- resources --------------------------------------------------------------------------

    @app.get("/v1/resources/{tag}", response_model=schemas.ResourceView, tags=["resources"])
    async def show_resource(tag: str, who: Who) -> schemas.ResourceView:
        cluster = await _cached(operations)
        changes.require_resource(cluster, tag)
        return views.resource_view(cluster, tag, operations.secret_fields)

    @app.post("/v1/resources", response_model=schemas.OperationResult, tags=["resources"])
    async def create_resource(body: schemas.ResourceCreate, who: Who, request: Request) -> Any:
        who.require("administrator", "create resources")
        forwarded = await forward_to(operations, body.server, request)
        if forwarded is not None:
            return forwarded
        outcome = await operations.create_resource(
            body.tag, body.kit, body.properties, who.name, body.timeout
        )
        return _result(outcome)

    @app.patch(
        "/v1/resources/{tag}/properties", response_model=schemas.OperationResult, tags=["resources"]
    )
    async def edit_properties(
        tag: str, body: schemas.PropertiesUpdate, who: Who
    ) -> schemas.OperationResult:
        who.require("administrator", "edit properties")
        # a secret shown masked and sent back unchanged keeps its value
        kept = {k: v for k, v in body.properties.items() if v != views.MASK}
        per_server = {
            s: {k: v for k, v in p.items() if v != views.MASK}
            for s, p in body.server_properties.items()
        }
        return _result(
            await operations.configure(changes.update_properties, who.name, tag, kept, per_server)
        )

    @app.post("/v1/dependencies", response_model=schemas.OperationResult, tags=["resources"])
    async def create_dependency(
        body: schemas.DependencyCreate, who: Who
    ) -> schemas.OperationResult:
        who.require("administrator", "create dependencies")
        return _result(
            await operations.configure(changes.create_dependency, who.name, body.parent, body.child)
        )

    @app.delete(
        "/v1/dependencies/{parent}/{child}",
        response_model=schemas.OperationResult,
        tags=["resources"],
    )
    async def delete_dependency(parent: str, child: str, who: Who) -> schemas.OperationResult:
        who.require("administrator", "delete dependencies")
        return _result(
            await operations.configure(changes.delete_dependency, who.name, parent, child)
        )

    # --- hierarchies ------------------------------------------------------------------------

    @app.post(
        "/v1/hierarchies/{tag}/extend", response_model=schemas.OperationResult, tags=["hierarchies"]
    )
    async def extend(tag: str, body: schemas.Extend, who: Who, request: Request) -> Any:
        who.require("administrator", "extend hierarchies")
        forwarded = await forward_to(operations, body.server, request)
        if forwarded is not None:
            return forwarded
        return _result(
            await operations.extend(tag, body.priority, body.properties, who.name, fix=body.fix)
        )

    @app.post(
        "/v1/hierarchies/{tag}/unextend",
        response_model=schemas.OperationResult,
        tags=["hierarchies"],
    )
    async def unextend(tag: str, body: schemas.Unextend, who: Who) -> schemas.OperationResult:
        who.require("administrator", "unextend hierarchies")
        return _result(await operations.unextend(tag, body.server, who.name))

    @app.delete(
        "/v1/hierarchies/{tag}", response_model=schemas.OperationResult, tags=["hierarchies"]
    )
    async def delete_hierarchy(
        tag: str, who: Who, timeout: float = 120.0, force: bool = False
    ) -> schemas.OperationResult:
        who.require("administrator", "delete hierarchies")
        return _result(await operations.delete(tag, who.name, timeout, force=force))

    @app.post(
        "/v1/hierarchies/{tag}/in-service",
        response_model=schemas.OperationResult,
        tags=["hierarchies"],
    )
    async def in_service(tag: str, body: schemas.InService, who: Who) -> schemas.OperationResult:
        who.require("operator", "bring hierarchies in service")
        return _result(await operations.in_service(tag, body.server, who.name, body.timeout))

    @app.post(
        "/v1/hierarchies/{tag}/out-of-service",
        response_model=schemas.OperationResult,
        tags=["hierarchies"],
    )
    async def out_of_service(
        tag: str, body: schemas.OutOfService, who: Who
    ) -> schemas.OperationResult:
        who.require("operator", "take hierarchies out of service")
        return _result(await operations.out_of_service(tag, who.name, body.timeout))

    @app.get("/v1/hierarchies/{tag}/in-service-here", tags=["health"])
    async def in_service_here(tag: str) -> JSONResponse:
        """200 when the hierarchy of ``tag`` is in service on this server, else 503 (for
        load balancers; no token needed)."""
        cluster = await _cached(operations)
        here = tag in cluster.resources and all(
            cluster.state_of(operations.server, t).state.in_service
            for t in cluster.hierarchy(tag).tags
        )
        return JSONResponse({"in_service": here}, status_code=200 if here else 503)

    return app


async def _cached(operations: Operations) -> Cluster:
    """The agent's cached view, for what only shows the cluster (status views, health):
    as new as the agent's watch, no store read (read once if never read yet)."""
    cache = operations.cache
    return cache.cluster if cache.loaded else await cache.reload()


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
