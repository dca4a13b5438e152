"""Logging people in: a password checked through PAM, a role from their operating-system
groups (``[web]`` in the agent configuration: ``vigil-admin``, ``vigil-oper``,
``vigil-guest`` by default, the seed's lkadmin, lkoper, lkguest), then a session
(``vigil.api.sessions``).

PAM blocks (``pam_unix`` waits about 2 s after a wrong password), so it runs in a thread,
at most ``_CONCURRENT`` at a time: a flood of logins can never hold up the agent's loop.
The login form itself is protected against CSRF by a double-submitted cookie.
"""

from __future__ import annotations

import asyncio
import grp
import hmac
import logging
import os
import pwd
import secrets
from urllib.parse import parse_qs

import pam
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from vigil.agent.config import WebSettings
from vigil.api.sessions import (
    COOKIE,
    clear_cookie,
    close_session,
    open_session,
    set_cookie,
    settings_of,
    store_of,
)
from vigil.web.render import operations_of, render, viewer_of

log = logging.getLogger("vigil.web")
router = APIRouter()

LOGIN_CSRF_COOKIE = "vigil_login"
_CONCURRENT = asyncio.Semaphore(4)


class LoginRefused(Exception):
    """Why a person may not log in, in words fit to show them."""


def check_password(service: str, user: str, password: str) -> bool:
    """PAM's verdict on ``user``/``password`` (authentication and account checks)."""
    authenticator = pam.PamAuthenticator()
    return bool(authenticator.authenticate(user, password, service=service, resetcreds=False))


def groups_of(user: str) -> set[str]:
    """Names of every group ``user`` is in (primary and supplementary)."""
    entry = pwd.getpwnam(user)
    names = set()
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names


def role_of(settings: WebSettings, groups: set[str]) -> str | None:
    """The highest role one of ``groups`` gives, or None."""
    for group, role in (
        (settings.admin_group, "administrator"),
        (settings.operator_group, "operator"),
        (settings.guest_group, "guest"),
    ):
        if group in groups:
            return role
    return None


async def authenticate(settings: WebSettings, user: str, password: str) -> str:
    """The role of ``user`` once PAM accepts the password; ``LoginRefused`` otherwise."""
    if not user or not password or "\0" in user + password or len(user) > 256:
        raise LoginRefused("give a user name and a password")
    async with _CONCURRENT:
        accepted = await asyncio.to_thread(check_password, settings.pam_service, user, password)
    if not accepted:
        log.warning("web login refused for %s: wrong user name or password", user)
        raise LoginRefused("wrong user name or password")
    role = role_of(settings, groups_of(user))
    if role is None:
        wanted = ", ".join((settings.admin_group, settings.operator_group, settings.guest_group))
        log.warning("web login refused for %s: in none of the groups %s", user, wanted)
        raise LoginRefused(
            f"{user} is in none of the groups {wanted}: an administrator must add "
            f"{user} to one of them (usermod -aG GROUP {user})"
        )
    return role


def _login_cookie(response: Response, request: Request, token: str) -> None:
    """The login form's double-submitted CSRF cookie (Secure under TLS)."""
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        path="/ui/login",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _safe_next(target: str) -> str:
    """Only a path of this UI (never another site) to go back to after login."""
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/"


def _switched_off(request: Request) -> Response | None:
    if settings_of(request).enabled:
        return None
    text = "the web UI is switched off on this agent ([web] enabled = false in its configuration)"
    return Response(text, status_code=404, media_type="text/plain")


@router.get("/ui/login", include_in_schema=False)
async def login_page(request: Request, next: str = "/ui/") -> Response:
    off = _switched_off(request)
    if off is not None:
        return off
    token = secrets.token_urlsafe(24)
    response = render(
        request, "login.html", None, token=token, next=_safe_next(next), error="", user=""
    )
    _login_cookie(response, request, token)
    return response


@router.post("/ui/login", include_in_schema=False)
async def login(request: Request) -> Response:
    off = _switched_off(request)
    if off is not None:
        return off
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
    user, target = form.get("user", "").strip(), _safe_next(form.get("next", "/ui/"))
    sent, expected = form.get("token", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    settings = settings_of(request)
    try:
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise LoginRefused("the login form expired: try again")
        role = await authenticate(settings, user, form.get("password", ""))
    except LoginRefused as exc:
        token = secrets.token_urlsafe(24)
        response = render(
            request, "login.html", None, 401, token=token, next=target, error=str(exc), user=user
        )
        _login_cookie(response, request, token)
        return response
    operations = operations_of(request)
    session_id, _ = await open_session(
        store_of(request), user, role, settings.session_timeout, operations.server
    )
    log.info("web login: %s (%s) on %s", user, role, operations.server)
    done = RedirectResponse(target, status_code=303)
    set_cookie(done, request, session_id, settings.session_timeout)
    done.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return done


@router.post("/ui/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    """Close the session (the form sends its CSRF token)."""
    viewer = await viewer_of(request)
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
    if viewer is not None and hmac.compare_digest(
        form.get("csrf", "").encode(), viewer.csrf.encode()
    ):
        await close_session(store_of(request), request.cookies.get(COOKIE, ""))
        log.info("web logout: %s", viewer.user)
    response = RedirectResponse("/ui/login", status_code=303)
    clear_cookie(response, request)
    return response
