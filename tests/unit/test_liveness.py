"""Heartbeats timed by the observer's clock (``vigil.agent.liveness.HeartbeatTracker``)."""

from __future__ import annotations

from vigil.agent.liveness import HeartbeatTracker
from vigil.model.cluster import Cluster, Server


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker() -> tuple[HeartbeatTracker, Clock]:
    clock = Clock()
    return HeartbeatTracker("node1", clock), clock


def test_a_heartbeat_that_stops_advancing_is_silent_after_its_ttl() -> None:
    beats, clock = tracker()
    assert beats.saw("node2", 10, 1.5) is True  # a server not known alive before
    clock.now += 1.0
    assert beats.saw("node2", 11, 1.5) is False
    clock.now += 1.4
    assert beats.silent() == {}
    due = beats.next_due()
    assert due is not None and abs(due - 0.1) < 1e-9
    clock.now += 0.1
    assert beats.silent() == {"node2": (11, 1.5)}


def test_the_same_or_an_older_revision_does_not_restart_the_clock() -> None:
    beats, clock = tracker()
    beats.saw("node2", 10, 1.5)
    clock.now += 1.0
    beats.saw("node2", 10, 1.5)  # read again in a snapshot
    beats.saw("node2", 9, 1.5)  # an older snapshot
    clock.now += 0.5
    assert beats.silent() == {"node2": (10, 1.5)}


def test_this_server_and_servers_without_ttl_are_never_timed() -> None:
    beats, clock = tracker()
    beats.saw("node1", 10, 1.5)
    beats.saw("node3", 12, 0.0)  # an agent that does not publish its ttl
    clock.now += 60
    assert beats.silent() == {} and beats.next_due() is None


def test_a_deleted_heartbeat_is_forgotten_and_a_return_is_a_join() -> None:
    beats, clock = tracker()
    beats.saw("node2", 10, 1.5)
    beats.gone("node2")
    clock.now += 5
    assert beats.silent() == {}
    assert beats.saw("node2", 20, 1.5) is True


def test_sync_takes_a_full_read_and_forgets_who_is_not_alive() -> None:
    beats, clock = tracker()
    beats.saw("node2", 10, 1.5)
    beats.saw("gone", 11, 1.5)
    cluster = Cluster(
        servers={
            "node2": Server("node2", "http://x", alive=False),
            "node3": Server("node3", "http://y", alive=True, heartbeat=30, ttl=2.0),
        }
    )
    beats.sync(cluster)
    clock.now += 2.0
    assert beats.silent() == {"node3": (30, 2.0)}


def test_a_member_times_the_ttl_and_anyone_else_ttl_plus_failsafe() -> None:
    beats, clock = tracker()
    beats.saw("node2", 10, 0.75, 10.0, ("node1", "node3"))  # node1 would be asked
    beats.saw("node3", 11, 0.75, 10.0, ("node2",))  # node1 would not: it joined since
    beats.saw("node4", 12, 0.75, 0.0, ())  # no failsafe: the ttl for everybody
    clock.now += 0.75
    assert set(beats.silent()) == {"node2", "node4"}
    clock.now += 10.0
    assert set(beats.silent()) == {"node2", "node3", "node4"}


def test_a_confirmed_failsafe_restarts_the_askers_clock() -> None:
    beats, clock = tracker()
    beats.saw("node2", 10, 0.75, 10.0, ("node1",))
    clock.now += 0.5
    beats.heard("node2")  # node1 told node2 it cannot reach the store either
    clock.now += 0.5
    assert beats.silent() == {}
    due = beats.next_due()
    assert due is not None and abs(due - 0.25) < 1e-9
    clock.now += 0.25
    assert beats.silent() == {"node2": (10, 0.75)}
    beats.heard("node3")  # not known: nothing to restart (first sight times it anew)
    assert "node3" not in beats.silent()


def test_hearing_never_turns_a_clock_back() -> None:
    beats, clock = tracker()
    clock.now = 50.0
    beats.saw("node2", 10, 0.75, 10.0, ("node1",))
    clock.now = 40.0  # a clock that went back (a fake one): since stays
    beats.heard("node2")
    clock.now = 50.75
    assert beats.silent() == {"node2": (10, 0.75)}


def test_sync_takes_the_failsafe_and_members_of_a_full_read() -> None:
    beats, clock = tracker()
    server = Server(
        "node2", "http://x", alive=True, heartbeat=30, ttl=0.75, failsafe=10.0, members=("node3",)
    )
    beats.sync(Cluster(servers={"node2": server}))
    clock.now += 0.75
    assert beats.silent() == {}  # node1 is not a member: ttl + failsafe
    clock.now += 10.0
    assert beats.silent() == {"node2": (30, 10.75)}
