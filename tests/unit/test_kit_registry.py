"""Kit discovery: entry points in, a registry of kit instances and load errors out."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

from vigil.errors import KitLoadError, NotFound
from vigil.kits.app import AppKit
from vigil.kits.registry import ENTRY_POINT_GROUP, KitRegistry, load_kits


def entry_point(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


APP = entry_point("app", "vigil.kits.app:AppKit")


def test_installed_kits_include_app() -> None:
    registry = load_kits()
    assert "app" in registry.names()
    assert isinstance(registry.get("app"), AppKit)
    assert registry.errors == ()


def test_one_instance_per_kit() -> None:
    registry = load_kits([APP])
    assert registry.get("app") is registry.get("app")
    assert registry.names() == ["app"]
    assert "app" in registry and len(registry) == 1


def test_unknown_kit_lists_the_available_ones() -> None:
    registry = load_kits([APP])
    with pytest.raises(NotFound, match=r"unknown kit 'foo': available kits are app$"):
        registry.get("foo")


def test_unknown_kit_when_none_is_installed() -> None:
    with pytest.raises(NotFound, match="unknown kit 'app': available kits are none"):
        KitRegistry({}).get("app")


def test_a_kit_that_fails_to_import_is_recorded_not_raised() -> None:
    broken = entry_point("broken", "vigil.kits.no_such_module:BrokenKit")
    registry = load_kits([broken, APP])
    assert registry.names() == ["app"]  # the others still load
    (error,) = registry.errors
    assert isinstance(error, KitLoadError)
    message = str(error)
    assert "'broken'" in message
    assert "vigil.kits.no_such_module" in message
    assert "ModuleNotFoundError" in message
    assert isinstance(error.__cause__, ModuleNotFoundError)


def test_getting_a_broken_kit_says_why() -> None:
    registry = load_kits([entry_point("broken", "vigil.kits.no_such_module:BrokenKit")])
    with pytest.raises(NotFound, match="kit 'broken' is installed but failed to load"):
        registry.get("broken")


def test_a_missing_attribute_is_recorded() -> None:
    registry = load_kits([entry_point("ghost", "vigil.kits.app:GhostKit")])
    (error,) = registry.errors
    assert "'ghost'" in str(error) and "vigil.kits.app" in str(error)
    assert "AttributeError" in str(error)


def test_an_object_that_is_not_a_kit_is_recorded() -> None:
    registry = load_kits([entry_point("notakit", "vigil.errors:VigilError")])
    assert registry.names() == []
    (error,) = registry.errors
    assert "'notakit'" in str(error)
    assert "vigil.errors" in str(error)
    assert "not a Kit subclass" in str(error)


def test_an_abstract_kit_is_recorded() -> None:
    registry = load_kits([entry_point("base", "vigil.kits.base:Kit")])
    (error,) = registry.errors
    assert "could not be instantiated" in str(error) and "TypeError" in str(error)


def test_entry_point_name_must_match_the_kit_name() -> None:
    registry = load_kits([entry_point("application", "vigil.kits.app:AppKit")])
    (error,) = registry.errors
    assert "calls itself 'app'" in str(error)


def test_a_second_kit_with_the_same_name_is_recorded() -> None:
    registry = load_kits([APP, APP])
    assert registry.names() == ["app"]
    (error,) = registry.errors
    assert "already loaded" in str(error)
