"""API routes of the mail kit (``vigil mail ...``): Services Config, Manage User, the users'
home and the seed's utilities. Directory work runs on the agent that receives the request;
the failed-users log is read on the server the hierarchy is in service on, and the boot
mode of services is set on the server named, both by forwarding."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import Field

from vigil.agent.mailops import MailOperations
from vigil.agent.operations import Operations, Outcome
from vigil.api import schemas
from vigil.api.auth import Who
from vigil.api.forward import call_agent, forward_to
from vigil.api.results import result as _result
from vigil.errors import VigilError
from vigil.kits.mail.properties import OptionalService

router = APIRouter(prefix="/v1/mail", tags=["mail"])


def _mail(request: Request) -> MailOperations:
    operations: Operations = request.app.state.operations
    return MailOperations(operations)


class UserChange(schemas.Body):
    bind_password: str = Field(description="the account's password (never shown or logged)")
    bind_dn: str | None = Field(None, description="a new account (Change User and Password)")


class ServiceAdd(schemas.Body):
    service: OptionalService
    server: str | None = Field(None, description="one server; none: every server (Update All)")


class MoveUser(schemas.Body):
    user: str = Field(description="uid, mail address or DN")
    to: str = Field(description="the server whose home value the user gets")


class MoveUsers(schemas.Body):
    domain: str | None = Field(None, description="only the users of this mail domain")


class ServiceMode(schemas.Body):
    mode: str = Field(description="auto (started at boot) or manual (only by vigil)")
    services: list[str] = Field(default_factory=list, description="default: postfix, dovecot")


@router.get("/{tag}/user")
async def show_user(tag: str, who: Who, request: Request) -> dict[str, Any]:
    """The directory account the hierarchy uses (Manage User: Show Current User)."""
    return await _mail(request).show_user(tag)


@router.put("/{tag}/user", response_model=schemas.OperationResult)
async def set_user(tag: str, body: UserChange, who: Who, request: Request) -> Any:
    """Change Password, or Change User and Password (checked against the directory)."""
    who.require("administrator", "change the directory account")
    return _result(await _mail(request).set_user(tag, body.bind_dn, body.bind_password, who.name))


@router.get("/{tag}/services")
async def services(tag: str, who: Who, request: Request) -> dict[str, list[dict[str, Any]]]:
    """The optional services per server, in start order."""
    return await _mail(request).services(tag)


@router.post("/{tag}/services", response_model=schemas.OperationResult)
async def add_service(tag: str, body: ServiceAdd, who: Who, request: Request) -> Any:
    who.require("administrator", "change the protected services")
    return _result(await _mail(request).add_service(tag, body.service, body.server, who.name))


@router.delete("/{tag}/services/{name}", response_model=schemas.OperationResult)
async def delete_service(
    tag: str, name: str, who: Who, request: Request, server: str | None = None
) -> Any:
    who.require("administrator", "change the protected services")
    return _result(await _mail(request).delete_service(tag, name, server, who.name))


@router.get("/{tag}/failed-users")
async def failed_users(tag: str, who: Who, request: Request) -> Any:
    """The failed-users log (users that could not be moved home), from the server the
    hierarchy is in service on."""
    mail = _mail(request)
    cluster = await mail.operations.cluster()
    await mail._mail(tag)
    active = cluster.intended_server(cluster.hierarchy(tag))
    if active is not None:
        forwarded = await forward_to(mail.operations, active, request)
        if forwarded is not None:
            return forwarded
    return {"tag": tag, "server": active, "users": await mail.failed_users(tag) if active else []}


@router.get("/{tag}/home")
async def home(tag: str, user: str, who: Who, request: Request) -> dict[str, Any]:
    """Which server a user's mailbox is on."""
    return await _mail(request).home(tag, user)


@router.post("/{tag}/move-user", response_model=schemas.OperationResult)
async def move_user(tag: str, body: MoveUser, who: Who, request: Request) -> Any:
    who.require("administrator", "move users")
    return _result(await _mail(request).move_user(tag, body.user, body.to, who.name))


@router.post("/{tag}/move-users", response_model=schemas.OperationResult)
async def move_users(tag: str, body: MoveUsers, who: Who, request: Request) -> Any:
    who.require("administrator", "move users")
    return _result(await _mail(request).move_users(tag, body.domain, who.name))


@router.post("/{tag}/failback-users", response_model=schemas.OperationResult)
async def failback_users(tag: str, who: Who, request: Request) -> Any:
    who.require("administrator", "move users")
    return _result(await _mail(request).failback_users(tag, who.name))


class QueuePath(schemas.Body):
    path: str = Field(description="the new queue_directory (on one of the hierarchy's volumes)")


class ServerQueuePath(schemas.Body):
    path: str = Field(description="the new queue_directory")
    postfix_config: str = Field("/etc/postfix", description="Postfix's configuration directory")
    move: bool = Field(True, description="move the queue (false: only set queue_directory)")


@router.post("/{tag}/queue-path", response_model=schemas.OperationResult)
async def queue_path(tag: str, body: QueuePath, who: Who, request: Request) -> Any:
    """Move the queue of a protected hierarchy (the seed's SetSMTPQueuePath), on the server
    it is in service on, and set it on every other server of the hierarchy."""
    who.require("administrator", "move the mail queue")
    mail = _mail(request)
    cluster = await mail.operations.cluster()
    await mail._mail(tag)
    active = cluster.intended_server(cluster.hierarchy(tag))
    if active is not None:
        forwarded = await forward_to(mail.operations, active, request)
        if forwarded is not None:
            return forwarded
    outcome, others = await mail.set_queue_path(tag, body.path, who.name)
    missed = []
    for server, postfix_config in others.items():
        move = {"path": body.path, "postfix_config": postfix_config, "move": False}
        path = f"/v1/mail/servers/{server}/queue-path"
        try:
            answer = await call_agent(mail.operations, server, "POST", path, move, request)
        except VigilError as exc:
            missed.append(f"{server}: not set ({exc})")
            continue
        if answer.status_code != 200:
            missed.append(f"{server}: not set ({answer.text})")
    if missed:
        note = "; ".join(missed) + ": set it there when it is back (vigil extend --fix)"
        outcome = Outcome(outcome.summary, detail=note, revision=outcome.revision)
    return _result(outcome)


@router.post("/servers/{server}/queue-path", response_model=schemas.OperationResult)
async def server_queue_path(server: str, body: ServerQueuePath, who: Who, request: Request) -> Any:
    """Move the queue of a Postfix on ``server`` (before vigil protects it), or only set its
    ``queue_directory`` (``move`` false: a backup whose hierarchy's queue moved)."""
    who.require("administrator", "move the mail queue")
    mail = _mail(request)
    forwarded = await forward_to(mail.operations, server, request)
    if forwarded is not None:
        return forwarded
    return _result(
        await mail.set_server_queue_path(body.path, body.postfix_config, body.move, who.name)
    )


@router.post("/servers/{server}/service-mode", response_model=schemas.OperationResult)
async def service_mode(server: str, body: ServiceMode, who: Who, request: Request) -> Any:
    """Start the services at boot again (auto) or not (manual), on ``server``."""
    who.require("administrator", "change how services start")
    mail = _mail(request)
    forwarded = await forward_to(mail.operations, server, request)
    if forwarded is not None:
        return forwarded
    return _result(await mail.set_service_mode(body.mode, body.services))
