"""Dependency graph rules: cycles, components, waves, descendants."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.model import graph
from vigil.model.graph import Edge

# app -> ip, app -> vol, vol -> disk
THREE_LEVEL: list[Edge] = [("app", "ip"), ("app", "vol"), ("vol", "disk")]
THREE_LEVEL_NODES = ["app", "ip", "vol", "disk"]


def assert_is_cycle(cycle: list[str], edges: list[Edge]) -> None:
    assert len(cycle) >= 2
    assert cycle[0] == cycle[-1]
    assert len(set(cycle[:-1])) == len(cycle) - 1, "a cycle visits each node once"
    for step in itertools.pairwise(cycle):
        assert step in edges


# --- find_cycle ---------------------------------------------------------------------------


def test_no_cycle_in_a_tree_or_a_diamond() -> None:
    assert graph.find_cycle(THREE_LEVEL) is None
    assert graph.find_cycle([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]) is None
    assert graph.find_cycle([]) is None


def test_self_loop_is_a_cycle() -> None:
    assert graph.find_cycle([("a", "a")]) == ["a", "a"]


def test_two_node_cycle() -> None:
    edges = [("a", "b"), ("b", "a")]
    cycle = graph.find_cycle(edges)
    assert cycle is not None
    assert_is_cycle(cycle, edges)
    assert set(cycle) == {"a", "b"}


def test_cycle_is_found_behind_an_acyclic_prefix() -> None:
    edges = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "b"), ("x", "y")]
    cycle = graph.find_cycle(edges)
    assert cycle is not None
    assert_is_cycle(cycle, edges)
    assert set(cycle) == {"b", "c", "d"}, "the tail a -> b is not part of the cycle"


# --- components ---------------------------------------------------------------------------


def test_components_ignore_direction_and_keep_isolated_nodes() -> None:
    nodes = ["app", "ip", "vol", "disk", "lone", "z1", "z2"]
    edges = [*THREE_LEVEL, ("z2", "z1")]
    assert graph.components(nodes, edges) == [
        frozenset({"app", "ip", "vol", "disk"}),
        frozenset({"lone"}),
        frozenset({"z1", "z2"}),
    ]


def test_two_roots_sharing_a_child_are_one_component() -> None:
    edges = [("r1", "shared"), ("r2", "shared")]
    assert graph.components(["r1", "r2", "shared"], edges) == [frozenset({"r1", "r2", "shared"})]


def test_components_include_nodes_only_named_by_edges() -> None:
    assert graph.components([], [("a", "b")]) == [frozenset({"a", "b"})]


# --- layers -------------------------------------------------------------------------------


def test_layers_children_first_on_three_levels() -> None:
    assert graph.layers_children_first(THREE_LEVEL_NODES, THREE_LEVEL) == [
        ["disk", "ip"],
        ["vol"],
        ["app"],
    ]


def test_layers_parents_first_on_three_levels() -> None:
    assert graph.layers_parents_first(THREE_LEVEL_NODES, THREE_LEVEL) == [
        ["app"],
        ["ip", "vol"],
        ["disk"],
    ]


def test_layers_ignore_edges_leaving_the_node_set() -> None:
    assert graph.layers_children_first(["app", "vol"], THREE_LEVEL) == [["vol"], ["app"]]
    assert graph.layers_parents_first(["disk"], THREE_LEVEL) == [["disk"]]
    assert graph.layers_children_first([], THREE_LEVEL) == []


def test_layers_raise_on_a_cycle() -> None:
    edges = [("a", "b"), ("b", "a"), ("c", "a")]
    with pytest.raises(ValueError, match="dependency cycle"):
        graph.layers_children_first(["a", "b", "c"], edges)
    with pytest.raises(ValueError, match="dependency cycle"):
        graph.layers_parents_first(["a", "b", "c"], edges)


# --- descendants --------------------------------------------------------------------------


def test_descendants() -> None:
    assert graph.descendants("app", THREE_LEVEL) == {"ip", "vol", "disk"}
    assert graph.descendants("vol", THREE_LEVEL) == {"disk"}
    assert graph.descendants("disk", THREE_LEVEL) == set()
    assert graph.descendants("unknown", THREE_LEVEL) == set()


def test_descendants_of_a_diamond() -> None:
    edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]
    assert graph.descendants("a", edges) == {"b", "c", "d"}
    assert graph.descendants("b", edges) == {"d"}


# --- properties on random DAGs ------------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], list[Edge]]:
    """Nodes n00..nNN and edges only from a lower to a higher index (so acyclic)."""
    size = draw(st.integers(min_value=0, max_value=14))
    nodes = [f"n{i:02d}" for i in range(size)]
    pairs = [(i, j) for i in range(size) for j in range(i + 1, size)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True) if pairs else st.just([]))
    edges = [(nodes[i], nodes[j]) for i, j in chosen]
    # random extra isolated nodes
    extra = draw(st.integers(min_value=0, max_value=3))
    nodes += [f"x{i}" for i in range(extra)]
    return draw(st.permutations(nodes)), edges


def wave_index(waves: list[list[str]]) -> dict[str, int]:
    return {node: i for i, wave in enumerate(waves) for node in wave}


@settings(max_examples=200, deadline=None)
@given(dags())
def test_waves_respect_every_dependency(dag: tuple[list[str], list[Edge]]) -> None:
    nodes, edges = dag
    assert graph.find_cycle(edges) is None
    restore = graph.layers_children_first(nodes, edges)
    remove = graph.layers_parents_first(nodes, edges)
    for waves in (restore, remove):
        flat = [node for wave in waves for node in wave]
        assert sorted(flat) == sorted(nodes), "every node exactly once"
        assert all(waves), "no empty wave"
        for wave in waves:
            members = set(wave)
            assert not any(p in members and c in members for p, c in edges)
    up, down = wave_index(restore), wave_index(remove)
    for parent, child in edges:
        assert up[child] < up[parent]
        assert down[child] > down[parent]


@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_closing_a_path_makes_a_cycle(
    dag: tuple[list[str], list[Edge]], data: st.DataObject
) -> None:
    nodes, edges = dag
    starts = sorted({p for p, _ in edges})
    if not starts:
        return
    start = data.draw(st.sampled_from(starts))
    end = data.draw(st.sampled_from(sorted(graph.descendants(start, edges))))
    closed = [*edges, (end, start)]
    cycle = graph.find_cycle(closed)
    assert cycle is not None
    assert_is_cycle(cycle, closed)
    with pytest.raises(ValueError):
        graph.layers_children_first(nodes, closed)
    with pytest.raises(ValueError):
        graph.layers_parents_first(nodes, closed)


@settings(max_examples=100, deadline=None)
@given(dags())
def test_components_partition_the_nodes(dag: tuple[list[str], list[Edge]]) -> None:
    nodes, edges = dag
    parts = graph.components(nodes, edges)
    assert sorted(n for part in parts for n in part) == sorted(nodes)
    where = {n: i for i, part in enumerate(parts) for n in part}
    for parent, child in edges:
        assert where[parent] == where[child]
    assert [min(p) for p in parts] == sorted(min(p) for p in parts)


@settings(max_examples=100, deadline=None)
@given(dags())
def test_descendants_are_the_transitive_closure(dag: tuple[list[str], list[Edge]]) -> None:
    nodes, edges = dag
    for node in nodes:
        below = graph.descendants(node, edges)
        direct = {c for p, c in edges if p == node}
        expected = set(direct)
        for child in direct:
            expected |= graph.descendants(child, edges)
        assert below == expected
        assert node not in below
