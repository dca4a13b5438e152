"""Form fields from definitions vigil already has: a kit's property JSON schema (pydantic's,
as ``GET /v1/kits`` gives it) and the policy dataclasses. One definition, so a kit's new
property shows in the wizards without a change here.

Each ``Field`` says how the page's script turns the input back into JSON (``kind``):
``text``, ``int``, ``float``, ``bool`` (a checkbox), ``choice`` (a select), ``lines`` (a list
of strings, one per line) or ``json`` (anything else, as JSON text).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vigil.api.views import MASK


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    kind: str
    help: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()
    default: Any = None
    per_server: bool = False
    secret: bool = False
    unique: bool = False
    nullable: bool = False

    def shown(self, value: Any) -> str:
        """``value`` as the input shows it."""
        if value is None:
            return ""
        if self.secret:
            return MASK
        if self.kind == "lines" and isinstance(value, list):
            return "\n".join(str(v) for v in value)
        if self.kind == "json":
            return json.dumps(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        resolved: dict[str, Any] = schema.get("$defs", {}).get(ref.rsplit("/", 1)[1], {})
        return {**resolved, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _kind(schema: dict[str, Any], node: dict[str, Any]) -> tuple[str, tuple[str, ...], bool]:
    """(kind, choices, nullable) of one property's schema."""
    node = _resolve(schema, node)
    variants = node.get("anyOf")
    nullable = False
    if isinstance(variants, list):
        others = [v for v in variants if v.get("type") != "null"]
        nullable = len(others) < len(variants)
        if len(others) != 1:
            return "json", (), nullable
        node = _resolve(schema, others[0])
    if "enum" in node:
        return "choice", tuple(str(v) for v in node["enum"]), nullable
    kind = {"string": "text", "integer": "int", "number": "float", "boolean": "bool"}.get(
        node.get("type", ""), "json"
    )
    if node.get("type") == "array" and _resolve(schema, node.get("items", {})).get("type") == (
        "string"
    ):
        kind = "lines"
    return kind, (), nullable


def kit_fields(kit: dict[str, Any]) -> list[Field]:
    """The fields of a kit (one entry of ``GET /v1/kits``), required ones first."""
    schema: dict[str, Any] = kit["properties_schema"]
    required = set(schema.get("required", []))
    per_server = set(kit.get("per_server", []))
    fields = []
    for name, node in schema.get("properties", {}).items():
        kind, choices, nullable = _kind(schema, node)
        fields.append(
            Field(
                name=name,
                label=str(node.get("title") or name),
                kind=kind,
                help=str(node.get("description") or ""),
                required=name in required,
                choices=choices,
                default=node.get("default"),
                per_server=name in per_server or bool(node.get("per_server")),
                secret=bool(node.get("secret")) or node.get("format") == "password",
                unique=bool(node.get("unique")),
                nullable=nullable,
            )
        )
    return sorted(fields, key=lambda f: not f.required)


def policy_fields(cls: type[Any]) -> list[Field]:
    """The fields of a policy dataclass (``ServerPolicy``, ``ResourcePolicy``...)."""
    fields = []
    for item in dataclasses.fields(cls):
        default = getattr(cls(), item.name)
        label = item.name.replace("_", " ")
        if isinstance(default, StrEnum):
            choices = tuple(m.value for m in type(default))
            fields.append(Field(item.name, label, "choice", choices=choices, default=default.value))
        elif isinstance(default, bool):
            fields.append(Field(item.name, label, "bool", default=default))
        elif isinstance(default, int):
            fields.append(Field(item.name, label, "int", default=default))
        else:
            fields.append(
                Field(item.name, label, "float", default=default, nullable=default is None)
            )
    return fields
