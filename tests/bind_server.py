"""A real BIND 9 (``named`` from Debian's bind9 package) for tests of the dns kit.

``bind_server()`` is a context manager: it writes a ``named.conf`` in a fresh temporary
directory (listening only on the given address and port, no recursion, pid file and
everything else in that directory), a TSIG key, a forward zone and a reverse zone for a
network, both accepting dynamic updates signed with the key; starts ``named -g`` (in the
foreground) and waits until it answers the forward zone's SOA. On exit, also when the test
failed, it kills ``named`` and removes the directory: no ``named`` is left behind.

Without a lab, BIND listens on 127.0.0.1 and a free port; with ``lab`` and ``server``, it
runs inside that lab server's namespaces (``Lab.spawn``) on the server's address, port 53.

    with bind_server(network="192.0.2.0/24") as bind:
        properties = bind.kit_properties("web", address="192.0.2.10")
        assert bind.lookup("web", "A") == set()
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.reversename

from vigil.lab.lab import Lab

__all__ = ["BindServer", "bind_server", "named_processes"]

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


@dataclass
class BindServer:
    """A running ``named``: where it listens, its zones and its TSIG key."""

    address: str
    port: int
    zone: str
    reverse_zone: str
    key_name: str
    algorithm: str
    secret: str = field(repr=False)
    directory: Path
    log_file: Path
    pid: int

    @property
    def endpoint(self) -> str:
        """The server as the dns kit's ``servers`` property lists it."""
        return self.address if self.port == 53 else f"{self.address}:{self.port}"

    def fqdn(self, name: str) -> str:
        return dns.name.from_text(name, dns.name.from_text(self.zone)).to_text()

    def lookup(self, name: str, rdtype: str = "A") -> set[str]:
        """What BIND answers (authoritatively, unsigned, like any client) for ``name``
        (relative to the zone, or absolute) and ``rdtype``: the record data as text."""
        qname = dns.name.from_text(name, dns.name.from_text(self.zone))
        query = dns.message.make_query(qname, rdtype)
        query.flags &= ~dns.flags.RD
        reply = dns.query.tcp(query, self.address, timeout=5.0, port=self.port)
        wanted = dns.rdatatype.from_text(rdtype)
        return {
            rdata.to_text()
            for rrset in reply.answer
            if rrset.name == qname and rrset.rdtype == wanted
            for rdata in rrset
        }

    def ptr(self, address: str) -> set[str]:
        """The PTR records of ``address``."""
        return self.lookup(dns.reversename.from_address(address).to_text(), "PTR")

    def kit_properties(self, name: str, address: str, **extra: Any) -> dict[str, Any]:
        """Properties of a dns resource protecting ``name`` in this server's zone."""
        return {
            "zone": self.zone,
            "name": name,
            "servers": [self.endpoint],
            "tsig_key": self.key_name,
            "tsig_algorithm": self.algorithm,
            "tsig_secret": self.secret,
            "address": address,
            **extra,
        }

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def reverse_zone_of(network: str) -> str:
    """The in-addr.arpa zone of an IPv4 /8, /16 or /24 network."""
    net = ipaddress.IPv4Network(network)
    if net.prefixlen not in (8, 16, 24):
        raise ValueError(f"{network}: only /8, /16 and /24 networks have a reverse zone here")
    octets = str(net.network_address).split(".")[: net.prefixlen // 8]
    return ".".join(reversed(octets)) + ".in-addr.arpa."


@contextlib.contextmanager
def bind_server(
    *,
    lab: Lab | None = None,
    server: str | None = None,
    zone: str = "lab.example.",
    network: str = "192.0.2.0/24",
    records: Mapping[str, str] | None = None,
    key_name: str = "vigil-test-key",
    algorithm: str = "hmac-sha256",
) -> Iterator[BindServer]:
    """A running BIND serving ``zone`` and the reverse zone of ``network``, both updatable
    with a fresh TSIG key. ``records`` maps names (relative to the zone) to IPv4 addresses:
    A records written in the zone file, with their PTR records when inside ``network``."""
    if (lab is None) != (server is None):
        raise ValueError("give both lab and server, or neither")
    secret = base64.b64encode(os.urandom(32)).decode()
    directory = Path(tempfile.mkdtemp(prefix="vigil-bind-"))
    directory.chmod(0o755)
    running: BindServer | None = None
    try:
        for attempt in range(5):
            if lab is not None and server is not None:
                address, port = lab.info().server(server).address, 53
            else:
                address, port = "127.0.0.1", _free_port()
            conf = _write_config(
                directory, address, port, zone, network, records or {}, key_name, algorithm, secret
            )
            running = BindServer(
                address=address,
                port=port,
                zone=zone,
                reverse_zone=reverse_zone_of(network),
                key_name=key_name,
                algorithm=algorithm,
                secret=secret,
                directory=directory,
                log_file=directory / f"named-{attempt}.log",
                pid=_start(lab, server, conf, directory / f"named-{attempt}.log"),
            )
            if _wait_answering(running):
                break
            log = running.log()
            _stop(running)
            running = None
            if lab is not None or "address in use" not in log:
                raise RuntimeError(f"named did not start; its log:\n{log[-3000:]}")
        if running is None:
            raise RuntimeError("named did not start: no free port after 5 attempts")
        yield running
    finally:
        if running is not None:
            _stop(running)
        for pid in named_processes(str(directory)):
            _kill(pid)
        shutil.rmtree(directory, ignore_errors=True)


def named_processes(mentioning: str = "") -> list[int]:
    """Live ``named`` processes whose command line contains ``mentioning``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        named = bool(argv) and os.path.basename(argv[0]) == b"named"
        if named and state not in ("Z", "X") and mentioning.encode() in b" ".join(argv):
            found.append(int(entry.name))
    return found


# --- configuration -----------------------------------------------------------------------


def _write_config(
    directory: Path,
    address: str,
    port: int,
    zone: str,
    network: str,
    records: Mapping[str, str],
    key_name: str,
    algorithm: str,
    secret: str,
) -> Path:
    reverse = reverse_zone_of(network)
    net = ipaddress.IPv4Network(network)
    forward_lines, reverse_lines = [], []
    for name, value in records.items():
        forward_lines.append(f"{name} IN A {value}")
        if ipaddress.IPv4Address(value) in net:
            owner = dns.reversename.from_address(value).to_text()
            target = dns.name.from_text(name, dns.name.from_text(zone)).to_text()
            reverse_lines.append(f"{owner} IN PTR {target}")
    soa = f"@ IN SOA ns.{zone} hostmaster.{zone} 1 3600 600 86400 30\n@ IN NS ns.{zone}\n"
    (directory / "forward.db").write_text(
        f"$TTL 60\n{soa}ns IN A {address}\n" + "\n".join(forward_lines) + "\n"
    )
    (directory / "reverse.db").write_text(f"$TTL 60\n{soa}" + "\n".join(reverse_lines) + "\n")
    conf = directory / "named.conf"
    conf.write_text(
        f'key "{key_name}" {{ algorithm {algorithm}; secret "{secret}"; }};\n'
        "options {\n"
        f'  directory "{directory}";\n'
        f'  pid-file "{directory}/named.pid";\n'
        f'  session-keyfile "{directory}/session.key";\n'
        f'  managed-keys-directory "{directory}";\n'
        f"  listen-on port {port} {{ {address}; }};\n"
        "  listen-on-v6 { none; };\n"
        "  recursion no;\n"
        "  dnssec-validation no;\n"
        "  notify no;\n"
        "};\n"
        "controls { };\n"
        f'zone "{zone}" {{ type primary; file "{directory}/forward.db"; '
        f"allow-update {{ key {key_name}; }}; }};\n"
        f'zone "{reverse}" {{ type primary; file "{directory}/reverse.db"; '
        f"allow-update {{ key {key_name}; }}; }};\n"
    )
    return conf


# --- the process -------------------------------------------------------------------------


def _start(lab: Lab | None, server: str | None, conf: Path, log_file: Path) -> int:
    argv = ["named", "-g", "-c", str(conf), "-u", "root"]
    if lab is not None and server is not None:
        return lab.spawn(server, argv, log_file)
    with log_file.open("ab") as log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return child.pid


def _wait_answering(bind: BindServer) -> bool:
    """True once BIND answers the zone's SOA; False when ``named`` exited first."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(bind.pid) or "address in use" in bind.log():
            return False
        try:
            if bind.lookup("@", "SOA"):
                return True
        except (OSError, EOFError, dns.exception.DNSException):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"named did not answer within {START_TIMEOUT:g}s; log:\n{bind.log()}")


def _stop(bind: BindServer) -> None:
    _kill(bind.pid)


def _kill(pid: int) -> None:
    """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; reaps our own child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return
    raise RuntimeError(f"named (pid {pid}) survived SIGKILL")


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 right now."""
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
