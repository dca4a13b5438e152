"""Dependency graph rules: cycles, connected components, and layered orders.

A dependency ``parent -> child`` means the parent needs the child in service first (an
application needs its address and its volume). The functions here are pure and work on
plain ``(parent, child)`` pairs so that the engine and the validation share them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Edge = tuple[str, str]


def children_map(nodes: Iterable[str], edges: Iterable[Edge]) -> dict[str, set[str]]:
    """parent -> its children, with an entry (maybe empty) for every node."""
    result: dict[str, set[str]] = {node: set() for node in nodes}
    for parent, child in edges:
        result.setdefault(parent, set()).add(child)
        result.setdefault(child, set())
    return result


def find_cycle(edges: Iterable[Edge]) -> list[str] | None:
    """A cycle as a list of tags ``[a, b, ..., a]``, or None when the graph is acyclic."""
    graph = children_map((), edges)
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    stack_path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack_path.append(node)
        for child in sorted(graph[node]):
            if colour[child] == grey:
                return [*stack_path[stack_path.index(child) :], child]
            if colour[child] == white:
                found = visit(child)
                if found:
                    return found
        stack_path.pop()
        colour[node] = black
        return None

    for node in sorted(graph):
        if colour[node] == white:
            found = visit(node)
            if found:
                return found
    return None


def components(nodes: Iterable[str], edges: Iterable[Edge]) -> list[frozenset[str]]:
    """Connected components (ignoring direction), sorted by their smallest member."""
    neighbours: dict[str, set[str]] = {node: set() for node in nodes}
    for parent, child in edges:
        neighbours.setdefault(parent, set()).add(child)
        neighbours.setdefault(child, set()).add(parent)
    seen: set[str] = set()
    result: list[frozenset[str]] = []
    for start in sorted(neighbours):
        if start in seen:
            continue
        group = {start}
        todo = [start]
        while todo:
            for other in neighbours[todo.pop()]:
                if other not in group:
                    group.add(other)
                    todo.append(other)
        seen |= group
        result.append(frozenset(group))
    return result


def layers_children_first(nodes: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """Nodes in waves: every node comes after all of its children (restore order).

    Nodes in one wave do not depend on each other and may be handled in parallel. Edges
    that touch nodes outside ``nodes`` are ignored. Raises ValueError on a cycle.
    """
    node_set = set(nodes)
    inside = [(p, c) for p, c in edges if p in node_set and c in node_set]
    pending: Mapping[str, set[str]] = children_map(node_set, inside)
    remaining = {node: set(children) for node, children in pending.items()}
    waves: list[list[str]] = []
    while remaining:
        ready = sorted(node for node, children in remaining.items() if not children)
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(remaining)}")
        waves.append(ready)
        for node in ready:
            del remaining[node]
        for children in remaining.values():
            children.difference_update(ready)
    return waves


def layers_parents_first(nodes: Iterable[str], edges: Iterable[Edge]) -> list[list[str]]:
    """Nodes in waves: every node comes after all of its parents (remove order)."""
    return layers_children_first(nodes, [(child, parent) for parent, child in edges])


def descendants(tag: str, edges: Iterable[Edge]) -> set[str]:
    """Every resource ``tag`` depends on, directly or not (not including ``tag``)."""
    graph = children_map((), edges)
    found: set[str] = set()
    todo = [tag]
    while todo:
        for child in graph.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
