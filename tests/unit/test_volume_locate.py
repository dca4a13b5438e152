"""``volume_holding``: which volume resource holds a path, and the seed's three refusals
(system drive, unprotected volume, volume of another hierarchy). Pure: the mount table
and symlink resolution are given, except in the last tests, which use the real ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vigil.kits.volume import (
    OnOtherHierarchyVolume,
    OnSystemFilesystem,
    OnUnprotectedFilesystem,
    PathNotOnVolume,
    VolumeMount,
    volume_holding,
)
from vigil.kits.volume.mounts import MountEntry, read_mounts

ROOT_DEV = os.makedev(254, 0)
HOME_DEV = os.makedev(254, 1)
MAIL_DEV = os.makedev(7, 0)
QUEUE_DEV = os.makedev(7, 1)


def entry(mount_id: int, parent: int, device: int, point: str, source: str) -> MountEntry:
    return MountEntry(
        mount_id=mount_id,
        parent_id=parent,
        device=device,
        root="/",
        mount_point=point,
        options=("rw",),
        fstype="ext4",
        source=source,
        super_options=("rw",),
    )


MOUNTS = [
    entry(1, 0, ROOT_DEV, "/", "/dev/vda1"),
    entry(2, 1, HOME_DEV, "/home", "/dev/vda2"),
    entry(3, 1, MAIL_DEV, "/srv/mail", "/dev/loop0"),
    entry(4, 3, QUEUE_DEV, "/srv/mail/queue", "/dev/loop1"),
    MountEntry(5, 1, ROOT_DEV, "/var/lib", "/var/lib", ("rw",), "ext4", "/dev/vda1", ()),
]
VOLUMES = [
    VolumeMount("mailvol", "/srv/mail"),
    VolumeMount("queuevol", "/srv/mail/queue"),
    VolumeMount("archive", "/srv/archive"),  # not mounted right now
]
LINKS = {"/var/mail": "/srv/mail/spool", "/opt/q": "/srv/mail/queue/active"}


def resolve(path: str) -> str:
    for link, target in LINKS.items():
        if path == link or path.startswith(link + "/"):
            return target + path[len(link) :]
    return path


def locate(path: str, usable: set[str] | None = None, what: str = "") -> VolumeMount:
    return volume_holding(path, VOLUMES, usable, what=what, mounts=MOUNTS, resolve=resolve)


@pytest.mark.parametrize(
    ("path", "tag"),
    [
        ("/srv/mail", "mailvol"),
        ("/srv/mail/store/user1", "mailvol"),
        ("/srv/mail/queue", "queuevol"),  # the longest mount point wins
        ("/srv/mail/queue/deferred/x", "queuevol"),
        ("/srv/archive/2024", "archive"),  # by configuration, mounted or not
    ],
)
def test_the_volume_with_the_longest_mount_point_holds_the_path(path: str, tag: str) -> None:
    assert locate(path).tag == tag


def test_prefixes_are_compared_by_component_not_by_string() -> None:
    # /srv/mailbox is not under /srv/mail
    with pytest.raises(OnSystemFilesystem):
        locate("/srv/mailbox/x")


def test_symbolic_links_are_resolved_first() -> None:
    assert locate("/var/mail/alice").tag == "mailvol"
    volume = locate("/opt/q/1", usable={"queuevol"})
    assert volume == VolumeMount("queuevol", "/srv/mail/queue")


def test_a_volume_in_the_callers_hierarchy_is_returned() -> None:
    assert locate("/srv/mail/store", usable={"mail", "mailvol", "queuevol"}).tag == "mailvol"


def test_a_volume_of_another_hierarchy_is_refused_and_named() -> None:
    with pytest.raises(OnOtherHierarchyVolume) as caught:
        locate("/srv/mail/queue/x", usable={"mail", "mailvol"}, what="the mail queue")
    error = caught.value
    assert error.volume == VolumeMount("queuevol", "/srv/mail/queue")
    assert str(error).startswith("the mail queue /srv/mail/queue/x is on volume queuevol")
    assert "another hierarchy" in str(error)


def test_the_system_filesystem_is_refused() -> None:
    with pytest.raises(OnSystemFilesystem) as caught:
        locate("/var/spool/postfix", what="the mail queue")
    assert "system filesystem" in str(caught.value)
    assert "the mail queue /var/spool/postfix" in str(caught.value)
    assert caught.value.resolved == "/var/spool/postfix"


def test_a_bind_mount_of_the_system_filesystem_is_still_the_system_filesystem() -> None:
    with pytest.raises(OnSystemFilesystem):
        locate("/var/lib/mail")


def test_the_message_shows_where_a_symbolic_link_led() -> None:
    LINKS["/etc/mail"] = "/var/mailstore"
    try:
        with pytest.raises(OnSystemFilesystem) as caught:
            locate("/etc/mail/x")
        assert "/etc/mail/x (which resolves to /var/mailstore/x)" in str(caught.value)
    finally:
        del LINKS["/etc/mail"]


def test_an_unprotected_filesystem_is_refused_with_its_mount_point() -> None:
    with pytest.raises(OnUnprotectedFilesystem) as caught:
        locate("/home/alice/Maildir")
    error = caught.value
    assert (error.mount_point, error.source) == ("/home", "/dev/vda2")
    assert "no volume resource protects" in str(error)
    assert "create a volume resource for /home" in str(error)


def test_every_refusal_is_a_path_not_on_volume() -> None:
    for path in ("/var/x", "/home/x", "/srv/mail/queue/x"):
        with pytest.raises(PathNotOnVolume):
            locate(path, usable=set())


def test_relative_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        locate("srv/mail")


def test_no_volumes_at_all() -> None:
    with pytest.raises(OnUnprotectedFilesystem):
        volume_holding("/srv/mail/x", [], mounts=MOUNTS, resolve=resolve)
    with pytest.raises(OnSystemFilesystem):
        volume_holding("/srv/other", [], mounts=MOUNTS, resolve=resolve)


# --- with the real mount table and real symbolic links -----------------------------------


def test_real_paths_and_links(tmp_path: Path) -> None:
    data = tmp_path / "volume" / "data"
    data.mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    volumes = [VolumeMount("vol", str(tmp_path / "volume"))]
    assert volume_holding(tmp_path / "link" / "file", volumes).tag == "vol"


def test_real_mount_table_classifies_the_root_filesystem(tmp_path: Path) -> None:
    root = next(m for m in read_mounts() if m.mount_point == "/")
    if os.stat(tmp_path).st_dev != root.device:
        pytest.skip("the test directory is not on the filesystem mounted at /")
    with pytest.raises(OnSystemFilesystem):
        volume_holding(tmp_path / "x", [VolumeMount("vol", "/srv/elsewhere")])
