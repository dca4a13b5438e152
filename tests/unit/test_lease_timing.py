"""The lease timing rule checked at agent start (``vigil.agent.timing``), and the lease
keeper's start-up check against a fake store."""

from __future__ import annotations

import logging
from typing import cast

import pytest

from vigil.agent.config import LeaseSettings
from vigil.agent.failsafe import Failsafe
from vigil.agent.lease import LeaseKeeper
from vigil.agent.timing import check_lease_timing
from vigil.errors import ConfigError, StoreUnavailable
from vigil.store.base import Lease, StoreCapabilities

EMBEDDED = StoreCapabilities(min_lease_ttl=1, networked=False, single_host=True)
#: etcd with --heartbeat-interval=50 --election-timeout=500 (shortest lease 1 s)
ETCD_TUNED = StoreCapabilities(min_lease_ttl=1, networked=True, single_host=False)
#: etcd at its defaults, 100/1000 ms (shortest lease 2 s)
ETCD_DEFAULT = StoreCapabilities(min_lease_ttl=2, networked=True, single_host=False)


#: the defaults before failsafe, for the rule without it
CLASSIC = LeaseSettings(
    ttl=1.5, renew_interval=0.25, request_timeout=0.25, safety_margin=0.5, failsafe=False
)


def classic(**values: float) -> LeaseSettings:
    return CLASSIC.model_copy(update=values)


def unchecked(**values: float) -> LeaseSettings:
    """Settings that ``LeaseSettings`` itself would refuse (the rule checks them again)."""
    return LeaseSettings.model_construct(**{**LeaseSettings().model_dump(), **values})


def test_defaults_on_the_embedded_store_are_quiet() -> None:
    assert check_lease_timing(LeaseSettings(), EMBEDDED, 11.15, failsafe=True) == []
    assert check_lease_timing(CLASSIC, EMBEDDED, 1.5) == []


def test_longer_ttls_on_a_tuned_etcd_are_quiet() -> None:
    assert check_lease_timing(classic(ttl=3), ETCD_TUNED, 3) == []
    assert check_lease_timing(classic(ttl=5), ETCD_DEFAULT, 5) == []


def test_without_failsafe_etcd_warns_of_leader_changes_only() -> None:
    # the 2 s grant is only the backstop: other agents time the heartbeat against 1.5 s
    (election,) = check_lease_timing(CLASSIC, ETCD_TUNED, 2)
    assert "leader change" in election
    assert "holds on only 0.75 s" in election
    assert "Raise [lease] ttl to 3 s or more" in election


def test_riding_through_depends_on_the_election_timeout() -> None:
    # ttl 3: holds 2.25 s; a default etcd may need 4/3 x 2 s = 2.7 s to elect a leader
    (warning,) = check_lease_timing(classic(ttl=3), ETCD_DEFAULT, 3)
    assert "Raise [lease] ttl to 4 s or more" in warning
    assert check_lease_timing(classic(ttl=4), ETCD_DEFAULT, 4) == []


def test_with_failsafe_a_short_ttl_rides_through_elections() -> None:
    # the defaults (ttl 0.8) hold on through an election by failsafe, not by their ttl
    assert check_lease_timing(LeaseSettings(), ETCD_TUNED, 12, failsafe=True) == []
    assert check_lease_timing(LeaseSettings(), ETCD_DEFAULT, 12, failsafe=True) == []


def test_a_failsafe_limit_shorter_than_an_election_is_warned() -> None:
    short = LeaseSettings(failsafe_limit=2.0)
    (warning,) = check_lease_timing(short, ETCD_DEFAULT, 4, failsafe=True)
    assert "may outlast the failsafe" in warning and "Raise it to 3 s or more" in warning
    # the same settings without failsafe running (no shared secret): the classic warning
    (classic_warning,) = check_lease_timing(short, ETCD_DEFAULT, 4)
    assert "Raise [lease] ttl to" in classic_warning


def test_a_grant_shorter_than_ttl_plus_failsafe_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ttl \+ failsafe_limit = 10.8 s"):
        check_lease_timing(LeaseSettings(), ETCD_TUNED, 10, failsafe=True)
    # without failsafe the same grant is plenty (only an election may outlast the ttl)
    (warning,) = check_lease_timing(LeaseSettings(), ETCD_TUNED, 10)
    assert "leader change" in warning


def test_a_longer_grant_is_quiet() -> None:
    assert check_lease_timing(classic(ttl=1.5), EMBEDDED, 2) == []


def test_a_grant_shorter_than_the_ttl_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"granted a lease of 1 s, shorter than \[lease\] ttl"):
        check_lease_timing(classic(ttl=1.5), ETCD_TUNED, 1)
    with pytest.raises(ConfigError, match="Set ttl to 2 s or less"):
        check_lease_timing(classic(ttl=3), EMBEDDED, 2)


@pytest.mark.parametrize(
    "values",
    [
        {"request_timeout": 0.75},  # request_timeout = ttl / 2
        {"request_timeout": 1.0},
        {"renew_interval": 0.6},
        {"safety_margin": 0.8},
    ],
)
def test_settings_without_time_to_stop_are_refused(values: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"unsafe lease timing: .* exceeds ttl"):
        check_lease_timing(unchecked(**values), EMBEDDED, 1.5)


def test_the_rule_holds_at_its_boundary() -> None:
    exact = LeaseSettings(ttl=2.0, renew_interval=0.5, request_timeout=0.5, safety_margin=0.5)
    assert check_lease_timing(exact, EMBEDDED, 2.0) == []


# -- the keeper's start-up check -----------------------------------------------------------
class FakeStore:
    """Grants leases of ``granted`` seconds (or of the ask when None); records revokes."""

    def __init__(self, capabilities: StoreCapabilities, granted: float | None = None) -> None:
        self.capabilities = capabilities
        self.granted = granted
        self.asked: list[float] = []
        self.revoked: list[int] = []
        self.fail_revoke = False

    async def grant_lease(self, ttl: float) -> Lease:
        self.asked.append(ttl)
        return Lease(len(self.asked), self.granted if self.granted is not None else ttl)  # type: ignore[arg-type]

    async def revoke_lease(self, lease_id: int) -> None:
        if self.fail_revoke:
            raise StoreUnavailable("etcd http://192.0.2.1:2379: no answer")
        self.revoked.append(lease_id)


async def _nothing(reason: str) -> None:
    return None


def keeper(store: FakeStore, settings: LeaseSettings) -> LeaseKeeper:
    return LeaseKeeper(store, settings, "node1", _nothing)  # type: ignore[arg-type]


async def test_check_timing_probes_a_lease_and_revokes_it() -> None:
    store = FakeStore(EMBEDDED)
    assert await keeper(store, CLASSIC).check_timing() == []
    # the store's lease is the backstop: ttl + safety margin
    assert store.asked == [2.0] and store.revoked == [1]


async def test_with_failsafe_the_backstop_outlasts_the_longest_failsafe() -> None:
    store = FakeStore(ETCD_TUNED)
    failsafe = cast(Failsafe, object())
    held = LeaseKeeper(store, LeaseSettings(), "node1", _nothing, failsafe=failsafe)  # type: ignore[arg-type]
    assert await held.check_timing() == []
    assert store.asked == [12]  # ttl 0.8 + margin 0.35 + failsafe_limit 10, whole seconds
    off = LeaseSettings(failsafe=False)
    plain = LeaseKeeper(store, off, "node1", _nothing, failsafe=failsafe)  # type: ignore[arg-type]
    await plain.check_timing()
    assert store.asked == [12, 2]  # 1.15 up to whole seconds: failsafe off in the settings


async def test_check_timing_asks_whole_seconds_of_etcd_and_logs_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore(ETCD_TUNED)
    with caplog.at_level(logging.WARNING, logger="vigil.agent.lease"):
        warnings = await keeper(store, CLASSIC).check_timing()
    assert store.asked == [2]  # ttl 1.5 + safety margin 0.5
    assert len(warnings) == 1
    await keeper(store, classic(ttl=3)).check_timing()
    assert store.asked == [2, 4]  # 3.5, up to whole seconds
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == [f"lease timing: {w}" for w in warnings]


async def test_check_timing_refuses_a_short_grant_after_revoking_the_probe() -> None:
    store = FakeStore(ETCD_TUNED, granted=1)
    with pytest.raises(ConfigError, match="shorter than"):
        await keeper(store, classic(ttl=1.5)).check_timing()
    assert store.revoked == [1]


async def test_check_timing_survives_a_failed_revoke(caplog: pytest.LogCaptureFixture) -> None:
    store = FakeStore(EMBEDDED)
    store.fail_revoke = True
    assert await keeper(store, CLASSIC).check_timing() == []
    assert "could not revoke the probe lease 1 (it will expire)" in caplog.text
