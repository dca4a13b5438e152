"""Parsing what the kernel and the e2fsprogs say: mountinfo, ``dumpe2fs -h``; usage
warnings; finding the processes that hold a filesystem (on this test's own filesystem,
no mount needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from vigil.kits.volume.holders import find_holders
from vigil.kits.volume.mounts import (
    Usage,
    containing_mount,
    parse_mountinfo,
    system_devices,
    visible_mount,
)
from vigil.kits.volume.probe import MMP_SEQ_CLEAN, parse_dumpe2fs

MOUNTINFO = r"""22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
25 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=100k
40 22 7:0 / /srv/mail\040box rw,noatime - ext4 /dev/loop0 rw
41 40 0:30 / /srv/mail\040box tmpfs - tmpfs tmpfs rw
42 22 7:1 /sub /bound ro,relatime - ext4 /dev/loop1 ro,errors=remount-ro
garbage line
"""


def test_parse_mountinfo() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == [
        "/",
        "/dev",
        "/srv/mail box",
        "/srv/mail box",
        "/bound",
    ]
    mail = mounts[2]
    assert (mail.device, mail.source, mail.fstype) == (os.makedev(7, 0), "/dev/loop0", "ext4")
    assert mail.options == ("rw", "noatime") and not mail.read_only
    bound = mounts[4]
    assert bound.root == "/sub" and bound.read_only
    assert bound.super_options == ("ro", "errors=remount-ro")


def test_the_visible_mount_is_the_top_of_a_stack() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    top = visible_mount(mounts, "/srv/mail box")
    assert top is not None and top.fstype == "tmpfs"
    assert visible_mount(mounts, "/srv") is None
    holder = containing_mount(mounts, "/srv/mail box/x/y")
    assert holder is not None and holder.mount_id == 41
    root = containing_mount(mounts, "/srv/other")
    assert root is not None and root.mount_point == "/"


DUMPE2FS = """dumpe2fs 1.47.0 (5-Feb-2023)
Filesystem volume name:   <none>
Filesystem UUID:          8e5c0e4c-0097-441e-b056-9f6beddd1722
Filesystem features:      has_journal ext_attr resize_inode dir_index filetype extent mmp
Filesystem state:         clean
Mount count:              3
Maximum mount count:      -1
MMP block number:         4385
MMP update interval:      5
Journal features:         (none)
MMP_block:
    mmp_magic: 0x4d4d50
    mmp_check_interval: 10
    mmp_sequence: 0x000002
    mmp_update_date: Thu Nov 26 12:40:40 2026
    mmp_node_name: node1
    mmp_device_name: /dev/loop0
"""


def test_parse_dumpe2fs() -> None:
    state = parse_dumpe2fs(DUMPE2FS)
    assert state.state == "clean"
    assert state.has_mmp and state.mmp_update_interval == 5
    assert (state.mount_count, state.max_mount_count, state.error_count) == (3, -1, 0)
    assert state.mmp_sequence == 2
    assert state.fsck_reasons() == []
    assert "node 'node1', device /dev/loop0" in state.describe_mmp()
    clean = parse_dumpe2fs(DUMPE2FS.replace("0x000002", hex(MMP_SEQ_CLEAN)))
    assert clean.mmp_sequence == MMP_SEQ_CLEAN


def test_fsck_reasons() -> None:
    def reasons(*replacements: tuple[str, str]) -> list[str]:
        text = DUMPE2FS
        for old, new in replacements:
            text = text.replace(old, new)
        return parse_dumpe2fs(text).fsck_reasons(now=2_000_000_000)

    assert reasons(("state:         clean", "state:         not clean")) == [
        "its state is 'not clean'"
    ]
    assert reasons(("clean", "clean with errors")) == ["its state is 'clean with errors'"]
    assert reasons(("Mount count:              3", "FS Error count:           4")) == [
        "the kernel recorded 4 error(s) in it"
    ]
    assert reasons(("Maximum mount count:      -1", "Maximum mount count:      3")) == [
        "mounted 3 times (maximum 3)"
    ]
    passed = ("Journal features", "Next check after:         Thu Jan  1 00:00:00 2026\nJ")
    assert reasons(passed) == ["its check interval has passed"]
    future = ("Journal features", "Next check after:         Thu Jan  1 00:00:00 2037\nJ")
    assert reasons(future) == []


def test_usage_warning() -> None:
    usage = Usage(blocks_percent=95.2, inodes_percent=40, size_bytes=2**30, available_bytes=2**25)
    assert usage.over(90) == (
        "volume is nearly full: 95% of its space (32 MiB free) in use (threshold 90%)"
    )
    assert usage.over(96) == ""
    both = Usage(blocks_percent=91, inodes_percent=99, size_bytes=1, available_bytes=0)
    assert "and 99% of its inodes" in both.over(90)


def test_system_devices_hold_the_root_filesystem() -> None:
    devices = system_devices()
    assert os.stat("/").st_dev in devices


def test_find_holders_names_pid_command_and_file(tmp_path: Path) -> None:
    held = tmp_path / "held"
    held.write_text("x")
    script = f"import time; f = open({str(held)!r}); time.sleep(60)"
    quiet = subprocess.DEVNULL
    holder = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, stdout=quiet, stderr=quiet
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            found = {h.pid: h for h in find_holders(os.stat(held).st_dev)}
            # the interpreter opens other files on this filesystem while it starts: wait
            # until the held file itself is open
            if holder.pid in found and any(str(held) in u for u in found[holder.pid].uses):
                break
            assert time.monotonic() < deadline, "the holder was not found"
            time.sleep(0.05)
        mine = found[holder.pid]
        assert f"{sys.executable} -c import time" in mine.command
        assert "working directory" in mine.uses
        assert str(held) in mine.describe()
        assert mine.describe().startswith(f"pid {holder.pid} (")
    finally:
        holder.kill()
        holder.wait()
