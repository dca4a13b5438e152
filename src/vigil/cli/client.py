"""How the CLI reaches an agent's API: where, with which token, and what errors mean.

Connection settings, first found wins: ``--url``/``--token`` options; the ``VIGIL_URL`` and
``VIGIL_TOKEN`` environment variables; the client file named by ``VIGIL_CLIENT_CONFIG``;
``~/.config/vigil/client.toml``; the running lab's ``/run/vigil-lab/client.toml``.

A client file::

    url = "https://10.0.0.1:7480"
    urls = ["https://10.0.0.1:7480", "https://10.0.0.2:7480"]   # tried in order
    ca_file = "/etc/vigil/tls/ca.pem"   # the cluster CA (else the system's trusted CAs)
    [tokens]
    administrator = "..."

The agents' certificates are checked against the CA in ``VIGIL_CA_FILE``, else the
``ca_file`` of the client file that gave the URL, else the system's trusted CAs.

Exit codes the CLI guarantees: 0 done; 1 the operation was carried out but failed (e.g. a
restore failed); 2 refused (bad input, nothing changed); 3 not authorised; 4 no agent
could be reached.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from vigil.agent.tls import client_context, describe_tls_error
from vigil.errors import ConfigError

EXIT_FAILED, EXIT_REFUSED, EXIT_AUTH, EXIT_UNREACHABLE = 1, 2, 3, 4


class CliError(Exception):
    """An error the CLI prints as one line and turns into an exit code."""

    def __init__(self, message: str, exit_code: int, problems: list[str] | None = None) -> None:
        self.exit_code = exit_code
        self.problems = problems or []
        super().__init__(message)


@dataclass(frozen=True)
class Connection:
    urls: tuple[str, ...]
    token: str | None
    #: the CA the agents' certificates are checked against (None: the system's)
    ca_file: str | None = None

    def verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify`` for these agents (plain HTTP URLs need none)."""
        if not any(url.startswith("https:") for url in self.urls):
            return True
        try:
            return client_context(self.ca_file)
        except ConfigError as exc:
            raise CliError(f"{exc} (VIGIL_CA_FILE or the client file's ca_file)", 2) from exc


def _client_files() -> list[Path]:
    files = []
    if os.environ.get("VIGIL_CLIENT_CONFIG"):
        files.append(Path(os.environ["VIGIL_CLIENT_CONFIG"]))
    files.append(Path.home() / ".config" / "vigil" / "client.toml")
    files.append(Path("/run/vigil-lab/client.toml"))
    return files


def connection(url: str | None, token: str | None) -> Connection:
    url = url or os.environ.get("VIGIL_URL")
    token = token or os.environ.get("VIGIL_TOKEN")
    ca_file = os.environ.get("VIGIL_CA_FILE")
    for path in _client_files():
        if url and token:
            break
        if not path.is_file():
            continue
        with path.open("rb") as handle:
            data = tomllib.load(handle)
        if not url:
            urls = data.get("urls") or [data.get("url")]
            url = ",".join(u for u in urls if u)
            ca_file = ca_file or data.get("ca_file")
        if not token:
            tokens = data.get("tokens", {})
            token = tokens.get("administrator") or next(iter(tokens.values()), None)
    if not url:
        raise CliError(
            "no agent to talk to: give --url (or VIGIL_URL), or start a lab with 'vigil lab up'",
            EXIT_UNREACHABLE,
        )
    urls = tuple(u.strip().rstrip("/") for u in url.split(",") if u.strip())
    return Connection(urls, token, ca_file)


def request(
    conn: Connection, method: str, path: str, body: Any = None, timeout: float = 330.0
) -> Any:
    """Send one request to the first agent that answers; return the decoded JSON body."""
    headers = {"authorization": f"Bearer {conn.token}"} if conn.token else {}
    last_error = ""
    verify = conn.verify()
    for base in conn.urls:
        try:
            answer = httpx.request(
                method,
                base + path,
                json=body,
                headers=headers,
                timeout=timeout,
                trust_env=False,
                verify=verify,
            )
        except httpx.TransportError as exc:
            why = describe_tls_error(exc)
            last_error = f"{base}: {why + ': ' if why else ''}{exc or type(exc).__name__}"
            continue
        return _decode(answer)
    raise CliError(f"no agent answered ({last_error})", EXIT_UNREACHABLE)


def _decode(answer: httpx.Response) -> Any:
    try:
        data = answer.json()
    except ValueError:
        data = {"error": answer.text}
    if answer.is_success:
        return data
    message = data.get("error") if isinstance(data, dict) else str(data)
    problems = data.get("problems", []) if isinstance(data, dict) else []
    if answer.status_code in (401, 403):
        raise CliError(message or "not authorised", EXIT_AUTH)
    if answer.status_code in (400, 404, 409, 422):
        raise CliError(message or "refused", EXIT_REFUSED, problems)
    if answer.status_code == 503:
        raise CliError(message or "unavailable", EXIT_UNREACHABLE)
    raise CliError(message or f"HTTP {answer.status_code}", EXIT_FAILED, problems)
