"""TLS for the agents' API: the server's certificate, and whom a client trusts.

Every agent serves its API and the web UI over HTTPS with the certificate and key named in
``[tls]`` of its configuration (``vigil ca issue`` makes them, or bring your own). A client
of an agent (another agent forwarding a request, the CLI, the lab, the tests) checks the
agent's certificate against the cluster CA (``[tls] ca_file``, the client file's
``ca_file``, ``VIGIL_CA_FILE``), or against the system's trusted CAs when none is named:
its address must be in the certificate (subjectAltName), so one agent's certificate cannot
stand in for another's. Plain HTTP is possible only with ``[tls] plain_http = true``, and
the agent says so in its log when it starts.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from vigil.errors import ConfigError

__all__ = ["client_context", "describe_tls_error", "server_context"]


def client_context(ca_file: Path | str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and address: against
    ``ca_file`` (PEM) when given, else the system's trusted CAs. TLS 1.2 at least."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot read the CA file {ca_file}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server context with this agent's certificate chain and key (checked to match);
    ``ConfigError`` saying which file is wrong."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except FileNotFoundError as exc:
        raise ConfigError(f"[tls]: {exc.filename} does not exist") from exc
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"[tls]: the certificate {cert_file} and key {key_file} cannot be used together "
            f"({exc}); issue a new pair with `vigil ca issue`"
        ) from exc
    return context


def describe_tls_error(exc: BaseException) -> str | None:
    """What an administrator should know when a TLS handshake failed (``None`` when
    ``exc`` is not about TLS)."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLCertVerificationError):
        return (
            "its certificate is not trusted (not signed by the cluster CA in [tls] ca_file, "
            "expired, or not issued for this address)"
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return "it does not speak TLS there (is it configured with plain_http?)"
    return None
