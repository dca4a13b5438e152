"""Fixtures of the fault tests: one lab of three servers per module (and per store), reset
between tests through the API, and the dual-active probe around every test.

Lab names start with ``tf`` and use subnet indexes 50..58 (59 is the benchmark's); each
module names its labs in ``LABS = {store: (name, subnet_index)}``. ``STORES`` lists the
store backends the lab can be built on; modules that run on every store override the
``store`` fixture with ``params=STORES``.
"""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Iterator

import pytest

from tests.faults.cluster import SERVERS, Cluster, lab_up, wait_until
from tests.faults.probe import DualActiveProbe
from vigil.lab.lab import Lab


def lab_has_stores() -> bool:
    """Whether ``Lab.up`` can build a lab on another store than the embedded one."""
    return "store" in inspect.signature(Lab.up).parameters


#: the stores a lab can run on: etcd too when ``Lab.up(store="etcd")`` exists and etcd is
#: installed (Debian's ``etcd-server``)
STORES = ["embedded", "etcd"] if lab_has_stores() and shutil.which("etcd") else ["embedded"]
#: the ports of the protected services the probe watches (8080: the standard hierarchy)
PORTS = (8080, 8081)


def _build(name: str, subnet: int, store: str) -> Iterator[Cluster]:
    assert name.startswith("tf") and 50 <= subnet <= 58, (name, subnet)
    lab = Lab(name, subnet_index=subnet)
    lab.down()  # leftovers of an earlier crashed run
    cluster = None
    try:
        info = lab_up(lab, len(SERVERS), store)
        cluster = Cluster(lab, info, store)
        cluster.connect_every_pair(SERVERS)
        wait_until(
            lambda: all(p["state"] == "ALIVE" for p in cluster.ok("GET", "/v1/commpaths")),
            30,
            "every comm path ALIVE",
        )
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        lab.down()


@pytest.fixture(scope="module")
def store() -> str:
    """The store of the module's lab (modules on every store override it)."""
    return "embedded"


@pytest.fixture(scope="module")
def lab_cluster(request: pytest.FixtureRequest, store: str) -> Iterator[Cluster]:
    labs: dict[str, tuple[str, int]] = request.module.LABS
    name, subnet = labs[store]
    yield from _build(name, subnet, store)


@pytest.fixture
def cluster(lab_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The module's lab, reset: three agents up, default policies, no hierarchy."""
    lab_cluster.reset()
    yield lab_cluster
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        _dump(lab_cluster)


def _dump(cluster: Cluster) -> None:
    """What helps to understand a failure: the events and the end of every agent log."""
    try:
        events = cluster.events()[-40:]
    except AssertionError as exc:
        events = []
        print(f"no events: {exc}")
    for event in events:
        print(f"event {event['at']:.3f} {event['server']} {event['kind']}: {event['message']}")
    for server in SERVERS:
        print(f"--- {server} agent.log (end)")
        print("\n".join(cluster.agent_log(server).splitlines()[-25:]))


@pytest.fixture
def probe(cluster: Cluster) -> Iterator[DualActiveProbe]:
    """The dual-active probe, sampling every server during the test; the test fails if the
    service ever ran on two servers at once (checked in ``pytest_runtest_call`` below)."""
    sampler = DualActiveProbe(cluster.info, PORTS).start()
    yield sampler
    sampler.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """After the test body, stop its probe and fail the test on any dual-active sample."""
    try:
        return (yield)
    finally:
        sampler = getattr(item, "funcargs", {}).get("probe")
        if isinstance(sampler, DualActiveProbe):
            sampler.stop()
            sampler.check()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
