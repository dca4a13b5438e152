"""What only this agent knows, in one place: the resources it has in service, the last
definitions of those resources, restores that failed, local recoveries, failed resources.

One ``LocalState`` per agent, owned by its ``Actor``. Other modules read it and change it
only through its methods, each named after what happened; the engine sees it as a
``LocalView``. It lives as long as the agent's process: a restarted agent starts empty and
probes what runs (``engine.start``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from vigil.engine.plan import LocalView
from vigil.model.cluster import Resource


class LocalState:
    def __init__(self) -> None:
        self._running: set[str] = set()
        #: hierarchy name -> the intent revision whose restore failed here (not retried
        #: until the intent changes), or whose failed resource may not fail over
        self._failed: dict[str, int] = {}
        #: last known definition of every resource restored here, so it can still be
        #: removed after it vanished from the store
        self._known: dict[str, Resource] = {}
        #: times of local recoveries per resource (the temporal limit counts them)
        self._recoveries: dict[str, list[float]] = {}
        #: resources that failed here and are being failed over: reported OSF when removed
        self._failing_over: dict[str, str] = {}
        #: resources that failed here and may not fail over: OSF, no longer checked, still
        #: removed when the hierarchy leaves, restored by the next request to bring it here
        self._broken: set[str] = set()
        self._fencing = False

    # --- reading ---------------------------------------------------------------------------

    @property
    def running(self) -> frozenset[str]:
        """Resources in service here (broken ones included: they are still to remove)."""
        return frozenset(self._running)

    @property
    def checked(self) -> frozenset[str]:
        """Resources in service here that are monitored (not broken)."""
        return frozenset(self._running - self._broken)

    @property
    def known(self) -> Mapping[str, Resource]:
        return MappingProxyType(self._known)

    @property
    def fencing(self) -> bool:
        """Set while fencing without a lease: reports and events are skipped (the store is
        likely unreachable, and waiting on it would delay taking resources down)."""
        return self._fencing

    def view(self) -> LocalView:
        """What the engine's ``decide`` is told: a broken resource is not "in service" for
        decisions (a new request restores it)."""
        return LocalView(frozenset(self._running - self._broken), dict(self._failed))

    def needs_restore(self, tag: str) -> bool:
        return tag not in self._running or tag in self._broken

    def recoveries(self, tag: str) -> tuple[float, ...]:
        return tuple(self._recoveries.get(tag, ()))

    # --- what happened ---------------------------------------------------------------------

    def restoring(self, resource: Resource) -> None:
        """A restore of ``resource`` starts: its definition is kept from now on."""
        self._known[resource.tag] = resource

    def restored(self, tag: str) -> None:
        self._running.add(tag)
        self._broken.discard(tag)

    def restore_failed(self, hierarchy: str, intent_revision: int) -> None:
        self._failed[hierarchy] = intent_revision

    def adopted(self, resources: Iterable[Resource]) -> None:
        """Found running at start and claimed: in service here from now on."""
        for resource in resources:
            self._known[resource.tag] = resource
            self._running.add(resource.tag)

    def found_running(self, tags: Iterable[str]) -> None:
        """Found running here without being adopted: in service until removed."""
        self._running.update(tags)

    def removed(self, tag: str) -> str | None:
        """``tag`` is out of service here; the failure to report for it (OSF), if it was
        removed because it failed here."""
        self._running.discard(tag)
        self._broken.discard(tag)
        return self._failing_over.pop(tag, None)

    def forgotten(self, tag: str) -> None:
        """``tag`` has no definition any more (neither in the store nor known here)."""
        self._running.discard(tag)
        self._broken.discard(tag)

    def recovering(self, tag: str, now: float) -> None:
        self._recoveries.setdefault(tag, []).append(now)

    def failing_over(self, tag: str, failure: str) -> None:
        """``tag`` failed here and its hierarchy moves: ``failure`` is reported (OSF)
        once it is removed here."""
        self._failing_over[tag] = failure

    def broke(self, tag: str, hierarchy: str, intent_revision: int) -> None:
        """``tag`` failed here and may not fail over: unchecked, and its hierarchy is not
        restored here again for this intent."""
        self._broken.add(tag)
        self._failed[hierarchy] = intent_revision

    def begin_fencing(self) -> None:
        """Fencing without a lease starts: no reports, no events from now on."""
        self._fencing = True

    def end_fencing(self) -> None:
        self._fencing = False

    @contextlib.contextmanager
    def fencing_now(self) -> Iterator[None]:
        """While fencing: no reports, no events."""
        self.begin_fencing()
        try:
            yield
        finally:
            self.end_fencing()
