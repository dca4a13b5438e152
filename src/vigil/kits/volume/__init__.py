"""The ``volume`` kit: a filesystem on a shared block device (the seed's volume resource).

The filesystem is mounted at its mount point on the one server where its hierarchy is in
service. Exclusive access rests on vigil's ownership (only the owner of a hierarchy
restores it) and, for ext4, on multi-mount protection (the filesystem's own refusal of
a second mount while another server has it mounted). ``locate.volume_holding`` tells
other kits which volume resource holds a path.

Modules: ``properties`` (what an administrator gives), ``mounts`` (the mount table,
devices, usage), ``holders`` (processes holding a filesystem), ``probe`` (blkid,
dumpe2fs), ``validation`` (the pre-create and pre-extend checks), ``service`` (fsck,
mount, unmount), ``kit`` (the actions), ``locate``. Guide: ``docs/kits/volume.md``.
"""

from vigil.kits.volume.kit import CHECK_FILE, VolumeKit
from vigil.kits.volume.locate import (
    OnOtherHierarchyVolume,
    OnSystemFilesystem,
    OnUnprotectedFilesystem,
    PathNotOnVolume,
    VolumeMount,
    volume_holding,
)
from vigil.kits.volume.properties import FsckPolicy, VolumeProperties

__all__ = [
    "CHECK_FILE",
    "FsckPolicy",
    "OnOtherHierarchyVolume",
    "OnSystemFilesystem",
    "OnUnprotectedFilesystem",
    "PathNotOnVolume",
    "VolumeKit",
    "VolumeMount",
    "VolumeProperties",
    "volume_holding",
]
