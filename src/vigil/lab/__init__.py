"""The lab: a cluster of N servers on one machine, for demos and integration tests.

Each server is a network namespace on a private bridge plus a persistent mount
namespace; agents share one embedded store. ``Lab`` builds, inspects and tears it down.
"""

from __future__ import annotations

from vigil.lab.info import LabInfo, LabStatus, ServerInfo, ServerStatus
from vigil.lab.lab import Lab

__all__ = ["Lab", "LabInfo", "LabStatus", "ServerInfo", "ServerStatus"]
