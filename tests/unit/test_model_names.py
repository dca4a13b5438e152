"""Names an administrator chooses: resource tags, server names, priorities."""

from __future__ import annotations

import pytest

from vigil.errors import ValidationError
from vigil.model.names import (
    check_priority,
    check_server_name,
    check_tag,
    next_free_priority,
    tag_problems,
)

# --- tags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["a", "web-app", "mail_hier.1", "0db", "A" * 64, "x.y-z_0"])
def test_valid_tags_have_no_problems(tag: str) -> None:
    assert tag_problems(tag) == []
    assert check_tag(tag) == tag


def test_empty_tag_is_refused_with_an_example() -> None:
    problems = tag_problems("")
    assert len(problems) == 1
    assert "empty" in problems[0]
    with pytest.raises(ValidationError, match="empty"):
        check_tag("")


def test_tag_of_exactly_64_characters_is_accepted() -> None:
    assert check_tag("t" * 64) == "t" * 64


def test_tag_of_65_characters_is_refused_naming_its_length() -> None:
    with pytest.raises(ValidationError, match=r"is 65 characters long: at most 64") as excinfo:
        check_tag("t" * 65)
    assert excinfo.value.problems == tag_problems("t" * 65)


@pytest.mark.parametrize("tag", ["web app", "web\tapp", " web", "web\n", "web\u00a0app"])
def test_tag_with_whitespace_is_refused(tag: str) -> None:
    problems = tag_problems(tag)
    assert len(problems) == 1
    assert "whitespace" in problems[0]
    with pytest.raises(ValidationError, match="whitespace"):
        check_tag(tag)


@pytest.mark.parametrize("tag", ["web/app", "-web", ".web", "_web", "web:1", "wéb", "a*", "a$"])
def test_tag_with_bad_characters_is_refused(tag: str) -> None:
    problems = tag_problems(tag)
    assert len(problems) == 1
    assert "may contain only letters, digits" in problems[0]
    assert repr(tag) in problems[0]


def test_every_problem_of_a_tag_is_listed() -> None:
    tag = "a b" + "c" * 70
    problems = tag_problems(tag)
    assert len(problems) == 2
    with pytest.raises(ValidationError) as excinfo:
        check_tag(tag)
    assert excinfo.value.problems == problems
    assert str(excinfo.value) == problems[0]


# --- server names -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["n", "node1", "node-1", "1node", "a" * 63, "a-b-c"])
def test_valid_server_names(name: str) -> None:
    assert check_server_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Node1", "node_1", "-node", "node-", "node.example", "a" * 64, "node 1"]
)
def test_invalid_server_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=r"server name .* is not valid"):
        check_server_name(name)


def test_server_name_with_trailing_newline_is_refused() -> None:
    with pytest.raises(ValidationError):
        check_server_name("node1\n")


# --- priorities ---------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [1, 10, 500, 999])
def test_priorities_in_range_are_accepted(priority: int) -> None:
    assert check_priority(priority) == priority


@pytest.mark.parametrize("priority", [0, 1000, -1])
def test_priorities_out_of_range_are_refused(priority: int) -> None:
    with pytest.raises(ValidationError, match=rf"priority {priority} is out of range.* 1 .* 999"):
        check_priority(priority)


def test_next_free_priority_is_10_when_free() -> None:
    assert next_free_priority(set()) == 10
    assert next_free_priority({1}) == 10
    assert next_free_priority({1, 2, 11, 500}) == 10


def test_next_free_priority_is_above_the_highest_when_10_is_used() -> None:
    assert next_free_priority({1, 10}) == 11
    assert next_free_priority({1, 10, 11}) == 12
    assert next_free_priority({1, 10, 40}) == 41
    assert next_free_priority(frozenset({10, 998})) == 999


def test_next_free_priority_wraps_to_the_lowest_free_when_999_is_used() -> None:
    assert next_free_priority({1, 10, 999}) == 2
    assert next_free_priority({10, 999}) == 1
    assert next_free_priority(set(range(1, 50)) | {999}) == 50


def test_next_free_priority_when_all_used_is_refused() -> None:
    with pytest.raises(ValidationError, match="every priority from 1 to 999 is used"):
        next_free_priority(set(range(1, 1000)))


def test_next_free_priority_when_only_one_is_free() -> None:
    assert next_free_priority(set(range(1, 1000)) - {777}) == 777
