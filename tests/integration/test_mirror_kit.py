"""The mirror kit in a lab of two servers, each with its own disk (``Lab.add_local_disks``):
create (and its refusals), extend with the initial synchronization, a target that cannot
be mounted, pause and continue with a partial resync that copies only the regions written
meanwhile (counted), switchover both ways with no full resync, and the disks identical.
The tests run in order and build on each other (lab ``tmirk``, subnet 72).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import Api
from tests.integration.mirror_lab import MOUNT, TAG, MirrorLab, wait
from vigil.kits.mirror.meta import MirrorPaths
from vigil.lab.lab import Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

DISK_MB = 256
REGION = 2**20


@pytest.fixture(scope="module")
def mirror() -> Iterator[MirrorLab]:
    lab = Lab("tmirk", subnet_index=72)
    lab.down()
    try:
        info = lab.up(2)
        disks = {s: d.device for s, d in lab.add_local_disks(DISK_MB).items()}
        api = Api(info)
        body = {
            "local": "node1",
            "local_address": info.server("node1").address,
            "remote": "node2",
            "remote_address": info.server("node2").address,
        }
        api.ok("POST", "/v1/commpaths", body)
        yield MirrorLab(lab, info, api, disks)
        api.close()
    finally:
        lab.down()


def refused(mirror: MirrorLab, body: dict[str, object]) -> str:
    answer = mirror.api.post("/v1/resources", body)
    assert answer.status_code == 400, f"{answer.status_code} {answer.text}"
    return "\n".join(answer.json()["problems"])


def test_create_refusals_then_create(mirror: MirrorLab) -> None:
    uuid = mirror.make_filesystem("node1")
    no_uuid = mirror.body(uuid)
    del no_uuid["properties"]["filesystem_uuid"]  # type: ignore[attr-defined]
    assert f"set filesystem_uuid={uuid}" in refused(mirror, no_uuid)
    wrong = mirror.body(uuid, address=mirror.address("node2"))
    assert "is not one of node1's addresses" in refused(mirror, wrong)
    mirror.sh("node1", f"mkdir -p /mnt/x && mount {mirror.disks['node1']} /mnt/x")
    try:
        assert "the mirror mounts its filesystem itself" in refused(mirror, mirror.body(uuid))
    finally:
        mirror.sh("node1", "umount /mnt/x")
    mirror.api.ok("POST", "/v1/resources", mirror.body(uuid))
    assert mirror.states() == {"node1": "ISP"}
    status = mirror.status()
    assert status["source"] == "node1" and status["servers"][0]["role"] == "source"
    mirror.write("node1", "before-extend", 4)


def test_extend_and_initial_synchronization(mirror: MirrorLab) -> None:
    mirror.extend("node2")
    row = mirror.wait_mirroring("node2")
    assert row["role"] == "target" and row["eligibility"].startswith("Mirroring")
    first = mirror.resyncs()[-1]
    assert (first["target"], first["kind"]) == ("node2", "full")
    assert first["regions"] == DISK_MB * 2**20 // REGION


def test_a_filesystem_on_the_mirror_is_known_as_the_mirrors(mirror: MirrorLab) -> None:
    """What the mail kit's create asks of a data location's filesystem: its volume is the
    mirror resource (adopted as the child), not a volume of its own."""
    code = (
        "from vigil.kits.volume import mounts as mt;"
        "from vigil.kits.mirror.locate import mirror_of_device;"
        f"top = mt.visible_mount(mt.read_mounts(), {MOUNT!r});"
        "print(top.source, mirror_of_device(top.source), mirror_of_device('/dev/vda'))"
    )
    shown = mirror.sh("node1", f'{sys.executable} -c "{code}"').split()
    assert shown[0].startswith("/dev/loop") and shown[1:] == [TAG, "None"], shown


def test_a_target_cannot_be_mounted_or_opened_exclusively(mirror: MirrorLab) -> None:
    disk = mirror.disks["node2"]
    done = mirror.lab.exec(
        "node2",
        ["sh", "-c", f"mkdir -p /mnt/y && mount {disk} /mnt/y"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "busy" in done.stderr.lower(), done.stderr
    with pytest.raises(OSError):
        os.close(os.open(disk, os.O_RDWR | os.O_EXCL))


def test_pause_tracks_writes_and_continue_copies_only_them(mirror: MirrorLab) -> None:
    mirror.api.ok("POST", f"/v1/mirror/{TAG}/pause", {"target": "node2"})
    wait(lambda: mirror.server("node2")["state"] == "Paused", 30, "node2 Paused")
    wait(lambda: mirror.server("node2")["eligible"] is False, 30, "node2 not eligible")
    refusal = mirror.api.post(f"/v1/hierarchies/{TAG}/in-service", {"server": "node2"})
    assert refusal.status_code == 409 and "not eligible" in refusal.text, refusal.text
    written = mirror.write("node1", "while-paused", 6)
    dirty = wait(
        lambda: (n := mirror.status()["targets"]["node2"]["dirty_regions"]) >= 6 and n,
        10,
        "the source's map of node2 to show the regions written",
    )
    assert dirty < 40, dirty
    before = len(mirror.resyncs())
    mirror.api.ok("POST", f"/v1/mirror/{TAG}/continue", {"target": "node2"})
    mirror.wait_mirroring("node2")
    resync = mirror.resyncs()[before]
    # the regions written while paused, and those around the pause and the continue that
    # the activity logs name (writes in flight then): never the whole disk
    assert resync["kind"] == "partial" and dirty <= resync["regions"] <= 40, (resync, dirty)
    assert resync["bytes"] == resync["regions"] * REGION
    mirror.sh("node1", f"sync -f {MOUNT}")
    assert mirror.checksum("node1", "while-paused") == written


def test_switchover_both_ways_without_a_full_resync(mirror: MirrorLab) -> None:
    written = mirror.write("node1", "before-switchover", 8)
    before = len(mirror.resyncs())
    mirror.api.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node2"})
    assert mirror.states() == {"node1": "OSU", "node2": "ISP"}
    assert mirror.checksum("node2", "before-switchover") == written
    mirror.wait_mirroring("node1")
    again = mirror.write("node2", "on-node2", 3)
    mirror.api.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node1"})
    assert mirror.checksum("node1", "on-node2") == again
    mirror.wait_mirroring("node2")
    kinds = [r["kind"] for r in mirror.resyncs()[before:]]
    assert kinds and set(kinds) == {"partial"}, mirror.resyncs()[before:]


def test_the_disks_are_identical_once_in_sync_and_idle(mirror: MirrorLab) -> None:
    mirror.api.ok("POST", f"/v1/hierarchies/{TAG}/out-of-service", {})
    wait(lambda: mirror.states() == {"node1": "OSU", "node2": "OSU"}, 60, "out of service")
    size = DISK_MB * 2**20
    assert mirror.disk_digest("node1", size) == mirror.disk_digest("node2", size)


def test_out_of_service_then_in_service_on_the_last_source(mirror: MirrorLab) -> None:
    # the standby keeper rewrites node1's record (a target's, Mirroring) within a second
    def last_source() -> dict[str, Any] | None:
        row = mirror.server("node1")
        return row if row["eligible"] and "last source" in row["eligibility"] else None

    wait(last_source, 30, "node1 eligible as the mirror's last source")
    mirror.api.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node1"})
    mirror.wait_mirroring("node2")
    assert mirror.checksum("node1", "on-node2")


def test_delete_leaves_no_process_no_mount_and_no_socket(mirror: MirrorLab) -> None:
    sockets = [
        MirrorPaths.of(mirror.info.root / server / "state" / "kits" / TAG).socket
        for server in mirror.disks
    ]
    assert all(socket.exists() for socket in sockets), sockets
    # a killed mirror process leaves its control socket behind: delete removes it (the
    # target's: killing the source's would fail the hierarchy over first)
    for line in _mirror_processes():
        if "tmirk" in line and "/node2/" in line:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split(" ", 1)[0]), signal.SIGKILL)
    mirror.delete()
    listed = mirror.api.get(f"/v1/resources/{TAG}")
    assert listed.status_code == 404
    assert not [p for p in _mirror_processes() if "tmirk" in p], _mirror_processes()
    assert not [socket for socket in sockets if socket.exists()]


def _mirror_processes() -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if b"vigil.kits.mirror.daemon" in cmdline:
                found.append(f"{entry.name} " + cmdline.replace(b"\0", b" ").decode())
    return found
