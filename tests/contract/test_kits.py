"""The kit conformance suite: every kit, through the same sequence, the agent's way.

For each ``KitCase`` of ``kit_cases.CASES``: validate_create finds no problem; the check
says STOPPED; restore; restore again (idempotent); the check says RUNNING and the resource
really works; remove; remove again; the check says STOPPED and the resource is really
gone; delete, twice. Every action is called as the agent calls it: through
``asyncio.wait_for(kit.<action>(ctx), kit.timeout(action, properties))``, with a context
holding a real logger, run where the case says (``KitEnvironment.run``: the test's loop,
or a loop inside the case's network namespace).

For every installed kit (cases or not): it loads, its property schema is a valid JSON
schema, its timeouts are positive, ``describe()`` works and is JSON; and it has a case.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit_cases import CASES, KitCase, KitEnvironment, Runner

from vigil.kits.base import Action, CheckStatus, Kit, KitContext
from vigil.kits.registry import load_kits

REGISTRY = load_kits()
KIT_NAMES = REGISTRY.names()
TAG = "conformance"


@pytest.fixture(params=[pytest.param(c, id=c.kit, marks=c.marks) for c in CASES])
def case(request: pytest.FixtureRequest) -> KitCase:
    kit_case: KitCase = request.param
    return kit_case


@pytest.fixture
def environment(case: KitCase, tmp_path: Path) -> Iterator[KitEnvironment]:
    """The case's resource; whatever happens in the test, cleaned up afterwards."""
    env = case.setup(tmp_path)
    try:
        yield env
    finally:
        env.cleanup()


def make_context(kit: Kit, properties: dict[str, Any], workdir: Path) -> KitContext:
    """A context as the agent builds it (per-resource state directory, real logger)."""
    return KitContext(
        tag=TAG,
        server=socket.gethostname(),
        properties=kit.parse_properties(properties),
        log=logging.getLogger(f"vigil.kit.{kit.name}.{TAG}"),
        epoch=1,
        state_dir=workdir / "state" / "kits" / TAG,
    )


async def act(kit: Kit, action: Action, ctx: KitContext, run: Runner) -> Any:
    """Run one action the way the agent does, bounded by the kit's own timeout, where the
    case runs its actions (``run``)."""
    method = getattr(kit, action.value)
    return await run(lambda: asyncio.wait_for(method(ctx), kit.timeout(action, ctx.properties)))


async def test_conformance_sequence(
    case: KitCase, environment: KitEnvironment, tmp_path: Path
) -> None:
    kit = REGISTRY.get(case.kit)
    ctx = make_context(kit, environment.properties, tmp_path)
    run = environment.run

    assert await act(kit, Action.VALIDATE_CREATE, ctx, run) == []
    check = await act(kit, Action.QUICK_CHECK, ctx, run)
    assert check.status is CheckStatus.STOPPED, f"before restore: {check}"

    await act(kit, Action.RESTORE, ctx, run)
    await act(kit, Action.RESTORE, ctx, run)  # idempotent
    check = await act(kit, Action.QUICK_CHECK, ctx, run)
    assert check.status is CheckStatus.RUNNING, f"after restore: {check}"
    assert environment.answers(), "the kit says RUNNING but the resource does not answer"
    check = await act(kit, Action.DEEP_CHECK, ctx, run)
    assert check.status is CheckStatus.RUNNING, f"deep check after restore: {check}"

    await act(kit, Action.REMOVE, ctx, run)
    await act(kit, Action.REMOVE, ctx, run)  # idempotent
    check = await act(kit, Action.QUICK_CHECK, ctx, run)
    assert check.status is CheckStatus.STOPPED, f"after remove: {check}"
    assert environment.gone(), "the kit says STOPPED but something of the resource remains"

    await act(kit, Action.DELETE, ctx, run)
    await act(kit, Action.DELETE, ctx, run)  # idempotent


async def test_timeouts_of_the_case_are_positive(
    case: KitCase, environment: KitEnvironment
) -> None:
    kit = REGISTRY.get(case.kit)
    properties = kit.parse_properties(environment.properties)
    for action in Action:
        value = kit.timeout(action, properties)
        assert math.isfinite(value) and value > 0, f"{case.kit}: timeout({action}) = {value}"


# --- every installed kit -----------------------------------------------------------------


def test_every_kit_loads() -> None:
    assert not REGISTRY.errors, "\n".join(str(err) for err in REGISTRY.errors)
    assert "app" in KIT_NAMES


@pytest.mark.parametrize("name", KIT_NAMES)
def test_every_kit_has_a_conformance_case(name: str) -> None:
    assert name in {c.kit for c in CASES}, f"add a KitCase for kit {name!r} to kit_cases.py"


@pytest.mark.parametrize("name", KIT_NAMES)
def test_properties_schema_is_valid_json_schema(name: str) -> None:
    kit = REGISTRY.get(name)
    schema = kit.Properties.model_json_schema()
    json.dumps(schema)
    assert schema.get("type") == "object", schema
    assert schema_problems(schema, schema, "#") == []
    declared = set(schema.get("properties", {}))
    assert kit.Properties.per_server_fields() <= declared
    assert kit.Properties.unique_fields() <= declared


@pytest.mark.parametrize("name", KIT_NAMES)
def test_default_timeouts_are_positive(name: str) -> None:
    kit = REGISTRY.get(name)
    for action in Action:
        value = kit.timeouts.for_action(action)
        assert math.isfinite(value) and value > 0, f"{name}: {action} timeout {value}"
    assert kit.check_intervals.quick > 0 and kit.check_intervals.deep > 0


@pytest.mark.parametrize("name", KIT_NAMES)
def test_describe(name: str) -> None:
    kit = REGISTRY.get(name)
    described = kit.describe()
    json.dumps(described)
    assert described["name"] == name == kit.name
    assert described["description"], f"kit {name!r} has no description"
    assert described["properties_schema"] == kit.Properties.model_json_schema()


# --- a small JSON Schema checker (no jsonschema package in the lock file) ----------------

_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")


def schema_problems(node: Any, root: dict[str, Any], where: str) -> list[str]:
    """Structural problems of a JSON Schema (draft 2020-12) node, recursively."""
    if isinstance(node, bool):
        return []
    if not isinstance(node, dict):
        return [f"{where}: a schema must be an object or a boolean"]
    problems: list[str] = []
    types = node.get("type", [])
    for name in types if isinstance(types, list) else [types]:
        if name not in _TYPES:
            problems.append(f"{where}: unknown type {name!r}")
    for key in _NUMBERS:
        if key in node and not isinstance(node[key], int | float):
            problems.append(f"{where}: {key} must be a number")
    for key in _COUNTS:
        if key in node and not (isinstance(node[key], int) and node[key] >= 0):
            problems.append(f"{where}: {key} must be a non-negative integer")
    if "required" in node:
        required = node["required"]
        if not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
            problems.append(f"{where}: required must be a list of names")
        elif missing := set(required) - set(node.get("properties", {})):
            problems.append(f"{where}: required names undeclared properties {sorted(missing)}")
    if "enum" in node and not isinstance(node["enum"], list):
        problems.append(f"{where}: enum must be a list")
    if "$ref" in node:
        problems += _ref_problems(node["$ref"], root, where)
    for key in _SUBSCHEMA_LISTS:
        for i, sub in enumerate(node.get(key, [])):
            problems += schema_problems(sub, root, f"{where}/{key}/{i}")
    for key in _SUBSCHEMA_MAPS:
        for name, sub in node.get(key, {}).items():
            problems += schema_problems(sub, root, f"{where}/{key}/{name}")
    for key in _SUBSCHEMAS:
        if key in node:
            problems += schema_problems(node[key], root, f"{where}/{key}")
    return problems


def _ref_problems(ref: Any, root: dict[str, Any], where: str) -> list[str]:
    if not (isinstance(ref, str) and ref.startswith("#/")):
        return [f"{where}: $ref {ref!r} is not a local reference"]
    target: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(target, dict) or part not in target:
            return [f"{where}: $ref {ref!r} does not resolve"]
        target = target[part]
    return []
