"""The one exception tree of vigil.

Every error vigil raises on purpose is a ``VigilError``. Messages are written for an
administrator: what failed, where, and what to do about it. Third-party errors are
translated at the boundary where they occur (``raise StoreUnavailable(...) from exc``).

Tree::

    VigilError
    ├── ConfigError            bad configuration file or setting (agent refuses to start)
    ├── ValidationError        a request was refused; nothing was changed
    │   ├── NotFound           it names a server, resource, path... that does not exist
    │   └── Conflict           it collides with the cluster's current state
    ├── AuthError              no token, a wrong token, or a role too weak
    ├── StoreError             the coordination store
    │   ├── StoreUnavailable   retryable: the store could not be reached in time
    │   ├── CompareFailed      a compare-and-set transaction lost the race
    │   ├── LeaseLost          the lease expired or was revoked
    │   └── Compacted          a watch asked for history the store has dropped
    ├── KitError               a kit action failed (carries a severity)
    │   └── KitTimeout         the agent stopped a kit action at its timeout
    ├── KitLoadError           a kit registered under ``vigil.kits`` failed to load
    └── LabError               the lab could not be built or torn down
"""

from __future__ import annotations

from enum import StrEnum


class VigilError(Exception):
    """Root of every error vigil raises on purpose."""


class ConfigError(VigilError):
    """A configuration file or setting is wrong; the message says which and how to fix it."""


class ValidationError(VigilError):
    """A request was refused before anything changed.

    ``problems`` lists every problem found (one message each), so an administrator can
    fix them all at once instead of one per attempt.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems) if problems else [message]
        super().__init__(message)


class NotFound(ValidationError):
    """The request names something that does not exist."""


class Conflict(ValidationError):
    """The request collides with the current state of the cluster."""


class AuthError(VigilError):
    """The caller has no valid token, or its role may not do this."""

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        self.forbidden = forbidden
        super().__init__(message)


class StoreError(VigilError):
    """Something went wrong talking to the coordination store."""


class StoreUnavailable(StoreError):
    """The store could not be reached in time. Retryable."""


class CompareFailed(StoreError):
    """A compare-and-set transaction found a different revision than expected."""


class LeaseLost(StoreError):
    """The lease has expired or was revoked; keys bound to it are gone."""


class Compacted(StoreError):
    """A watch asked for revisions the store no longer keeps; re-read and watch again."""

    def __init__(self, message: str, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(message)


class Severity(StrEnum):
    """How bad a kit failure is; it decides what recovery does next."""

    SOFT = "soft"  # recover here (local recovery)
    HARD = "hard"  # move the hierarchy to another server
    FATAL = "fatal"  # misconfigured: stop and wait for an operator


class KitError(VigilError):
    """A kit action failed. ``severity`` drives recovery."""

    def __init__(self, message: str, severity: Severity = Severity.HARD) -> None:
        self.severity = severity
        super().__init__(message)


class KitTimeout(KitError):
    """The agent stopped a kit action that overran its timeout."""


class KitLoadError(VigilError):
    """A kit registered under the ``vigil.kits`` entry point group could not be loaded."""


class LabError(VigilError):
    """The lab could not be built, used or torn down."""


__all__ = [
    "AuthError",
    "Compacted",
    "CompareFailed",
    "ConfigError",
    "Conflict",
    "KitError",
    "KitLoadError",
    "KitTimeout",
    "LabError",
    "LeaseLost",
    "NotFound",
    "Severity",
    "StoreError",
    "StoreUnavailable",
    "ValidationError",
    "VigilError",
]
