"""Local disks for the lab: each server's own disk, as a replicated volume (the mirror
kit) needs them: one sparse image per server under ``ROOT/disks/``, attached to a loop
device of its own, blank (the mirror's source gets a filesystem from whoever creates it;
a target's content is overwritten by the initial synchronization).

The loop devices use direct I/O onto their image, so a lab disk costs what the host's disk
costs rather than what its page cache costs: a local disk and a mirror over two of them
are compared fairly (``bench/mirror.py``). ``Lab.down`` detaches them with every other
loop device backed by a file under the root, and removes the images with the root.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import LabError
from vigil.lab.disk import detach, run
from vigil.lab.files import LabState, LocalDiskState, save_state
from vigil.lab.naming import LabNames, server_number

__all__ = ["LocalDiskInfo", "add", "info_of"]


@dataclass(frozen=True)
class LocalDiskInfo:
    """One server's own disk: its image and the loop device the server sees it as."""

    server: str
    image: Path
    device: str
    size_mb: int


def _attach_direct(image: Path) -> str:
    return run("losetup", "--find", "--show", "--direct-io=on", str(image)).stdout.strip()


def add(names: LabNames, state: LabState, size_mb: int) -> dict[str, LocalDiskInfo]:
    """``Lab.add_local_disks``: a disk of ``size_mb`` MiB for every server that has none
    yet, recorded in ``lab.json``; every server's disk, by server. On failure, the disks
    made by this call are detached again."""
    if size_mb < 16:
        raise LabError(f"a local disk needs at least 16 MiB, not {size_mb}")
    made: list[tuple[Path, str]] = []
    try:
        for server in sorted(state.servers, key=server_number):
            if server in state.local_disks:
                continue
            image = names.root / "disks" / f"local-{server}.img"
            if image.exists():
                raise LabError(f"local disk image {image} exists already")
            image.parent.mkdir(parents=True, exist_ok=True)
            with image.open("wb") as handle:
                handle.truncate(size_mb * 2**20)
            device = _attach_direct(image)
            made.append((image, device))
            state.local_disks[server] = LocalDiskState(
                image=str(image), device=device, size_mb=size_mb
            )
            save_state(names.state_file, state)
    except BaseException:
        _undo(made)
        raise
    return {server: info_of(server, record) for server, record in state.local_disks.items()}


def _undo(made: Iterable[tuple[Path, str]]) -> None:
    for image, device in made:
        detach(image, [device])
        image.unlink(missing_ok=True)


def info_of(server: str, record: LocalDiskState) -> LocalDiskInfo:
    return LocalDiskInfo(server, Path(record.image), record.device, record.size_mb)
