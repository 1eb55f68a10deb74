"""Names shared by publishers and subscribers of parameter sets.

A parameter server holds several named sets ("policy" published every N updates,
a frozen "base" model published once, a shield's "barrier" re-fitted every N
updates), each with its own increasing version numbers. Plain Python, no grpc,
so configs and algorithms can import it cheaply.
"""

from __future__ import annotations

import re

# The set a request means when it names none (the empty string on the wire).
DEFAULT_PARAM_SET = "policy"
# Metadata key a learner sets on every version it publishes: its update count.
UPDATES_KEY = "updates"
MAX_PARAM_SET_CHARS = 64
# The highest version number a publisher may give: "current + 1" must stay a valid int64 forever.
MAX_VERSION = 2**53

_SET_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def resolve_param_set(name: str) -> str:
    """The set `name` refers to ("" means DEFAULT_PARAM_SET); ValueError naming a bad one.

    A valid name is 1 to 64 characters of letters, digits, '_', '.' and '-'.
    """
    if not isinstance(name, str):
        raise TypeError(f"parameter set name must be a str, got {type(name).__name__}")
    if not name:
        return DEFAULT_PARAM_SET
    if len(name) > MAX_PARAM_SET_CHARS:
        raise ValueError(
            f"parameter set name {name[:40]!r}... is longer than {MAX_PARAM_SET_CHARS} characters"
        )
    if not _SET_NAME.fullmatch(name):
        raise ValueError(f"parameter set name {name!r} may only contain letters, digits, '_', '.' and '-'")
    return name


def is_update_count(value: str) -> bool:
    """Whether `value` is an update count: 1 to 18 ASCII digits.

    str.isdigit alone takes '²', which int() does not: a subscriber would fail on it.
    """
    return value.isascii() and value.isdigit() and len(value) <= 18


def updates_of(metadata: dict[str, str], default: int) -> int:
    """The learner update count a version carries (`UPDATES_KEY`), or `default` when it has none
    or it is not a non-negative integer (a subscriber must not fail on a publisher's typo)."""
    value = metadata.get(UPDATES_KEY)
    if value is None or not is_update_count(value):
        return default
    return int(value)
