"""The volume kit in a lab: a shared disk, an app on top of a volume, switchovers.

One lab of two servers for the module (``tvolops``, subnet 40) and one shared disk: an
ext4 image with multi-mount protection and one loop device per server onto it, as two
hosts see one LUN. The hierarchy is ``svc`` (the sample HTTP service, its counter file on
the volume) on top of ``vol``. The tests run in order and build on each other. After each
step they check where the volume is really mounted: in exactly one server's mount
namespace (the one where the hierarchy is in service: ``findmnt`` inside each server, and
the agent's own ``/proc/<pid>/mountinfo``), never in the host's.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import Api, service_commands, wait_for
from tests.shared_disk import SharedDisk, host_mounts
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

PORT = 8090
SERVERS = ("node1", "node2")
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDisk]:
    """Set up before the lab and torn down after it (the lab unmounts, then we detach)."""
    image = tmp_path_factory.mktemp("tvol") / "shared.img"
    with SharedDisk(image).create(servers=len(SERVERS)) as shared:
        yield shared
    assert shared.attached() == [], f"loop devices left on {image}"


@pytest.fixture(scope="module")
def mount_point(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tvolmnt") / "data")


@pytest.fixture(scope="module")
def lab(disk: SharedDisk) -> Iterator[tuple[Lab, LabInfo]]:
    lab = Lab("tvolops", subnet_index=40)
    lab.down()
    try:
        yield lab, lab.up(len(SERVERS))
    finally:
        lab.down()


@pytest.fixture(scope="module")
def api(lab: tuple[Lab, LabInfo]) -> Iterator[Api]:
    client = Api(lab[1])
    yield client
    client.close()


def device_of(disk: SharedDisk, server: str) -> str:
    return disk.devices[SERVERS.index(server)]


def mounted_where(lab: Lab, mount_point: str) -> dict[str, str]:
    """server -> source, for every server (and "host") where ``mount_point`` is mounted;
    the server's view (findmnt inside it) must agree with its agent's mount table."""
    seen = {}
    for server in SERVERS:
        shown = lab.exec(
            server,
            ["findmnt", "-n", "-o", "SOURCE", "--mountpoint", mount_point],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        pid = lab.agent_pid(server)
        if pid is not None:
            in_agent = f" {mount_point} " in Path(f"/proc/{pid}/mountinfo").read_text()
            assert in_agent == bool(shown), f"{server}: findmnt and the agent disagree"
        if shown:
            seen[server] = shown
    if host_mounts(mount_point):
        seen["host"] = "?"
    return seen


def states(api: Api, tag: str) -> dict[str, str]:
    return {server: i["state"] for server, i in api.instances(tag).items()}


def fetch(info: LabInfo, server: str) -> list[str]:
    """What the service answers on ``server``: its name, then the counter."""
    url = f"http://{info.server(server).address}:{PORT}/"
    with httpx.Client(timeout=3.0, trust_env=False) as client:
        return client.get(url).text.strip().splitlines()


def refused(api: Api, body: dict[str, Any]) -> str:
    answer = api.post("/v1/resources", body)
    assert answer.status_code == 400, f"{answer.status_code} {answer.text}"
    return "\n".join([answer.json()["error"], *answer.json()["problems"]])


def volume_body(disk: SharedDisk, mount_point: str, **more: Any) -> dict[str, Any]:
    properties = {
        "device": device_of(disk, "node1"),
        "mount_point": mount_point,
        "filesystem_uuid": disk.uuid,
    }
    properties.update(more)
    return {"tag": "vol", "kit": "volume", "server": "node1", "properties": properties}


def root_device_node() -> str | None:
    root = os.stat("/").st_dev
    for entry in os.scandir("/dev"):
        try:
            st = os.stat(entry.path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == root:
            return entry.path
    return None


def test_comm_path(lab: tuple[Lab, LabInfo], api: Api) -> None:
    info = lab[1]
    body = {
        "local": "node1",
        "local_address": info.server("node1").address,
        "remote": "node2",
        "remote_address": info.server("node2").address,
    }
    api.ok("POST", "/v1/commpaths", body)
    wait_for(
        lambda: [p["state"] for p in api.ok("GET", "/v1/commpaths")] == ["ALIVE"],
        what="an ALIVE comm path",
    )


def test_validation_errors(
    lab: tuple[Lab, LabInfo], api: Api, disk: SharedDisk, mount_point: str
) -> None:
    root = root_device_node()
    if root is not None:
        error = refused(api, volume_body(disk, mount_point, device=root))
        assert f"{root} on node1 is the system device" in error
    error = refused(api, volume_body(disk, mount_point, device="/dev/vigil-tvol-none"))
    assert "device /dev/vigil-tvol-none does not exist on node1" in error
    error = refused(api, volume_body(disk, mount_point, filesystem_uuid=None))
    assert f"set filesystem_uuid={disk.uuid}" in error
    # a mount point already in use, in node1's mount namespace only
    lab[0].exec("node1", ["mkdir", "-p", mount_point], check=True)
    lab[0].exec("node1", ["mount", "-t", "tmpfs", "tvol", mount_point], check=True)
    try:
        error = refused(api, volume_body(disk, mount_point))
        assert f"mount point {mount_point} is in use on node1: tvol (tmpfs)" in error
    finally:
        lab[0].exec("node1", ["umount", mount_point], check=True)
    assert api.get("/v1/resources/vol").status_code == 404
    assert mounted_where(lab[0], mount_point) == {}


def test_create_volume_then_the_service_on_it(
    lab: tuple[Lab, LabInfo], api: Api, disk: SharedDisk, mount_point: str
) -> None:
    started = time.monotonic()
    result = api.ok("POST", "/v1/resources", volume_body(disk, mount_point))
    TIMINGS["create volume (API)"] = time.monotonic() - started
    assert "in service on node1" in result["detail"]
    assert mounted_where(lab[0], mount_point) == {"node1": device_of(disk, "node1")}
    lab[0].exec("node1", ["mkdir", f"{mount_point}/svc"], check=True)
    lab[0].exec("node1", ["sh", "-c", f"echo written-on-node1 > {mount_point}/note"], check=True)
    commands = service_commands(PORT)
    commands["restore"] += f" --data-dir {mount_point}/svc"
    api.ok(
        "POST",
        "/v1/resources",
        {"tag": "svc", "kit": "app", "server": "node1", "properties": commands},
    )
    api.ok("POST", "/v1/dependencies", {"parent": "svc", "child": "vol"})
    info = lab[1]
    assert fetch(info, "node1") == ["node1", "1"]
    assert fetch(info, "node1") == ["node1", "2"]


def test_the_agent_refuses_a_second_resource_for_the_same_volume(
    api: Api, disk: SharedDisk, mount_point: str
) -> None:
    body = volume_body(disk, mount_point)
    error = refused(api, {**body, "tag": "vol2"})
    assert f"mount_point {mount_point!r} is already used by resource vol" in error
    other = {**body["properties"], "mount_point": mount_point + "2"}
    error = refused(api, {**body, "tag": "vol3", "properties": other})
    assert f"filesystem_uuid {disk.uuid!r} is already used by resource vol" in error


def test_extend_proposes_the_targets_own_device(
    lab: tuple[Lab, LabInfo], api: Api, disk: SharedDisk, mount_point: str
) -> None:
    # node1's device is copied from the template; it is busy (mounted in node1), so the
    # kit proposes the one other device of node2 that holds the filesystem
    api.ok("POST", "/v1/hierarchies/svc/extend", {"server": "node2"})
    vol = api.ok("GET", "/v1/resources/vol")
    assert vol["server_properties"]["node2"]["device"] == device_of(disk, "node2")
    assert vol["server_properties"]["node1"]["device"] == device_of(disk, "node1")
    wait_for(lambda: states(api, "vol") == {"node1": "ISP", "node2": "OSU"}, what="OSU on node2")
    assert mounted_where(lab[0], mount_point) == {"node1": device_of(disk, "node1")}


def switch(api: Api, server: str, timeout: float = 120) -> float:
    started = time.monotonic()
    api.ok("POST", "/v1/hierarchies/svc/in-service", {"server": server, "timeout": timeout})
    return time.monotonic() - started


def test_switchover_takes_the_data_along(
    lab: tuple[Lab, LabInfo], api: Api, disk: SharedDisk, mount_point: str
) -> None:
    TIMINGS["switchover node1 -> node2 (API)"] = switch(api, "node2")
    assert states(api, "vol") == {"node1": "OSU", "node2": "ISP"}
    assert mounted_where(lab[0], mount_point) == {"node2": device_of(disk, "node2")}
    assert fetch(lab[1], "node2") == ["node2", "3"]
    note = lab[0].exec("node2", ["cat", f"{mount_point}/note"], capture_output=True, text=True)
    assert note.stdout == "written-on-node1\n"
    lab[0].exec("node2", ["sh", "-c", f"echo written-on-node2 >> {mount_point}/note"], check=True)
    TIMINGS["switchover node2 -> node1 (API)"] = switch(api, "node1")
    assert mounted_where(lab[0], mount_point) == {"node1": device_of(disk, "node1")}
    assert fetch(lab[1], "node1") == ["node1", "4"]
    note = lab[0].exec("node1", ["cat", f"{mount_point}/note"], capture_output=True, text=True)
    assert note.stdout == "written-on-node1\nwritten-on-node2\n"


def test_multi_mount_protection_refuses_a_mount_behind_vigils_back(
    lab: tuple[Lab, LabInfo], disk: SharedDisk, mount_point: str
) -> None:
    # in service on node1; node2 mounts its own device onto the same disk by hand
    elsewhere = mount_point + "-by-hand"
    lab[0].exec("node2", ["mkdir", "-p", elsewhere], check=True)
    started = time.monotonic()
    done = lab[0].exec(
        "node2",
        ["mount", "-t", "ext4", device_of(disk, "node2"), elsewhere],
        capture_output=True,
        text=True,
        timeout=120,
    )
    TIMINGS["MMP refusal of a second mount"] = time.monotonic() - started
    assert done.returncode != 0, "a second server could mount the volume"
    assert mounted_where(lab[0], elsewhere) == {}
    assert mounted_where(lab[0], mount_point) == {"node1": device_of(disk, "node1")}


def test_a_process_holding_the_volume_blocks_the_switchover_and_is_named(
    lab: tuple[Lab, LabInfo], api: Api, disk: SharedDisk, mount_point: str, tmp_path: Path
) -> None:
    pid = lab[0].spawn(
        "node1", ["sh", "-c", f"exec sleep 600 < {mount_point}/note"], tmp_path / "holder.log"
    )
    wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"))
    answer = api.post("/v1/hierarchies/svc/in-service", {"server": "node2", "timeout": 20})
    assert answer.status_code != 200, answer.text
    reason = wait_for(
        lambda: (r := api.instances("vol")["node1"]["reason"]) and "cannot unmount" in r and r,
        what="the failed remove reported",
    )
    assert f"pid {pid} (sleep 600): open file {mount_point}/note" in reason, reason
    assert mounted_where(lab[0], mount_point) == {"node1": device_of(disk, "node1")}
    # the volume stays mounted and owned where it was (its remove failed: OSF there);
    # nothing of the hierarchy came up on node2
    assert states(api, "vol")["node1"] == "OSF"
    assert "ISP" not in (states(api, "vol")["node2"], states(api, "svc")["node2"])
    os.kill(pid, 9)
    wait_for(
        lambda: (
            not Path(f"/proc/{pid}").exists()
            or b"sleep" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    )
    switch(api, "node2")
    assert mounted_where(lab[0], mount_point) == {"node2": device_of(disk, "node2")}
    assert fetch(lab[1], "node2")[0] == "node2"


def test_stop_holders_stops_them_and_the_switchover_goes_through(
    lab: tuple[Lab, LabInfo], api: Api, disk: SharedDisk, mount_point: str, tmp_path: Path
) -> None:
    api.ok("PATCH", "/v1/resources/vol/properties", {"properties": {"stop_holders": True}})
    pid = lab[0].spawn(
        "node2", ["sh", "-c", f"cd {mount_point} && exec sleep 600"], tmp_path / "h.log"
    )
    wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"))
    switch(api, "node1")
    assert (
        not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    )
    assert mounted_where(lab[0], mount_point) == {"node1": device_of(disk, "node1")}


def test_delete_unmounts_everywhere(lab: tuple[Lab, LabInfo], api: Api, mount_point: str) -> None:
    api.ok("DELETE", "/v1/hierarchies/svc")
    assert api.status()["hierarchies"] == []
    assert mounted_where(lab[0], mount_point) == {}


def test_mount_and_unmount_times(lab: tuple[Lab, LabInfo]) -> None:
    """Not a check: prints what the agents logged (``-s`` shows it)."""
    pattern = re.compile(r"(mounted|unmounted) \S+(?: at \S+)? in (\d+) ms")
    found: dict[str, list[int]] = {"mounted": [], "unmounted": []}
    for server in SERVERS:
        log = lab[0].names.server_dir(server) / "agent.log"
        for match in pattern.finditer(log.read_text(errors="replace")):
            found[match.group(1)].append(int(match.group(2)))
    for what, values in found.items():
        if values:
            print(f"{what}: {len(values)} times, {min(values)}-{max(values)} ms")
    for what, seconds in TIMINGS.items():
        print(f"{what}: {seconds:.2f} s")
    assert found["mounted"] and found["unmounted"]
