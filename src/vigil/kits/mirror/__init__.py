"""The ``mirror`` kit: a filesystem on a volume replicated between the servers' own disks
(the seed's SteelEye DataKeeper mirror), for hierarchies without shared storage.

The source serves the replicated device as a file on a FUSE mount; a loop device on that
file carries the filesystem; each write goes to the local disk and to every target
(``source``, ``sessions``, ``accept``, ``source_tasks``); targets apply them
(``target``). Generations and region maps decide what a target needs when it connects
(``lineage``, ``regions``, ``meta``); the kit (``kit``, ``service``, ``validation``,
``loop``) starts and stops the processes, mounts, and tells the agent which servers are
eligible; ``ops`` serves the administrator's ``vigil mirror`` commands; ``locate`` tells
other kits which mirror a filesystem is on. Guide: ``docs/kits/mirror.md``.
"""

from vigil.kits.mirror.kit import MirrorKit
from vigil.kits.mirror.properties import MirrorMode, MirrorProperties

__all__ = ["MirrorKit", "MirrorMode", "MirrorProperties"]
