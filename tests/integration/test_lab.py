"""The lab on the real machine: namespaces, bridge, mounts, processes, teardown, CLI.

Needs root, ``nsenter``/``unshare`` (util-linux) and ``ping`` (Debian package
iputils-ping). Most tests share one lab of three servers without agents; the teardown
tests build their own labs, under other names and subnets.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vigil.agent.config import load_config, load_tokens
from vigil.errors import LabError
from vigil.lab import Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(shutil.which("ping") is None, reason="needs ping (iputils-ping)"),
]

VIGIL = Path(sys.executable).with_name("vigil")


def _fresh(name: str, subnet_index: int) -> Lab:
    """A lab object whose leftovers from an earlier, interrupted run are removed."""
    lab = Lab(name, subnet_index)
    lab.down()
    return lab


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Three servers, no agents; always torn down."""
    lab = _fresh("t-lab", 231)
    try:
        lab.up(3, start_agents=False)
        yield lab
    finally:
        lab.down()


@pytest.fixture
def scratch_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A lab object (not built) for a test that builds and tears down its own lab."""
    lab = _fresh("t-scratch", 232)
    try:
        yield lab
    finally:
        lab.down()


# -- helpers ------------------------------------------------------------------------------
def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def _ok(lab: Lab, server: str, argv: list[str]) -> str:
    done = lab.exec(server, argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{argv} on {server}: {done.stderr}"
    return str(done.stdout)


def _ns_keys(lab: Lab) -> set[tuple[int, int]]:
    keys = set()
    for server in lab.info().servers:
        for path in (f"/run/netns/{server.netns}", server.mount_ns):
            st = os.stat(path)
            keys.add((st.st_dev, st.st_ino))
    return keys


def _pids_in(keys: set[tuple[int, int]]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for kind in ("net", "mnt"):
            try:
                st = os.stat(f"/proc/{entry}/ns/{kind}")
                state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in keys and state != "Z":
                found.append(int(entry))
    return found


def _assert_nothing_left(lab: Lab, keys: set[tuple[int, int]]) -> None:
    name = lab.name
    netns = _run(["ip", "netns", "list"]).stdout
    assert f"vigil-{name}-" not in netns
    links = _run(["ip", "-o", "link", "show"]).stdout
    assert f"vigil-{name}:" not in links
    assert f"vl-{name}-" not in links
    mounts = _run(["findmnt", "-rn", "-o", "TARGET"]).stdout.split()
    assert not [m for m in mounts if m.startswith(str(lab.names.root))]
    assert not lab.names.root.exists()
    assert _pids_in(keys) == []
    assert not lab.status().exists


def _wait_http(url: str, deadline: float = 10.0) -> httpx.Response:
    end = time.monotonic() + deadline
    with httpx.Client(trust_env=False, timeout=1.0) as client:
        while True:
            try:
                return client.get(url)
            except httpx.TransportError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)


# -- the network --------------------------------------------------------------------------
def test_each_server_has_its_own_address(lab: Lab) -> None:
    info = lab.info()
    assert [s.address for s in info.servers] == [f"10.213.231.{k}" for k in (1, 2, 3)]
    for server in info.servers:
        shown = _ok(lab, server.name, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        assert f"inet {server.address}/24" in shown
        ipv6 = _ok(lab, server.name, ["ip", "-6", "-o", "addr", "show", "dev", "eth0"])
        assert "inet" not in ipv6
        assert _ok(lab, server.name, ["cat", "/sys/class/net/lo/operstate"]).strip() == "unknown"
        assert sorted(_ok(lab, server.name, ["ls", "/sys/class/net"]).split()) == ["eth0", "lo"]
        cgroups = _run(["findmnt", "-rn", "-o", "TARGET,FSTYPE", "-R", "/sys/fs/cgroup"]).stdout
        inside = lab.exec(
            server.name,
            ["findmnt", "-rn", "-o", "TARGET,FSTYPE", "-R", "/sys/fs/cgroup"],
            capture_output=True,
            text=True,
        )
        assert inside.stdout == cgroups  # the host's cgroup mounts are carried over


def test_no_route_leaves_the_lab(lab: Lab) -> None:
    routes = _ok(lab, "node1", ["ip", "-4", "route", "show", "table", "all"])
    assert "default" not in routes
    outside = lab.exec("node1", ["ip", "route", "get", "192.0.2.1"], capture_output=True)
    assert outside.returncode != 0  # "Network is unreachable": nothing is sent


def test_servers_ping_each_other_across_the_bridge(lab: Lab) -> None:
    for source, target in (("node1", "node2"), ("node2", "node3"), ("node3", "node1")):
        _ok(lab, source, ["ping", "-c1", "-W1", lab.info().server(target).address])
    _ok(lab, "node2", ["ping", "-c1", "-W1", lab.info().host_address])


def test_the_host_reaches_the_servers(lab: Lab) -> None:
    for server in lab.info().servers:
        assert _run(["ping", "-c1", "-W1", server.address]).returncode == 0


def test_a_mount_inside_a_server_is_invisible_elsewhere(lab: Lab) -> None:
    target = lab.names.server_dir("node1") / "scratch"
    _ok(lab, "node1", ["mkdir", "-p", str(target)])
    _ok(lab, "node1", ["mount", "-t", "tmpfs", "-o", "size=1m", "lab-test", str(target)])
    try:
        assert "lab-test" in _ok(lab, "node1", ["findmnt", "-n", str(target)])
        elsewhere = lab.exec("node2", ["findmnt", "-n", str(target)], capture_output=True)
        assert elsewhere.returncode != 0
        assert _run(["findmnt", "-n", str(target)]).returncode != 0
    finally:
        _ok(lab, "node1", ["umount", str(target)])


def test_exec_passes_cwd_and_exit_status(lab: Lab) -> None:
    assert _ok(lab, "node3", ["pwd"]).strip() == "/"
    assert lab.exec("node3", ["pwd"], cwd="/tmp", capture_output=True, text=True).stdout == "/tmp\n"
    assert lab.exec("node3", ["sh", "-c", "exit 5"]).returncode == 5
    with pytest.raises(LabError, match="node7"):
        lab.exec("node7", ["true"])


# -- files --------------------------------------------------------------------------------
def test_files_for_agents_and_clients(lab: Lab) -> None:
    info = lab.info()
    with info.client_file.open("rb") as handle:
        client = tomllib.load(handle)
    assert client["url"] == "https://10.213.231.1:7480"
    assert client["urls"] == [s.api_url for s in info.servers]
    assert client["ca_file"] == str(info.ca_file)
    assert set(client["tokens"]) == {"administrator", "operator", "guest"}
    assert client["tokens"] == info.tokens
    tokens = load_tokens(info.tokens_file).token
    assert {(t.name, t.role) for t in tokens} == {
        ("admin", "administrator"),
        ("operator", "operator"),
        ("guest", "guest"),
    }
    assert len({t.token for t in tokens}) == 3
    config = load_config(info.server("node2").config_file)
    assert config.server == "node2"
    assert config.addresses == ["10.213.231.2"]
    assert (config.api.listen, config.api.port) == ("10.213.231.2", 7480)
    assert config.store == f"sqlite:///{info.root}/store.db"
    assert config.tokens_file == info.tokens_file
    assert config.tls.ca_file == info.ca_file  # the lab runs with TLS: its own CA
    assert config.tls.cert_file is not None and not config.tls.plain_http
    state = json.loads((info.root / "lab.json").read_text())
    assert state["bridge"] == "vigil-t-lab"
    assert sorted(state["servers"]) == ["node1", "node2", "node3"]


def test_up_refuses_an_existing_lab_and_a_taken_subnet(lab: Lab) -> None:
    with pytest.raises(LabError, match="exists already"):
        Lab("t-lab", 231).up(1, start_agents=False)
    with pytest.raises(LabError, match=r"10\.213\.231\.0/24.*collides"):
        Lab("t-other", 231).up(1, start_agents=False)
    assert not Path("/run/vigil-t-other").exists()


def test_usable_from_async_code(lab: Lab) -> None:
    async def inside_a_loop() -> bool:
        return lab.status().bridge

    assert asyncio.run(inside_a_loop())


# -- processes and teardown ---------------------------------------------------------------
def test_spawn_runs_inside_the_server_and_down_stops_everything(scratch_lab: Lab) -> None:
    lab = scratch_lab
    started = time.monotonic()
    info = lab.up(2, start_agents=False)
    address = info.server("node2").address
    argv = [sys.executable, "-m", "http.server", "--bind", address, "8000"]
    pid = lab.spawn("node2", argv, info.root / "node2" / "http.out")
    assert _wait_http(f"http://{address}:8000/").status_code == 200
    for kind, path in (("net", f"/run/netns/{info.server('node2').netns}"), ("mnt", None)):
        expected = os.stat(path or info.server("node2").mount_ns)
        actual = os.stat(f"/proc/{pid}/ns/{kind}")
        assert (actual.st_dev, actual.st_ino) == (expected.st_dev, expected.st_ino)
    # a shared-disk image attached to a loop device inside a server is detached by down
    image = info.root / "disk.img"
    with image.open("wb") as handle:
        handle.truncate(8 << 20)
    loop = _ok(lab, "node1", ["losetup", "--find", "--show", str(image)]).strip()
    assert str(image) in _run(["losetup", "--list", "--noheadings", loop]).stdout
    # a process that ignores SIGTERM is SIGKILLed after the grace period
    stubborn = lab.spawn("node1", ["sh", "-c", "trap '' TERM; sleep 600"], info.root / "x.out")
    keys = _ns_keys(lab)
    assert pid in _pids_in(keys) and stubborn in _pids_in(keys)
    assert lab.status().servers[1].processes >= 1
    lab.down()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    _assert_nothing_left(lab, keys)
    assert "t-scratch" not in _run(["losetup", "--list"]).stdout
    lab.down()  # twice is fine
    assert time.monotonic() - started < 20


_CRASH = """
import os, sys
from vigil.lab import Lab, network
lab = Lab("t-scratch", 232)
if sys.argv[1] == "half":
    real = network.connect_server
    def connect_then_crash(**kwargs):
        if kwargs["host_veth"].endswith("-2"):
            os.kill(os.getpid(), 9)
        real(**kwargs)
    network.connect_server = connect_then_crash
lab.up(2, start_agents=False)
lab.spawn("node1", ["sleep", "600"], "/run/vigil-t-scratch/sleep.out")
lab.spawn("node2", ["sh", "-c", "sleep 600 & sleep 600"], "/run/vigil-t-scratch/sleep.out")
print(sorted(lab.names.netns(s) for s in ("node1", "node2")), flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("when", ["built", "half"])
def test_down_after_a_crash_without_state_file(scratch_lab: Lab, when: str) -> None:
    lab = scratch_lab
    crashed = _run([sys.executable, "-c", textwrap.dedent(_CRASH), when])
    assert crashed.returncode == -signal.SIGKILL
    netns = [n for n in _run(["ip", "netns", "list"]).stdout.split() if "t-scratch" in n]
    assert "vigil-t-scratch-node1" in netns and "vigil-t-scratch-node2" in netns
    keys = set()
    for server in ("node1", "node2"):
        for path in (lab.names.netns_path(server), lab.names.mount_ns_file(server)):
            if path.exists():
                keys.add((os.stat(path).st_dev, os.stat(path).st_ino))
    if when == "built":
        survivors = _pids_in(keys)
        assert len(survivors) >= 3  # the sleeps survived their parent
        os.kill(survivors[0], signal.SIGKILL)  # and one of them dies too (a zombie of PID 1)
    lab.names.state_file.unlink()
    assert lab.status().exists
    lab.down()
    _assert_nothing_left(lab, keys)


def test_down_of_a_lab_that_never_existed_is_fine() -> None:
    lab = Lab("t-never", 233)
    lab.down()
    lab.down()
    assert not lab.status().exists
    with pytest.raises(LabError, match="not up"):
        lab.info()


# -- agents -------------------------------------------------------------------------------
def _agent_available() -> bool:
    probe = _run([sys.executable, "-m", "vigil", "agent", "run", "--help"])
    return probe.returncode == 0


def test_agents_start_answer_and_restart(scratch_lab: Lab) -> None:
    if not _agent_available():
        pytest.skip("`vigil agent run` does not exist yet")
    lab = scratch_lab
    info = lab.up(2)
    with httpx.Client(trust_env=False, timeout=2.0, verify=info.ssl_context()) as client:
        for server in info.servers:
            assert server.agent_pid is not None
            assert client.get(server.api_url + "/v1/health").status_code == 200
    lab.stop_agent("node1", signal.SIGKILL)
    assert lab.agent_pid("node1") is None
    assert [s.agent_alive for s in lab.status().servers] == [False, True]
    pid = lab.start_agent("node1")
    assert lab.agent_pid("node1") == pid
    keys = _ns_keys(lab)
    lab.down()
    _assert_nothing_left(lab, keys)


@pytest.mark.parametrize(
    ("agent", "reported", "output"),
    [
        (["sh", "-c", "echo agent-broke >&2; exit 3"], "exited before answering", "agent-broke"),
        (
            ["sh", "-c", "echo agent-hangs; exec sleep 600"],
            r"did not answer GET https://10\.213\.232\.1:7480/v1/health with 200 within 2 s",
            "agent-hangs",
        ),
    ],
)
def test_an_agent_that_does_not_come_up_fails_up_cleanly(
    scratch_lab: Lab,
    monkeypatch: pytest.MonkeyPatch,
    agent: list[str],
    reported: str,
    output: str,
) -> None:
    monkeypatch.setattr("vigil.lab.lab.agent_argv", lambda config_file: agent)
    monkeypatch.setattr("vigil.lab.lab.AGENT_START_TIMEOUT", 2.0)
    with pytest.raises(LabError, match=reported) as failure:
        scratch_lab.up(2)
    message = str(failure.value)
    assert "the agent on node1" in message
    assert "/run/vigil-t-scratch/node1/agent.out" in message
    assert f"\n  {output}" in message  # the tail of its agent.out
    assert not scratch_lab.status().exists
    assert not [n for n in _run(["ip", "netns", "list"]).stdout.split() if "t-scratch" in n]


# -- CLI ----------------------------------------------------------------------------------
def test_cli_exec_passes_output_and_exit_status(lab: Lab) -> None:
    done = _run([str(VIGIL), "lab", "exec", "--name", "t-lab", "node2", "--", "sh", "-c",
                 "ip -4 -o addr show dev eth0; echo oops >&2; exit 3"])  # fmt: skip
    assert done.returncode == 3
    assert "10.213.231.2/24" in done.stdout
    assert done.stderr.strip() == "oops"
    missing = _run([str(VIGIL), "lab", "exec", "--name", "t-lab", "node9", "--", "true"])
    assert missing.returncode == 1
    assert "node9" in missing.stderr and "Traceback" not in missing.stderr
    status = json.loads(_run([str(VIGIL), "lab", "status", "--name", "t-lab", "--json"]).stdout)
    assert [s["name"] for s in status["servers"]] == ["node1", "node2", "node3"]
    assert status["bridge"] is True
