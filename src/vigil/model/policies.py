"""Recovery and failover policies, per server, per resource and per hierarchy (the seed's
defaults unless DESIGN.md says otherwise). Pure data with validation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from vigil.errors import ValidationError


class Switchback(StrEnum):
    INTELLIGENT = "intelligent"  # stays where it is after a failover
    AUTOMATIC = "automatic"  # returns to the preferred server when it is back


class ShutdownStrategy(StrEnum):
    HOLD = "hold"  # "Do Not Switch Over Resources": out of service, nobody takes over
    SWITCHOVER = "switchover"  # hierarchies move to the next server


class ConfirmDefault(StrEnum):
    PROCEED = "proceed"
    BLOCK = "block"


class StopMode(StrEnum):
    HOLD = "hold"  # orderly stop, resources out of service, no takeover
    MAINTENANCE = "maintenance"  # stopped with --leave-resources: resources keep running


@dataclass(frozen=True)
class ServerPolicy:
    """Set per server (``vigil server policy``)."""

    local_recovery: bool = True
    #: automatic failover of hierarchies away from this server (on its death or failures)
    failover: bool = True
    #: ask an operator before this server takes over a hierarchy
    confirm_failover: bool = False
    confirm_timeout: float = 600.0
    confirm_default: ConfirmDefault = ConfirmDefault.PROCEED
    #: failures of resources here do not fail over (the server's death still does)
    block_resource_failover: bool = False
    shutdown_strategy: ShutdownStrategy = ShutdownStrategy.HOLD


@dataclass(frozen=True)
class ResourcePolicy:
    """Set per resource (in its ``policies``)."""

    local_recovery: bool = True
    failover: bool = True
    #: the temporal limit: at most ``recovery_limit`` local recoveries in ``recovery_period``
    #: seconds; the next failure fails over even if recovery would work
    recovery_limit: int = 3
    recovery_period: float = 300.0
    #: check intervals in seconds (None: the kit's defaults)
    quick_check_interval: float | None = None
    deep_check_interval: float | None = None


@dataclass(frozen=True)
class HierarchyPolicy:
    """Set on a hierarchy (stored in its root resource's ``policies``)."""

    switchback: Switchback = Switchback.INTELLIGENT
    #: automatic failover of this hierarchy
    automatic_failover: bool = True
    #: the seed's "Is this an N+1 cluster?": its backups are shared standbys, each serving at
    #: most one such primary at a time
    n_plus_one: bool = False


def parse_policy(cls: type[Any], values: Mapping[str, object], what: str) -> Any:
    """Build ``cls`` from stored or requested values; ``ValidationError`` names bad ones.

    Unknown names are refused (a typo must not silently do nothing)."""
    known = {f.name: f for f in fields(cls)}
    problems = [f"{what}: unknown policy {name!r}" for name in values if name not in known]
    converted: dict[str, object] = {}
    for name, value in values.items():
        if name not in known:
            continue
        default = getattr(cls(), name)
        try:
            converted[name] = _convert(default, value, name)
        except (TypeError, ValueError) as exc:
            problems.append(f"{what}: {name}: {exc}")
    if problems:
        raise ValidationError(problems[0], problems)
    return cls(**converted)


def _convert(default: object, value: object, name: str) -> object:
    if isinstance(default, StrEnum):
        choices = [member.value for member in type(default)]
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return type(default)(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, not {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"expected a whole number >= 0, not {value!r}")
        return value
    if value is None and default is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"expected a number of seconds > 0, not {value!r}")
    return float(value)


RESOURCE_POLICY_NAMES = {f.name for f in fields(ResourcePolicy)}
HIERARCHY_POLICY_NAMES = {f.name for f in fields(HierarchyPolicy)}
