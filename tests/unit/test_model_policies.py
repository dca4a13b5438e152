"""Recovery and failover policies: parsing, defaults, where the cluster reads them, how the
store carries them, states of stopped servers, and the changes that set them."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
from builders import app_resource, make_cluster, refused, three_level, with_observed

from vigil.engine import changes
from vigil.errors import Conflict, NotFound, ValidationError
from vigil.model.cluster import Cluster, Confirmation, Resource
from vigil.model.policies import (
    HIERARCHY_POLICY_NAMES,
    RESOURCE_POLICY_NAMES,
    ConfirmDefault,
    HierarchyPolicy,
    ResourcePolicy,
    ServerPolicy,
    ShutdownStrategy,
    StopMode,
    Switchback,
    parse_policy,
)
from vigil.model.records import (
    AliveRecord,
    ConfirmRecord,
    IntentRecord,
    Record,
    ServerPolicyRecord,
    ServerRecord,
    StoppedRecord,
    cluster_from_snapshot,
    key,
)
from vigil.model.states import InstanceState

Item = tuple[str, bytes, int, int]


def item(store_key: str, record: Record | bytes, create: int = 1, mod: int | None = None) -> Item:
    value = record if isinstance(record, bytes) else record.dump()
    return (store_key, value, create, create if mod is None else mod)


def server_items(name: str, *, alive: bool = True) -> list[Item]:
    items = [item(key("servers", name), ServerRecord(name=name, api_url=f"http://{name}:7700"))]
    if alive:
        items.append(item(key("alive", name), AliveRecord(started_at=1.0, pid=42)))
    return items


# --- defaults (DESIGN.md section 4, the seed's defaults) ---------------------------------


def test_server_policy_defaults() -> None:
    policy = ServerPolicy()
    assert policy.local_recovery is True
    assert policy.failover is True
    assert policy.confirm_failover is False
    assert policy.confirm_timeout == 600.0
    assert policy.confirm_default is ConfirmDefault.PROCEED
    assert policy.block_resource_failover is False
    assert policy.shutdown_strategy is ShutdownStrategy.HOLD


def test_resource_policy_defaults() -> None:
    policy = ResourcePolicy()
    assert policy.local_recovery is True
    assert policy.failover is True
    assert policy.recovery_limit == 3
    assert policy.recovery_period == 300.0
    assert policy.quick_check_interval is None
    assert policy.deep_check_interval is None


def test_hierarchy_policy_defaults() -> None:
    policy = HierarchyPolicy()
    assert policy.switchback is Switchback.INTELLIGENT
    assert policy.automatic_failover is True
    assert policy.n_plus_one is False


def test_enum_values_are_the_documented_words() -> None:
    assert [m.value for m in Switchback] == ["intelligent", "automatic"]
    assert [m.value for m in ShutdownStrategy] == ["hold", "switchover"]
    assert [m.value for m in ConfirmDefault] == ["proceed", "block"]
    assert [m.value for m in StopMode] == ["hold", "maintenance"]
    assert f"{StopMode.MAINTENANCE}" == "maintenance"


def test_policy_names() -> None:
    assert sorted(RESOURCE_POLICY_NAMES) == [
        "deep_check_interval",
        "failover",
        "local_recovery",
        "quick_check_interval",
        "recovery_limit",
        "recovery_period",
    ]
    assert sorted(HIERARCHY_POLICY_NAMES) == ["automatic_failover", "n_plus_one", "switchback"]
    assert not RESOURCE_POLICY_NAMES & HIERARCHY_POLICY_NAMES


# --- parse_policy -------------------------------------------------------------------------


def test_parse_nothing_gives_the_defaults() -> None:
    assert parse_policy(ServerPolicy, {}, "n1") == ServerPolicy()
    assert parse_policy(ResourcePolicy, {}, "app") == ResourcePolicy()
    assert parse_policy(HierarchyPolicy, {}, "app") == HierarchyPolicy()


def test_parse_valid_server_policy() -> None:
    values = {
        "local_recovery": False,
        "failover": False,
        "confirm_failover": True,
        "confirm_timeout": 30,
        "confirm_default": "block",
        "block_resource_failover": True,
        "shutdown_strategy": "switchover",
    }
    policy = parse_policy(ServerPolicy, values, "n1")
    assert policy == ServerPolicy(
        local_recovery=False,
        failover=False,
        confirm_failover=True,
        confirm_timeout=30.0,
        confirm_default=ConfirmDefault.BLOCK,
        block_resource_failover=True,
        shutdown_strategy=ShutdownStrategy.SWITCHOVER,
    )
    assert type(policy.confirm_timeout) is float
    assert type(policy.confirm_default) is ConfirmDefault


def test_parse_valid_resource_policy() -> None:
    values = {
        "recovery_limit": 0,
        "recovery_period": 12.5,
        "quick_check_interval": 2,
        "deep_check_interval": None,
    }
    policy = parse_policy(ResourcePolicy, values, "app")
    assert policy.recovery_limit == 0
    assert policy.recovery_period == 12.5
    assert policy.quick_check_interval == 2.0
    assert policy.deep_check_interval is None


def test_parse_valid_hierarchy_policy() -> None:
    values = {"switchback": "automatic", "automatic_failover": False, "n_plus_one": True}
    assert parse_policy(HierarchyPolicy, values, "app") == HierarchyPolicy(
        Switchback.AUTOMATIC, automatic_failover=False, n_plus_one=True
    )


def test_parse_accepts_enum_members_as_well_as_their_values() -> None:
    policy = parse_policy(ServerPolicy, {"shutdown_strategy": ShutdownStrategy.SWITCHOVER}, "n1")
    assert policy.shutdown_strategy is ShutdownStrategy.SWITCHOVER


def test_parse_refuses_an_unknown_name_naming_it_and_the_owner() -> None:
    with refused(ValidationError, r"^n1: unknown policy 'failovr'$"):
        parse_policy(ServerPolicy, {"failovr": False}, "n1")


@pytest.mark.parametrize(
    ("cls", "name", "value", "expected"),
    [
        (ServerPolicy, "failover", "yes", "expected true or false, not 'yes'"),
        (ServerPolicy, "local_recovery", 1, "expected true or false, not 1"),
        (ServerPolicy, "confirm_timeout", 0, r"expected a number of seconds > 0, not 0"),
        (ServerPolicy, "confirm_timeout", -5.0, "seconds > 0, not -5.0"),
        (ServerPolicy, "confirm_timeout", "600", "seconds > 0, not '600'"),
        (ServerPolicy, "confirm_timeout", True, "seconds > 0, not True"),
        (ServerPolicy, "confirm_timeout", None, "seconds > 0, not None"),
        (ServerPolicy, "confirm_default", "maybe", "'maybe' is not one of proceed, block"),
        (ServerPolicy, "shutdown_strategy", "HOLD", "'HOLD' is not one of hold, switchover"),
        (ResourcePolicy, "recovery_limit", -1, "whole number >= 0, not -1"),
        (ResourcePolicy, "recovery_limit", 2.5, "whole number >= 0, not 2.5"),
        (ResourcePolicy, "recovery_limit", 3.0, "whole number >= 0, not 3.0"),
        (ResourcePolicy, "recovery_limit", True, "whole number >= 0, not True"),
        (ResourcePolicy, "recovery_period", 0, "seconds > 0, not 0"),
        (ResourcePolicy, "quick_check_interval", -1, "seconds > 0, not -1"),
        (ResourcePolicy, "quick_check_interval", "fast", "seconds > 0, not 'fast'"),
        (HierarchyPolicy, "switchback", "manual", "'manual' is not one of intelligent, automatic"),
        (HierarchyPolicy, "n_plus_one", "true", "expected true or false, not 'true'"),
    ],
)
def test_parse_refuses_a_wrong_value_naming_the_policy(
    cls: type, name: str, value: object, expected: str
) -> None:
    with refused(ValidationError, f"^owner: {name}: ") as excinfo:
        parse_policy(cls, {name: value}, "owner")
    assert expected in str(excinfo.value)


def test_parse_lists_every_problem() -> None:
    values = {"nope": 1, "failover": "no", "confirm_timeout": -1, "local_recovery": True}
    with refused(ValidationError, "unknown policy 'nope'") as excinfo:
        parse_policy(ServerPolicy, values, "n2")
    problems = excinfo.value.problems
    assert len(problems) == 3
    assert problems[0] == "n2: unknown policy 'nope'"
    assert problems[1].startswith("n2: failover: ")
    assert problems[2].startswith("n2: confirm_timeout: ")


@pytest.mark.parametrize(
    ("cls", "name"), [(ResourcePolicy, "recovery_period"), (ServerPolicy, "confirm_timeout")]
)
def test_parse_refuses_nan_seconds(cls: type, name: str) -> None:
    with pytest.raises(ValidationError, match=name):
        parse_policy(cls, {name: math.nan}, "owner")


# --- where the cluster reads them ---------------------------------------------------------


def test_server_policy_defaults_when_none_is_set() -> None:
    cluster = make_cluster(server_policies={"n1": {"failover": False}})
    assert cluster.server_policy("n1") == ServerPolicy(failover=False)
    assert cluster.server_policy("n2") == ServerPolicy()
    assert cluster.server_policy("not-a-server") == ServerPolicy()


def test_resource_policy_ignores_hierarchy_policies_stored_beside_it() -> None:
    resource = app_resource("app", {"n1": 1}, recovery_limit=1, switchback="automatic")
    cluster = make_cluster(resources={"app": resource})
    assert cluster.resource_policy("app") == ResourcePolicy(recovery_limit=1)
    assert cluster.hierarchy_policy(cluster.hierarchy("app")).switchback is Switchback.AUTOMATIC


def test_hierarchy_policy_is_read_from_the_root_only() -> None:
    resources = {
        "app": app_resource("app", {"n1": 1, "n2": 10}),
        "ip": app_resource("ip", {"n1": 1, "n2": 10}, switchback="automatic", n_plus_one=True),
    }
    cluster = make_cluster(resources=resources, deps=[("app", "ip")])
    assert cluster.hierarchy_policy(cluster.hierarchy("ip")) == HierarchyPolicy()


def test_a_bad_stored_resource_policy_raises_naming_the_resource() -> None:
    cluster = make_cluster(resources={"app": app_resource("app", {"n1": 1}, failover="off")})
    with refused(ValidationError, "^app: failover: "):
        cluster.resource_policy("app")


# --- how the store carries them -----------------------------------------------------------


def test_server_policy_stopped_and_confirm_keys_are_read() -> None:
    items = [
        *server_items("n1"),
        *server_items("n2", alive=False),
        *server_items("n3", alive=False),
        item(
            key("serverpolicy", "n1"),
            ServerPolicyRecord(policy={"confirm_failover": True, "confirm_default": "block"}),
        ),
        item(key("stopped", "n2"), StoppedRecord(mode=StopMode.MAINTENANCE, at=4.0)),
        item(key("stopped", "n3"), StoppedRecord(mode=StopMode.HOLD)),
        item(key("confirm", "app"), ConfirmRecord(target="n1", origin="n2", since=9.5)),
    ]
    cluster = cluster_from_snapshot(30, items)
    assert cluster.server_policy("n1") == ServerPolicy(
        confirm_failover=True, confirm_default=ConfirmDefault.BLOCK
    )
    assert cluster.server_policy("n2") == ServerPolicy()
    assert cluster.stopped == {"n2": StopMode.MAINTENANCE, "n3": StopMode.HOLD}
    assert cluster.confirmations == {"app": Confirmation("app", "n1", "n2", 9.5, None)}


def test_confirm_decision_is_read() -> None:
    record = ConfirmRecord(target="n1", origin="n2", since=1.0, decision=False)
    cluster = cluster_from_snapshot(3, [item(key("confirm", "app"), record)])
    assert cluster.confirmations["app"].decision is False


def test_a_malformed_server_policy_is_skipped_and_the_defaults_apply() -> None:
    items = [
        *server_items("n1"),
        item(key("serverpolicy", "n1"), ServerPolicyRecord(policy={"failover": "no"})),
        item(key("stopped", "n1"), b'{"mode": "asleep"}'),
    ]
    cluster = cluster_from_snapshot(3, items)
    assert cluster.server_policies == {}
    assert cluster.stopped == {}


def test_intent_origin_and_tried_round_trip() -> None:
    record = IntentRecord(server="n3", reason="failing over", origin="n1", tried=["n1", "n2"])
    cluster = cluster_from_snapshot(40, [item(key("intent", "app"), record, 3, 33)])
    intent = cluster.intents["app"]
    assert (intent.server, intent.revision, intent.origin, intent.tried) == (
        "n3",
        33,
        "n1",
        ("n1", "n2"),
    )
    plain = cluster_from_snapshot(40, [item(key("intent", "app"), IntentRecord(server="n1"))])
    assert (plain.intents["app"].origin, plain.intents["app"].tried) == (None, ())


# --- states of stopped servers --------------------------------------------------------------


def stopped_cluster(mode: str | None, state: str, reason: str = "") -> Cluster:
    cluster = make_cluster(
        dead=("n1",),
        resources={"app": {"n1": 1, "n2": 10}},
        stopped={"n1": mode} if mode else {},
    )
    seen: Cluster = with_observed(cluster, "n1", "app", state, reason=reason, intent_revision=5)
    return seen


def test_maintenance_and_in_service_is_isu_with_a_maintenance_reason() -> None:
    cluster = stopped_cluster("maintenance", "ISP", "in service")
    seen = cluster.state_of("n1", "app")
    assert seen.state is InstanceState.ISU
    assert seen.reason == "maintenance: the agent is stopped, the resource left running"
    assert (seen.tag, seen.server, seen.intent_revision) == ("app", "n1", 5)


def test_hold_and_out_of_service_keeps_the_last_state_and_says_so() -> None:
    cluster = stopped_cluster("hold", "OSU", "the agent is stopping")
    seen = cluster.state_of("n1", "app")
    assert seen.state is InstanceState.OSU
    assert seen.reason == "the agent is stopping (agent stopped: hold)"


def test_maintenance_and_out_of_service_keeps_the_last_state() -> None:
    cluster = stopped_cluster("maintenance", "OSF", "restore failed")
    seen = cluster.state_of("n1", "app")
    assert seen.state is InstanceState.OSF
    assert seen.reason == "restore failed (agent stopped: maintenance)"


def test_hold_and_in_service_is_unknown() -> None:
    # an orderly stop takes everything out of service: a last ISP cannot be trusted
    seen = stopped_cluster("hold", "ISP").state_of("n1", "app")
    assert seen.state is InstanceState.UNKNOWN


def test_dead_and_not_stopped_is_unknown_with_the_last_report() -> None:
    seen = stopped_cluster(None, "ISP").state_of("n1", "app")
    assert seen.state is InstanceState.UNKNOWN
    assert seen.reason == "the agent of this server is not running (last reported ISP)"


def test_stopped_without_a_report_is_unknown() -> None:
    cluster = make_cluster(dead=("n1",), resources={"app": {"n1": 1}}, stopped={"n1": "hold"})
    assert cluster.state_of("n1", "app").state is InstanceState.UNKNOWN


def test_a_stopped_record_is_ignored_once_the_agent_is_back() -> None:
    cluster = make_cluster(resources={"app": {"n1": 1}}, stopped={"n1": "maintenance"})
    cluster = with_observed(cluster, "n1", "app", "ISP", reason="in service")
    seen = cluster.state_of("n1", "app")
    assert (seen.state, seen.reason) == (InstanceState.ISP, "in service")


def test_stopped_reason_without_a_last_reason_has_no_leading_space() -> None:
    seen = stopped_cluster("hold", "OSU").state_of("n1", "app")
    assert seen.reason == "agent stopped: hold"


# --- update_policies ------------------------------------------------------------------------


def test_update_policies_merges_and_validates() -> None:
    cluster = make_cluster(resources={"app": app_resource("app", {"n1": 1}, recovery_limit=1)})
    change = changes.update_policies(cluster, "app", {"local_recovery": False, "n_plus_one": True})
    assert change.resources["app"].policies == {
        "recovery_limit": 1,
        "local_recovery": False,
        "n_plus_one": True,
    }
    assert change.summary == "updated the policies of app: local_recovery=False, n_plus_one=True"


def test_update_policies_none_resets_to_the_default() -> None:
    resource = app_resource("app", {"n1": 1}, recovery_limit=1, switchback="automatic")
    cluster = make_cluster(resources={"app": resource})
    change = changes.update_policies(cluster, "app", {"recovery_limit": None, "switchback": None})
    assert change.resources["app"].policies == {}


def test_update_policies_refuses_an_unknown_policy_listing_the_known_ones() -> None:
    cluster = make_cluster(resources={"app": {"n1": 1}})
    with refused(
        ValidationError, "^unknown policy 'recovery_limt' for app: the policies are "
    ) as e:
        changes.update_policies(cluster, "app", {"recovery_limt": 2})
    for name in RESOURCE_POLICY_NAMES | HIERARCHY_POLICY_NAMES:
        assert name in str(e.value)


def test_update_policies_refuses_a_hierarchy_policy_on_a_non_root_naming_the_root() -> None:
    cluster = three_level()
    for values in ({"switchback": "automatic"}, {"n_plus_one": None}):
        with refused(ValidationError, r"is set on a hierarchy: give its root, app, not vol$"):
            changes.update_policies(cluster, "vol", values)
    # resource policies are fine anywhere
    change = changes.update_policies(cluster, "vol", {"failover": False})
    assert change.resources["vol"].policies == {"failover": False}


def test_update_policies_refuses_a_bad_value_naming_resource_and_policy() -> None:
    cluster = three_level()
    with refused(ValidationError, "^app: switchback: 'sometimes' is not one of"):
        changes.update_policies(cluster, "app", {"switchback": "sometimes"})
    with refused(ValidationError, "^ip: recovery_period: "):
        changes.update_policies(cluster, "ip", {"recovery_period": -1})


def test_update_policies_of_an_unknown_resource() -> None:
    with refused(NotFound, "no resource is tagged 'nope'"):
        changes.update_policies(three_level(), "nope", {"failover": False})


# --- update_server_policy -------------------------------------------------------------------


def test_update_server_policy_stores_the_whole_validated_policy() -> None:
    cluster = make_cluster(server_policies={"n1": {"failover": False}})
    change = changes.update_server_policy(
        cluster, "n1", {"confirm_failover": True, "confirm_timeout": 30, "confirm_default": "block"}
    )
    stored = change.server_policies["n1"]
    assert stored == {
        **asdict(ServerPolicy()),
        "failover": False,
        "confirm_failover": True,
        "confirm_timeout": 30.0,
        "confirm_default": "block",
        "shutdown_strategy": "hold",
    }
    # plain JSON values, read back as the same policy
    assert all(type(v) in (bool, float, str) for v in stored.values())
    assert parse_policy(ServerPolicy, stored, "n1") == ServerPolicy(
        failover=False,
        confirm_failover=True,
        confirm_timeout=30.0,
        confirm_default=ConfirmDefault.BLOCK,
    )
    assert "confirm_failover=True" in change.summary


def test_update_server_policy_none_resets_to_the_default() -> None:
    cluster = make_cluster(server_policies={"n1": {"failover": False, "confirm_timeout": 5}})
    stored = changes.update_server_policy(cluster, "n1", {"failover": None}).server_policies["n1"]
    assert stored["failover"] is True
    assert stored["confirm_timeout"] == 5.0


def test_update_server_policy_of_an_unknown_server() -> None:
    with refused(NotFound, "unknown server 'n9': the servers of this cluster are n1, n2"):
        changes.update_server_policy(make_cluster(), "n9", {"failover": False})


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"failover": "off"}, "^n2: failover: expected true or false"),
        ({"confirm_timeout": 0}, "^n2: confirm_timeout: expected a number of seconds > 0"),
        ({"shutdown_strategy": "move"}, "^n2: shutdown_strategy: 'move' is not one of"),
        ({"switchback": "automatic"}, "^n2: unknown policy 'switchback'"),
    ],
)
def test_update_server_policy_refuses_bad_values(values: dict[str, object], match: str) -> None:
    with refused(ValidationError, match):
        changes.update_server_policy(make_cluster(), "n2", values)


# --- create_dependency: one priority per hierarchy ------------------------------------------


def test_create_dependency_refuses_different_priorities() -> None:
    cluster = make_cluster(
        servers=("n1", "n2", "n3"),
        resources={"app": {"n1": 1, "n2": 10, "n3": 20}, "ip": {"n1": 1, "n2": 20, "n3": 10}},
    )
    with refused(Conflict, "a hierarchy has one priority per server") as excinfo:
        changes.create_dependency(cluster, "app", "ip")
    message = str(excinfo.value)
    assert "app has priorities n1 1, n2 10, n3 20 but ip has n1 1, n3 10, n2 20" in message


def test_create_dependency_with_equal_priorities_is_accepted() -> None:
    cluster = make_cluster(resources={"app": {"n1": 1, "n2": 10}, "ip": {"n1": 1, "n2": 10}})
    change = changes.create_dependency(cluster, "app", "ip")
    assert {(d.parent, d.child) for d in change.dependencies} == {("app", "ip")}


def test_create_dependency_refuses_different_servers_before_priorities() -> None:
    cluster = make_cluster(
        resources={"app": Resource("app", "app", instances={"n1": 1, "n2": 10}), "ip": {"n1": 1}}
    )
    with refused(Conflict, "extend both to the same servers first"):
        changes.create_dependency(cluster, "app", "ip")
