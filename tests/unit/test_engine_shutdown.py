"""An orderly stop (hold, switchover, maintenance) and letting everything go without a
lease (``engine.shutdown``)."""

from __future__ import annotations

from typing import Any

from builders import make_cluster, three_level

from vigil.engine.plan import LocalView, StepKind, decide, escalates
from vigil.engine.shutdown import LEFT_RUNNING, Move, leave, remove_everything
from vigil.model.cluster import Cluster, Resource
from vigil.model.policies import StopMode

ALL = frozenset({"app", "ip", "vol", "disk"})


def two_hierarchies(**kwargs: Any) -> Cluster:
    """web (n1: 1, n2: 10, n3: 20) and db (n1: 1, n3: 10), both wanted on n1."""
    return make_cluster(
        servers=("n1", "n2", "n3"),
        resources={"web": {"n1": 1, "n2": 10, "n3": 20}, "db": {"n1": 1, "n3": 10}},
        intents={"web": "n1", "db": "n1"},
        **kwargs,
    )


def test_hold_takes_everything_out_of_service_without_moving_it() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n1"))
    leaving = leave(cluster, "n1", StopMode.HOLD, ALL, {})
    assert leaving.moves == ()
    assert leaving.left_running == ()
    assert leaving.event == "n1 stopped; its hierarchies are out of service"
    assert leaving.removal is not None
    step = leaving.removal.step
    assert step.kind is StepKind.REMOVE and step.forced
    assert step.tags == ALL
    assert step.waves == (("app",), ("ip", "vol"), ("disk",))
    assert step.state_reason == "the agent is stopping"


def test_switchover_moves_each_hierarchy_wanted_here_to_its_next_server() -> None:
    cluster = two_hierarchies(server_policies={"n1": {"shutdown_strategy": "switchover"}})
    leaving = leave(cluster, "n1", StopMode.HOLD, {"web", "db"}, {})
    why = "n1 is stopping (shutdown strategy switchover): {} moves to {}"
    assert leaving.moves == (
        Move("db", "n3", why.format("db", "n3")),
        Move("web", "n2", why.format("web", "n2")),
    )
    assert leaving.removal is not None and leaving.removal.step.tags == {"web", "db"}


def test_switchover_skips_a_hierarchy_no_server_can_take() -> None:
    cluster = two_hierarchies(
        dead=("n3",), server_policies={"n1": {"shutdown_strategy": "switchover"}}
    )
    leaving = leave(cluster, "n1", StopMode.HOLD, {"web", "db"}, {})
    assert [move.hierarchy for move in leaving.moves] == ["web"]


def test_maintenance_leaves_everything_running() -> None:
    cluster = two_hierarchies(server_policies={"n1": {"shutdown_strategy": "switchover"}})
    leaving = leave(cluster, "n1", StopMode.MAINTENANCE, {"web", "db"}, {})
    assert leaving.moves == ()
    assert leaving.removal is None
    assert leaving.left_running == ("db", "web")
    assert leaving.event == "n1 stopped for maintenance; resources left running"
    assert LEFT_RUNNING == "maintenance: left running, not monitored"


def test_nothing_running_nothing_to_remove() -> None:
    assert remove_everything(three_level(), (), {}, "lease lost") is None
    assert leave(three_level(), "n1", StopMode.HOLD, (), {}).removal is None


def test_resources_deleted_meanwhile_are_removed_by_their_known_definition() -> None:
    cluster = three_level()
    gone = Resource("old", "app", instances={"n1": 1})
    removal = remove_everything(cluster, {"old", "ip"}, {"old": gone}, "lease lost: expired")
    assert removal is not None
    assert removal.cluster.resources["old"] == gone
    assert removal.step.hierarchy == "ip, old"
    assert removal.step.waves == (("ip", "old"),)
    assert removal.step.state_reason == "lease lost: expired"


def test_a_remove_is_escalated_when_it_hangs_or_when_the_agent_lets_go() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n1"))
    removal = remove_everything(cluster, ALL, {}, "lease lost")
    assert removal is not None
    assert escalates(removal.step, timed_out=False)
    assert escalates(removal.step, timed_out=True)
    moving = three_level(intents=dict.fromkeys(ALL, "n2"), owners=dict.fromkeys(ALL, "n1"))
    (step,) = decide(moving, "n1", LocalView(running=ALL))
    assert step.kind is StepKind.REMOVE and not step.forced
    assert escalates(step, timed_out=True)
    assert not escalates(step, timed_out=False), "a switchover keeps it owned here"
