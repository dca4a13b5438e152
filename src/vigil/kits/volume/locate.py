"""Which volume resource holds a path? For kits whose data must live on protected volumes
(the mail kit: its queue and mail store).

The seed refuses to create an Exchange resource whose data is on the system drive, on a
volume LifeKeeper does not protect, or on a volume resource of another hierarchy. This is
that check::

    volumes = [VolumeMount("mailvol", "/srv/mail"), VolumeMount("queuevol", "/srv/queue")]
    try:
        volume = volume_holding("/srv/mail/store", volumes, {"mail", "mailvol"},
                                what="the mail store")
    except PathNotOnVolume as exc:
        problems.append(str(exc))

The answer is decided by the configuration: the volume whose mount point is the longest
prefix (component by component) of the path, after symbolic links in the path are
resolved. Only when no volume's mount point holds the path is the mount table consulted,
to tell the system filesystem (the one mounted at ``/``) from another filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from vigil.errors import VigilError
from vigil.kits.volume.mounts import MountEntry, containing_mount, read_mounts, visible_mount

__all__ = [
    "OnOtherHierarchyVolume",
    "OnSystemFilesystem",
    "OnUnprotectedFilesystem",
    "PathNotOnVolume",
    "VolumeMount",
    "volume_holding",
]


@dataclass(frozen=True)
class VolumeMount:
    """A volume resource as this server sees it: its tag and its mount point."""

    tag: str
    mount_point: str


class PathNotOnVolume(VigilError):
    """The path is not on a volume resource the caller may use. ``path`` is the path as
    given, ``resolved`` after symbolic links."""

    def __init__(self, message: str, path: str, resolved: str) -> None:
        self.path = path
        self.resolved = resolved
        super().__init__(message)


class OnSystemFilesystem(PathNotOnVolume):
    """The path is on the filesystem mounted at ``/``, which vigil cannot protect."""


class OnUnprotectedFilesystem(PathNotOnVolume):
    """The path is on a filesystem (``mount_point``, ``source``) no volume resource
    protects."""

    def __init__(
        self, message: str, path: str, resolved: str, mount_point: str, source: str
    ) -> None:
        self.mount_point = mount_point
        self.source = source
        super().__init__(message, path, resolved)


class OnOtherHierarchyVolume(PathNotOnVolume):
    """The path is on volume ``volume`` (a ``VolumeMount``), which is not one the caller
    may use (it belongs to another hierarchy)."""

    def __init__(self, message: str, path: str, resolved: str, volume: VolumeMount) -> None:
        self.volume = volume
        super().__init__(message, path, resolved)


def _describe(path: str, resolved: str, what: str) -> str:
    shown = f"{path} (which resolves to {resolved})" if resolved != path else path
    return f"{what} {shown}" if what else shown


def volume_holding(
    path: str | os.PathLike[str],
    volumes: Iterable[VolumeMount],
    usable: Collection[str] | None = None,
    *,
    what: str = "",
    mounts: Sequence[MountEntry] | None = None,
    resolve: Callable[[str], str] = os.path.realpath,
) -> VolumeMount:
    """The volume resource that holds ``path``.

    ``volumes``: the volume resources with their mount points on this server.
    ``usable``: the tags of the volumes the caller may use (those of its own hierarchy,
    and those it is about to adopt as children); None: any volume. ``what`` names the
    path in messages ("the mail queue"). ``mounts`` (default: this thread's mount table)
    and ``resolve`` (default: ``os.path.realpath``) are there for tests.

    Raises ``ValueError`` for a relative path, and one of:

    * ``OnSystemFilesystem``: on the filesystem mounted at ``/``;
    * ``OnUnprotectedFilesystem``: on another filesystem no volume resource protects;
    * ``OnOtherHierarchyVolume``: on a volume resource the caller may not use.
    """
    given = os.fspath(path)
    if not given.startswith("/"):
        raise ValueError(f"{given!r} is not an absolute path")
    resolved = resolve(given)
    target = PurePosixPath(resolved)
    holding = [v for v in volumes if target.is_relative_to(v.mount_point)]
    shown = _describe(given, resolved, what)
    if holding:
        volume = max(holding, key=lambda v: len(PurePosixPath(v.mount_point).parts))
        if usable is not None and volume.tag not in usable:
            raise OnOtherHierarchyVolume(
                f"{shown} is on volume {volume.tag} ({volume.mount_point}), which belongs to "
                "another hierarchy: a volume resource may be part of one hierarchy only; "
                "move it to a volume of its own",
                given,
                resolved,
                volume,
            )
        return volume
    table = list(mounts) if mounts is not None else read_mounts()
    mount = containing_mount(table, resolved)
    root = visible_mount(table, "/")
    if mount is None or mount.mount_point == "/" or (root and mount.device == root.device):
        raise OnSystemFilesystem(
            f"{shown} is on the system filesystem (the one mounted at /), which vigil "
            "cannot protect: move it to a volume protected by a volume resource",
            given,
            resolved,
        )
    raise OnUnprotectedFilesystem(
        f"{shown} is on {mount.mount_point} ({mount.source}), which no volume resource "
        f"protects: create a volume resource for {mount.mount_point} and bring it in service "
        "first",
        given,
        resolved,
        mount.mount_point,
        mount.source,
    )
