"""The lab's mail organisation (``Lab.add_mail_org``), with real slapd, Postfix and Dovecot.

One lab of two servers (no agents: nothing of vigil touches the mail services here) for
the module, lab ``tmail`` on 10.213.64.0/24. The tests run in order and build on each
other: the organisation is built; the directory, the servers' private configurations
and the shared disk are checked; Postfix and Dovecot are started by hand on node1 and
mail goes from a lab client through the front-end (Postfix relay, routing by mailHost)
to node1 and is read back through the front-end's proxy (IMAP, POP3); re-homing a user
sends its logins to node2; the directory survives a stop and a start; then the mail
service is moved to node2 by hand, as the mail kit will, with the mail that was there
and deferred mail delivered at once on ETRN; and ``down`` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import wait_for
from vigil.lab import Lab
from vigil.lab.mail import LdapRefused, MailClientError, MailOrgInfo, MailUser
from vigil.lab.mail import ldap as mail_ldap
from vigil.lab.mail.frontend import greeting

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("slapd", "postfix", "dovecot")),
        reason="needs slapd, postfix and dovecot (scripts/setup.sh installs them)",
    ),
]

USERS = 20
CLIENT = "client1"
#: seconds the lab may take to build the mail organisation (about 1.5 s measured)
BUILD_BUDGET = 20.0
#: what the organisation's build took, for the report at the end
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab("tmail", subnet_index=64)
    lab.down()
    try:
        lab.up(2, start_agents=False)
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def org(lab: Lab) -> MailOrgInfo:
    started = time.monotonic()
    built = lab.add_mail_org(users=USERS)
    TIMINGS["add_mail_org"] = time.monotonic() - started
    lab.add_client(CLIENT)
    return built


# -- helpers ------------------------------------------------------------------------------
def _run(lab: Lab, server: str, argv: list[str]) -> float:
    """Run ``argv`` in ``server`` as an administrator would; returns its duration. Its
    output goes to a file: a daemon that forks keeps its parent's stdout open."""
    log = lab.names.root / f"{server}-commands.log"
    started = time.monotonic()
    with log.open("ab") as out:
        done = lab.exec(server, argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60)
    assert done.returncode == 0, f"{argv} in {server}: exit {done.returncode}; see {log}"
    return time.monotonic() - started


def _services(lab: Lab, org: MailOrgInfo, server: str, action: str) -> dict[str, float]:
    """Start or stop Postfix and Dovecot in ``server``; seconds per command."""
    return {argv[0]: _run(lab, server, argv) for argv in org.commands[action]}


def _inbox(org: MailOrgInfo, user: MailUser) -> list[str] | None:
    """Message-IDs in ``user``'s INBOX through the front-end; None while it cannot log in."""
    try:
        return [message_id for message_id, _ in org.fetch(CLIENT, user)]
    except MailClientError:
        return None


def _delivered(org: MailOrgInfo, user: MailUser, message_id: str, timeout: float = 30.0) -> None:
    wait_for(
        lambda: message_id in (_inbox(org, user) or []),
        timeout,
        f"{message_id} in the INBOX of {user.name}",
    )


def _ns_keys(lab: Lab) -> set[tuple[int, int]]:
    keys = set()
    names = lab.names
    paths = [names.netns_path(s) for s in ("node1", "node2")]
    paths += [names.mount_ns_file(s) for s in ("node1", "node2")]
    paths += [Path("/run/netns") / names.client_netns(c) for c in (CLIENT, "client48", "client49")]
    for path in paths:
        st = os.stat(path)
        keys.add((st.st_dev, st.st_ino))
    return keys


def _live_pids_in(keys: set[tuple[int, int]]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
            spaces = {os.stat(f"/proc/{entry}/ns/{kind}") for kind in ("net", "mnt")}
        except OSError:
            continue
        if state != "Z" and {(s.st_dev, s.st_ino) for s in spaces} & keys:
            found.append(int(entry))
    return found


# -- the organisation as built ------------------------------------------------------------
def test_built_quickly_with_passwords_only_in_private_files(lab: Lab, org: MailOrgInfo) -> None:
    assert TIMINGS["add_mail_org"] < BUILD_BUDGET
    assert len(org.users) == USERS and org.users[0].name == "user001"
    assert org.probe_user.address == "vigil-probe@lab.example"
    assert org.home_value("node1") == "10.213.64.1" and org.home_value("node2") == "10.213.64.2"
    state = lab.names.state_file.read_text()
    secrets = [org.directory.admin_password, org.directory.bind_password]
    secrets += [user.password for user in (*org.users, org.probe_user)]
    assert not [secret for secret in secrets if secret in state]
    assert not [secret for secret in secrets if secret in repr(org)]
    directory = org.directory.config_file.parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in (org.directory.bind_password_file, org.directory.admin_password_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert org.directory.bind_password_file.read_text().strip() == org.directory.bind_password
    again = lab.mail_org()  # read back from lab.json and the files, as another process would
    assert again.users == org.users and again.directory == org.directory


def test_the_directory_holds_every_user_homed_on_the_primary(org: MailOrgInfo) -> None:
    homes = org.directory.mail_hosts()
    assert set(homes) == {user.name for user in (*org.users, org.probe_user)}
    assert set(homes.values()) == {org.home_value("node1")}
    user = org.users[3]
    with org.directory.connect(user.dn, user.password) as conn:  # a user binds as itself
        assert mail_ldap.mail_host(conn, user.name) == org.home_value("node1")
    with pytest.raises(LdapRefused) as refused, org.directory.connect(user.dn, "x" + user.password):
        pass
    assert refused.value.result == 49  # invalidCredentials
    with mail_ldap.connection(org.directory.url) as anonymous:  # anonymous sees nothing
        anonymous.search(org.directory.users_dn, "(objectClass=*)", attributes=["mail"])
        assert anonymous.entries == []
    with org.directory.connect() as service:  # the service account reads, but no hashes
        service.search(user.dn, "(objectClass=*)", attributes=["mail", "userPassword"])
        seen = service.entries[0].entry_attributes_as_dict
        assert seen["mail"] == [user.address] and not seen.get("userPassword")


def test_the_service_account_re_homes_users_and_a_user_cannot(org: MailOrgInfo) -> None:
    target, other = org.users[0], org.users[1]
    with (
        pytest.raises(LdapRefused) as refused,
        org.directory.connect(other.dn, other.password) as c,
    ):
        mail_ldap.set_mail_host(c, target.name, org.home_value("node2"))
    assert refused.value.result == 50  # insufficientAccessRights
    with pytest.raises(LdapRefused), org.directory.connect(target.dn, target.password) as c:
        mail_ldap.set_mail_host(c, target.name, org.home_value("node2"))  # not even its own
    assert org.directory.mail_host(target) == org.home_value("node1")
    org.directory.set_mail_host(target, org.home_value("node2"))
    assert org.directory.mail_host(target) == org.home_value("node2")
    org.directory.set_mail_host(target, org.home_value("node1"))


def test_each_server_has_its_own_mail_configuration_the_host_none(lab: Lab) -> None:
    names = {}
    for server in ("node1", "node2"):
        done = lab.exec(
            server,
            ["postconf", "-c", "/etc/vigil-mail/postfix", "-h", "myhostname", "queue_directory"],
            capture_output=True,
            text=True,
            check=True,
        )
        names[server] = done.stdout.split()
        mounted = lab.exec(
            server, ["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True
        )
        targets = set(mounted.stdout.split())
        assert {"/etc/vigil-mail", "/var/lib/vigil-mail", "/var/log/vigil-mail"} <= targets
        assert ("/srv/mail" in targets) == (server == "node1")  # the store: on the primary only
    assert names == {
        "node1": ["node1.lab.example", "/srv/mail/spool"],
        "node2": ["node2.lab.example", "/srv/mail/spool"],
    }
    host_mounts = Path("/proc/self/mountinfo").read_text()
    assert "vigil-mail" not in host_mounts and " /srv/mail " not in host_mounts
    assert not any(Path("/etc/vigil-mail").iterdir())  # nothing leaked into the host's
    queue = lab.exec(
        "node1",
        ["stat", "-c", "%u %a", "/srv/mail/spool/active", "/srv/mail/vmail"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert queue.stdout.split("\n")[:2] == [f"{pwd.getpwnam('postfix').pw_uid} 700", "5000 700"]
    status = lab.status().mail
    assert status is not None and status.directory_pid is not None
    assert len(status.frontend_pids) == 2
    assert [(s.name, s.store_mounted, s.postfix, s.dovecot) for s in status.servers] == [
        ("node1", True, False, False),
        ("node2", False, False, False),
    ]


# -- mail through the front-end -----------------------------------------------------------
def test_mail_to_two_users_is_read_back_over_imap_and_pop3(lab: Lab, org: MailOrgInfo) -> None:
    TIMINGS.update({f"start {k}": v for k, v in _services(lab, org, "node1", "start").items()})
    node1 = org.home_value("node1")
    wait_for(lambda: greeting(node1, 25) and greeting(node1, 143), 10, "node1's mail services")
    first, second = org.users[0], org.users[1]
    message_id = org.send(CLIENT, [first, second], "hello from the lab", "two readers")
    _delivered(org, first, message_id)
    assert ("<" in message_id) and (message_id, "hello from the lab") in org.fetch(CLIENT, first)
    wait_for(lambda: message_id in [m for m, _ in org.pop3_list(CLIENT, second)], 30, "POP3")
    assert org.fetch(CLIENT, org.users[2]) == []  # a third user got nothing
    on_disk = lab.exec(
        "node1",
        ["find", "/srv/mail/vmail/lab.example/user001", "-path", "*/new/*"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(on_disk.stdout.split()) == 1  # the mailbox is on the shared disk


def test_the_front_end_refuses_unknown_recipients(org: MailOrgInfo) -> None:
    with pytest.raises(MailClientError) as refused:
        org.send(CLIENT, "nobody@lab.example", "to nobody")
    assert refused.value.reply.startswith("5")  # a permanent refusal, at RCPT time
    assert "nobody@lab.example" in str(refused.value)


def test_a_re_homed_users_logins_go_to_its_new_home(lab: Lab, org: MailOrgInfo) -> None:
    user = org.users[0]
    org.directory.set_mail_host(user, org.home_value("node2"))
    try:
        with pytest.raises(MailClientError):  # node2 runs no Dovecot: the proxy cannot log in
            org.fetch(CLIENT, user)
        log = org.frontend.dovecot_log.read_text()
        assert f"proxy({user.address},{org.home_value('node2')}:143)" in log
        assert org.fetch(CLIENT, org.users[1])  # the others still reach node1
    finally:
        org.directory.set_mail_host(user, org.home_value("node1"))
    assert _inbox(org, user)  # and back home at once: the proxy caches nothing


def test_the_directory_keeps_its_users_across_a_stop(org: MailOrgInfo) -> None:
    before = org.directory.mail_hosts()
    org.directory.stop()
    assert not org.directory.answers()
    assert _inbox(org, org.users[0]) is None  # no directory, no login
    org.directory.start()
    assert org.directory.mail_hosts() == before
    wait_for(lambda: _inbox(org, org.users[0]), 15, "a login once the directory is back")


# -- a takeover by hand, as the mail kit will do it ---------------------------------------
def test_node2_takes_the_mail_service_over(lab: Lab, org: MailOrgInfo) -> None:
    old = {user.name: _inbox(org, user) for user in org.users[:2]}
    TIMINGS.update({f"stop {k}": v for k, v in _services(lab, org, "node1", "stop").items()})
    _run(lab, "node1", ["umount", str(org.mail_root)])
    lab.prepare_mail_server("node2")
    _run(lab, "node2", ["mount", org.disk.device("node2"), str(org.mail_root)])
    for user in (*org.users, org.probe_user):
        org.directory.set_mail_host(user, org.home_value("node2"))
    # Dovecot first, Postfix later: mail for node2 waits on the front-end (deferred: the
    # connection is refused), and goes at once on ETRN, not after the 30 s back-off. To a
    # user no mail was resolved for in the last 30 s: the front-end's queue manager keeps
    # the route of the last recipient it resolved for 30 s (see LAB-NOTES), and would
    # send it to node1 once more
    _run(lab, "node2", org.commands["start"][0])
    second = org.users[4]
    waiting = org.send(CLIENT, second, "while Postfix was down")
    _run(lab, "node2", org.commands["start"][1])
    wait_for(lambda: greeting(org.home_value("node2"), 25), 10, "node2's Postfix")
    asked = time.monotonic()
    assert org.etrn(CLIENT).startswith("250")
    _delivered(org, second, waiting, timeout=20)
    TIMINGS["deferred mail delivered after ETRN"] = time.monotonic() - asked
    assert TIMINGS["deferred mail delivered after ETRN"] < 10
    for user in org.users[:2]:
        assert set(old[user.name] or []) <= set(_inbox(org, user) or [])
    fresh = org.send(CLIENT, org.probe_user, "probe on node2")
    _delivered(org, org.probe_user, fresh)
    # the client helpers stand in a server too, and talk to a server directly
    node2 = org.home_value("node2")
    direct = org.send("node1", org.probe_user, "straight to node2", via=node2)
    wait_for(
        lambda: direct in [m for m, _ in org.fetch("node1", org.probe_user, via=node2)],
        20,
        "mail sent to node2 directly, read on node2 directly",
    )
    status = lab.status().mail
    assert status is not None
    assert [(s.name, s.store_mounted, s.postfix, s.dovecot) for s in status.servers] == [
        ("node1", False, False, False),
        ("node2", True, True, True),
    ]


def test_down_leaves_nothing(lab: Lab, org: MailOrgInfo) -> None:
    keys = _ns_keys(lab)
    image = str(org.disk.image)
    lab.down()
    assert _live_pids_in(keys) == []
    assert (
        "vigil-tmail-"
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    assert image not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(lab.names.root) not in mounts and "vigil-mail" not in mounts
    assert not lab.names.root.exists()
    assert not lab.status().exists
    print("\nmail lab timings (s):", json.dumps({k: round(v, 3) for k, v in TIMINGS.items()}))


def test_down_after_a_crash_finds_everything_by_its_names() -> None:
    """A lab whose state file is gone (its builder crashed): slapd, the front-end, the
    mail services running on node1 over the mounted store are found by the lab's names."""
    lab = Lab("tmail", subnet_index=64)
    lab.down()
    try:
        lab.up(2, start_agents=False)
        org = lab.add_mail_org(users=3)
        lab.add_client(CLIENT)
        _services(lab, org, "node1", "start")
        keys = _ns_keys(lab)
        assert len(_live_pids_in(keys)) > 10  # slapd, both front-end daemons, node1's
        lab.names.state_file.unlink()
        Lab("tmail", subnet_index=64).down()
        assert _live_pids_in(keys) == []
        losetup = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
        assert str(lab.names.root) not in losetup
        assert str(lab.names.root) not in Path("/proc/self/mountinfo").read_text()
        assert not lab.names.root.exists() and not lab.status().exists
    finally:
        lab.down()
