"""The web UI every agent serves at ``/ui/`` (issue 12): the seed's status display and
actions, live, for people logged in through PAM. See docs/web.md.

``router`` is included by the API app; ``end_streams`` ends the live streams when the
agent stops (``vigil.agent.main``)."""

from vigil.web.live import end_streams
from vigil.web.routes import router

__all__ = ["end_streams", "router"]
