"""Finding the installed kits: the entry point group ``vigil.kits``.

``load_kits()`` imports every kit registered under ``vigil.kits`` and keeps one instance
of each (the agent uses that one instance for every resource of the kit's type). A kit
that cannot be loaded (its module fails to import, the object is not a ``Kit`` subclass,
it cannot be instantiated, its ``name`` differs from its entry point's name, or another
kit already took the name) does not stop the others: it is recorded as a ``KitLoadError``
in ``KitRegistry.errors`` (and logged), so one broken kit cannot take the agent down.
Resources of that kit cannot be served on this server until it is fixed.

Registering a kit (in the distribution's ``pyproject.toml``)::

    [project.entry-points."vigil.kits"]
    app = "vigil.kits.app:AppKit"
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable, Mapping

from vigil.errors import KitLoadError, NotFound
from vigil.kits.base import Kit, KitProperties

__all__ = ["ENTRY_POINT_GROUP", "KitRegistry", "load_kits"]

ENTRY_POINT_GROUP = "vigil.kits"

_log = logging.getLogger(__name__)


class KitRegistry:
    """The kits loaded on this server, by name, and the ones that failed to load.

    Immutable once built; safe to share."""

    def __init__(
        self,
        kits: Mapping[str, Kit[KitProperties]],
        errors: Iterable[tuple[str, KitLoadError]] = (),
    ) -> None:
        """``kits`` by name; ``errors`` as (entry point name, error) pairs."""
        self._kits = dict(sorted(kits.items()))
        pairs = list(errors)
        self._errors = tuple(err for _, err in pairs)
        self._failed = {name: err for name, err in reversed(pairs)}

    @property
    def errors(self) -> tuple[KitLoadError, ...]:
        """One ``KitLoadError`` per kit that could not be loaded, in discovery order."""
        return self._errors

    def names(self) -> list[str]:
        """The names of the kits that loaded, sorted."""
        return list(self._kits)

    def get(self, name: str) -> Kit[KitProperties]:
        """The kit instance called ``name``.

        Raises ``NotFound`` naming the available kits when there is none, or saying why
        it failed to load when it is installed but broken."""
        try:
            return self._kits[name]
        except KeyError:
            pass
        broken = self._failed.get(name)
        if broken is not None:
            raise NotFound(f"kit {name!r} is installed but failed to load: {broken}")
        available = ", ".join(self._kits) if self._kits else "none are installed"
        raise NotFound(f"unknown kit {name!r}: available kits are {available}")

    def __contains__(self, name: object) -> bool:
        return name in self._kits

    def __len__(self) -> int:
        return len(self._kits)

    def __repr__(self) -> str:
        return f"KitRegistry(kits={self.names()!r}, errors={len(self._errors)})"


def load_kits(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> KitRegistry:
    """Load every kit registered under ``vigil.kits`` (or the given ``entry_points``, for
    tests). Never raises for a broken kit: see ``KitRegistry.errors``."""
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    kits: dict[str, Kit[KitProperties]] = {}
    errors: list[tuple[str, KitLoadError]] = []
    for entry_point in entry_points:
        try:
            kit = _load_one(entry_point, kits)
        except KitLoadError as err:
            _log.error("%s", err)
            errors.append((entry_point.name, err))
        else:
            kits[entry_point.name] = kit
    return KitRegistry(kits, errors)


def _load_one(
    entry_point: importlib.metadata.EntryPoint, loaded: Mapping[str, Kit[KitProperties]]
) -> Kit[KitProperties]:
    where = f"kit entry point {entry_point.name!r} ({entry_point.value})"
    try:
        obj = entry_point.load()
    except Exception as exc:
        raise _load_error(f"{where} failed to import module {entry_point.module!r}", exc) from exc
    if not (isinstance(obj, type) and issubclass(obj, Kit)):
        raise KitLoadError(
            f"{where} in module {entry_point.module!r} is not a Kit subclass: {obj!r}"
        )
    try:
        kit = obj()
    except Exception as exc:
        raise _load_error(
            f"{where} in module {entry_point.module!r} could not be instantiated", exc
        ) from exc
    model = getattr(obj, "Properties", None)
    if not (isinstance(model, type) and issubclass(model, KitProperties)):
        raise KitLoadError(
            f"{where} in module {entry_point.module!r} declares no properties model "
            f"(Properties = a KitProperties subclass): {model!r}"
        )
    kit_name = getattr(kit, "name", None)
    if kit_name != entry_point.name:
        raise KitLoadError(
            f"{where} in module {entry_point.module!r}: the kit calls itself {kit_name!r}; "
            "the entry point name and Kit.name must be the same"
        )
    if kit_name in loaded:
        raise KitLoadError(
            f"{where} in module {entry_point.module!r}: another kit called {kit_name!r} is "
            f"already loaded ({type(loaded[kit_name]).__module__}); uninstall one of them"
        )
    return kit


def _load_error(message: str, exc: BaseException) -> KitLoadError:
    err = KitLoadError(f"{message}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
