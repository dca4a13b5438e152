"""Token authentication and the seed's three roles.

* guest — may look (status, properties, events);
* operator — may also bring hierarchies in and out of service (switchover), and pause,
  continue, resync or break a mirror target;
* administrator — may do everything: create, extend, delete, properties, comm paths.

Scripts send a token; people logged in to the web UI send its session cookie instead
(``vigil.api.sessions``: a session from a PAM login, with a CSRF token on every change).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from vigil.agent.config import TokensFile
from vigil.api.sessions import COOKIE, session_caller
from vigil.errors import AuthError

RANKS = {"guest": 0, "operator": 1, "administrator": 2}


@dataclass(frozen=True)
class Caller:
    name: str
    role: str

    def require(self, role: str, what: str) -> None:
        if RANKS[self.role] < RANKS[role]:
            raise AuthError(
                f"{self.name} ({self.role}) may not {what}: that needs the {role} role",
                forbidden=True,
            )


class Authenticator:
    def __init__(self, tokens: TokensFile) -> None:
        self._tokens = [
            (entry.token.encode(), Caller(entry.name, entry.role)) for entry in tokens.token
        ]

    def caller(self, authorization: str | None) -> Caller:
        """The caller for an ``Authorization: Bearer TOKEN`` header, or ``AuthError``."""
        if not authorization:
            raise AuthError(
                "no token: send 'Authorization: Bearer <token>' (vigil --token or VIGIL_TOKEN)"
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("malformed Authorization header: expected 'Bearer <token>'")
        for known, caller in self._tokens:
            if hmac.compare_digest(known, token.strip().encode()):
                return caller
        raise AuthError("unknown token: check the token given to vigil (--token or VIGIL_TOKEN)")


async def _caller(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller:
    if not authorization and COOKIE in request.cookies:
        caller = Caller(*await session_caller(request))
    else:
        authenticator: Authenticator = request.app.state.auth
        caller = authenticator.caller(authorization)
    request.state.caller = caller  # for the audit log (vigil.api.audit)
    return caller


#: the authenticated caller of a route (a FastAPI dependency)
Who = Annotated[Caller, Depends(_caller)]
