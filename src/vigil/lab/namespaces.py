"""Persistent mount namespaces, one per lab server, and entering a server's namespaces.

A server's mount namespace is kept alive by a bind mount of its nsfs file onto
``ROOT/mnt/SERVER``; ``ROOT/mnt`` is bind-mounted onto itself and made private first
(``unshare --mount=FILE`` refuses a shared parent, and a private one keeps the
namespace files out of namespaces created later). The namespace is created from inside
the server's network namespace and prepared once:

- the copies of ``/run/netns/*`` it inherited from the host are unmounted (they would
  otherwise keep other labs' network namespaces alive);
- ``/sys`` is replaced by a sysfs of the server's own network namespace (as
  ``ip netns exec`` does), so ``/sys/class/net`` shows the server's interfaces; the
  host's cgroup mounts are carried over to the new ``/sys/fs/cgroup``;
- IPv6 is off by default for new interfaces in the server (``eth0`` is created after),
  so no router solicitation or MLD report is ever sent.

Everything belonging to a server runs under ``nsenter --net=... --mount=...``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import subprocess
from pathlib import Path

from vigil.errors import LabError
from vigil.kits.volume.mounts import parse_mountinfo

MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
NS_GET_NSTYPE = 0xB703
_NS_TYPES = {"net": 0x40000000, "mnt": 0x00020000}  # CLONE_NEWNET, CLONE_NEWNS

# $1: an empty directory (removed afterwards) where the new /sys is prepared
_SETUP_SCRIPT = """
set -e
echo 1 2>/dev/null > /proc/sys/net/ipv6/conf/default/disable_ipv6 || true
for f in /run/netns/*; do umount -l "$f" 2>/dev/null || true; done
mkdir -p "$1"
mount -t sysfs -o nosuid,nodev,noexec sysfs "$1"
if mountpoint -q /sys/fs/cgroup; then mount --rbind /sys/fs/cgroup "$1/fs/cgroup"; fi
umount -l /sys
mount --move "$1" /sys
rmdir "$1"
"""

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return _libc


def _mount(source: str | None, target: Path, flags: int) -> None:
    src = source.encode() if source else None
    if _c().mount(src, str(target).encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def private_bind_dir(directory: Path) -> None:
    """Bind-mount ``directory`` onto itself and make it private (idempotent)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        if directory not in mountpoints_under(directory):
            _mount(str(directory), directory, MS_BIND)
        _mount(None, directory, MS_PRIVATE)
    except OSError as exc:
        raise LabError(f"cannot make {directory} a private bind mount: {exc}") from exc


def nsenter_argv(netns_path: Path, mount_ns_file: Path, argv: list[str]) -> list[str]:
    """The command line running ``argv`` in a server's network and mount namespaces."""
    return ["nsenter", f"--net={netns_path}", f"--mount={mount_ns_file}", "--", *argv]


def create_mount_ns(netns_path: Path, mount_ns_file: Path, work_dir: Path) -> None:
    """Create a server's persistent mount namespace bound to ``mount_ns_file``.

    ``work_dir`` must not exist; it is used (and removed) while ``/sys`` is replaced.
    """
    mount_ns_file.touch(exist_ok=True)
    argv = [
        "nsenter",
        f"--net={netns_path}",
        "--",
        "unshare",
        f"--mount={mount_ns_file}",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _SETUP_SCRIPT,
        "setup",
        str(work_dir),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise LabError(
            f"cannot create the mount namespace {mount_ns_file} "
            f"(exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )


def ns_key(path: Path | str) -> tuple[int, int] | None:
    """Identity (device, inode) of the namespace behind an nsfs file or /proc link."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def ns_key_of_kind(path: Path, kind: str) -> tuple[int, int] | None:
    """``ns_key(path)`` if ``path`` is an nsfs file of namespace ``kind`` (net, mnt):
    asked with the ``NS_GET_NSTYPE`` ioctl, so a plain file or a missing one is ``None``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
        st = os.fstat(fd)
    except OSError:  # ENOTTY: not a namespace file
        return None
    finally:
        os.close(fd)
    return (st.st_dev, st.st_ino) if nstype == _NS_TYPES[kind] else None


def mountpoints_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory`` in our mount namespace, deepest first."""
    found = []
    prefix = str(directory).rstrip("/") + "/"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        for entry in parse_mountinfo(handle.read()):
            point = entry.mount_point
            if point == str(directory) or point.startswith(prefix):
                found.append(Path(point))
    # mounted over itself twice → listed twice; deepest (and latest) first
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_all_under(directory: Path) -> list[str]:
    """Unmount everything at or below ``directory``; messages for what stays mounted."""
    for point in mountpoints_under(directory):
        if _c().umount2(str(point).encode(), 0) != 0:
            err = ctypes.get_errno()
            if err == errno.EBUSY:
                _c().umount2(str(point).encode(), MNT_DETACH)
    return [f"mount {point}: still mounted" for point in mountpoints_under(directory)]
