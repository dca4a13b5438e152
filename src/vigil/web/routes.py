"""The web UI's routes, gathered in one router the API app includes (``vigil.api.app``):
the pages, the login, the live stream, the static files shipped in the package, and the
two API routes the UI needs beyond the CLI's (``vigil.api.webui``)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from vigil.api import webui
from vigil.web import details, live, login, mailpage, mirrorpage, pages, wizards

router = APIRouter()
for part in (webui, login, live, pages, details, wizards, mailpage, mirrorpage):
    router.include_router(part.router)

_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: every static file, read once: name -> (bytes, media type)
_STATIC: dict[str, tuple[bytes, str]] = {}
_root = resources.files("vigil.web") / "static"
for _folder in (_root, _root / "vendor"):
    for _item in _folder.iterdir():
        _suffix = "." + _item.name.rsplit(".", 1)[-1]
        if _item.is_file() and _suffix in _TYPES:
            _name = _item.name if _folder == _root else f"vendor/{_item.name}"
            _STATIC[_name] = (_item.read_bytes(), _TYPES[_suffix])


@router.get("/ui/static/{name:path}", include_in_schema=False)
async def static(name: str) -> Response:
    """A file shipped in the package (``vigil/web/static``); nothing else."""
    found = _STATIC.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    body, media_type = found
    return Response(
        body,
        media_type=media_type,
        headers={"cache-control": "max-age=300", "x-content-type-options": "nosniff"},
    )
