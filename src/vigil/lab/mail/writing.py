"""Writing the mail organisation's configuration and secret files.

Each file is written with its mode from the start (a secret is never readable by others,
not even for a moment) and dated two seconds back: Postfix reads ``main.cf`` again and
again, 300 ms apart, until the file is at least a second old (it takes a younger file for
one still being edited), which made every ``postfix check`` or ``start`` right after the
lab wrote its configuration 1 to 2 s slower.
"""

from __future__ import annotations

import grp
import os
import time
from pathlib import Path

#: seconds a written file is dated back (Postfix waits for files younger than 1 s)
BACKDATE = 2.0


def write_file(path: Path, text: str, mode: int, group: str | None = None) -> None:
    """Write ``text`` to ``path`` (created with ``mode``, or truncated and given
    ``mode``), owned by root and ``group`` if given, dated ``BACKDATE`` s back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)  # an existing file keeps its old mode through O_CREAT
    if group is not None:
        os.chown(path, 0, grp.getgrnam(group).gr_gid)
    past = time.time() - BACKDATE
    os.utime(path, (past, past))
