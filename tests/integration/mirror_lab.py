"""A lab for the mirror kit's tests and benchmark: servers with local disks, a mirror
created on node1 and extended to the others, and what a test asks of it (its status
through the API, data written and read inside a server, checksums of the disks).

Every wait polls a condition until a deadline and fails with what it saw last.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.helpers import Api
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab

TAG = "data"
MOUNT = "/srv/mirror"
PORT = 7790


def wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` s with
    the last thing it returned or raised."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
        except (AssertionError, KeyError, OSError) as exc:
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        time.sleep(0.1)


class MirrorLab:
    """One lab, its API, its local disks and one mirror resource ``TAG``."""

    def __init__(self, lab: Lab, info: LabInfo, api: Api, disks: dict[str, str]) -> None:
        self.lab = lab
        self.info = info
        self.api = api
        self.disks = disks

    def use(self, server: str) -> None:
        """Ask ``server``'s agent from now on (the other one is down)."""
        self.api.close()
        self.api = Api(self.info, server=server)

    def address(self, server: str) -> str:
        return self.info.server(server).address

    # --- creating it ------------------------------------------------------------------

    def make_filesystem(self, server: str = "node1") -> str:
        """A fresh ext4 on ``server``'s disk; its UUID."""
        disk = self.disks[server]
        subprocess.run(["wipefs", "-q", "-a", disk], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", disk], check=True)
        found = subprocess.run(
            ["blkid", "-p", "-s", "UUID", "-o", "value", disk], capture_output=True, text=True
        )
        return found.stdout.strip()

    def body(self, uuid: str, **more: Any) -> dict[str, Any]:
        properties = {
            "disk": self.disks["node1"],
            "address": self.address("node1"),
            "port": PORT,
            "mount_point": MOUNT,
            "filesystem_uuid": uuid,
            **more,
        }
        return {"tag": TAG, "kit": "mirror", "server": "node1", "properties": properties}

    def create(self, **more: Any) -> None:
        """The mirror on node1, in service there."""
        uuid = self.make_filesystem("node1")
        self.api.ok("POST", "/v1/resources", self.body(uuid, **more))

    def extend(self, server: str, priority: int | None = None) -> None:
        body: dict[str, Any] = {"server": server, "properties": {TAG: {"disk": self.disks[server]}}}
        if priority is not None:
            body["priority"] = priority
        self.api.ok("POST", f"/v1/hierarchies/{TAG}/extend", body)

    def delete(self) -> None:
        """The hierarchy gone, every disk wiped (for the next test)."""
        if self.api.get(f"/v1/resources/{TAG}").status_code == 200:
            self.api.ok("DELETE", f"/v1/hierarchies/{TAG}")
        for server in self.disks:
            state = self.info.root / server / "state" / "kits" / TAG
            wait(lambda state=state: not state.exists(), 30, f"{server} forgot the mirror")
        for disk in self.disks.values():
            wait(lambda disk=disk: _free(disk), 30, f"{disk} released")
            subprocess.run(["wipefs", "-q", "-a", disk], check=True)

    # --- looking at it ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.api.ok("GET", f"/v1/mirror/{TAG}")
        return data

    def server(self, server: str) -> dict[str, Any]:
        row: dict[str, Any] = next(s for s in self.status()["servers"] if s["server"] == server)
        return row

    def wait_mirroring(self, server: str, timeout: float = 60.0) -> dict[str, Any]:
        """Until ``server`` is Mirroring and eligible (the source says so, and its agent)."""

        def ready() -> dict[str, Any] | None:
            row = self.server(server)
            ok = row["state"] == "Mirroring" and row["eligible"] is True
            return row if ok else None

        try:
            row: dict[str, Any] = wait(ready, timeout, f"{server} Mirroring and eligible")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        return row

    def logs(self, lines: int = 25) -> str:
        """The end of every server's mirror log (for a failure's message)."""
        shown = []
        for server in self.disks:
            tail = self.source_log(server).splitlines()[-lines:]
            shown.append(f"--- {server} mirror.log\n" + "\n".join(tail))
            agent = self.info.root / server / "agent.log"
            said = [
                line
                for line in agent.read_text(errors="replace").splitlines()
                if "vigil.agent.standby" in line or "vigil.kit.mirror" in line
            ]
            shown.append(f"--- {server} agent.log (mirror)\n" + "\n".join(said[-lines:]))
        return "\n".join(shown)

    def states(self) -> dict[str, str]:
        return {
            i["server"]: i["state"] for i in self.api.ok("GET", f"/v1/resources/{TAG}")["instances"]
        }

    def source_log(self, server: str) -> str:
        path = self.info.root / server / "state" / "kits" / TAG / "mirror" / "mirror.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def resyncs(self) -> list[dict[str, Any]]:
        """Every resync recorded by any server of the mirror, oldest first."""
        found: list[dict[str, Any]] = []
        for server in self.disks:
            meta = self.info.root / server / "state" / "kits" / TAG / "mirror" / "meta.json"
            if meta.exists():
                found += [{**r, "source": server} for r in json.loads(meta.read_text())["resyncs"]]
        return sorted(found, key=lambda r: r["at"])

    # --- data -------------------------------------------------------------------------

    def sh(self, server: str, script: str, timeout: float = 120) -> str:
        """Run ``script`` inside ``server``; its output (fails the test when it fails)."""
        done = self.lab.exec(
            server, ["sh", "-c", script], capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{server}: {script}: {done.stderr.strip()}"
        return done.stdout

    def write(self, server: str, name: str, mib: int) -> str:
        """``mib`` MiB of random data into ``name`` on the mirror (fsync'd); its sha256."""
        path = f"{MOUNT}/{name}"
        self.sh(server, f"dd if=/dev/urandom of={path} bs=1M count={mib} conv=fsync status=none")
        return self.checksum(server, name)

    def checksum(self, server: str, name: str) -> str:
        return self.sh(server, f"sha256sum {MOUNT}/{name}").split()[0]

    def disk_digest(self, server: str, size: int | None = None) -> str:
        """sha256 of ``server``'s disk (its first ``size`` bytes), read without O_EXCL."""
        digest = hashlib.sha256()
        with open(self.disks[server], "rb") as disk:
            left = size if size is not None else -1
            while left:
                block = disk.read(2**20 if left < 0 else min(2**20, left))
                if not block:
                    break
                digest.update(block)
                left -= len(block) if left > 0 else 0
        return digest.hexdigest()


def _free(disk: str) -> bool:
    import os

    try:
        os.close(os.open(disk, os.O_RDONLY | os.O_EXCL))
    except OSError:
        return False
    return True


def state_dir(info: LabInfo, server: str) -> Path:
    return info.root / server / "state" / "kits" / TAG / "mirror"
