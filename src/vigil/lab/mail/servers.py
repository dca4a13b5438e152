"""Each lab server's own mail configuration, and the mail store on the shared disk.

Lab servers share the host's filesystem, so each gets private copies of the mail
directories: ``ROOT/nodeK/mail/{etc,lib,log,run}`` are bind-mounted onto
``/etc/vigil-mail``, ``/var/lib/vigil-mail``, ``/var/log/vigil-mail`` and
``/run/vigil-mail`` inside that server's mount namespace only (its mounts propagate
nowhere: the lab makes every server's namespace private). The mount points themselves
are empty directories of the host, left in place by ``Lab.down``: removing a directory
that is a mount point in another mount namespace (another lab's server) would detach
that mount there.

Inside every server the same paths hold (``vigil.lab.mail.paths``): Postfix's
configuration ``/etc/vigil-mail/postfix`` (``data_directory`` in ``/var/lib/vigil-mail``),
Dovecot's ``/etc/vigil-mail/dovecot/dovecot.conf`` (``base_dir`` in ``/run/vigil-mail``),
their logs in ``/var/log/vigil-mail``; the queue and the mailboxes on the shared disk at
``/srv/mail``. A server's home value (its users' ``mailHost``) is its lab address.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

from vigil.errors import LabError
from vigil.lab.mail import dovecot_conf, postfix_conf
from vigil.lab.mail.paths import (
    DEDUP_SIEVE,
    DOVECOT_CONF,
    DOVECOT_DIR,
    DOVECOT_LDAP,
    MAIL_GID,
    MAIL_ROOT,
    MAIL_UID,
    POSTFIX_DIR,
    POSTFIX_LOG,
    PRIVATE_DIRS,
    QUEUE_DIR,
    VMAIL_DIR,
)
from vigil.lab.mail.writing import write_file
from vigil.lab.naming import LabNames

COMMAND_TIMEOUT = 60
#: systemd units Debian's packages enable; only vigil may start these services
SYSTEM_UNITS = ("postfix", "dovecot", "slapd")

# $1..: pairs of (private directory, where the server sees it); idempotent
_BIND_SCRIPT = """
set -e
while [ "$#" -gt 0 ]; do
    mkdir -p "$2"
    mountpoint -q "$2" || mount --bind "$1" "$2"
    shift 2
done
"""

# $1: the shared disk's device in this server; $2: this Python (``vigil.lab.mail.queue``
# makes the queue as `postfix check` would, in a fraction of its time)
_STORE_SCRIPT = f"""
set -e
mkdir -p {MAIL_ROOT}
mountpoint -q {MAIL_ROOT} || mount -t ext4 "$1" {MAIL_ROOT}
"$2" -c "import sys; from vigil.lab.mail.queue import main; sys.exit(main(sys.argv[1:]))" \\
    {QUEUE_DIR}
postfix -c {POSTFIX_DIR} check || {{ tail -n 5 {POSTFIX_LOG} >&2; exit 1; }}
mkdir -p -m 0700 {VMAIL_DIR}
chown {MAIL_UID}:{MAIL_GID} {VMAIL_DIR}
test -d {QUEUE_DIR}/pid
"""


def mail_dir(names: LabNames, server: str) -> Path:
    """``ROOT/nodeK/mail``: the server's private mail directories."""
    return names.server_dir(server) / "mail"


def home_value(names: LabNames, server: str) -> str:
    """What ``mailHost`` says for users homed on ``server``: its lab address."""
    return names.address(server)


def _inside(private: Path, path: Path) -> Path:
    """Where ``path`` (as the server sees it) is in the server's private directories."""
    for name, seen_as in PRIVATE_DIRS.items():
        if path.is_relative_to(seen_as):
            return private / name / path.relative_to(seen_as)
    raise ValueError(f"{path} is in none of the private mail directories")


def write_config(
    names: LabNames,
    server: str,
    *,
    networks: str,
    directory_url: str,
    bind_password: str,
    frontend_address: str,
) -> Path:
    """Create ``server``'s private mail directories and write its Postfix and Dovecot
    configurations into them (again: overwritten); returns ``ROOT/nodeK/mail``."""
    private = mail_dir(names, server)
    for name in PRIVATE_DIRS:
        (private / name).mkdir(mode=0o755, parents=True, exist_ok=True)
    postfix_dir = _inside(private, POSTFIX_DIR)
    dovecot_dir = _inside(private, DOVECOT_DIR)
    for directory in (postfix_dir, dovecot_dir):
        directory.mkdir(mode=0o755, exist_ok=True)
    config = postfix_conf.server(
        server=server,
        networks=networks,
        directory_url=directory_url,
        bind_password=bind_password,
        config_dir=POSTFIX_DIR,
    )
    write_file(postfix_dir / "main.cf", config.main_cf(), 0o644)
    write_file(postfix_dir / "master.cf", postfix_conf.master_cf(), 0o644)
    for name, text in config.maps.items():
        write_file(postfix_dir / name, text, 0o640, "postfix")
    write_file(dovecot_dir / DOVECOT_LDAP, dovecot_conf.server_ldap(directory_url), 0o600)
    text = dovecot_conf.server(
        ldap_file=DOVECOT_CONF.with_name(DOVECOT_LDAP), frontend_address=frontend_address
    )
    write_file(_inside(private, DOVECOT_CONF), text, 0o644)
    write_file(_inside(private, DEDUP_SIEVE), dovecot_conf.DEDUP_SCRIPT, 0o644)
    # Postfix's data_directory must belong to its mail owner; post-install would fix the
    # mode but not create the parent
    data = private / "lib" / "postfix"
    data.mkdir(mode=0o700, exist_ok=True)
    postfix = pwd.getpwnam("postfix")
    os.chown(data, postfix.pw_uid, postfix.pw_gid)
    return private


def compile_sieve(server: str, enter: list[str]) -> None:
    """Compile the deduplication script inside the server, with its own Dovecot
    configuration (a binary compiled elsewhere names another path and is compiled again
    at delivery, which the mail user may not write): ``bind_mounts`` first."""
    argv = ["sievec", "-c", str(DOVECOT_CONF), str(DEDUP_SIEVE)]
    _run_inside(server, enter, argv, "compile the Sieve deduplication script")


def bind_mounts(server: str, enter: list[str], private: Path) -> None:
    """Bind-mount the private directories onto their paths inside ``server`` (``enter``:
    its ``nsenter ... --`` prefix); idempotent."""
    pairs = []
    for name, seen_as in PRIVATE_DIRS.items():
        pairs += [str(private / name), str(seen_as)]
    argv = ["sh", "-c", _BIND_SCRIPT, "bind", *pairs]
    _run_inside(server, enter, argv, "bind-mount its mail directories")


def create_store(server: str, enter: list[str], device: str) -> None:
    """In ``server``: mount ``device`` (the shared disk) at ``/srv/mail``, let Postfix
    create its queue there and make the mailbox root ``/srv/mail/vmail`` (owned by the
    mail uid). Leaves it mounted."""
    argv = ["sh", "-c", _STORE_SCRIPT, "store", device, sys.executable]
    _run_inside(server, enter, argv, "create the mail store")


def _run_inside(server: str, enter: list[str], argv: list[str], what: str) -> str:
    done = subprocess.run(
        [*enter, *argv], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise LabError(
            f"could not {what} in {server} (exit {done.returncode}): "
            f"{done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def disable_system_units(units: tuple[str, ...] = SYSTEM_UNITS) -> list[str]:
    """``systemctl disable`` each of ``units`` that is enabled (this starts and stops
    nothing; it keeps the services from starting at boot, outside vigil). Returns the
    units it disabled; none without systemctl."""
    disabled: list[str] = []
    for unit in units:
        try:
            enabled = subprocess.run(
                ["systemctl", "is-enabled", unit], capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            return disabled
        if enabled.stdout.strip() != "enabled":
            continue
        done = subprocess.run(
            ["systemctl", "disable", unit], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise LabError(
                f"could not disable the system's {unit} unit ({done.stderr.strip()}); "
                f"disable it yourself (`systemctl disable {unit}`): vigil must be the only "
                "one to start it"
            )
        disabled.append(unit)
    return disabled
