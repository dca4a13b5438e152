"""The volume kit's properties: defaults, per-server and unique declarations, and the
validation messages an administrator sees."""

from __future__ import annotations

from typing import Any

import pytest

from vigil.errors import KitError, Severity
from vigil.kits.volume import FsckPolicy, VolumeKit, VolumeProperties

KIT = VolumeKit()
UUID = "8e5c0e4c-0097-441e-b056-9f6beddd1722"


def parse(**values: Any) -> VolumeProperties:
    base: dict[str, Any] = {"device": "/dev/loop0", "mount_point": "/srv/mail"}
    base.update(values)
    parsed = KIT.parse_properties(base)
    assert isinstance(parsed, VolumeProperties)
    return parsed


def refused(**values: Any) -> str:
    with pytest.raises(KitError) as caught:
        parse(**values)
    assert caught.value.severity is Severity.FATAL
    return str(caught.value)


def test_defaults() -> None:
    p = parse()
    assert p.filesystem_type == "ext4"
    assert p.filesystem_uuid is None
    assert p.mount_options == "" and p.options == ()
    assert p.fsck is FsckPolicy.AUTO
    assert p.full_threshold == 90
    assert p.stop_holders is False
    assert p.multi_mount_protection is True
    assert p.is_ext and not p.read_only


def test_device_is_per_server_and_mount_point_and_uuid_are_unique() -> None:
    assert VolumeProperties.per_server_fields() == {"device"}
    assert VolumeProperties.unique_fields() == {"mount_point", "filesystem_uuid"}
    described = KIT.describe()
    assert described["per_server"] == ["device"]
    assert described["unique"] == ["filesystem_uuid", "mount_point"]


def test_device_and_mount_point_are_required() -> None:
    with pytest.raises(KitError) as caught:
        KIT.parse_properties({})
    assert "device" in str(caught.value) and "mount_point" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("srv/mail", "must be an absolute path"),
        ("/srv/mail/", "write mount_point '/srv/mail/' as '/srv/mail'"),
        ("/srv//mail", "as '/srv/mail'"),
        ("/srv/./mail", "as '/srv/mail'"),
        ("/srv/x/../mail", "as '/srv/mail'"),
        ("/", "system directory"),
        ("/var", "system directory"),
        ("/proc/mail", "kernel filesystem"),
        ("/dev/shm/x", "kernel filesystem"),
        ("/srv/ma\nil", "newline"),
    ],
)
def test_mount_point_must_be_canonical_and_not_a_system_directory(
    value: str, expected: str
) -> None:
    assert expected in refused(mount_point=value)


def test_usual_mount_points_are_fine() -> None:
    for point in ("/srv/mail", "/var/lib/mysql", "/data", "/mnt/volume 1", "/home/shared"):
        assert parse(mount_point=point).mount_point == point


def test_device_must_be_canonical() -> None:
    assert "must be an absolute path" in refused(device="loop0")
    assert "as '/dev/loop0'" in refused(device="/dev//loop0")


def test_filesystem_uuid() -> None:
    assert parse(filesystem_uuid=UUID).filesystem_uuid == UUID
    assert parse(filesystem_uuid=f" {UUID} ").filesystem_uuid == UUID
    assert parse(filesystem_uuid="1234-ABCD").filesystem_uuid == "1234-ABCD"  # vfat
    assert parse(filesystem_uuid="").filesystem_uuid is None
    assert "not a filesystem UUID" in refused(filesystem_uuid="not a uuid")


def test_filesystem_type() -> None:
    assert parse(filesystem_type="xfs").is_ext is False
    assert parse(filesystem_type="ext3").is_ext is True
    assert "not a filesystem type" in refused(filesystem_type="ext4 -o remount")


def test_mount_options() -> None:
    p = parse(mount_options="noatime,nodev,ro")
    assert p.options == ("noatime", "nodev", "ro")
    assert p.read_only
    assert "single commas" in refused(mount_options="noatime, nodev")
    assert "single commas" in refused(mount_options="noatime,,nodev")
    assert "'bind' cannot be used" in refused(mount_options="bind")
    assert "'remount' cannot be used" in refused(mount_options="rw,remount")


def test_fsck_policy_and_thresholds() -> None:
    assert parse(fsck="never").fsck is FsckPolicy.NEVER
    assert parse(fsck="always").fsck is FsckPolicy.ALWAYS
    assert "fsck" in refused(fsck="sometimes")
    assert parse(full_threshold=100).full_threshold == 100
    assert "full_threshold" in refused(full_threshold=0)
    assert "full_threshold" in refused(full_threshold=101)
    assert "stop_holders_grace" in refused(stop_holders_grace=-1)


def test_unknown_properties_are_refused() -> None:
    assert "mountpoint" in refused(mountpoint="/srv/x")


def test_timeouts_follow_the_properties() -> None:
    from vigil.kits.base import Action
    from vigil.kits.process import CLEANUP_ALLOWANCE

    p = parse(restore_timeout=100, remove_timeout=20)
    assert KIT.timeout(Action.RESTORE, p) == 100 + CLEANUP_ALLOWANCE
    assert KIT.timeout(Action.REMOVE, p) == 20 + CLEANUP_ALLOWANCE
    assert KIT.timeout(Action.RECOVER, p) > KIT.timeout(Action.RESTORE, p)
    assert KIT.timeout(Action.QUICK_CHECK, p) == KIT.timeouts.quick_check
