"""The demo (the README's first command): a mail service protected by the mail kit in a
3-server lab, switched over and failed over while mail flows, and every message read back.

It builds a lab of three servers and a client, and the lab's mail organisation
(``Lab.add_mail_org``): a directory (slapd) with 20 users, a front-end (Postfix relay and
Dovecot proxy, both routing by each user's ``mailHost``), each server's own Postfix and
Dovecot configuration, and the queue and mailboxes on a shared disk mounted on node1. It
protects the mail service with real ``vigil`` commands, printed before they run
(``vigil.lab.demo_mail``): the address ``mail-ip``, then ``mail``, below which the kit
puts the volume it finds the mail on; extends it to node2 (priority 10) and node3 (20).
Then: mail sent through the front-end, a switchover to node2 with mail sent during it, a
failover (SIGKILL of node2's agent: its fence guard takes node2's daemons, address and
mount down, node1 takes over) with mail sent during it, and every message read back over
IMAP through the front-end and counted. After each step: ``vigil status`` and what a
mail client sees. The lab is torn down at the end, also when a step fails or on Ctrl-C;
when a step fails, the lab's logs are copied to /tmp/vigil-demo-logs first.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import time
from pathlib import Path

from vigil.lab import demo_mail as mail
from vigil.lab import demo_steps as steps
from vigil.lab.demo_steps import CLIENT, TAG, Demo, say, timed, vigil
from vigil.lab.lab import Lab
from vigil.lab.mail.paths import MAIL_ROOT, PRIVATE_DIRS

#: the mail organisation's users (the demo writes to the first few)
USERS = 20
#: where the lab's logs are kept when the demo fails
LOGS = Path("/tmp/vigil-demo-logs")
#: the directories every lab server mounts its own mail files on
MOUNT_POINTS = (*PRIVATE_DIRS.values(), MAIL_ROOT)


def build(lab: Lab) -> Demo:
    """The lab, its client and the mail organisation."""
    say("Building a lab of 3 servers (network and mount namespaces, one agent each)...")
    info = lab.up(3)
    for server in info.servers:
        say(f"  {server.name}: {server.address}, agent API {server.api_url}")
    say(f"  the agents seal secret properties in the store with {lab.names.secrets_key_file}")
    say(f"  their API is HTTPS, with certificates from the lab's CA {lab.names.ca_file}")
    client = lab.add_client(CLIENT)
    say(f"  {client.name}: {client.address}, a mail client (no agent)")
    say("Building the mail organisation (Postfix, Dovecot and OpenLDAP from Debian)...")
    org = lab.add_mail_org(users=USERS)
    directory, front = org.directory, org.frontend
    say(
        f"  directory: slapd at {directory.url} ({directory.where}), {len(org.users)} users "
        f"user001..user{len(org.users):03d}@{org.domain} and a probe mailbox, homed by "
        f"mailHost; service account {directory.bind_dn} (password in "
        f"{directory.bind_password_file})"
    )
    say(
        f"  front-end: {front.address} ({front.where}), a Postfix relay routing each "
        "recipient to its mailHost, and a Dovecot proxy routing each IMAP/POP3 login there"
    )
    say(
        f"  servers: each its own Postfix ({org.postfix_dir}) and Dovecot "
        f"({org.dovecot_conf}), private to its mount namespace"
    )
    devices = ", ".join(f"{s}: {d}" for s, d in org.disk.devices.items())
    say(
        f"  shared disk: {org.disk.image} ({devices}), mounted on node1 at {org.mail_root} "
        f"with the queue ({org.queue_dir}) and the mailboxes ({org.vmail_dir}); Postfix "
        "and Dovecot not started: the state in which an administrator protects them"
    )
    if lab.disabled_units:
        say(f"  disabled at boot (the kit refuses units enabled): {', '.join(lab.disabled_units)}")
    demo = Demo(lab=lab, info=info, org=org)
    demo.secrets = mail.secrets(demo)
    return demo


def show(demo: Demo, title: str) -> None:
    say(f"\n=== {title} ===")
    vigil(demo, "status")
    mail.show_client_view(demo)


def first_mail(demo: Demo, traffic: mail.Traffic) -> None:
    say(f"\n--- mail to {', '.join(u.name for u in traffic.users)} through the front-end ---")
    messages = 2 * len(traffic.users)
    with timed(demo, f"first mail: {messages} sent and read back"):
        for _ in range(messages):
            traffic.send_one("before")
        count, waited = traffic.read_back(timeout=30)
    say(f"{count.line()}; all there after {waited:.2f}s")


def switchover(demo: Demo, traffic: mail.Traffic, target: str) -> None:
    say(f"\n--- switchover to {target}, with a message sent every 0.1s all along ---")
    with traffic.running("during the switchover"):
        time.sleep(0.5)
        with timed(demo, f"switchover to {target} (the command)"):
            began = time.monotonic()
            vigil(demo, "in-service", TAG, "--on", target)
            took = time.monotonic() - began
        time.sleep(0.5)
    say(f"(the switchover took {took:.2f}s as seen by the command)")
    show(demo, f"in service on {target}")


def failover(demo: Demo, traffic: mail.Traffic, dead: str, heir: str) -> None:
    say(f"\n--- failover: SIGKILL of {dead}'s agent, with a message sent every 0.1s ---")
    say(f"{dead}'s fence guard takes its mail service, address and mount down when the")
    say(f"agent's lease runs out; {heir}, the live server with the best priority, takes over.")
    with traffic.running("during the failover"):
        time.sleep(0.5)
        with timed(demo, f"failover to {heir} (SIGKILL to SMTP 220 at the address)"):
            began = time.monotonic()
            demo.lab.stop_agent(dead, signal.SIGKILL)
            steps.wait_in_service(demo, heir, ask=heir)
            in_service = time.monotonic() - began
            answered = mail.wait_smtp_from(demo, heir, began)
        time.sleep(0.5)
    say(
        f"({heir} had the hierarchy in service {in_service:.2f}s after the SIGKILL; its "
        f"Postfix answered SMTP at {demo.vip} after {answered:.2f}s)"
    )
    guard_log, deadline = "", time.monotonic() + 5.0
    while f"unmounted {demo.org.mail_root}" not in guard_log and time.monotonic() < deadline:
        guard_log = steps.server_file(demo, dead, "state/fence-guard.log")
        time.sleep(0.1)
    fenced = [_short(line) for line in guard_log.splitlines() if "fence-guard:" in line][-5:]
    if fenced:
        say(f"{dead}'s fence guard logged:\n  " + "\n  ".join(fenced))
    show(demo, "after the failover")
    vigil(demo, "why", TAG)


def _short(line: str) -> str:
    """A fence guard line with its list of pids cut to the first three."""
    return re.sub(r"\[(\d+), (\d+), (\d+), [\d, ]+\]", r"[\1, \2, \3, ...]", line)


def read_everything(demo: Demo, traffic: mail.Traffic) -> None:
    say("\n--- every message, read back over IMAP through the front-end ---")
    for _ in range(len(traffic.users)):
        traffic.send_one("after")
    with timed(demo, "read back (until every message is there)"):
        count, waited = traffic.read_back(timeout=75)
    say(f"{count.line()} (after {waited:.2f}s)")
    for problem in count.unreadable + [f"lost: {s}" for s in count.missing][:10]:
        say(f"  {problem}")
    for subject in count.duplicated:
        why = traffic.why_twice(subject)
        say(f"  twice: {subject}; the front-end's Postfix logged: {why or 'nothing'}")
    if count.missing or count.duplicated:
        # a message the front-end sent again (SMTP's window when a server is fenced after
        # queueing it, before its 250 went out) is discarded at delivery by the lab's
        # Dovecot (Sieve duplicate): a second copy in a mailbox is a failure
        raise SystemExit("demo: mail was lost or delivered twice")


def run_demo(lab: Lab) -> None:
    started = time.monotonic()
    demo = build(lab)
    demo.timings.append(("build the lab and the mail organisation", time.monotonic() - started))
    with timed(demo, "comm paths, mail-ip, mail (with mail-vol)"):
        steps.comm_paths(demo)
        mail.create_hierarchy(demo)
    with timed(demo, "extend to node2 and node3"):
        volume = mail.volume_tag(demo)
        mail.extend(demo, "node2", 10, volume)
        mail.extend(demo, "node3", 20, volume)
    show(demo, "the mail hierarchy, in service on node1, extended to node2 and node3")
    traffic = mail.Traffic(demo, list(demo.org.users[: mail.USERS]))
    first_mail(demo, traffic)
    switchover(demo, traffic, "node2")
    failover(demo, traffic, dead="node2", heir="node1")
    read_everything(demo, traffic)
    demo.timings.append(("the whole demo", time.monotonic() - started))
    steps.show_timings(demo)
    say("\nTearing the lab down.")


def keep_logs(lab: Lab) -> None:
    """Copy the lab's logs (agents, fence guards, mail daemons; no secret) to LOGS."""
    shutil.rmtree(LOGS, ignore_errors=True)
    root = lab.names.root
    for found in [*root.rglob("*.log"), *root.rglob("*.out")]:
        target = LOGS / found.relative_to(root)
        with contextlib.suppress(OSError):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, target)
    say(f"The lab's logs are kept in {LOGS}.")


def main() -> None:
    lab = Lab("lab")
    if lab.status().exists:
        say("A lab called 'lab' exists from before; removing it first.")
        lab.down()
    try:
        run_demo(lab)
    except KeyboardInterrupt:
        say("\nInterrupted: tearing the lab down.")
        raise SystemExit(130) from None
    except (Exception, SystemExit):
        keep_logs(lab)  # a step failed: what happened stays readable
        raise
    finally:
        lab.down()
        say("Lab removed: no namespace, bridge, process, loop device or file of it is left")
        say(
            f"(the empty mount points {', '.join(map(str, MOUNT_POINTS))} stay on the host: "
            "removing one could detach another lab's mount)."
        )


if __name__ == "__main__":
    main()
