"""The mail kit's create and extend checks (the seed's chapter 8, "Error Creating" and
"Extend of Exchange Resource Problems"), each problem a message naming what to fix.

Create: the programs and configurations are there in supported versions; no protected
service starts at boot outside vigil (the seed's "set to MANUAL"); the directory account
binds; every data location is on a filesystem vigil can protect (the system filesystem
is refused with how to move the data; each other filesystem becomes a volume resource
below the mail resource). Extend: the same on the backup, and its configuration matches
what was recorded on the primary, as a list of changes to make (``--fix`` makes them,
except in an N+1 hierarchy, where the second primary is the one to change).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from dataclasses import dataclass, field

from vigil.errors import KitError
from vigil.kits.base import ChildResource, KitContext
from vigil.kits.mail import config, directory
from vigil.kits.mail.properties import MailProperties
from vigil.kits.mail.services import KNOWN_SERVICES, Command, Endpoint
from vigil.kits.mirror.locate import mirror_of_device
from vigil.kits.process import run_command
from vigil.kits.volume import mounts as mt
from vigil.kits.volume.probe import probe_filesystem

__all__ = ["Plan", "create_plan", "extend_problems", "setup_problems"]

PROGRAMS = ("postfix", "postconf", "dovecot", "doveconf")
#: the versions the kit knows (Debian 12: Postfix 3.7, Dovecot 2.3)
SUPPORTED = {"postfix": re.compile(r"3\.\d+"), "dovecot": re.compile(r"2\.3\.")}
BOOT_UNITS = ("postfix", "dovecot")
_UNITS_LOG = logging.getLogger("vigil.kit.mail.units")
_UNITS_LOG.setLevel(logging.WARNING)


@dataclass
class Plan:
    """What create found: problems, or the volumes the data lives on."""

    problems: list[str] = field(default_factory=list)
    volumes: list[ChildResource] = field(default_factory=list)


async def setup_problems(ctx: KitContext[MailProperties], props: MailProperties) -> list[str]:
    """Programs, versions, configuration files, boot-time units, optional services and the
    directory account, on ``ctx.server``."""
    problems = [
        f"{program} is not installed on {ctx.server}: install postfix and dovecot-core "
        "(with dovecot-imapd, dovecot-pop3d, dovecot-lmtpd, dovecot-ldap, postfix-ldap)"
        for program in PROGRAMS
        if shutil.which(program) is None
    ]
    if problems:
        return problems
    main_cf = os.path.join(props.postfix_config, "main.cf")
    files = {main_cf: "Postfix's main.cf", props.dovecot_config: "Dovecot's configuration"}
    present = await asyncio.to_thread(lambda: {p for p in files if os.path.isfile(p)})
    problems += [
        f"{what} {path} does not exist on {ctx.server}"
        for path, what in files.items()
        if path not in present
    ]
    if problems:
        return problems
    problems += await _versions(ctx, props)
    problems += await _boot_units(ctx, props)
    problems += _optional_services(ctx, props)
    problems += await asyncio.to_thread(directory.check_account, props)
    return problems


async def _versions(ctx: KitContext[MailProperties], props: MailProperties) -> list[str]:
    found = {
        "postfix": await config.postfix_version(props.postfix_config),
        "dovecot": await config.dovecot_version(),
    }
    problems = []
    for program, version in found.items():
        if not SUPPORTED[program].match(version):
            problems.append(
                f"{program} {version or '(unknown version)'} on {ctx.server} is not a version the "
                "mail kit supports (Postfix 3.x, Dovecot 2.3)"
            )
        recorded = props.setting(f"record:{program}:version")
        if recorded and _major(recorded) != _major(version):
            problems.append(
                f"{program} on {ctx.server} is {version}, the primary runs {recorded}: install "
                f"the same major version ({_major(recorded)}) on every server"
            )
    return problems


def _major(version: str) -> str:
    return ".".join(version.split(".")[:2])


async def _boot_units(ctx: KitContext[MailProperties], props: MailProperties) -> list[str]:
    """Protected services must not start at boot outside vigil (the seed's MANUAL)."""
    if shutil.which("systemctl") is None:
        return []
    problems = []
    for unit in (*BOOT_UNITS, *(s.name for s in props.services)):
        result = await run_command(
            ["systemctl", "is-enabled", unit], log=_UNITS_LOG, timeout=10,
            name="systemctl",
        )  # fmt: skip
        if result.output.strip().splitlines()[-1:] == ["enabled"]:
            problems.append(
                f"the {unit} service is enabled at boot on {ctx.server}: it would start outside "
                f"vigil's control; disable it with `systemctl disable {unit}` (and turn it back "
                f"on after deleting the hierarchy: `vigil mail set-service-mode auto --server "
                f"{ctx.server}`)"
            )
    return problems


def _optional_services(ctx: KitContext[MailProperties], props: MailProperties) -> list[str]:
    problems = []
    for spec in props.services:
        service = Command(props, Endpoint("127.0.0.1"), spec)
        missing = service.missing()
        if missing:
            problems.append(
                f"optional service {spec.name}: vigil does not know it (known: "
                f"{', '.join(sorted(KNOWN_SERVICES))}); give its {', '.join(missing)} command"
            )
        elif spec.name in KNOWN_SERVICES and not spec.start:
            program = KNOWN_SERVICES[spec.name][0].split("&&")[-1].split()[0]
            if shutil.which(program) is None:
                problems.append(
                    f"optional service {spec.name}: {program} is not installed on {ctx.server}"
                )
    return problems


# --- create: where the data is --------------------------------------------------------


async def create_plan(ctx: KitContext[MailProperties], props: MailProperties) -> Plan:
    """Every data location classified: on the system filesystem (refused, with how to
    move it), missing (refused), or on a filesystem that becomes a volume child."""
    plan = Plan()
    try:
        locations = await config.data_locations(props.postfix_config, props.dovecot_config)
    except KitError as exc:
        plan.problems.append(str(exc))
        return plan
    table = mt.read_mounts()
    root = mt.visible_mount(table, "/")
    volumes: dict[str, mt.MountEntry] = {}
    for location in _unique(locations):
        resolved = await asyncio.to_thread(_existing_directory, location.path)
        if resolved is None:
            plan.problems.append(
                f"{location.what}: {location.path} does not exist on {ctx.server}; create it on "
                "the protected volume (with the right owner) or fix the configuration"
            )
            continue
        mount = mt.containing_mount(table, resolved)
        if mount is None or mount.mount_point == "/" or (root and mount.device == root.device):
            plan.problems.append(
                f"{location.what} is on the system filesystem (the one mounted at /) of "
                f"{ctx.server}, which vigil cannot protect: {location.how_to_move} to a "
                "filesystem on a shared or replicated disk"
            )
            continue
        volumes.setdefault(mount.mount_point, mount)
    for number, (_, mount) in enumerate(sorted(volumes.items()), start=1):
        child = await _volume_child(
            ctx, mount, f"{ctx.tag}-vol" + (str(number) if len(volumes) > 1 else "")
        )
        if isinstance(child, str):
            plan.problems.append(child)
        else:
            plan.volumes.append(child)
    return plan


def _existing_directory(path: str) -> str | None:
    """``path`` with symbolic links resolved, when it is a directory."""
    resolved = os.path.realpath(path)
    return resolved if os.path.isdir(resolved) else None


def _unique(locations: list[config.DataLocation]) -> list[config.DataLocation]:
    seen: set[str] = set()
    unique = []
    for location in locations:
        if location.path not in seen:
            seen.add(location.path)
            unique.append(location)
    return unique


async def _volume_child(
    ctx: KitContext[MailProperties], mount: mt.MountEntry, tag: str
) -> ChildResource | str:
    """The volume resource protecting ``mount`` (its device, UUID and type), or why not.
    A filesystem on a mirror's replicated device is that mirror resource's (adopted)."""
    device = mount.source
    mirror = mirror_of_device(device)
    if mirror is not None:
        return ChildResource(tag=mirror, kit="mirror", adopt=True)
    if not device.startswith("/dev/"):
        return (
            f"{mount.mount_point} on {ctx.server} is a {mount.fstype} filesystem from "
            f"{device}, not a block device vigil can protect as a volume; put the mail data "
            "on a filesystem on a shared or replicated disk"
        )
    try:
        fs = await probe_filesystem(device, _UNITS_LOG)  # blkid prints every tag: kept quiet
    except KitError as exc:
        return f"{mount.mount_point}: {exc}"
    if fs is None or not fs.uuid:
        return f"{mount.mount_point}: no filesystem UUID found on {device} (blkid)"
    return ChildResource(
        tag=tag,
        kit="volume",
        properties={
            "device": device,
            "mount_point": mount.mount_point,
            "filesystem_uuid": fs.uuid,
            "filesystem_type": fs.type or mount.fstype,
        },
    )


# --- extend -----------------------------------------------------------------------------


async def extend_problems(
    ctx: KitContext[MailProperties], props: MailProperties
) -> tuple[list[str], bool]:
    """Problems on the backup, and whether ``--fix`` can correct them all (only
    configuration differences, outside an N+1 hierarchy)."""
    problems = await setup_problems(ctx, props)
    if problems:
        return problems, False
    actual = await config.settings(props.postfix_config, props.dovecot_config)
    changes = config.differences(props.expected_settings, actual)
    if not changes:
        return [], False
    others = ", ".join(ctx.others_here)
    if ctx.others_here:
        head = (
            f"the mail configuration of {ctx.server} differs from this hierarchy's primary, and "
            f"{ctx.server} is the backup of {others} as well (N+1): its configuration serves "
            "them too, so make the primary of this hierarchy match it instead"
        )
    else:
        head = (
            f"the mail configuration of {ctx.server} differs from the primary's; make these "
            "changes on it (or extend with --fix to let vigil make them)"
        )
    fixable = not ctx.others_here and not any(
        "same file" in c or c.startswith("remove ") for c in changes
    )
    return [f"{head}: {change}" for change in changes], fixable
