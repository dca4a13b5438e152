"""The fault campaign, short: the code of ``bench/campaign.py`` (``tests/faults/campaign.py``)
for 40 faults with a fixed seed and the test suite's shorter fault durations, on its own
lab (``tcamp``, 10.213.112.0/24: three servers, three etcd members, three hierarchies).

Every kind of fault is injected at least once (each kind once among the first, then at
random), and the campaign must end with no invariant violation: never two servers
active, every hierarchy back in service within the (generous) bound after each fault, no
acknowledged write to the protected volume lost. The lab goes in every case; after a
violation its logs are kept under ``/tmp/vigil-campaign-logs/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.faults.campaign import KINDS, QUICK, Campaign, table

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(shutil.which("etcd") is None, reason="needs etcd (etcd-server)"),
]

NAME, SUBNET = "tcamp", 112
FAULTS = 40
SEED = 20261204
#: generous: a fault's own duration is at most 3 s here, a failover takes a few
BOUND = 60.0


@pytest.fixture(scope="module")
def campaign() -> Iterator[Campaign]:
    built = Campaign(NAME, SUBNET, seed=SEED, bound=BOUND, timing=QUICK)
    try:
        built.build()
        yield built
    finally:
        built.close()
    assert not built.lab.status().exists


def test_a_short_campaign_keeps_every_invariant(campaign: Campaign) -> None:
    results = campaign.run(FAULTS)
    print()
    print(table(results))
    assert not results.stopped, results.stopped
    assert results.violations == [], "\n".join(results.violations)
    assert len(results.faults) == FAULTS
    missing = [kind for kind in KINDS if results.count(kind) == 0]
    assert not missing, f"fault kinds never injected: {missing}"
    assert results.records > 100, "the writer acknowledged (almost) nothing"
