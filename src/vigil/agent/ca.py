"""A cluster certificate authority for the agents' TLS (``vigil ca init``, ``vigil ca issue``).

The agents serve their API (and the web UI) over HTTPS and check each other's certificate
when one forwards a request to another. Each needs a certificate for its addresses; this
module makes a small CA for the cluster and issues them, with the ``cryptography`` library
(no home-made cryptography, no openssl command line):

* ``init_ca(directory)`` writes ``ca.pem`` (the CA certificate: give it to every agent as
  ``[tls] ca_file`` and to every client) and ``ca.key`` (its private key, mode 0600: keep
  it on one machine, offline if you can);
* ``issue(directory, server, addresses)`` writes ``SERVER.pem`` (the certificate, then the
  CA's: a chain) and ``SERVER.key`` (mode 0600) for that server's IP addresses and names,
  usable as a server and as a client certificate.

Keys are ECDSA P-256; certificates are X.509 v3 with subjectAltName, key usage and
extended key usage as browsers, Python's ``ssl`` and etcd expect. An administrator may
bring certificates of their own instead: the agent only reads the files named in its
configuration.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vigil.errors import ConfigError

__all__ = ["CA_CERT", "CA_KEY", "Issued", "init_ca", "issue"]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
#: a certificate's validity when none is given: the CA ten years, a server about two
CA_DAYS = 3650
SERVER_DAYS = 825


@dataclass(frozen=True)
class Issued:
    """The files a step wrote."""

    cert_file: Path
    key_file: Path


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` (never over an existing file: keys are not replaced by
    accident)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists already: remove it first to make a new one") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: Path, name: str = "vigil cluster CA", days: int = CA_DAYS) -> Issued:
    """Make a new CA in ``directory`` (``ca.pem`` and ``ca.key``); ``ConfigError`` when
    one is there already."""
    directory.mkdir(parents=True, exist_ok=True)
    for existing in (directory / CA_CERT, directory / CA_KEY):
        if existing.exists():
            raise ConfigError(
                f"{existing} exists already: this directory has a CA (issue certificates "
                "with `vigil ca issue`), or remove it to start over"
            )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    public = key.public_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / CA_KEY, _key_pem(key), 0o600)
    _write(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return Issued(directory / CA_CERT, directory / CA_KEY)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no CA in {directory} ({exc.filename} is missing): make one with `vigil ca init`"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"the CA in {directory} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / CA_KEY} is not a key `vigil ca init` made")
    return cert, key


def _alt_names(addresses: list[str], names: list[str]) -> list[x509.GeneralName]:
    alt: list[x509.GeneralName] = []
    for address in addresses:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError as exc:
            raise ConfigError(
                f"{address!r} is not an IP address (give host names with --dns)"
            ) from exc
    alt += [x509.DNSName(name) for name in dict.fromkeys(names) if name]
    return alt


def issue(
    directory: Path,
    server: str,
    addresses: list[str],
    names: list[str] | None = None,
    days: int = SERVER_DAYS,
    out: Path | None = None,
) -> Issued:
    """Issue a certificate for ``server`` (its ``addresses`` and DNS ``names``, the server's
    name among them) signed by the CA in ``directory``; written to ``out`` (default: the
    CA's directory) as ``SERVER.pem`` (certificate and CA: a chain) and ``SERVER.key``."""
    if not addresses and not names:
        raise ConfigError(f"a certificate for {server} needs at least one address or name")
    ca_cert, ca_key = _load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(_alt_names(addresses, [server, *(names or [])])),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    target = out or directory
    target.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = target / f"{server}.pem", target / f"{server}.key"
    if cert_file.exists() or key_file.exists():
        raise ConfigError(
            f"{cert_file} or {key_file} exists already: remove both to issue {server} a new one"
        )
    _write(key_file, _key_pem(key), 0o600)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
        serialization.Encoding.PEM
    )
    _write(cert_file, chain, 0o644)
    return Issued(cert_file, key_file)
