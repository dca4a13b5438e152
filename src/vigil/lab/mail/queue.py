"""Creating a Postfix queue directory tree the way ``post-install create-missing`` does,
from Postfix's own manifest (``/etc/postfix/postfix-files``), in milliseconds.

``postfix check`` creates a missing queue too, but through a shell script that spawns a
few hundred processes (2 to 3 s on the lab machines); with the tree in place it only
checks (0.2 s). The lab creates the tree here first, then lets ``postfix check`` judge
it. ``main`` runs inside a lab server (through ``python -c``), where the queue is on a
disk only that server has mounted.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

MANIFEST = Path("/etc/postfix/postfix-files")
MAIL_OWNER = "postfix"
SETGID_GROUP = "postdrop"


@dataclass(frozen=True)
class Entry:
    """One directory of the manifest: ``$queue_directory/active:d:$mail_owner:-:700:ucr``."""

    base: str  # queue_directory or data_directory
    relative: str  # '' for the base itself
    owner: str
    group: str | None  # None: leave the group alone ('-')
    mode: int


def _name(field: str) -> str:
    return {"$mail_owner": MAIL_OWNER, "$setgid_group": SETGID_GROUP}.get(field, field)


def entries(manifest: Path = MANIFEST) -> list[Entry]:
    """The queue and data directories the manifest lists, parents first."""
    found = []
    for line in manifest.read_text().splitlines():
        fields = line.split(":")
        if len(fields) < 5 or fields[1] != "d":
            continue
        base, _, relative = fields[0].partition("/")
        if base not in ("$queue_directory", "$data_directory"):
            continue
        group = None if fields[3] == "-" else _name(fields[3])
        found.append(Entry(base[1:], relative, _name(fields[2]), group, int(fields[4], 8)))
    return sorted(found, key=lambda e: (e.base, e.relative.count("/") if e.relative else -1))


def create(queue_directory: Path, data_directory: Path | None = None) -> None:
    """Create what is missing of the queue (and data) directories, with the manifest's
    owners and modes. Existing directories are left as they are."""
    bases = {"queue_directory": queue_directory, "data_directory": data_directory}
    for entry in entries():
        base = bases[entry.base]
        if base is None:
            continue
        path = base / entry.relative if entry.relative else base
        if path.is_dir():
            continue
        path.mkdir(parents=not entry.relative)
        gid = grp.getgrnam(entry.group).gr_gid if entry.group else -1
        os.chown(path, pwd.getpwnam(entry.owner).pw_uid, gid)
        os.chmod(path, entry.mode)


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        print("usage: python -m vigil.lab.mail.queue QUEUE_DIR [DATA_DIR]", file=sys.stderr)
        return 2
    create(Path(argv[0]), Path(argv[1]) if len(argv) > 1 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
