"""Rendering pages: the Jinja2 environment (templates shipped in the package, autoescaped),
who is looking (``Viewer``, from the session cookie), and the answers' security headers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from vigil import __version__
from vigil.agent.operations import Operations
from vigil.api.auth import RANKS, Caller
from vigil.api.sessions import request_session
from vigil.model.cluster import Cluster

#: every page's Content-Security-Policy: nothing but this origin, no inline script or style
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}

#: CSS class of each state, server state and global status (colours in vigil.css)
STATE_CLASS = {
    "ISP": "st-isp",
    "ISU": "st-isu",
    "OSU": "st-osu",
    "OSF": "st-osf",
    "UNKNOWN": "st-unknown",
    "ALIVE": "st-isp",
    "ALIVE-with-warning": "st-warn",
    "DEAD": "st-osf",
    "Normal": "st-isp",
    "Warning": "st-warn",
    "Failed": "st-osf",
    "Unknown": "st-unknown",
    # a mirror's copies (the mirror kit's states, DataKeeper's names)
    "Source": "st-isp",
    "Mirroring": "st-isp",
    "Resynchronizing": "st-isu",
    "Paused": "st-warn",
    "Resync Pending": "st-warn",
    "Broken": "st-osf",
}
#: what each state means, for people (the seed's words)
STATE_TEXT = {
    "ISP": "in service, protected",
    "ISU": "in service, unprotected",
    "OSU": "out of service, unimpaired",
    "OSF": "out of service, failed",
    "UNKNOWN": "unknown: its agent cannot be reached",
}


@dataclass(frozen=True)
class Viewer:
    """The person looking at a page: who, with which role, and the session's CSRF token
    (given to the page's scripts, sent back with every change)."""

    user: str
    role: str
    csrf: str

    @property
    def caller(self) -> Caller:
        return Caller(self.user, self.role)

    @property
    def can_operate(self) -> bool:
        return RANKS[self.role] >= RANKS["operator"]

    @property
    def can_administer(self) -> bool:
        return RANKS[self.role] >= RANKS["administrator"]


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""


def _ago(at: float) -> str:
    if not at:
        return ""
    seconds = max(0.0, time.time() - at)
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _size(count: float) -> str:
    """A number of bytes for people: ``0 B``, ``512 KiB``, ``12.5 MiB``."""
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{value:.0f} {unit}" if unit == "B" or abs(value) >= 100 else f"{value:.1f} {unit}"


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("vigil.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["when"] = _when
_env.filters["ago"] = _ago
_env.filters["size"] = _size
_env.filters["url"] = lambda value: quote(str(value), safe="")
_env.globals.update(
    state_class=lambda state: STATE_CLASS.get(str(state), "st-unknown"),
    state_text=STATE_TEXT,
    instance_on=lambda resource, server: next(
        (i for i in resource.instances if i.server == server), None
    ),
    version=__version__,
)


def operations_of(request: Request) -> Operations:
    operations: Operations = request.app.state.operations
    return operations


async def cached(request: Request) -> Cluster:
    """The agent's cached view (as the API's status): current as its watch."""
    cache = operations_of(request).cache
    return cache.cluster if cache.loaded else await cache.reload()


async def viewer_of(request: Request) -> Viewer | None:
    """Who is logged in on this request's session cookie, or None."""
    record = await request_session(request)
    return Viewer(record.user, record.role, record.csrf) if record else None


def to_login(request: Request) -> Response:
    """Send a person who is not logged in (or no longer) to the login page; a fragment
    asked for by htmx is answered with a redirect htmx follows."""
    target = "/ui/login?next=" + quote(request.url.path, safe="/")
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"hx-redirect": target})
    return RedirectResponse(target, status_code=303)


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page or fragment rendered with ``context`` and who is looking."""
    operations = operations_of(request)
    html = _env.get_template(template).render(
        request=request, viewer=viewer, agent=operations.server, **context
    )
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def missing(request: Request, viewer: Viewer | None, message: str) -> HTMLResponse:
    """The 404 page: what was asked for is not there (``message`` says what)."""
    return render(request, "missing.html", viewer, 404, message=message, digest="")
