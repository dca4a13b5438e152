"""The lease timing rule, checked when the agent starts (``LeaseKeeper.check_timing``).

An agent may hold resources only while its lease is valid. Whether a server cut off from
the store takes its resources down before another server may start them depends on the
agent's ``[lease]`` settings:

- ``ttl`` — the lease TTL the agent counts on;
- ``renew_interval`` — the time between two renewals;
- ``request_timeout`` — the bound of one renewal request;
- ``safety_margin`` — the agent (and its fence guard) stop everything this long before
  ``last_sent + ttl``, ``last_sent`` being when it sent its last successful renewal;

and on the store:

- ``granted`` — the TTL the store really grants when asked for ``ttl`` (etcd grants whole
  seconds, and no less than its minimum);
- ``min_lease_ttl`` — the store's shortest lease (``StoreCapabilities``; etcd: 1.5 x its
  election timeout, rounded up to whole seconds).

**Refused** (``ConfigError``: the agent does not start), because a split-brain window opens:

1. ``renew_interval + 2 x request_timeout + safety_margin > ttl``: a renewal due late and
   a retry that times out would leave no time to stop the resources (``LeaseSettings``
   already refuses this when the file is read; checked again here). It implies
   ``request_timeout < ttl / 2``.
2. ``granted < ttl``: the store could delete the lease, and another server take the
   hierarchies over, before this agent's own deadline ``last_sent + ttl - safety_margin``.

2b. With failsafe (``vigil.agent.failsafe``), ``granted < ttl + failsafe_limit``: the store
   could delete the lease while a failsafe still holds it on.

A grant longer than ``ttl`` (etcd grants whole seconds, and no less than its minimum) is
fine: other agents judge a server dead by their own clocks after ``ttl`` without a heartbeat
(``vigil.agent.liveness``); the store's own expiry is only the backstop.

**Warned** (safe, but not what the administrator wants):

3. A networked store, and ``ttl - safety_margin - renew_interval`` (how long the agent
   holds on without a successful renewal, counted from the last one it could have sent)
   shorter than a leader election of the store: no renewal succeeds until a new leader is
   elected, which takes up to two election timeouts, that is up to 4/3 x
   ``min_lease_ttl``. Such an agent takes its hierarchies out of service at every etcd
   leader change or restart (safe, but an outage). With failsafe, what must outlast an
   election is ``failsafe_limit`` instead (the agents hold on while none of them reaches
   the store): warned when it is shorter.
"""

from __future__ import annotations

import math

from vigil.agent.config import LeaseSettings
from vigil.errors import ConfigError
from vigil.store.base import StoreCapabilities

#: a leader election lasts up to two election timeouts; etcd's shortest lease is 1.5 of them
ELECTION_PER_MIN_TTL = 4 / 3
_EPSILON = 1e-9


def _seconds(value: float) -> str:
    return f"{value:g} s"


def check_lease_timing(
    settings: LeaseSettings,
    capabilities: StoreCapabilities,
    granted_ttl: float,
    *,
    failsafe: bool = False,
) -> list[str]:
    """Apply the timing rule of this module to ``settings``, a store with ``capabilities``
    and the TTL it granted for the lease the keeper asks (``LeaseKeeper._ask``); ``failsafe``:
    whether the agent runs failsafe (rule 2b). Returns the warnings (rule 3), one readable
    message each; raises ``ConfigError`` naming the settings to change (rules 1, 2, 2b).
    Pure."""
    hold = settings.failsafe_limit if failsafe else 0.0
    _refuse_unsafe(settings, granted_ttl, hold)
    if not capabilities.networked:
        return []
    election = ELECTION_PER_MIN_TTL * capabilities.min_lease_ttl
    if failsafe:
        if hold >= election - _EPSILON:
            return []
        return [
            f"a leader change or a restart of the store may outlast the failsafe: the "
            f"store elects a new leader within about {election:.2g} s, but [lease] "
            f"failsafe_limit is {_seconds(hold)}. Raise it to {math.ceil(election)} s "
            "or more to ride through."
        ]
    margin, renew = settings.safety_margin, settings.renew_interval
    holds = settings.ttl - margin - renew
    if holds >= election - _EPSILON:
        return []
    advice = math.ceil(margin + renew + election - _EPSILON)
    return [
        f"a leader change or a restart of the store may outlast this agent's lease: "
        f"the store elects a new leader within about {election:.2g} s (4/3 x its "
        f"shortest lease, {_seconds(capabilities.min_lease_ttl)}), but the agent "
        f"holds on only {holds:.2g} s without a successful renewal (ttl - "
        "safety_margin - renew_interval), and then takes its hierarchies out of "
        f"service. Raise [lease] ttl to {advice} s or more to ride through."
    ]


def _refuse_unsafe(settings: LeaseSettings, granted_ttl: float, hold: float) -> None:
    """Rules 1, 2 and 2b: ``ConfigError`` when one is broken."""
    ttl, renew, request, margin = (
        settings.ttl,
        settings.renew_interval,
        settings.request_timeout,
        settings.safety_margin,
    )
    needed = renew + 2 * request + margin
    if needed > ttl + _EPSILON:
        raise ConfigError(
            f"unsafe lease timing: [lease] renew_interval ({_seconds(renew)}) + 2 x "
            f"request_timeout ({_seconds(request)}) + safety_margin ({_seconds(margin)}) = "
            f"{_seconds(needed)} exceeds ttl ({_seconds(ttl)}): a server cut off from the "
            "store could not stop its resources before another takes them over. Raise ttl "
            f"to at least {_seconds(needed)} or lower the others."
        )
    if granted_ttl < ttl - _EPSILON:
        raise ConfigError(
            f"unsafe lease timing: the store granted a lease of {_seconds(granted_ttl)}, "
            f"shorter than [lease] ttl = {_seconds(ttl)}: it could delete this server's "
            "lease, and another server take its hierarchies over, before this agent stops "
            f"them. Set ttl to {_seconds(granted_ttl)} or less (and the other [lease] "
            "settings to fit), or fix the store's lease settings."
        )
    if hold and granted_ttl < ttl + hold - _EPSILON:
        raise ConfigError(
            f"unsafe lease timing: the store granted a lease of {_seconds(granted_ttl)}, "
            f"shorter than [lease] ttl + failsafe_limit = {_seconds(ttl + hold)}: it could "
            "delete this server's lease while a failsafe holds it on. Lower failsafe_limit, "
            "or fix the store's lease settings."
        )
