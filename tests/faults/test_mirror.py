"""The mirror under faults, in sync mode, with real processes, FUSE, loop devices and ext4
(labs ``tmirf``, embedded store, subnet 73, and ``tmire``, etcd, subnet 74):

* SIGKILL of the source's agent and of its mirror process while a writer writes: the
  target takes over, every write whose fdatasync returned is there (checked record by
  record), the old source comes back as a target with a partial resync, fsck is clean;
* a link cut of the source while it writes (etcd lab: the cut server loses the store):
  the same;
* the source fails while its target is paused (not in sync): the failover is blocked,
  with the reason, until an operator forces the target (recorded), and when the old
  source comes back both sides have written since they diverged: a split brain,
  detected, shown, and resolved by keeping one side (the other resynchronized partially).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Api
from tests.integration.mirror_lab import MOUNT, TAG, MirrorLab, state_dir, wait
from vigil.lab import namespaces
from vigil.lab.lab import Lab

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

LABS = {"embedded": ("tmirf", 73), "etcd": ("tmire", 74)}
STORES = ["embedded", "etcd"] if shutil.which("etcd") else ["embedded"]
WRITER = Path(__file__).with_name("mirror_writer.py")
LOG = f"{MOUNT}/records"
#: records acknowledged before the fault is injected
BEFORE_FAULT = 200


@pytest.fixture(scope="module", params=STORES)
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def lab(store: str) -> Iterator[MirrorLab]:
    name, subnet = LABS[store]
    lab = Lab(name, subnet_index=subnet)
    lab.down()
    try:
        info = lab.up(2, **({"store": "etcd"} if store == "etcd" else {}))
        disks = {s: d.device for s, d in lab.add_local_disks(256).items()}
        api = Api(info)
        a1, a2 = info.server("node1").address, info.server("node2").address
        api.ok(
            "POST",
            "/v1/commpaths",
            {"local": "node1", "local_address": a1, "remote": "node2", "remote_address": a2},
        )
        yield MirrorLab(lab, info, api, disks)
        api.close()
    finally:
        lab.down()


@pytest.fixture
def mirror(lab: MirrorLab) -> Iterator[MirrorLab]:
    """The mirror on node1, extended to node2 and Mirroring; deleted afterwards with every
    agent and link back."""
    lab.use("node1")
    lab.create()
    lab.extend("node2")
    lab.wait_mirroring("node2")
    try:
        yield lab
    finally:
        for server in ("node1", "node2"):
            subprocess.run(
                ["ip", "link", "set", lab.lab.names.host_veth(server), "up"], check=False
            )
            if lab.lab.agent_pid(server) is None:
                lab.lab.start_agent(server)
        lab.use("node1")
        wait(lambda: all(s["alive"] for s in _servers(lab.api)), 60, "both agents alive")
        answer = lab.api.post(f"/v1/hierarchies/{TAG}/out-of-service", {})
        assert answer.status_code in (200, 404, 500), answer.text
        lab.delete()


def _servers(api: Api) -> list[dict[str, Any]]:
    return [{"alive": s["state"] != "DEAD", **s} for s in api.status()["servers"]]


class Writer:
    """``mirror_writer.py write`` inside a server; ``acked`` grows as records are."""

    def __init__(self, mirror: MirrorLab, server: str) -> None:
        names = mirror.lab.names
        argv = [sys.executable, str(WRITER), "write", LOG]
        enter = namespaces.nsenter_argv(names.netns_path(server), names.mount_ns_file(server), argv)
        self.process = subprocess.Popen(
            enter, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.acked: list[int] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.acked.append(int(line))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self.thread.join(10)

    def count(self) -> int:
        """How many records were acknowledged (they are 0..count-1)."""
        assert self.acked == list(range(len(self.acked))), "records acknowledged out of order"
        return len(self.acked)


def check_records(mirror: MirrorLab, server: str, count: int) -> None:
    """Every acknowledged record is on ``server``'s mounted copy, intact."""
    done = mirror.lab.exec(
        server,
        [sys.executable, str(WRITER), "check", LOG, str(count)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (
        f"records missing or wrong on {server}: {done.stdout[:500]} {done.stderr}"
    )


def fsck_clean(mirror: MirrorLab, server: str) -> None:
    done = subprocess.run(
        ["e2fsck", "-f", "-n", mirror.disks[server]], capture_output=True, text=True
    )
    assert done.returncode == 0, f"fsck of {server}'s disk: {done.stdout}{done.stderr}"


def source_pid(mirror: MirrorLab, server: str) -> int:
    import json

    status = json.loads((state_dir(mirror.info, server) / "status.json").read_text())
    assert status["role"] == "source", status
    return int(status["pid"])


def _after_failover(mirror: MirrorLab, writer: Writer, count: int) -> None:
    """node2 has the mirror and every acknowledged record; node1 comes back as a target
    with a partial resync; once idle, both copies pass fsck."""
    wait(lambda: mirror.states().get("node2") == "ISP", 90, "node2 in service")
    writer.stop()
    check_records(mirror, "node2", count)
    before = len(mirror.resyncs())
    if mirror.lab.agent_pid("node1") is None:
        mirror.lab.start_agent("node1")
    mirror.wait_mirroring("node1", timeout=90)
    kinds = [(r["target"], r["kind"]) for r in mirror.resyncs()[before:]]
    assert ("node1", "partial") in kinds and ("node1", "full") not in kinds, kinds
    mirror.api.ok("POST", f"/v1/hierarchies/{TAG}/out-of-service", {})
    fsck_clean(mirror, "node2")
    fsck_clean(mirror, "node1")


def test_sigkill_of_the_sources_agent_and_mirror_mid_write(mirror: MirrorLab, store: str) -> None:
    if store != "embedded":
        pytest.skip("one store is enough for a SIGKILL (the link cut runs on etcd)")
    writer = Writer(mirror, "node1")
    try:
        wait(lambda: len(writer.acked) >= BEFORE_FAULT, 60, "records written")
        agent, source = mirror.lab.agent_pid("node1"), source_pid(mirror, "node1")
        assert agent is not None
        mirror.use("node2")
        os.kill(source, signal.SIGKILL)
        os.kill(agent, signal.SIGKILL)
        wait(lambda: writer.process.poll() is not None, 60, "the writer stopped by the failure")
        count = writer.count()
        print(f"{count} records acknowledged before the kill")
        _after_failover(mirror, writer, count)
    finally:
        writer.stop()


def test_link_cut_of_the_source_mid_write(mirror: MirrorLab, store: str) -> None:
    if store != "etcd":
        pytest.skip("a link cut does not cut a server off the embedded store: runs on etcd")
    writer = Writer(mirror, "node1")
    veth = mirror.lab.names.host_veth("node1")
    try:
        wait(lambda: len(writer.acked) >= BEFORE_FAULT, 60, "records written")
        mirror.use("node2")
        subprocess.run(["ip", "link", "set", veth, "down"], check=True)
        wait(lambda: mirror.states().get("node2") == "ISP", 90, "node2 in service")
        count = writer.count()  # node1 fenced itself: nothing acknowledged after that
        wait(lambda: writer.process.poll() is not None, 60, "the writer stopped by the fencing")
        assert writer.count() == count, "a write was acknowledged after node2 took over"
        subprocess.run(["ip", "link", "set", veth, "up"], check=True)
        _after_failover(mirror, writer, count)
    finally:
        subprocess.run(["ip", "link", "set", veth, "up"], check=False)
        writer.stop()


def test_blocked_failover_forced_then_split_brain_resolved(mirror: MirrorLab, store: str) -> None:
    if store != "embedded":
        pytest.skip("runs on the embedded store")
    api = mirror.api
    api.ok("POST", f"/v1/mirror/{TAG}/pause", {"target": "node2"})
    wait(lambda: mirror.server("node2")["eligible"] is False, 30, "node2 not eligible")
    mirror.write("node1", "after-pause", 4)
    events = api.ok("GET", "/v1/events?limit=1")
    mark = events[-1]["id"] if events else ""
    agent = mirror.lab.agent_pid("node1")
    assert agent is not None
    mirror.use("node2")
    api = mirror.api
    os.kill(agent, signal.SIGKILL)

    def blocked() -> dict[str, Any] | None:
        for event in api.ok("GET", f"/v1/events?limit=1000&after={mark}"):
            if event["kind"] == "failover-blocked" and event["hierarchy"] == TAG:
                return dict(event)
        return None

    event = wait(blocked, 60, "the failover blocked")
    assert "node2 is not eligible" in event["message"] and "Paused" in event["message"], event
    assert mirror.states()["node2"] == "OSU"
    forced = api.ok("POST", f"/v1/mirror/{TAG}/force", {"server": "node2", "reason": "node1 lost"})
    assert "forced eligible by admin" in forced["summary"], forced
    wait(lambda: mirror.states().get("node2") == "ISP", 60, "node2 in service after the force")
    kinds = [e["kind"] for e in api.ok("GET", f"/v1/events?limit=1000&after={mark}")]
    assert "mirror-forced" in kinds and "failover-started" in kinds, kinds
    mirror.write("node2", "on-node2", 3)
    # node1 comes back: both sides wrote since node2 was paused
    mirror.lab.start_agent("node1")
    wait(lambda: mirror.server("node1")["view"].get("split_brain") or None, 90, "split brain seen")
    shown = api.ok("POST", f"/v1/mirror/{TAG}/resolve", {})
    split = shown["split_brain"]["node1"]
    assert (
        split["source"] == "node2" and split["target_regions"] > 0 and split["source_regions"] > 0
    )
    wait(lambda: mirror.server("node1")["state"] == "Broken", 10, "the source to see node1 Broken")
    assert mirror.states()["node2"] == "ISP"
    before = len(mirror.resyncs())
    done = api.ok("POST", f"/v1/mirror/{TAG}/resolve", {"keep": "node2"})
    assert any("discarded" in step for step in done["done"]), done
    mirror.wait_mirroring("node1", timeout=60)
    resync = [r for r in mirror.resyncs()[before:] if r["target"] == "node1"]
    assert resync and resync[-1]["kind"] == "partial", resync
    api.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node1"})
    assert mirror.checksum("node1", "on-node2")
    gone = mirror.lab.exec("node1", ["test", "-e", f"{MOUNT}/after-pause"])
    assert gone.returncode != 0, "node1's writes after the divergence should have been discarded"
