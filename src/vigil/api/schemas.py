"""Request and response bodies of the REST API (pydantic: validated at the edge).

The same models describe the OpenAPI document, the CLI's ``--json`` output and the web UI's
data, so there is one definition of each.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from vigil.model.policies import ConfirmDefault, ShutdownStrategy, Switchback


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ---------------------------------------------------------------------------------


class CommPathCreate(Body):
    local: str = Field(description="server at one end")
    local_address: str = Field(description="address of the local server for this path")
    remote: str = Field(description="server at the other end")
    remote_address: str = Field(description="address of the remote server for this path")
    heartbeat_interval: float = Field(1.0, gt=0, description="seconds between heartbeats")
    max_missed: int = Field(5, ge=1, description="missed heartbeats before the path is DEAD")


class ResourceCreate(Body):
    tag: str = Field(description="unique name of the resource (1-64 characters, no spaces)")
    kit: str = Field(description="the recovery kit that manages it, e.g. 'app'")
    server: str = Field(description="the server it is created on and brought in service on")
    properties: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(120.0, gt=0, description="seconds to wait for it to be in service")


class PropertiesUpdate(Body):
    properties: dict[str, Any] = Field(
        default_factory=dict, description="cluster-wide; null removes"
    )
    server_properties: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per server"
    )


class DependencyCreate(Body):
    parent: str
    child: str


class Extend(Body):
    server: str = Field(description="the backup server to extend the hierarchy to")
    priority: int | None = Field(
        None, description="1-999, unique in the hierarchy; default 10 or the next free"
    )
    properties: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per resource tag: its properties on the new server"
    )
    fix: bool = Field(
        False,
        description="let the kits correct on the new server what the pre-extend checks found",
    )


class Unextend(Body):
    server: str


class InService(Body):
    server: str = Field(description="where to bring it in service (a switchover if elsewhere)")
    timeout: float = Field(120.0, gt=0)


class OutOfService(Body):
    timeout: float = Field(120.0, gt=0)


class ConfirmFailover(Body):
    proceed: bool = Field(description="true: let the failover proceed; false: block it")


#: a duration in seconds, > 0 (an int is taken as seconds too)
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
#: a whole number >= 0
Count = Annotated[int, Field(ge=0, strict=True)]


class ServerPolicyUpdate(Body):
    """A server's policies to change (``vigil server policy``); null resets one to its
    default, and those not given are kept."""

    local_recovery: StrictBool | None = Field(None, description="recover failed resources here")
    failover: StrictBool | None = Field(
        None, description="fail hierarchies over away from this server automatically"
    )
    confirm_failover: StrictBool | None = Field(
        None, description="ask an operator before this server takes a hierarchy over"
    )
    confirm_timeout: Seconds | None = Field(
        None, description="seconds an operator has to answer (default 600)"
    )
    confirm_default: ConfirmDefault | None = Field(
        None, description="what happens when nobody answers in time (default proceed)"
    )
    block_resource_failover: StrictBool | None = Field(
        None, description="failures of resources here do not fail over (its death still does)"
    )
    shutdown_strategy: ShutdownStrategy | None = Field(
        None, description="hold (out of service) or switchover (moved) at an orderly stop"
    )


class ServerPolicyView(BaseModel):
    """A server's policies, every one with its value."""

    local_recovery: bool
    failover: bool
    confirm_failover: bool
    confirm_timeout: float
    confirm_default: ConfirmDefault
    block_resource_failover: bool
    shutdown_strategy: ShutdownStrategy


class ResourcePolicyUpdate(Body):
    """A resource's policies to change (``vigil policy``), and on a hierarchy's root the
    hierarchy's; null resets one to its default, and those not given are kept."""

    local_recovery: StrictBool | None = Field(None, description="recover it here when it fails")
    failover: StrictBool | None = Field(None, description="its failure may fail the hierarchy over")
    recovery_limit: Count | None = Field(
        None, description="local recoveries allowed within recovery_period (default 3)"
    )
    recovery_period: Seconds | None = Field(
        None, description="seconds the temporal limit counts recoveries over (default 300)"
    )
    quick_check_interval: Seconds | None = Field(
        None, description="seconds between quick checks (default: the kit's)"
    )
    deep_check_interval: Seconds | None = Field(
        None, description="seconds between deep checks (default: the kit's)"
    )
    switchback: Switchback | None = Field(
        None, description="hierarchy: intelligent (stays) or automatic (returns when back)"
    )
    automatic_failover: StrictBool | None = Field(
        None, description="hierarchy: fail it over automatically"
    )
    n_plus_one: StrictBool | None = Field(
        None, description="hierarchy: its backups are shared standbys (N+1)"
    )


class StopAgent(Body):
    leave_resources: bool = Field(False, description="maintenance: leave the resources running")


# --- responses --------------------------------------------------------------------------------


class OperationResult(BaseModel):
    summary: str
    ok: bool
    detail: str = ""
    revision: int = 0


class ErrorBody(BaseModel):
    error: str
    problems: list[str] = Field(default_factory=list)


class InstanceView(BaseModel):
    server: str
    priority: int
    state: str
    reason: str
    since: float = Field(0.0, description="when the state was reported (Unix time)")


class ResourceView(BaseModel):
    tag: str
    kit: str
    parents: list[str]
    children: list[str]
    properties: dict[str, Any]
    server_properties: dict[str, dict[str, Any]]
    policies: dict[str, Any] = Field(default_factory=dict)
    instances: list[InstanceView]


class HierarchyView(BaseModel):
    name: str
    status: str
    reason: str
    active_server: str | None
    wanted_on: str | None
    resources: list[ResourceView]


class PathEndView(BaseModel):
    server: str
    state: str
    last_heartbeat: float


class CommPathView(BaseModel):
    id: str
    server_a: str
    address_a: str
    server_b: str
    address_b: str
    heartbeat_interval: float
    max_missed: int
    state: str
    ends: list[PathEndView]


class ServerView(BaseModel):
    name: str
    state: str
    reason: str
    api_url: str
    addresses: list[str]
    maintenance: bool


class StatusView(BaseModel):
    revision: int
    servers: list[ServerView]
    comm_paths: list[CommPathView]
    hierarchies: list[HierarchyView]


class EventView(BaseModel):
    id: str = ""
    at: float
    server: str
    kind: str
    message: str
    hierarchy: str | None = None
    tag: str | None = None
