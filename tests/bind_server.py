"""A real BIND 9 (``named`` from Debian's bind9 package) for tests of the dns kit.

``bind_server()`` is a context manager over ``vigil.lab.dns``: BIND serving a forward zone
and a reverse zone for a network, both accepting dynamic updates signed with a fresh TSIG
key; it waits until BIND answers the forward zone's SOA. On exit, also when the test
failed, it kills ``named`` and removes its directory: no ``named`` is left behind.

Without a lab, BIND listens on 127.0.0.1 and a free port, in a fresh temporary directory;
with ``lab`` and ``server``, it is the lab's DNS server in that lab server
(``Lab.add_dns_server``: its namespaces, its address, port 53; ``Lab.down`` would stop it
too).

    with bind_server(network="192.0.2.0/24") as bind:
        properties = bind.kit_properties("web", address="192.0.2.10")
        assert bind.lookup("web", "A") == set()
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from vigil.lab import dns as lab_dns
from vigil.lab.dns import DnsServerInfo, named_processes, reverse_zone_of
from vigil.lab.lab import Lab

__all__ = ["BindServer", "bind_server", "named_processes", "reverse_zone_of"]

#: a running ``named``: where it listens, its zones and its TSIG key
BindServer = DnsServerInfo


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
    if lab is not None and server is not None:
        running = lab.add_dns_server(
            server,
            zone,
            network,
            records=dict(records or {}),
            key_name=key_name,
            algorithm=algorithm,
        )
        try:
            yield running
        finally:
            lab.remove_dns_server(server)
        return
    with _on_loopback(zone, network, records or {}, key_name, algorithm) as running:
        yield running


@contextlib.contextmanager
def _on_loopback(
    zone: str, network: str, records: Mapping[str, str], key_name: str, algorithm: str
) -> Iterator[BindServer]:
    directory = Path(tempfile.mkdtemp(prefix="vigil-bind-"))
    directory.chmod(0o755)
    secret = lab_dns.new_secret()
    running: BindServer | None = None
    try:
        for attempt in range(5):
            port = _free_port()
            conf = lab_dns.write_config(
                directory,
                address="127.0.0.1",
                port=port,
                zone=zone,
                network=network,
                records=records,
                key_name=key_name,
                algorithm=algorithm,
                secret=secret,
            )
            log_file = directory / f"named-{attempt}.log"
            running = BindServer(
                address="127.0.0.1",
                port=port,
                zone=zone,
                reverse_zone=reverse_zone_of(network),
                key_name=key_name,
                algorithm=algorithm,
                secret=secret,
                directory=directory,
                log_file=log_file,
                pid=_start(lab_dns.named_argv(conf), log_file),
            )
            if lab_dns.wait_answering(running):
                break
            log = running.log()
            lab_dns.kill(running.pid)
            running = None
            if "address in use" not in log:
                raise RuntimeError(f"named did not start; its log:\n{log[-3000:]}")
        if running is None:
            raise RuntimeError("named did not start: no free port after 5 attempts")
        yield running
    finally:
        if running is not None:
            lab_dns.kill(running.pid)
        for pid in named_processes(str(directory)):
            lab_dns.kill(pid)
        shutil.rmtree(directory, ignore_errors=True)


def _start(argv: list[str], log_file: Path) -> int:
    with log_file.open("ab") as log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return child.pid


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
