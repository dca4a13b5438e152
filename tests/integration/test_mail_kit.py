"""The mail kit in a lab with real slapd, Postfix and Dovecot (one lab for the module).

The module walks through the seed's chapters in order: create (its refusals first, each
with its message and nothing changed), extend (differences listed, then fixed), mail
before, during and after a switchover and a failover (none lost, none twice), local
recovery of one service, the directory's duties (users follow, a directory outage is
logged and retried), the utilities, Services Config and Manage User, and delete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.cluster import Cluster, wait_until
from tests.mail_lab import (
    TAG,
    VIP_TAG,
    MailDualActive,
    MailTraffic,
    create_vip,
    mail_cluster,
    mail_properties,
    vip,
    wait_in_service,
)
from vigil.lab.mail import MailOrgInfo

pytestmark = pytest.mark.lab

POSTFIX = "/etc/vigil-mail/postfix"


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Cluster, MailOrgInfo]]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    with mail_cluster("tmk", 62) as built:
        yield built


def tags(cluster: Cluster) -> set[str]:
    return {r["tag"] for h in cluster.status()["hierarchies"] for r in h["resources"]}


def refused(cluster: Cluster, body: dict[str, Any], match: str) -> str:
    """POST a create that must be refused (400/409) with ``match`` in its message, and
    leave the configuration as it was."""
    before = tags(cluster)
    answer = cluster.request("POST", "/v1/resources", body)
    assert answer.status_code in (400, 409), answer.text
    message = answer.json()["error"] + " " + " ".join(answer.json()["problems"])
    assert match in message, message
    assert tags(cluster) == before
    return message


def mail_body(org: MailOrgInfo, **extra: object) -> dict[str, Any]:
    props = mail_properties(org, **extra)
    return {"tag": TAG, "kit": "mail", "server": "node1", "properties": props}


def postconf(cluster: Cluster, server: str, *settings: str) -> None:
    cluster.lab.exec(server, ["postconf", "-c", POSTFIX, "-e", *settings], check=True)


# --- create ------------------------------------------------------------------------------


def test_create_refuses_a_queue_on_the_system_filesystem(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    """The queue moved to the system filesystem (with the seed's SetSMTPQueuePath, which
    also moves it back after the refusal)."""
    cluster, org = lab
    queue, spool = "/var/tmp/vigil-tmk-queue", str(org.queue_dir)
    move = {"postfix_config": str(org.postfix_dir), "move": True}
    cluster.ok("POST", "/v1/mail/servers/node1/queue-path", {"path": queue, **move})
    try:
        message = refused(cluster, mail_body(org), "the Postfix queue (queue_directory)")
        assert "system filesystem" in message and "vigil mail set-queue-path" in message
    finally:
        cluster.ok("POST", "/v1/mail/servers/node1/queue-path", {"path": spool, **move})
    listing = cluster.lab.exec("node1", ["ls", queue], capture_output=True)
    assert listing.returncode != 0  # moved, not copied
    answer = cluster.request("POST", "/v1/mail/servers/node1/queue-path", {"path": "rel", **move})
    assert answer.status_code == 400 and "absolute path" in answer.text


def test_create_refuses_a_service_enabled_at_boot(lab: tuple[Cluster, MailOrgInfo]) -> None:
    cluster, org = lab
    subprocess.run(["systemctl", "enable", "postfix"], check=True, capture_output=True)
    try:
        message = refused(cluster, mail_body(org), "enabled at boot")
        assert "systemctl disable postfix" in message
    finally:
        subprocess.run(["systemctl", "disable", "postfix"], check=True, capture_output=True)


def test_create_refuses_an_account_the_directory_refuses(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    message = refused(cluster, mail_body(org, bind_password="wrong"), org.directory.bind_dn)
    assert org.directory.bind_password not in message


def test_create_refuses_a_volume_of_another_hierarchy_and_an_unknown_address(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    volume = {
        "device": org.disk.device("node1"), "mount_point": str(org.mail_root),
        "filesystem_uuid": org.disk.uuid,
    }  # fmt: skip
    cluster.ok("POST", "/v1/resources", {"tag": "store", "kit": "volume", "server": "node1",
                                          "properties": volume})  # fmt: skip
    app = {"restore": "true", "remove": "true", "quick_check": "true"}
    cluster.ok("POST", "/v1/resources", {"tag": "other", "kit": "app", "server": "node1",
                                          "properties": app})  # fmt: skip
    cluster.ok("POST", "/v1/dependencies", {"parent": "other", "child": "store"})
    refused(cluster, mail_body(org), "store (volume) belongs to hierarchy other")
    refused(cluster, mail_body(org, ip_resource="nope"), "no resource 'nope'")
    # the volume alone is free again: the mail resource adopts it instead of a new one
    cluster.ok("DELETE", "/v1/dependencies/other/store")
    cluster.ok("DELETE", "/v1/hierarchies/other")


def test_create_protects_the_mail_service_with_its_volume_and_address(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    create_vip(cluster)
    created = cluster.ok("POST", "/v1/resources", mail_body(org, ip_resource=VIP_TAG))
    assert "store, mail-ip now below it" in created["summary"]
    view = cluster.hierarchy(TAG)
    assert {r["tag"]: r["kit"] for r in view["resources"]} == {
        "mail": "mail", "mail-ip": "ip", "store": "volume",
    }  # fmt: skip
    wait_in_service(cluster, "node1")
    shown = cluster.ok("GET", f"/v1/resources/{TAG}")
    assert shown["properties"]["bind_password"] == "********"
    assert shown["server_properties"]["node1"]["home_server"] == org.home_value("node1")
    assert shown["properties"]["expected_settings"]["postfix:queue_directory"] == str(org.queue_dir)
    traffic = MailTraffic(org, org.users[:3])
    for _ in range(3):
        assert traffic.send_one("after create")
    delivered = traffic.settle(60)
    assert delivered.lost == 0 and delivered.duplicates == 0, delivered


def test_the_password_is_sealed_in_the_store(lab: tuple[Cluster, MailOrgInfo]) -> None:
    cluster, org = lab
    import sqlite3

    with sqlite3.connect(cluster.root / "store.db") as db:
        (value,) = db.execute("SELECT value FROM kv WHERE key = '/vigil/resources/mail'").fetchone()
    assert org.directory.bind_password.encode() not in value
    assert b"vigil-sealed:v1:" in value


def test_a_message_sent_again_after_a_lost_250_is_delivered_once(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    """SMTP's window: a server fenced after it queued a message but before its 250 reached
    the front-end gets the message again from the front-end (after the failover). The
    second copy, with the same Message-ID, is discarded at delivery (Sieve's duplicate)."""
    cluster, org = lab
    user = org.users[5]
    message_id = "<vigil-duplicate-test@lab.example>"
    for _ in range(2):
        org.send("client1", user, "sent twice", message_id=message_id)
    org.send("client1", user, "sent once")
    wait_until(lambda: "sent once" in {s for _, s in org.fetch("client1", user)}, 60, "delivery")
    time.sleep(1)  # the second copy was queued before "sent once": it had its chance
    subjects = [s for _, s in org.fetch("client1", user)]
    assert subjects.count("sent twice") == 1, subjects
    log = cluster.lab.exec(
        "node1", ["cat", "/var/log/vigil-mail/dovecot.log"], capture_output=True, text=True
    ).stdout
    assert "discarded duplicate" in log or "duplicate" in log.lower()
    assert "Error: sieve" not in log, "the deduplication script is compiled for the server"


def test_a_message_delivered_but_left_queued_by_a_dead_postfix_is_not_delivered_again(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    """A Postfix killed between Dovecot's answer and its own note in the queue file leaves
    the message in the active queue: the next start of Postfix removes it (it is in the
    mailbox already) instead of delivering it twice. Made by hand here: a message held in
    the queue, a copy saved in the mailbox, the queue file moved to ``active``."""
    cluster, org = lab
    user, node = org.users[6], "node1"
    postfix = ["postfix", "-c", POSTFIX]
    cluster.stop_agent(node, leave_resources=True)  # maintenance: nothing restarts Postfix
    try:
        postconf(cluster, node, "defer_transports = lmtp")
        cluster.lab.exec(node, ["sh", "-c", f"{' '.join(postfix)} reload >/dev/null 2>&1"])
        message_id = "<vigil-in-flight-test@lab.example>"
        org.send(node, user, "in flight", via="127.0.0.1", message_id=message_id)
        saved = (
            f"From: t@{org.domain}\nTo: {user.address}\nMessage-ID: {message_id}\n"
            "Subject: in flight\n\nin flight\n"
        )
        cluster.lab.exec(
            node, ["doveadm", "-c", str(org.dovecot_conf), "save", "-u", user.address],
            input=saved.encode(), check=True,
        )  # fmt: skip
        queued = cluster.lab.exec(
            node, ["sh", "-c", f"ls {org.queue_dir}/deferred/*/"], capture_output=True, text=True
        ).stdout.split()
        assert len(queued) == 1, queued
        cluster.lab.exec(node, ["sh", "-c", f"{' '.join(postfix)} stop >/dev/null 2>&1"])
        postconf(cluster, node, "defer_transports =")
        move = f"mv {org.queue_dir}/deferred/*/{queued[0]} {org.queue_dir}/active/"
        cluster.lab.exec(node, ["sh", "-c", move], check=True)
        mark = cluster.mark()
    finally:
        cluster.start_agent(node)
    try:
        cluster.wait_event(mark, "mail-in-flight-settled", text=queued[0], timeout=60)
    except AssertionError:
        print(cluster.agent_log(node)[-6000:])
        raise
    wait_in_service(cluster, node)
    subjects = [s for _, s in org.fetch("client1", user)]
    assert subjects.count("in flight") == 1, subjects


# --- extend --------------------------------------------------------------------------------


def test_extend_lists_the_differences_and_fix_makes_them(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    postconf(cluster, "node2", "virtual_transport = lmtp:unix:/tmp/elsewhere")
    conf = str(org.dovecot_conf)
    cluster.lab.exec("node2", ["sh", "-c", f"echo 'mail_uid = 5001' >> {conf}"], check=True)
    body = {"server": "node2", "priority": 10,
            "properties": {"store": {"device": org.disk.device("node2")}}}  # fmt: skip
    answer = cluster.request("POST", f"/v1/hierarchies/{TAG}/extend", body)
    assert answer.status_code == 400, answer.text
    problems = " ".join(answer.json()["problems"])
    assert "change postfix:virtual_transport from 'lmtp:unix:/tmp/elsewhere'" in problems
    assert "change dovecot:mail_uid from '5001'" in problems
    assert "extend with --fix" in problems
    assert "node2" not in cluster.instances(TAG)
    fixed = cluster.ok("POST", f"/v1/hierarchies/{TAG}/extend", {**body, "fix": True})
    assert "postconf -e" in fixed["detail"] and "dovecot" in fixed["detail"]
    assert cluster.states(TAG)["node2"] == "OSU" or "node2" in cluster.instances(TAG)
    shown = {
        server: cluster.lab.exec(
            server, ["doveconf", "-c", conf, "-h", "mail_uid"], capture_output=True, text=True
        ).stdout
        for server in ("node1", "node2")
    }
    assert shown["node2"] == shown["node1"]
    body3 = {"server": "node3", "priority": 20,
             "properties": {"store": {"device": org.disk.device("node3")}}}  # fmt: skip
    cluster.ok("POST", f"/v1/hierarchies/{TAG}/extend", body3)
    homes = cluster.ok("GET", f"/v1/resources/{TAG}")["server_properties"]
    assert {s: p["home_server"] for s, p in homes.items()} == {
        s: org.home_value(s) for s in ("node1", "node2", "node3")
    }


# --- switchover, failover -----------------------------------------------------------------


def test_switchover_moves_users_and_loses_no_mail(lab: tuple[Cluster, MailOrgInfo]) -> None:
    cluster, org = lab
    traffic = MailTraffic(org, org.users[:5])
    assert traffic.send_one("before")
    with MailDualActive(cluster) as sampler, traffic.running():
        time.sleep(0.5)
        cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node2"})
        time.sleep(0.5)
    sampler.check()
    assert traffic.send_one("after")
    wait_in_service(cluster, "node2")
    assert set(org.directory.mail_hosts().values()) == {org.home_value("node2")}
    delivered = traffic.settle(90)
    assert delivered.lost == 0, delivered.missing
    assert delivered.duplicates == 0, delivered.duplicated
    assert delivered.accepted >= 5


def test_failover_after_sigkill_of_the_agent_loses_no_mail(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    traffic = MailTraffic(org, org.users[:5])
    assert traffic.send_one("before")
    with MailDualActive(cluster) as sampler, traffic.running():
        time.sleep(0.5)
        cluster.kill_agent("node2")
        wait_in_service(cluster, "node1")
    sampler.check()
    assert traffic.send_one("after")
    assert set(org.directory.mail_hosts().values()) == {org.home_value("node1")}
    delivered = traffic.settle(120)
    assert delivered.lost == 0, delivered.missing
    assert delivered.duplicates == 0, delivered.duplicated
    assert "fencing" in cluster.guard_log("node2")
    cluster.start_agent("node2")
    cluster.wait_states(TAG, {"node2": "OSU"})


def test_mail_deferred_for_a_dead_server_is_delivered_soon_after_the_failover(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    """The front-end defers mail for the dead server; after the failover the kit re-homes
    the users and asks the front-end (ETRN) to deliver it at once, not after its retry
    back-off (30 s in the lab)."""
    cluster, org = lab
    cluster.server_policy("node1", failover=False)  # the dead server stays dead a while
    try:
        cluster.kill_agent("node1")
        wait_until(lambda: not MailDualActive(cluster).running(), 30, "node1 fenced")
        traffic = MailTraffic(org, org.users[:4])
        for _ in range(8):
            assert traffic.send_one("deferred")  # the front-end takes it and defers it
        time.sleep(1)
        assert traffic.settle(0).lost == 8  # nothing delivered while no server serves it
        mark = cluster.mark()
        began = time.monotonic()
        cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node2"})
        wait_in_service(cluster, "node2")
        restored = time.monotonic() - began
        delivered = traffic.settle(25)
        took = time.monotonic() - began
        assert delivered.lost == 0, f"after {took:.1f}s: {delivered.missing}"
        assert delivered.duplicates == 0, delivered.duplicated
        cluster.wait_event(mark, "mail-users-moved", text="node2")
        print(f"in service after {restored:.2f}s, deferred mail delivered after {took:.2f}s")
    finally:
        cluster.start_agent("node1")
        cluster.server_policy("node1", failover=None)
        cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node1"})
        wait_in_service(cluster, "node1")


# --- checks and local recovery -------------------------------------------------------------


def _pid(cluster: Cluster, server: str, path: str) -> int:
    done = cluster.lab.exec(server, ["cat", path], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def test_a_failed_service_is_restarted_alone(lab: tuple[Cluster, MailOrgInfo]) -> None:
    cluster, org = lab
    cluster.resource_policy(TAG, quick_check_interval=1)
    mark = cluster.mark()
    postfix = _pid(cluster, "node1", f"{org.queue_dir}/pid/master.pid")
    dovecot = _pid(cluster, "node1", "/run/vigil-mail/dovecot/master.pid")
    os.kill(dovecot, signal.SIGKILL)
    cluster.wait_event(mark, "recovered", text=TAG, timeout=60)
    assert _pid(cluster, "node1", f"{org.queue_dir}/pid/master.pid") == postfix
    assert _pid(cluster, "node1", "/run/vigil-mail/dovecot/master.pid") != dovecot
    assert cluster.hierarchy(TAG)["active_server"] == "node1"
    traffic = MailTraffic(org, org.users[:1])
    assert traffic.send_one("after recovery")
    assert traffic.settle(60).lost == 0


def test_the_deep_check_sends_a_probe_message_end_to_end(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    mark = cluster.mark()
    cluster.resource_policy(TAG, deep_check_interval=2)
    wait_until(
        lambda: "probe message delivered and read back" in cluster.agent_log("node1"),
        60,
        "a deep check's round trip in node1's log",
    )
    assert "check-failed" not in cluster.kinds(mark, TAG)
    probe = org.probe_user
    assert not [s for _, s in org.fetch("client1", probe) if "probe" in s]  # deleted after


# --- the directory's duties ------------------------------------------------------------------


def test_a_directory_outage_is_logged_and_retried_until_every_user_is_home(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    mark = cluster.mark()
    org.directory.stop()
    try:
        cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node3"})
        wait_in_service(cluster, "node3")
        log = cluster.ok("GET", f"/v1/mail/{TAG}/failed-users")
        assert log["server"] == "node3"
        assert log["users"] and log["users"][0]["whole_base"]
        assert "directory unreachable" in log["users"][0]["reason"]
        cluster.wait_event(mark, "mail-users-failed", text="no user could be moved")
    finally:
        org.directory.start()
    wait_until(
        lambda: not cluster.ok("GET", f"/v1/mail/{TAG}/failed-users")["users"],
        60,
        "the failed-users log to empty",
    )
    assert set(org.directory.mail_hosts().values()) == {org.home_value("node3")}
    cluster.wait_event(mark, "mail-users-moved", text="every user is home")


def test_the_utilities_find_and_move_users_and_refuse_bad_input(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    user = org.users[0]
    home = cluster.ok("GET", f"/v1/mail/{TAG}/home?user={user.address}")
    assert home["server"] == "node3" and home["home"] == org.home_value("node3")
    moved = cluster.ok("POST", f"/v1/mail/{TAG}/move-user", {"user": user.name, "to": "node1"})
    assert org.home_value("node1") in moved["summary"]
    assert org.directory.mail_host(user) == org.home_value("node1")
    for body, code, text in [
        ({"user": "nobody", "to": "node1"}, 404, "no mail user 'nobody'"),
        ({"user": user.name, "to": "node9"}, 404, "not extended to node9"),
    ]:
        answer = cluster.request("POST", f"/v1/mail/{TAG}/move-user", body)
        assert answer.status_code == code and text in answer.text, answer.text
    answer = cluster.request("POST", f"/v1/mail/{TAG}/move-users", {"domain": "a@b"})
    assert answer.status_code == 400
    assert org.directory.mail_host(user) == org.home_value("node1")  # nothing changed
    moved = cluster.ok("POST", f"/v1/mail/{TAG}/move-users", {"domain": org.domain})
    assert "moved 1 users" in moved["summary"]
    assert org.directory.mail_host(user) == org.home_value("node3")


def test_manage_user_checks_the_account_before_storing_it(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    assert cluster.ok("GET", f"/v1/mail/{TAG}/user")["bind_dn"] == org.directory.bind_dn
    answer = cluster.request("PUT", f"/v1/mail/{TAG}/user", {"bind_password": "wrong"})
    assert answer.status_code == 400 and "nothing was changed" in answer.text
    assert "wrong" not in answer.text
    done = cluster.ok("PUT", f"/v1/mail/{TAG}/user", {"bind_password": org.directory.bind_password})
    assert "password changed on every server" in done["summary"]


def test_the_queue_of_a_protected_hierarchy_moves_on_its_volume_and_everywhere(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    answer = cluster.request("POST", f"/v1/mail/{TAG}/queue-path", {"path": "/var/tmp/q"})
    assert answer.status_code == 400 and "not on a volume of mail" in answer.text
    new = f"{org.mail_root}/queue2"
    traffic = MailTraffic(org, org.users[:2])
    assert traffic.send_one("before the queue moved")
    moved = cluster.ok("POST", f"/v1/mail/{TAG}/queue-path", {"path": new})
    assert moved["detail"] == "", moved
    for server in ("node1", "node2", "node3"):
        shown = cluster.lab.exec(
            server, ["postconf", "-c", POSTFIX, "-h", "queue_directory"], capture_output=True,
            text=True,
        )  # fmt: skip
        assert shown.stdout.strip() == new, server
    expected = cluster.ok("GET", f"/v1/resources/{TAG}")["properties"]["expected_settings"]
    assert expected["postfix:queue_directory"] == new
    assert cluster.hierarchy(TAG)["status"] == "Normal"
    assert traffic.send_one("after the queue moved")
    assert traffic.settle(60).lost == 0
    cluster.ok("POST", f"/v1/mail/{TAG}/queue-path", {"path": str(org.queue_dir)})


def test_services_config_adds_and_removes_an_optional_service(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, _ = lab
    answer = cluster.request("POST", f"/v1/mail/{TAG}/services", {"service": {"name": "mystery"}})
    assert answer.status_code == 400 and "give its start, stop and check" in answer.text
    answer = cluster.request("POST", f"/v1/mail/{TAG}/services", {"service": {"name": "two words"}})
    assert answer.status_code == 422
    pidfile = "/run/vigil-mail/filter.pid"
    service = {
        "name": "filter",
        "start": f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 100000' </dev/null "
        ">/dev/null 2>&1 &",
        "stop": f"kill $(cat {pidfile})",
        "check": f"kill -0 $(cat {pidfile})",
    }
    cluster.ok("POST", f"/v1/mail/{TAG}/services", {"service": service})
    listed = cluster.ok("GET", f"/v1/mail/{TAG}/services")
    assert all([s["name"] for s in v] == ["filter"] for v in listed.values())
    # the active server starts it (its check fails, local recovery starts it alone)
    wait_until(
        lambda: cluster.lab.exec("node3", ["sh", "-c", service["check"]]).returncode == 0,
        60,
        "the optional service running on node3",
    )
    cluster.ok("DELETE", f"/v1/mail/{TAG}/services/filter")
    assert all(v == [] for v in cluster.ok("GET", f"/v1/mail/{TAG}/services").values())
    cluster.lab.exec("node3", ["sh", "-c", service["stop"]])


def test_home_mode_service_moves_nobody_and_mail_follows_the_address(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    address = vip(cluster)
    cluster.ok(
        "PATCH", f"/v1/resources/{TAG}/properties",
        {"properties": {"home_mode": "service", "service_home": address}},
    )  # fmt: skip
    try:
        for user in org.users:
            org.directory.set_mail_host(user, address)
        traffic = MailTraffic(org, org.users[:3])
        before = cluster.hierarchy(TAG)["active_server"]
        target = "node1" if before != "node1" else "node2"
        with traffic.running():
            cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": target})
            wait_in_service(cluster, target)
        assert set(org.directory.mail_hosts().values()) <= {address, org.home_value(before)}
        assert all(org.directory.mail_host(u) == address for u in org.users)
        home = cluster.ok("GET", f"/v1/mail/{TAG}/home?user={org.users[0].name}")
        assert home["server"] == target and home["home"] == address
        delivered = traffic.settle(90)
        assert delivered.lost == 0 and delivered.duplicates == 0, delivered
    finally:
        # back to home_mode server: the users homed on the hierarchy's address move to the
        # server it comes in service on
        cluster.ok("PATCH", f"/v1/resources/{TAG}/properties", {"properties": {"home_mode": None}})
        cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node3"})
        wait_in_service(cluster, "node3")
    wait_until(
        lambda: set(org.directory.mail_hosts().values()) == {org.home_value("node3")},
        30,
        "every user homed on node3 again",
    )


# --- delete --------------------------------------------------------------------------------


def test_delete_on_a_backup_is_refused_until_users_go_back(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    answer = cluster.request("DELETE", f"/v1/hierarchies/{TAG}")
    assert answer.status_code == 409, answer.text
    assert "vigil mail failback-users mail" in answer.text
    assert cluster.hierarchy(TAG)["active_server"] == "node3"
    back = cluster.ok("POST", f"/v1/mail/{TAG}/failback-users")
    assert "to node1" in back["summary"] and "in-service mail --on node1" in back["detail"]
    assert set(org.directory.mail_hosts().values()) == {org.home_value("node1")}
    cluster.ok("POST", f"/v1/hierarchies/{TAG}/in-service", {"server": "node1"})
    wait_in_service(cluster, "node1")
    cluster.ok("DELETE", f"/v1/hierarchies/{TAG}")
    assert TAG not in tags(cluster) and VIP_TAG not in tags(cluster)
    # the services are protected no more: they may start at boot again (SetSvcMode)
    done = cluster.ok("POST", "/v1/mail/servers/node1/service-mode", {"mode": "auto"})
    assert "auto start on node1" in done["summary"]
    enabled = subprocess.run(["systemctl", "is-enabled", "postfix"], capture_output=True, text=True)
    subprocess.run(["systemctl", "disable", "postfix", "dovecot"], capture_output=True)
    assert enabled.stdout.strip() == "enabled"
