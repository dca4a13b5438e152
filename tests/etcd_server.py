"""A real etcd (``etcd`` from Debian's etcd-server package) on loopback, for tests.

``etcd_cluster()`` is a context manager: it starts one etcd member (or ``members=3``, three
processes forming one cluster) on free 127.0.0.1 ports, with a data directory per member
under ``directory`` (a fresh temporary one by default), and waits until every member
answers ``/health`` with a leader elected. On exit, also when the test failed, it kills every
member and removes the data directories: no etcd is left behind. A member is also killed
when the test process dies without cleaning up (``PR_SET_PDEATHSIG``).

Members run with ``--heartbeat-interval=50 --election-timeout=500``: etcd's shortest lease
is 1.5 x the election timeout rounded up to whole seconds, so 1-second leases work (2 s at
etcd's defaults), and a new leader is elected within about a second.

    with etcd_cluster(members=3) as etcd:
        store = await open_store(etcd.url)
        etcd.leader().kill()

``options=EtcdOptions(tls=True)`` serves clients over https only, with a fresh CA and
certificates made with ``openssl`` and ``--client-cert-auth`` (``cluster.url`` then carries
the ``ca_file``, ``cert_file`` and ``key_file`` options); ``extra`` adds flags.

If ``etcd`` is not installed, the tests that need it FAIL (they never skip) with a message
saying how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from vigil.store import Store, open_store

__all__ = [
    "EtcdCluster",
    "EtcdMember",
    "EtcdOptions",
    "TlsFiles",
    "etcd_backend",
    "etcd_cluster",
    "etcd_processes",
    "require_etcd",
]

START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
INSTALL_HINT = (
    "etcd is not installed, and the etcd store tests need a real etcd server: install it"
    " with `apt-get install -y etcd-server etcd-client` (scripts/test.sh does it through"
    " scripts/setup.sh test)"
)

B = TypeVar("B")


@dataclass(frozen=True)
class TlsFiles:
    """A test CA, the members' certificate (127.0.0.1) and a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(self.client_cert, self.client_key)
        return context

    def url_options(self) -> str:
        return f"ca_file={self.ca}&cert_file={self.client_cert}&key_file={self.client_key}"


@dataclass(frozen=True)
class EtcdOptions:
    """How the members run: timing (milliseconds), TLS, and any extra flags."""

    heartbeat_ms: int = 50
    election_ms: int = 500
    tls: bool = False
    extra: tuple[str, ...] = ()


def require_etcd() -> str:
    """The path of the ``etcd`` binary; fails the test (never skips it) when missing."""
    path = shutil.which("etcd")
    if path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


@dataclass
class EtcdMember:
    """One etcd process: its ports, data directory and log; restartable on the same data."""

    name: str
    client_port: int
    peer_port: int
    directory: Path
    options: EtcdOptions = field(default_factory=EtcdOptions)
    tls: TlsFiles | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def locator(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.locator}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "etcd.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def launch(self, initial_cluster: str, token: str) -> None:
        """Start the process (a restart reuses the data directory, and so the data)."""
        if self.running:
            raise RuntimeError(f"etcd member {self.name} is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            require_etcd(),
            f"--name={self.name}",
            f"--data-dir={self.directory / 'data'}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            f"--initial-cluster-token={token}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={self.options.heartbeat_ms}",
            f"--election-timeout={self.options.election_ms}",
            "--logger=zap",
            f"--log-outputs={self.log_file}",
            *self.options.extra,
        ]
        if self.tls is not None:
            command += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed beyond what etcd already synced) and reap."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGCONT)  # a paused member must die too
                self.process.kill()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"etcd {self.name} (pid {self.process.pid}) survived") from exc
        self.process = None

    def signal(self, number: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(number)

    def healthy(self) -> bool:
        """Does this member answer ``/health`` with a leader elected?"""
        try:
            with self._opener().open(self.client_url + "/health", timeout=0.5) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def status(self) -> dict[str, Any]:
        """``/v3/maintenance/status`` of this member (its id, the leader's id...)."""
        request = urllib.request.Request(self.client_url + "/v3/maintenance/status", b"{}")
        with self._opener().open(request, timeout=2) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    def http(self) -> httpx.AsyncClient:
        """An HTTP client for this member's gateway (no proxy, TLS files when needed)."""
        verify: ssl.SSLContext | bool = self.tls.context() if self.tls else True
        return httpx.AsyncClient(
            base_url=self.client_url, verify=verify, trust_env=False, timeout=5
        )

    def _opener(self) -> urllib.request.OpenerDirector:
        # No proxy from the environment between the tests and a loopback etcd.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self.tls is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.tls.context()))
        return urllib.request.build_opener(*handlers)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class EtcdCluster:
    """The members of one etcd cluster, and how tests reach and disturb them."""

    members: list[EtcdMember]
    token: str

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def url(self) -> str:
        """The ``open_store`` URL naming every member (with the TLS files when TLS)."""
        hosts = ",".join(m.locator for m in self.members)
        tls = self.members[0].tls
        return f"etcds://{hosts}?{tls.url_options()}" if tls else f"etcd://{hosts}"

    def start(self) -> None:
        """Start every member that is not running and wait until all are healthy."""
        for member in self.members:
            if not member.running:
                member.launch(self.initial_cluster, self.token)
        self._wait(time.monotonic() + START_TIMEOUT)

    async def restart(self, member: EtcdMember) -> None:
        """Start a killed member again on its data directory; returns once it is healthy."""
        member.launch(self.initial_cluster, self.token)
        deadline = time.monotonic() + START_TIMEOUT
        while not await asyncio.to_thread(member.healthy):
            self._check_alive(deadline)
            await asyncio.sleep(0.05)

    def leader(self) -> EtcdMember:
        """The member that is the raft leader now (asked of the running members)."""
        for member in self.members:
            if member.running:
                with contextlib.suppress(OSError, ValueError):
                    leader = member.status()["leader"]
                    running = (m for m in self.members if m.running)
                    return next(m for m in running if m.status()["header"]["member_id"] == leader)
        raise RuntimeError("no running etcd member knows a leader")

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """SIGSTOP every member while entered (a frozen store), SIGCONT on exit."""
        for member in self.members:
            member.signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for member in self.members:
                member.signal(signal.SIGCONT)

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (``POST /v3/kv/compaction``, physical)."""
        member = next(m for m in self.members if m.running)
        body = {"revision": str(revision), "physical": True}
        async with member.http() as http:
            answer = await http.post("/v3/kv/compaction", json=body)
            answer.raise_for_status()

    def stop(self) -> None:
        """Kill every member (also paused ones)."""
        for member in self.members:
            member.kill()

    def _wait(self, deadline: float) -> None:
        while not all(member.healthy() for member in self.members):
            self._check_alive(deadline)
            time.sleep(0.05)

    def _check_alive(self, deadline: float) -> None:
        for member in self.members:
            if member.process is not None and member.process.poll() is not None:
                raise RuntimeError(
                    f"etcd member {member.name} exited with {member.process.returncode}:\n"
                    + member.log()[-3000:]
                )
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {m.name}\n{m.log()[-1500:]}" for m in self.members)
            raise RuntimeError(f"etcd not healthy within {START_TIMEOUT} s:\n{logs}")


@contextlib.contextmanager
def etcd_cluster(
    directory: Path | None = None, *, members: int = 1, options: EtcdOptions | None = None
) -> Iterator[EtcdCluster]:
    """Running etcd members on loopback; killed and their directories removed on exit."""
    require_etcd()
    options = options or EtcdOptions()
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="vigil-etcd-", dir=directory))
    cluster: EtcdCluster | None = None
    try:
        tls = make_certificates(base / "tls") if options.tls else None
        for attempt in range(5):
            ports = _free_ports(2 * members)
            cluster = EtcdCluster(
                [
                    EtcdMember(
                        f"m{i}", ports[2 * i], ports[2 * i + 1], base / f"m{i}", options, tls
                    )
                    for i in range(members)
                ],
                token=f"vigil-test-{os.getpid()}-{time.monotonic_ns()}",
            )
            try:
                cluster.start()
                break
            except RuntimeError as exc:
                cluster.stop()
                if attempt == 4 or "address already in use" not in str(exc):
                    raise
                for member in cluster.members:  # a port was taken meanwhile: try others
                    shutil.rmtree(member.directory, ignore_errors=True)
        assert cluster is not None
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def make_certificates(directory: Path) -> TlsFiles:
    """A CA and two certificates it signs, made with the ``openssl`` command."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: apt-get install -y openssl", pytrace=False)
    directory.mkdir(parents=True)
    files = TlsFiles(*(directory / name for name in _TLS_NAMES))
    subject = "/CN=vigil test CA"
    _openssl("req", "-x509", *_NEW_KEY, "-keyout", files.ca.with_suffix(".key"),
             "-out", files.ca, "-days", "2", "-subj", subject)  # fmt: skip
    for cert, key, extensions in (
        (files.server_cert, files.server_key, _SERVER_EXTENSIONS),
        (files.client_cert, files.client_key, "extendedKeyUsage=clientAuth\n"),
    ):
        request, extfile = cert.with_suffix(".csr"), cert.with_suffix(".ext")
        extfile.write_text(extensions)
        _openssl("req", "-new", *_NEW_KEY, "-keyout", key, "-out", request, "-subj", "/CN=vigil")
        _openssl("x509", "-req", "-in", request, "-CA", files.ca, "-CAkey",
                 files.ca.with_suffix(".key"), "-CAcreateserial", "-out", cert, "-days", "2",
                 "-extfile", extfile)  # fmt: skip
    return files


_TLS_NAMES = ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
_NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
# The gateway inside etcd connects to etcd's own gRPC port with the server certificate as
# its client certificate, so with --client-cert-auth it needs clientAuth as well.
_SERVER_EXTENSIONS = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def etcd_backend(backend: Callable[..., B]) -> Callable[[Path], AbstractAsyncContextManager[B]]:
    """The store contract suite's etcd factory (``tests/contract/conftest.py``, given its
    ``Backend`` class): a fresh single-member etcd per test, killed when the test ends."""

    @asynccontextmanager
    async def factory(workdir: Path) -> AsyncIterator[B]:
        with etcd_cluster(workdir) as etcd:

            async def open_client(request_timeout: float) -> Store:
                return await open_store(etcd.url, request_timeout=request_timeout)

            running = backend(
                name="etcd",
                url=etcd.url,
                locator=etcd.members[0].locator,
                short_ttl=1,
                open_client=open_client,
                stall=etcd.paused,
                compact=etcd.compact,
                history_limit=0,
            )
            try:
                yield running
            finally:
                await running.close_clients()  # type: ignore[attr-defined]

    return factory


def etcd_processes(mentioning: str = "") -> list[int]:
    """Live ``etcd`` processes whose command line contains ``mentioning``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            state = Path(entry.path, "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        etcd = bool(argv) and os.path.basename(argv[0]) == b"etcd"
        if etcd and state not in ("Z", "X") and mentioning.encode() in b" ".join(argv):
            found.append(int(entry.name))
    return found


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL this etcd when the test process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
