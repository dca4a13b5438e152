"""The mail page of a mail hierarchy: the failed-users log (users not yet moved to the
server in service), the optional services per server, and where a user's mailbox is. The
page's script reads them from the mail API (``/v1/mail/{tag}/failed-users``, which the API
reads on the server in service, ``/services``, ``/home``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from vigil.engine import changes
from vigil.errors import ValidationError
from vigil.web.render import cached, missing, render, to_login, viewer_of

router = APIRouter(include_in_schema=False)


@router.get("/ui/mail/{tag}")
async def mail_page(tag: str, request: Request) -> Response:
    viewer = await viewer_of(request)
    if viewer is None:
        return to_login(request)
    cluster = await cached(request)
    try:
        resource = changes.require_resource(cluster, tag)
    except ValidationError as exc:
        return missing(request, viewer, str(exc))
    if resource.kit != "mail":
        message = f"{tag} is a {resource.kit} resource, not a mail one"
        return missing(request, viewer, message)
    hierarchy = cluster.hierarchy(tag)
    return render(
        request,
        "mail.html",
        viewer,
        tag=tag,
        hierarchy=hierarchy.name,
        active=cluster.intended_server(hierarchy),
        digest="",
    )
