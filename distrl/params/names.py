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
