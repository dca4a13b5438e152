"""What the routers share: the agent's operations (their only way to the store) and its
cached view of the cluster, as FastAPI dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from vigil.agent.operations import Operations
from vigil.agent.recoveryops import RecoveryOperations
from vigil.model.cluster import Cluster


def operations_of(request: Request) -> Operations:
    """The agent's operations, for a request to its API."""
    operations: Operations = request.app.state.operations
    return operations


def recovery_of(request: Request) -> RecoveryOperations:
    """Recovery and the event log, for a request to the agent's API."""
    return RecoveryOperations(operations_of(request))


#: the agent's operations (a FastAPI dependency)
Ops = Annotated[Operations, Depends(operations_of)]
#: recovery and the event log (a FastAPI dependency)
RecoveryOps = Annotated[RecoveryOperations, Depends(recovery_of)]


async def cached(operations: Operations) -> Cluster:
    """The agent's cached view, for what only shows the cluster (status views, health):
    as new as the agent's watch, no store read (read once if never read yet)."""
    cache = operations.cache
    return cache.cluster if cache.loaded else await cache.reload()
