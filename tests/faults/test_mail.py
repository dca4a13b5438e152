"""The mail hierarchy's owner loses its link, on a lab whose store is a 3-member etcd: it
fences itself (its etcd member has no majority), a backup takes over, and mail sent
through the front-end before, during and after is all readable afterwards, none twice;
the mail service never runs on two servers at once."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.faults.cluster import Cluster, wait_until
from tests.mail_lab import (
    TAG,
    MailDualActive,
    MailTraffic,
    mail_cluster,
    protect,
    wait_in_service,
)
from vigil.lab.mail import MailOrgInfo

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Cluster, MailOrgInfo]]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian's etcd-server)")
    with mail_cluster("tfmail-e", 56, store="etcd") as built:
        cluster, org = built
        protect(cluster, org)
        wait_in_service(cluster, "node1")
        yield built


def test_link_cut_of_the_owner_moves_the_mail_service_and_loses_no_mail(
    lab: tuple[Cluster, MailOrgInfo],
) -> None:
    cluster, org = lab
    traffic = MailTraffic(org, org.users[:5])
    assert traffic.send_one("before")
    cluster.down.add("node1")
    with MailDualActive(cluster) as sampler, traffic.running():
        time.sleep(0.5)
        cluster.link("node1", up=False)
        try:
            wait_in_service(cluster, "node2", timeout=90)
            assert set(org.directory.mail_hosts().values()) == {org.home_value("node2")}
        finally:
            cluster.link("node1", up=True)
    sampler.check()
    assert traffic.send_one("after")
    delivered = traffic.settle(150)
    assert delivered.lost == 0, delivered.missing
    assert delivered.duplicates == 0, delivered.duplicated
    assert "fencing" in cluster.guard_log("node1") or "lease lost" in cluster.agent_log("node1")
    cluster.down.discard("node1")
    wait_until(
        lambda: cluster.states(TAG).get("node1") in ("OSU", "OSF"),
        90,
        "node1 back as a standby",
    )
