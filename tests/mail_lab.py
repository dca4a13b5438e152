"""A lab with the mail organisation and a protected mail hierarchy, for the mail kit's
integration and fault tests and benchmarks; and mail sent through the front-end while
something happens to the cluster, with the count of what came back: every message that
got a 250 must be readable over IMAP exactly once.

``mail_cluster`` builds the lab (three servers, comm paths, a client, the directory and
front-end, the store mounted on node1) and tears it down whatever happens; ``protect``
creates the hierarchy ``mail`` (its address ``mail-ip``, its volume found by the kit) on
node1 and extends it to node2 and node3.

``MailTraffic`` sends a message every ``interval`` seconds from a lab client to the users
it is given, in a thread, each with a unique subject, recording the ones accepted (250)
and the ones refused (a refusal is not a loss: the sender was told). ``settle`` then reads
every user's INBOX through the front-end until every accepted message is there, and
reports the messages missing and those delivered more than once.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.cluster import Cluster, lab_up, wait_until
from vigil.errors import LabError
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab
from vigil.lab.mail import MailOrgInfo, MailUser
from vigil.lab.mail.clients import MailClientError

TAG = "mail"
VIP_TAG = "mail-ip"
#: the address clients use (last octet), on the lab's subnet
VIP_OCTET = 100
PRIORITIES = {"node1": 1, "node2": 10, "node3": 20}


@contextmanager
def mail_cluster(
    name: str, subnet: int, store: str = "embedded", users: int = 10, store_members: int = 1
) -> Iterator[tuple[Cluster, MailOrgInfo]]:
    """A lab of three servers with the mail organisation, driven through the API;
    ``store_members``: the etcd members of a lab on etcd (1, 3 or 5)."""
    lab = Lab(name, subnet_index=subnet)
    lab.down()  # leftovers of an earlier crashed run
    cluster = None
    try:
        info = lab_up(lab, 3, store) if store_members == 1 else _up_etcd(lab, store_members)
        cluster = Cluster(lab, info, store)
        lab.add_client("client1")
        org = lab.add_mail_org(users=users)
        cluster.connect_every_pair([s.name for s in info.servers])
        yield cluster, org
    finally:
        if cluster is not None:
            cluster.close()
        lab.down()


def _up_etcd(lab: Lab, members: int) -> LabInfo:
    """``lab_up`` on an etcd of ``members`` members (tried twice, as ``lab_up`` does)."""
    try:
        return lab.up(3, store="etcd", store_members=members)
    except LabError as exc:
        if "exited before answering its health check" not in str(exc):
            raise
        lab.down()
        return lab.up(3, store="etcd", store_members=members)


def vip(cluster: Cluster) -> str:
    return cluster.info.subnet.rsplit(".", 1)[0] + f".{VIP_OCTET}"


def mail_properties(org: MailOrgInfo, **extra: object) -> dict[str, object]:
    """The mail resource's properties for the lab's organisation."""
    probe = org.probe_user
    return {
        "postfix_config": str(org.postfix_dir),
        "dovecot_config": str(org.dovecot_conf),
        "directory_urls": [org.directory.url],
        "bind_dn": org.directory.bind_dn,
        "bind_password": org.directory.bind_password,
        "users_base_dn": org.directory.users_dn,
        "frontends": [org.frontend.address],
        "probe_user": probe.address,
        "probe_address": probe.address,
        "probe_password": probe.password,
        "max_wait": 60,
        **extra,
    }


def create_vip(cluster: Cluster, server: str = "node1") -> None:
    body = {
        "tag": VIP_TAG, "kit": "ip", "server": server,
        "properties": {"address": vip(cluster), "prefix": 24, "interface": "eth0"},
    }  # fmt: skip
    cluster.ok("POST", "/v1/resources", body)


def protect(cluster: Cluster, org: MailOrgInfo, **extra: object) -> dict[str, object]:
    """Create ``mail`` (with ``mail-ip``) on node1, extend it to node2 and node3; the
    answer of the create."""
    create_vip(cluster)
    props = mail_properties(org, ip_resource=VIP_TAG, **extra)
    created = cluster.ok(
        "POST", "/v1/resources", {"tag": TAG, "kit": "mail", "server": "node1", "properties": props}
    )
    extend_all(cluster, org)
    return created


def extend_all(cluster: Cluster, org: MailOrgInfo, **body: object) -> None:
    volume = next(r["tag"] for r in cluster.hierarchy(TAG)["resources"] if r["kit"] == "volume")
    for server in ("node2", "node3"):
        extend = {
            "server": server, "priority": PRIORITIES[server],
            "properties": {volume: {"device": org.disk.device(server)}}, **body,
        }  # fmt: skip
        cluster.ok("POST", f"/v1/hierarchies/{TAG}/extend", extend)


def wait_in_service(cluster: Cluster, server: str, timeout: float = 60.0) -> None:
    wait_until(
        lambda: (
            cluster.hierarchy(TAG)["active_server"] == server
            and all(cluster.states(t)[server] == "ISP" for t in hierarchy_tags(cluster))
        ),
        timeout,
        f"{TAG} in service on {server}",
    )


def hierarchy_tags(cluster: Cluster) -> list[str]:
    return [r["tag"] for r in cluster.hierarchy(TAG)["resources"]]


@dataclass
class Delivery:
    """What ``settle`` found: accepted messages missing, or delivered twice."""

    accepted: int
    refused: int
    missing: dict[str, list[str]] = field(default_factory=dict)
    duplicated: dict[str, list[str]] = field(default_factory=dict)
    #: users whose INBOX could not be read, and why (their messages count as missing)
    unreadable: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return sum(len(v) for v in self.missing.values())

    @property
    def duplicates(self) -> int:
        return sum(len(v) for v in self.duplicated.values())


class MailTraffic:
    """Messages sent from ``client`` to ``users`` in turn, one per ``interval``."""

    def __init__(
        self,
        org: MailOrgInfo,
        users: Sequence[MailUser],
        client: str = "client1",
        interval: float = 0.1,
    ) -> None:
        self.org = org
        self.users = list(users)
        self.client = client
        self.interval = interval
        self.run_id = uuid.uuid4().hex[:8]
        self.accepted: list[tuple[MailUser, str]] = []
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count = 0

    def send_one(self, label: str = "") -> bool:
        """Send one message now; True when it was accepted (250)."""
        user = self.users[self._count % len(self.users)]
        subject = f"traffic {self.run_id} {self._count} {label}".strip()
        self._count += 1
        try:
            self.org.send(self.client, user, subject)
        except MailClientError as exc:
            self.refused.append(f"{subject}: {exc}")
            return False
        self.accepted.append((user, subject))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.send_one("during")
            self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[MailTraffic]:
        """Send in the background for as long as the block runs."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mail traffic", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=60)

    def settle(self, timeout: float = 120.0) -> Delivery:
        """Read every INBOX until every accepted message is there (or ``timeout``)."""
        began = time.monotonic()
        while True:
            delivery = self._count_delivered()
            delivery.seconds = time.monotonic() - began
            if not delivery.missing or time.monotonic() - began > timeout:
                return delivery
            time.sleep(1.0)

    def _count_delivered(self) -> Delivery:
        delivery = Delivery(len(self.accepted), len(self.refused))
        for user in {u.name: u for u, _ in self.accepted}.values():
            try:
                seen = Counter(subject for _, subject in self.org.fetch(self.client, user))
            except MailClientError as exc:
                delivery.missing[user.name] = [s for u, s in self.accepted if u.name == user.name]
                delivery.unreadable[user.name] = str(exc)
                continue
            wanted = [s for u, s in self.accepted if u.name == user.name]
            lost = [s for s in wanted if seen[s] == 0]
            twice = [s for s in wanted if seen[s] > 1]
            if lost:
                delivery.missing[user.name] = lost
            if twice:
                delivery.duplicated[user.name] = twice
        return delivery


class MailDualActive:
    """Samples, every ``interval``, which lab servers run Postfix's ``master`` or Dovecot's
    ``dovecot`` master (by each process's network namespace): a sample with the mail
    service on two servers at once is a violation. Use as a context manager; ``check``
    fails on any violation."""

    def __init__(self, cluster: Cluster, interval: float = 0.05) -> None:
        self.namespaces = {
            os.stat(cluster.lab.names.netns_path(s.name)).st_ino: s.name
            for s in cluster.info.servers
        }
        self.interval = interval
        self.samples = 0
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mail dual-active", daemon=True)

    def __enter__(self) -> MailDualActive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            seen = self.running()
            self.samples += 1
            if len(seen) > 1:
                self.violations.append(f"{time.monotonic():.3f}: mail service on {sorted(seen)}")
            self._stop.wait(self.interval)

    def running(self) -> set[str]:
        """The servers running a mail master process now."""
        found = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
                if comm not in ("master", "dovecot"):
                    continue
                state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
                inode = os.stat(f"/proc/{entry.name}/ns/net").st_ino
            except OSError:
                continue
            if state not in ("Z", "X") and inode in self.namespaces:
                found.add(self.namespaces[inode])
        return found

    def check(self) -> None:
        assert self.samples > 0, "the dual-active sampler never ran"
        assert not self.violations, "\n".join(self.violations[:20])
