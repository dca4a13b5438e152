"""Request and response bodies of the REST API (pydantic: validated at the edge).

The same models describe the OpenAPI document, the CLI's ``--json`` output and the web UI's
data, so there is one definition of each.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
