"""What is on a block device: ``blkid`` (type, UUID) and, for ext2/3/4, ``dumpe2fs -h``
(state, features, multi-mount protection). Read-only; every command runs through
``vigil.kits.process.run_command`` with ``LC_ALL=C`` (their output is parsed).

Multi-mount protection (MMP, ext4): while a server has the filesystem mounted, its
kernel rewrites a sequence number in the MMP block every ``mmp_update_interval`` seconds
(default 5). A mount elsewhere reads the number, waits about ``2 x check interval + 1``
seconds (11-21 s), reads it again, and refuses if it changed. A cleanly unmounted
filesystem carries the "clean" number and mounts at once; after a crash the mount waits
(twice, about 22-44 s) and then succeeds.
"""

from __future__ import annotations

import calendar
import os
import time
from dataclasses import dataclass, field

from vigil.errors import KitError, Severity
from vigil.kits.process import CommandResult, Logger, run_command

__all__ = [
    "MMP_SEQ_CLEAN",
    "MMP_SEQ_FSCK",
    "ExtState",
    "Filesystem",
    "devices_with_uuid",
    "ext_state",
    "parse_dumpe2fs",
    "probe_filesystem",
]

#: MMP sequence numbers with a meaning (any other: mounted, or left by a crash)
MMP_SEQ_CLEAN = 0xFF4D4D50
MMP_SEQ_FSCK = 0xE24D4D50
PROBE_TIMEOUT = 30.0
_ENV = {"LC_ALL": "C"}


@dataclass(frozen=True)
class Filesystem:
    """What ``blkid -p`` recognised on a device."""

    type: str
    uuid: str
    label: str = ""
    usage: str = ""


async def _run(argv: list[str], log: Logger) -> CommandResult:
    return await run_command(argv, log=log, timeout=PROBE_TIMEOUT, env=_ENV)


async def probe_filesystem(device: str, log: Logger) -> Filesystem | None:
    """The filesystem on ``device`` (None when ``blkid`` recognises nothing there).

    Raises ``KitError`` (HARD) when the device cannot be read or holds several
    contradicting signatures."""
    result = await _run(["blkid", "-p", "-o", "export", device], log)
    if result.returncode == 2 and not result.output.strip():
        return None
    if result.returncode != 0:
        why = result.last_line or result.describe_exit()
        if result.returncode == 8:
            why = f"several contradicting signatures ({why}); wipe the stale ones (wipefs)"
        raise KitError(f"cannot probe {device}: {why}", Severity.HARD)
    values = dict(line.split("=", 1) for line in result.output.splitlines() if "=" in line)
    if not values.get("TYPE"):
        return None
    return Filesystem(
        type=values["TYPE"],
        uuid=values.get("UUID", ""),
        label=values.get("LABEL", ""),
        usage=values.get("USAGE", ""),
    )


async def devices_with_uuid(uuid: str, log: Logger) -> list[str]:
    """Block devices of this server holding the filesystem ``uuid``: its stable udev path
    when there is one, else every device ``blkid`` finds with it (probing them all,
    without blkid's cache)."""
    stable = _stable_path(uuid)
    if stable is not None:
        return [stable]
    result = await _run(["blkid", "-c", "/dev/null", "-o", "device", "-t", f"UUID={uuid}"], log)
    if result.returncode != 0:
        return []
    return sorted({line.strip() for line in result.output.splitlines() if line.startswith("/")})


def _stable_path(uuid: str) -> str | None:
    path = f"/dev/disk/by-uuid/{uuid}"
    return path if os.path.exists(path) else None


@dataclass(frozen=True)
class ExtState:
    """The parts of an ext2/3/4 superblock (and MMP block) the kit decides on."""

    state: str = ""
    features: frozenset[str] = frozenset()
    mount_count: int = 0
    max_mount_count: int = -1
    next_check: float | None = None  # seconds since the epoch, None when not set
    error_count: int = 0
    mmp_update_interval: int = 0
    mmp: dict[str, str] = field(default_factory=dict)

    @property
    def has_mmp(self) -> bool:
        return "mmp" in self.features

    @property
    def mmp_sequence(self) -> int | None:
        try:
            return int(self.mmp.get("mmp_sequence", ""), 16)
        except ValueError:
            return None

    def fsck_reasons(self, now: float | None = None) -> list[str]:
        """Why the filesystem says it needs a check (empty: it does not)."""
        reasons = []
        if "clean" not in self.state.split() or "not clean" in self.state:
            reasons.append(f"its state is {self.state or 'unknown'!r}")
        elif "errors" in self.state:
            reasons.append(f"its state is {self.state!r}")
        if self.error_count:
            reasons.append(f"the kernel recorded {self.error_count} error(s) in it")
        if 0 < self.max_mount_count <= self.mount_count:
            reasons.append(f"mounted {self.mount_count} times (maximum {self.max_mount_count})")
        if self.next_check is not None and self.next_check <= (now or time.time()):
            reasons.append("its check interval has passed")
        return reasons

    def describe_mmp(self) -> str:
        """Who last updated the MMP block, for messages ("" without MMP)."""
        if not self.mmp:
            return ""
        node = self.mmp.get("mmp_node_name", "?")
        device = self.mmp.get("mmp_device_name", "?")
        when = self.mmp.get("mmp_update_date", "?")
        return f"last MMP update by node {node!r}, device {device}, at {when}"


def _int(text: str, default: int) -> int:
    try:
        return int(text.split()[0])
    except (ValueError, IndexError):
        return default


def _date(text: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(text.strip(), "%a %b %d %H:%M:%S %Y")))
    except ValueError:
        return None


def parse_dumpe2fs(text: str) -> ExtState:
    """An ``ExtState`` from the output of ``dumpe2fs -h`` (dates read as UTC: run it with
    ``TZ`` unset, as the kit does)."""
    fields: dict[str, str] = {}
    mmp: dict[str, str] = {}
    in_mmp = False
    for line in text.splitlines():
        if line.startswith("MMP_block:"):
            in_mmp = True
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        if in_mmp and line.startswith((" ", "\t")):
            mmp[key.strip()] = value.strip()
        else:
            in_mmp = False
            fields[key.strip()] = value.strip()
    return ExtState(
        state=fields.get("Filesystem state", ""),
        features=frozenset(fields.get("Filesystem features", "").split()),
        mount_count=_int(fields.get("Mount count", ""), 0),
        max_mount_count=_int(fields.get("Maximum mount count", ""), -1),
        next_check=_date(fields["Next check after"]) if "Next check after" in fields else None,
        error_count=_int(fields.get("FS Error count", ""), 0),
        mmp_update_interval=_int(fields.get("MMP update interval", ""), 0),
        mmp=mmp,
    )


async def ext_state(device: str, log: Logger) -> ExtState:
    """The superblock state of the ext2/3/4 filesystem on ``device``; ``KitError`` (HARD)
    when ``dumpe2fs`` cannot read it."""
    result = await run_command(
        ["dumpe2fs", "-h", device], log=log, timeout=PROBE_TIMEOUT, env={**_ENV, "TZ": "UTC"}
    )
    state = parse_dumpe2fs(result.output)
    if result.returncode != 0 or not state.state:
        why = result.last_line or result.describe_exit()
        raise KitError(f"cannot read the ext superblock of {device}: {why}", Severity.HARD)
    return state
