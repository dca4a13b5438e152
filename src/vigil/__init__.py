"""vigil: a high-availability cluster manager for Linux.

Protected applications are resource hierarchies, in service on one server at a time,
extended to backup servers with priorities, monitored, recovered locally, failed over.
"""

__version__ = "0.1.0"
