"""A real BIND 9 (``named`` from Debian's bind9 package) for the lab: the DNS server the
dns kit updates, for the demo and the tests.

``start`` writes, under ``ROOT/dns/WHERE/`` (mode 0700), a ``named.conf`` listening only
on the given address and port (no recursion, pid file and everything else in that
directory), a TSIG key (its secret also in ``tsig.secret``, mode 0600, never in
``lab.json``), a forward zone and a reverse zone for a network, both accepting dynamic
updates signed with the key; starts ``named -g`` (in the foreground, so its pid is the one
recorded) and waits until it answers the forward zone's SOA.

In a lab, BIND runs inside a lab server (``nodeK``: its network and mount namespaces) or
in a dedicated namespace on the lab's bridge (a lab client, ``clientK``, created when
missing), on port 53; ``Lab.add_dns_server`` records it in ``lab.json`` (``dns_servers``)
and ``Lab.down`` kills it (by its recorded pid, and with everything else running in the
lab's namespaces) and removes its directory with the lab's root, also after a crash.

The building blocks (``write_config``, ``wait_answering``, ``kill``, ``named_processes``)
also serve a BIND on loopback outside any lab (``tests/bind_server.py``).
"""

from __future__ import annotations

import base64
import ipaddress
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.resolver
import dns.reversename

from vigil.errors import LabError
from vigil.lab import clients, processes
from vigil.lab.files import DnsServerState, LabState, load_state, save_state
from vigil.lab.naming import LabNames

#: seconds ``named`` gets to answer its zone's SOA after it started
START_TIMEOUT = 20.0
#: seconds between SIGTERM and SIGKILL when ``named`` is stopped
STOP_TIMEOUT = 5.0
DEFAULT_ZONE = "lab.example."
DEFAULT_KEY = "vigil-lab-key"
DEFAULT_ALGORITHM = "hmac-sha256"
SECRET_FILE = "tsig.secret"
LOG_FILE = "named.log"


@dataclass(frozen=True)
class DnsServerInfo:
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
    where: str = ""

    @property
    def endpoint(self) -> str:
        """The server as the dns kit's ``servers`` property lists it."""
        return self.address if self.port == 53 else f"{self.address}:{self.port}"

    @property
    def secret_file(self) -> Path:
        return self.directory / SECRET_FILE

    def fqdn(self, name: str) -> str:
        """``name`` (relative to the zone, or absolute) as an absolute name."""
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
        """``named``'s output so far ('' if none)."""
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def resolve(server: str, port: int, name: str, timeout: float = 3.0) -> list[str]:
    """The A records of ``name`` as a stub resolver asking only ``server`` sees them
    (no cache); [] when the name has none."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server]
    resolver.port = port
    resolver.cache = None
    resolver.lifetime = timeout
    try:
        answer = resolver.resolve(name, "A")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    return sorted(record.to_text() for record in answer)


def reverse_zone_of(network: str) -> str:
    """The in-addr.arpa zone of an IPv4 /8, /16 or /24 network."""
    net = ipaddress.IPv4Network(network)
    if net.prefixlen not in (8, 16, 24):
        raise ValueError(f"{network}: only /8, /16 and /24 networks have a reverse zone here")
    octets = str(net.network_address).split(".")[: net.prefixlen // 8]
    return ".".join(reversed(octets)) + ".in-addr.arpa."


def new_secret() -> str:
    """A fresh TSIG secret (256 random bits, base64)."""
    return base64.b64encode(os.urandom(32)).decode()


def write_config(
    directory: Path,
    *,
    address: str,
    port: int,
    zone: str,
    network: str,
    records: Mapping[str, str],
    key_name: str,
    algorithm: str,
    secret: str,
) -> Path:
    """Write ``named.conf``, the zone files and ``tsig.secret`` into ``directory``;
    returns the path of ``named.conf``. ``records`` (name relative to the zone → IPv4
    address) become A records, with PTR records for the addresses inside ``network``."""
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
    secret_file = directory / SECRET_FILE
    secret_file.touch(mode=0o600)
    secret_file.write_text(secret + "\n")
    conf = directory / "named.conf"
    conf.touch(mode=0o600)
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


def named_argv(conf: Path) -> list[str]:
    """``named`` in the foreground, logging to stderr, on configuration ``conf``."""
    return ["named", "-g", "-c", str(conf), "-u", "root"]


def wait_answering(server: DnsServerInfo, timeout: float = START_TIMEOUT) -> bool:
    """True once BIND answers the zone's SOA; False when ``named`` exited first (or
    says its address is in use). ``LabError`` with its log after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not processes.is_alive(server.pid) or "address in use" in server.log():
            return False
        try:
            if server.lookup("@", "SOA"):
                return True
        except (OSError, EOFError, dns.exception.DNSException):
            pass
        time.sleep(0.1)
    raise LabError(f"named did not answer within {timeout:g}s; its log:\n{server.log()[-3000:]}")


def kill(pid: int) -> None:
    """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``; ``LabError`` if it survives."""
    if processes.terminate([pid], STOP_TIMEOUT):
        raise LabError(f"named (pid {pid}) survived SIGKILL")


def named_processes(mentioning: str = "") -> list[int]:
    """Live ``named`` processes whose command line contains ``mentioning``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = bool(argv) and os.path.basename(argv[0]) == b"named"
        if named and mentioning.encode() in b" ".join(argv) and processes.is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def info_of(record: DnsServerState) -> DnsServerInfo:
    """The ``DnsServerInfo`` of a server recorded in ``lab.json`` (secret from its file)."""
    directory = Path(record.directory)
    try:
        secret = (directory / SECRET_FILE).read_text().strip()
    except OSError as exc:
        raise LabError(f"the DNS server in {record.where} has lost its key file: {exc}") from exc
    return DnsServerInfo(
        address=record.address,
        port=record.port,
        zone=record.zone,
        reverse_zone=record.reverse_zone,
        key_name=record.key_name,
        algorithm=record.algorithm,
        secret=secret,
        directory=directory,
        log_file=directory / LOG_FILE,
        pid=record.pid or 0,
        where=record.where,
    )


def record_of(server: DnsServerInfo) -> DnsServerState:
    """What ``lab.json`` keeps of a DNS server (everything but the secret)."""
    return DnsServerState(
        where=server.where,
        address=server.address,
        port=server.port,
        zone=server.zone,
        reverse_zone=server.reverse_zone,
        key_name=server.key_name,
        algorithm=server.algorithm,
        directory=str(server.directory),
        pid=server.pid,
    )


def stop_recorded(records: Mapping[str, DnsServerState]) -> list[str]:
    """Kill the recorded ``named`` processes still running (a pid is trusted only while
    its command line names the server's directory); messages for survivors."""
    problems = []
    for record in records.values():
        if record.pid is None or record.pid not in named_processes(record.directory):
            continue
        if processes.terminate([record.pid], STOP_TIMEOUT):
            problems.append(f"named of {record.where} (pid {record.pid}): survived SIGKILL")
    return problems


def start(
    enter: list[str],
    directory: Path,
    *,
    where: str,
    address: str,
    zone: str,
    network: str,
    records: Mapping[str, str],
    key_name: str,
    algorithm: str,
) -> tuple[DnsServerInfo, subprocess.Popen[bytes]]:
    """Configure and start ``named`` on ``address`` port 53 through the ``enter`` prefix
    (``nsenter ... --`` into a lab namespace); returns it once it answers, with its
    ``Popen`` for reaping. ``LabError`` with its log if it does not come up (it is killed
    then; ``directory`` stays for the lab's teardown)."""
    directory.mkdir(mode=0o700, parents=True)
    secret = new_secret()
    conf = write_config(
        directory,
        address=address,
        port=53,
        zone=zone,
        network=network,
        records=records,
        key_name=key_name,
        algorithm=algorithm,
        secret=secret,
    )
    child = processes.spawn_detached([*enter, *named_argv(conf)], directory / LOG_FILE)
    server = DnsServerInfo(
        address=address,
        port=53,
        zone=zone,
        reverse_zone=reverse_zone_of(network),
        key_name=key_name,
        algorithm=algorithm,
        secret=secret,
        directory=directory,
        log_file=directory / LOG_FILE,
        pid=child.pid,
        where=where,
    )
    try:
        answering = wait_answering(server)
    except BaseException:
        processes.terminate([child.pid], 0.0)
        raise
    if not answering:
        processes.terminate([child.pid], 0.0)
        raise LabError(f"named in {where} did not start; its log:\n{server.log()[-3000:]}")
    return server, child


def add(
    names: LabNames,
    state: LabState,
    where: str,
    enter: list[str] | None,
    zone: str = DEFAULT_ZONE,
    network: str | None = None,
    *,
    records: Mapping[str, str] | None = None,
    key_name: str = DEFAULT_KEY,
    algorithm: str = DEFAULT_ALGORITHM,
) -> tuple[DnsServerInfo, subprocess.Popen[bytes]]:
    """``Lab.add_dns_server``: start BIND in server ``where`` (``enter``: its ``nsenter``
    prefix) or, with ``enter`` None, in client ``where`` (created when missing), and
    record it in ``lab.json``."""
    if where in state.dns_servers:
        raise LabError(f"lab {names.name} has a DNS server in {where} already")
    if enter is not None:
        address = state.servers[where].address
    else:
        if clients.info(names, where).netns not in clients.netns_names(names):
            clients.add(names, where)
        enter, address = clients.enter_argv(names, where, []), names.client_address(where)
    server, child = start(
        enter,
        names.root / "dns" / where,
        where=where,
        address=address,
        zone=zone,
        network=network or state.subnet,
        records=records or {},
        key_name=key_name,
        algorithm=algorithm,
    )
    state = load_state(names.state_file) or state
    state.dns_servers[where] = record_of(server)
    save_state(names.state_file, state)
    return server, child


def recorded(state: LabState, where: str) -> DnsServerInfo:
    """The DNS server recorded for ``where``; ``LabError`` if there is none."""
    record = state.dns_servers.get(where)
    if record is None:
        raise LabError(f"lab {state.name} has no DNS server in {where}")
    return info_of(record)


def remove(names: LabNames, state: LabState, where: str) -> None:
    """Stop the DNS server in ``where``, remove its files and its record (nothing if
    there is none)."""
    record = state.dns_servers.pop(where, None)
    if record is None:
        return
    problems = stop_recorded({where: record})
    shutil.rmtree(record.directory, ignore_errors=True)
    save_state(names.state_file, state)
    if problems:
        raise LabError("; ".join(problems))
