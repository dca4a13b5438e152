"""Names an administrator chooses: resource tags and server names, and priorities."""

from __future__ import annotations

import re

from vigil.errors import ValidationError

TAG_MAX = 64
PRIORITY_MIN = 1
PRIORITY_MAX = 999
#: the seed: a new resource gets priority 1; an extend defaults to 10 (or the next free value)
CREATE_PRIORITY = 1
EXTEND_DEFAULT_PRIORITY = 10

_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SERVER = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def tag_problems(tag: str) -> list[str]:
    """Every reason ``tag`` is not a valid resource tag (empty when it is)."""
    problems = []
    if not tag:
        problems.append("the tag is empty: give the resource a name such as 'web-app'")
    elif len(tag) > TAG_MAX:
        problems.append(f"tag {tag[:20]!r}... is {len(tag)} characters long: at most {TAG_MAX}")
    if tag and any(c.isspace() for c in tag):
        problems.append(f"tag {tag!r} contains whitespace: use '-' or '_' instead")
    elif tag and not _TAG.fullmatch(tag):
        problems.append(
            f"tag {tag!r} may contain only letters, digits, '.', '_' and '-', "
            "and must start with a letter or digit"
        )
    return problems


def check_tag(tag: str) -> str:
    """Return ``tag`` if valid, else raise ``ValidationError`` naming every problem."""
    problems = tag_problems(tag)
    if problems:
        raise ValidationError(problems[0], problems)
    return tag


def check_server_name(name: str) -> str:
    """Return ``name`` if it is a valid server name (a DNS label), else raise."""
    if not _SERVER.fullmatch(name):
        raise ValidationError(
            f"server name {name!r} is not valid: use lower-case letters, digits and '-', "
            "at most 63 characters (a host name label)"
        )
    return name


def check_priority(priority: int) -> int:
    """Return ``priority`` if within 1-999, else raise."""
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValidationError(
            f"priority {priority} is out of range: choose a value from {PRIORITY_MIN} "
            f"(most preferred) to {PRIORITY_MAX}"
        )
    return priority


def next_free_priority(used: set[int] | frozenset[int]) -> int:
    """The seed's extend default: 10 if free, else the next free value above the highest used
    (or the lowest free value when the top of the range is taken)."""
    if EXTEND_DEFAULT_PRIORITY not in used:
        return EXTEND_DEFAULT_PRIORITY
    candidate = max(used) + 1
    if candidate <= PRIORITY_MAX:
        return candidate
    for value in range(PRIORITY_MIN, PRIORITY_MAX + 1):
        if value not in used:
            return value
    raise ValidationError("every priority from 1 to 999 is used in this hierarchy")
