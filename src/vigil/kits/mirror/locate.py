"""Which mirror a filesystem is on: for kits that find their data's volume in the mount
table (the mail kit), a filesystem mounted from a loop device onto a mirror's replicated
device is that mirror resource's, not a volume of its own.

The replicated device is the file ``device`` on a FUSE mount of type
``fuse.vigil-mirror`` whose source names the mirror (``vigil-mirror:TAG``); the loop
device's backing file (``/sys/block/loopN/loop/backing_file``) leads to it. Read-only,
in the calling thread's mount namespace (the agent's: its server's).
"""

from __future__ import annotations

from pathlib import Path

from vigil.kits.volume import mounts as mt

__all__ = ["FUSE_TYPE", "mirror_of_device"]

FUSE_TYPE = "fuse.vigil-mirror"
_SOURCE = "vigil-mirror:"


def mirror_of_device(device: str, mounts: list[mt.MountEntry] | None = None) -> str | None:
    """The tag of the mirror whose replicated device ``device`` (a loop device, as a
    mount table's source names it) sits on; None for any other device."""
    name = Path(device).name
    if not name.startswith("loop"):
        return None
    try:
        backing = (Path("/sys/block") / name / "loop" / "backing_file").read_text().strip()
    except OSError:
        return None
    table = mounts if mounts is not None else mt.read_mounts()
    holder = mt.containing_mount(table, backing)
    if holder is None or holder.fstype != FUSE_TYPE or not holder.source.startswith(_SOURCE):
        return None
    return holder.source[len(_SOURCE) :] or None
