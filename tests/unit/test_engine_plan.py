"""The decision step: what one agent should do now, for each hierarchy."""

from __future__ import annotations

from dataclasses import replace

from builders import make_cluster, three_level
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.engine.plan import LocalView, Step, StepKind, decide, standby_reason
from vigil.model.cluster import Cluster, Dependency, Intent, Ownership, Resource, Server

ALL = frozenset({"app", "ip", "vol", "disk"})


def only_step(cluster: Cluster, me: str, local: LocalView | None = None) -> Step:
    steps = decide(cluster, me, local or LocalView())
    assert len(steps) == 1, steps
    return steps[0]


# --- restore ------------------------------------------------------------------------------


def test_restore_when_wanted_here_and_unowned() -> None:
    cluster = three_level(intents=dict.fromkeys(ALL, "n1"), intent_revision=7)
    step = only_step(cluster, "n1")
    assert step.kind is StepKind.RESTORE
    assert step.hierarchy == "app"
    assert step.tags == ALL
    assert step.claim == ALL
    assert step.release == frozenset()
    assert step.waves == (("disk", "ip"), ("vol",), ("app",))
    assert step.intent_revision == 7
    assert step.reason == "restoring app on n1: it is wanted in service on n1"


def test_restore_reason_is_the_intent_reason() -> None:
    cluster = three_level(intents={"app": "n2"})
    intent = Intent("app", "n2", 9, "switchover requested by admin (from n1)")
    cluster = replace(cluster, intents={"app": intent})
    step = only_step(cluster, "n2")
    assert step.kind is StepKind.RESTORE
    assert step.reason == "restoring app on n2: switchover requested by admin (from n1)"


def test_other_servers_do_nothing_while_it_is_wanted_elsewhere() -> None:
    cluster = three_level(intents={"app": "n1"})
    assert decide(cluster, "n2", LocalView()) == []


def test_restore_claims_only_what_is_not_owned_here_yet() -> None:
    cluster = three_level(intents={"app": "n1"}, owners={"disk": "n1", "ip": "n1"})
    step = only_step(cluster, "n1", LocalView(running=frozenset({"disk"})))
    assert step.kind is StepKind.RESTORE
    assert step.claim == frozenset({"app", "vol"})
    assert step.waves == (("disk", "ip"), ("vol",), ("app",))


def test_restore_when_running_but_not_owned() -> None:
    cluster = three_level(intents={"app": "n1"})
    step = only_step(cluster, "n1", LocalView(running=ALL))
    assert step.kind is StepKind.RESTORE
    assert step.claim == ALL


def test_wait_when_owned_by_another_server() -> None:
    cluster = three_level(intents={"app": "n2"}, owners={"ip": "n1"}, intent_revision=4)
    step = only_step(cluster, "n2")
    assert step.kind is StepKind.WAIT
    assert step.claim == frozenset()
    assert step.waves == ()
    assert step.intent_revision == 4
    assert step.reason == "app is wanted here but still owned by n1: waiting for release"


def test_nothing_to_do_when_fully_running_and_owned_here() -> None:
    cluster = three_level(intents={"app": "n1"}, owners=dict.fromkeys(ALL, "n1"))
    assert decide(cluster, "n1", LocalView(running=ALL)) == []


def test_restore_when_owned_here_but_partly_stopped() -> None:
    cluster = three_level(intents={"app": "n1"}, owners=dict.fromkeys(ALL, "n1"))
    step = only_step(cluster, "n1", LocalView(running=ALL - {"app"}))
    assert step.kind is StepKind.RESTORE
    assert step.claim == frozenset()


def test_no_retry_of_a_restore_that_failed_for_this_intent() -> None:
    cluster = three_level(intents={"app": "n1"}, intent_revision=7)
    assert decide(cluster, "n1", LocalView(failed={"app": 7})) == []


def test_retry_when_the_intent_changed_since_the_failure() -> None:
    cluster = three_level(intents={"app": "n1"}, intent_revision=8)
    step = only_step(cluster, "n1", LocalView(failed={"app": 7}))
    assert step.kind is StepKind.RESTORE
    assert step.intent_revision == 8


def test_a_failure_of_another_hierarchy_does_not_block_this_one() -> None:
    cluster = three_level(intents={"app": "n1"}, intent_revision=7)
    assert only_step(cluster, "n1", LocalView(failed={"other": 7})).kind is StepKind.RESTORE


def test_a_server_not_extended_does_nothing() -> None:
    cluster = make_cluster(
        servers=("n1", "n2", "n3"),
        resources={"app": {"n1": 1, "n2": 10}},
        intents={"app": "n3"},
    )
    assert decide(cluster, "n3", LocalView()) == []


def test_a_server_missing_one_resource_of_the_hierarchy_does_not_restore() -> None:
    cluster = make_cluster(
        resources={"app": {"n1": 1, "n2": 10}, "ip": {"n1": 1}},
        deps=[("app", "ip")],
        intents={"app": "n2"},
    )
    assert decide(cluster, "n2", LocalView()) == []


# --- remove -------------------------------------------------------------------------------


def test_remove_when_wanted_elsewhere() -> None:
    cluster = three_level(intents={"app": "n2"}, owners=dict.fromkeys(ALL, "n1"), intent_revision=3)
    step = only_step(cluster, "n1", LocalView(running=ALL))
    assert step.kind is StepKind.REMOVE
    assert step.waves == (("app",), ("ip", "vol"), ("disk",))
    assert step.release == ALL
    assert step.claim == frozenset()
    assert step.intent_revision == 3
    assert step.reason == "removing app from n1: it is wanted on n2"


def test_remove_when_wanted_out_of_service() -> None:
    cluster = three_level(intents={"app": None}, owners=dict.fromkeys(ALL, "n1"))
    step = only_step(cluster, "n1", LocalView(running=ALL))
    assert step.kind is StepKind.REMOVE
    assert step.reason == "removing app from n1: it is wanted out of service"
    assert step.release == ALL


def test_remove_only_what_runs_and_release_only_what_is_owned_here() -> None:
    cluster = three_level(intents={"app": "n2"}, owners={"disk": "n1", "vol": "n1", "ip": "n2"})
    step = only_step(cluster, "n1", LocalView(running=frozenset({"disk"})))
    assert step.kind is StepKind.REMOVE
    assert step.waves == (("disk",),)
    assert step.release == frozenset({"disk", "vol"})


def test_release_ownership_even_when_nothing_runs_here() -> None:
    cluster = three_level(intents={"app": None}, owners={"app": "n1"})
    step = only_step(cluster, "n1")
    assert step.kind is StepKind.REMOVE
    assert step.waves == ()
    assert step.release == frozenset({"app"})


def test_remove_when_wanted_here_but_no_longer_extended_here() -> None:
    cluster = make_cluster(
        resources={"app": {"n1": 1, "n2": 10}, "ip": {"n2": 10}},
        deps=[("app", "ip")],
        intents={"app": "n1"},
    )
    step = only_step(cluster, "n1", LocalView(running=frozenset({"app"})))
    assert step.kind is StepKind.REMOVE
    assert "n1 no longer has every resource of app extended here" in step.reason


def test_orphans_still_running_here_are_removed() -> None:
    cluster = three_level(intents={"app": "n1"}, owners=dict.fromkeys(ALL, "n1"))
    steps = decide(cluster, "n1", LocalView(running=ALL | {"old-ip", "old-app"}))
    (step,) = steps
    assert step.kind is StepKind.REMOVE
    assert step.tags == frozenset({"old-ip", "old-app"})
    assert step.release == frozenset({"old-ip", "old-app"})
    assert step.waves == (("old-app", "old-ip"),)
    assert step.hierarchy == "old-app, old-ip"
    assert "deleted from the cluster" in step.reason


def test_one_step_per_hierarchy_in_name_order() -> None:
    cluster = make_cluster(
        resources={"web": {"n1": 1}, "db": {"n1": 1}, "idle": {"n1": 1}},
        intents={"web": "n1", "db": None},
        owners={"db": "n1"},
    )
    steps = decide(cluster, "n1", LocalView(running=frozenset({"db"})))
    assert [(s.hierarchy, s.kind) for s in steps] == [
        ("db", StepKind.REMOVE),
        ("web", StepKind.RESTORE),
    ]


# --- standby reason -----------------------------------------------------------------------


def test_standby_reason() -> None:
    owned = three_level(intents={"app": "n1"}, owners={"app": "n1"})
    assert standby_reason(owned, owned.hierarchy("app"), "n2") == "in service on n1"
    wanted = three_level(intents={"app": "n1"})
    assert standby_reason(wanted, wanted.hierarchy("app"), "n2") == "wanted in service on n1"
    assert standby_reason(wanted, wanted.hierarchy("app"), "n1") == "out of service"
    idle = three_level()
    assert standby_reason(idle, idle.hierarchy("app"), "n2") == "out of service"


# --- properties on random clusters --------------------------------------------------------

SERVERS = ["s0", "s1", "s2", "s3"]


@st.composite
def random_clusters(draw: st.DrawFn) -> tuple[Cluster, str, LocalView]:
    """Random servers (alive or not), a random DAG of resources extended to random servers
    (mostly a common set), random intents, owners, running resources (with orphans) and
    failures; and the server ``me`` that decides. Biased so every step kind shows up."""
    me = draw(st.sampled_from(SERVERS))
    alive = draw(st.lists(st.booleans(), min_size=len(SERVERS), max_size=len(SERVERS)))
    servers = {s: Server(s, f"http://{s}", alive=a) for s, a in zip(SERVERS, alive, strict=True)}
    count = draw(st.integers(min_value=1, max_value=7))
    tags = [f"r{i}" for i in range(count)]
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=8)) if pairs else []
    deps = frozenset(Dependency(tags[i], tags[j]) for i, j in chosen)
    some_servers = st.lists(st.sampled_from(SERVERS), unique=True, min_size=1)
    common = draw(some_servers)
    resources = {}
    for tag in tags:
        on = common if draw(st.integers(0, 3)) else draw(some_servers)
        resources[tag] = Resource(tag, "app", instances={s: i + 1 for i, s in enumerate(on)})
    intents = {}
    owners = {}
    for tag in tags:
        if draw(st.integers(0, 3)):
            revision = draw(st.integers(min_value=0, max_value=3))
            server = draw(st.sampled_from([None, me, me, *SERVERS]))
            intents[tag] = Intent(tag, server, revision)
        owner = draw(st.sampled_from([None, None, None, None, *SERVERS]))
        if owner is not None:
            owners[tag] = Ownership(tag, owner, 1)
    cluster = Cluster(
        servers=servers, resources=resources, dependencies=deps, intents=intents, owners=owners
    )
    running = draw(st.sets(st.sampled_from([*tags, "orphan-a", "orphan-b"])))
    names = [h.name for h in cluster.hierarchies]
    failed = draw(
        st.dictionaries(st.sampled_from(names), st.integers(min_value=0, max_value=3), max_size=2)
    )
    return cluster, me, LocalView(frozenset(running), failed)


@settings(max_examples=300, deadline=None)
@given(random_clusters())
def test_decide_never_restores_what_another_server_owns(
    case: tuple[Cluster, str, LocalView],
) -> None:
    cluster, me, local = case
    for step in decide(cluster, me, local):
        if step.kind is not StepKind.RESTORE:
            continue
        hierarchy = cluster.hierarchy(step.hierarchy)
        assert cluster.owner_of(hierarchy) <= {me}, "no split brain"
        assert me in cluster.hierarchy_servers(hierarchy), "restored only where extended"
        assert cluster.intended_server(hierarchy) == me
        assert step.tags == hierarchy.tags
        assert step.claim <= step.tags
        assert local.failed.get(step.hierarchy) != step.intent_revision


@settings(max_examples=300, deadline=None)
@given(random_clusters())
def test_decide_steps_are_well_formed(case: tuple[Cluster, str, LocalView]) -> None:
    cluster, me, local = case
    steps = decide(cluster, me, local)
    handled = [tag for step in steps for tag in step.tags]
    assert len(handled) == len(set(handled)), "one step per hierarchy"
    for step in steps:
        order = [tag for wave in step.waves for tag in wave]
        assert len(order) == len(set(order))
        position = {tag: i for i, wave in enumerate(step.waves) for tag in wave}
        edges = [(p, c) for p, c in cluster.edges if p in position and c in position]
        if step.kind is StepKind.RESTORE:
            assert set(order) == step.tags
            assert all(position[c] < position[p] for p, c in edges)
        elif step.kind is StepKind.REMOVE:
            assert set(order) <= local.running, "remove only what runs here"
            assert all(position[c] > position[p] for p, c in edges)
            owned_here = {t for t, o in cluster.owners.items() if o.server == me}
            orphans = step.tags - set(cluster.resources)
            assert step.release <= owned_here | orphans, "release only what is mine"
        else:
            assert step.waves == () and step.claim == frozenset()
    # a hierarchy owned here but not wanted here is always given up
    for hierarchy in cluster.hierarchies:
        mine = {t for t in hierarchy.tags if t in cluster.owners and cluster.owners[t].server == me}
        if cluster.intended_server(hierarchy) != me and (mine or hierarchy.tags & local.running):
            assert any(s.kind is StepKind.REMOVE and s.hierarchy == hierarchy.name for s in steps)
