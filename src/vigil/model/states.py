"""Instance states and the global status of a hierarchy, in the seed's words."""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    """The state of one resource instance on one server."""

    ISP = "ISP"  # in service, protected (monitored)
    ISU = "ISU"  # in service, unprotected (not monitored, e.g. maintenance)
    OSU = "OSU"  # out of service, unimpaired: a ready standby
    OSF = "OSF"  # out of service, failed
    UNKNOWN = "UNKNOWN"  # its agent cannot be reached

    @property
    def in_service(self) -> bool:
        return self in (InstanceState.ISP, InstanceState.ISU)


class HierarchyStatus(StrEnum):
    """The global status of a hierarchy, across every server it is extended to."""

    NORMAL = "Normal"  # in service somewhere, every backup ready
    WARNING = "Warning"  # in service, but a backup is OSF or UNKNOWN
    FAILED = "Failed"  # in service nowhere
    UNKNOWN = "Unknown"  # cannot tell: the server that should hold it is unreachable


class PathState(StrEnum):
    """The state of one communication path, seen from one end."""

    ALIVE = "ALIVE"
    DEAD = "DEAD"
    UNKNOWN = "UNKNOWN"


class ServerState(StrEnum):
    """A server as seen by the cluster."""

    ALIVE = "ALIVE"
    ALIVE_WARNING = "ALIVE-with-warning"  # a path is dead, or only one path
    DEAD = "DEAD"
