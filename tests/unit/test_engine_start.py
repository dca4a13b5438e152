"""At an agent's start: a hierarchy found running here is adopted or removed
(``engine.start``)."""

from __future__ import annotations

from builders import three_level

from vigil.engine.plan import Step, StepKind
from vigil.engine.start import ADOPTED, after_probe
from vigil.model.cluster import Cluster

ALL = frozenset({"app", "ip", "vol", "disk"})


def probe(cluster: Cluster, found: list[str], *, refused: bool = False) -> Step:
    return after_probe(cluster, "n1", cluster.hierarchy("app"), found, refused=refused)


def test_found_running_where_it_is_wanted_and_unowned_is_adopted() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n1"), intent_revision=7)
    step = probe(cluster, ["vol", "ip"])
    assert step == Step(
        StepKind.ADOPT,
        "app",
        ALL,
        "probe: ip, vol found running on n1: wanted here, adopted",
        waves=(("ip", "vol"),),
        claim=ALL,
        intent_revision=7,
        state_reason=ADOPTED,
    )


def test_found_running_but_wanted_elsewhere_is_removed_parents_first() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n2"), intent_revision=7)
    step = probe(cluster, ["disk", "vol", "app"])
    assert step == Step(
        StepKind.REMOVE,
        "app",
        ALL,
        "probe: app, disk, vol found running on n1 but wanted on n2: removing it here",
        waves=(("app",), ("vol",), ("disk",)),
        intent_revision=7,
        state_reason="removed at start: wanted on n2",
        forced=True,
    )


def test_found_running_while_another_server_owns_it_is_removed() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n1"), owners={"app": "n2"})
    step = probe(cluster, ["app"])
    assert step.kind is StepKind.REMOVE
    assert step.reason == "probe: app found running on n1 but owned by n2: removing it here"
    assert step.state_reason == "removed at start: owned by n2"


def test_found_running_while_wanted_nowhere_is_removed() -> None:
    step = probe(three_level(), ["ip"])
    assert step.kind is StepKind.REMOVE
    assert step.state_reason == "removed at start: wanted on no server"


def test_an_adoption_whose_claim_was_refused_is_removed() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n1"))
    step = probe(cluster, ["ip"], refused=True)
    assert step.kind is StepKind.REMOVE and step.forced
    assert step.waves == (("ip",),)
    assert step.state_reason == "removed at start: wanted on n1"
