"""Who may call what: per-role bearer tokens and the calls each role may make.

With one shared token (`security.token` / `token_file`) every holder may make every
call. With a roles directory (`security.role_tokens_dir`) a server accepts one token per
role and refuses, with PERMISSION_DENIED, a call the token's role may not make:

- `actor` (actors, the evaluator): replay Insert; params Subscribe, Fetch; Report; Info.
- `learner`: replay Insert, Sample, GrantSamples, UpdatePriorities; params Publish,
  Subscribe, Fetch; Report; Info.
- `reader` (dashboards, monitoring): Info (and the HTTP dashboard and metrics).
- `admin` (the operator): everything, e.g. `distrl replay checkpoint`.

The directory holds a file per role: `<role>` with the token itself, or `<role>.sha256`
with the hex SHA-256 of the token, so that a server need not hold the tokens it checks
(the Kubernetes renderer mounts only digests into server pods). A role without a file
has no token and cannot call anything.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from pathlib import Path

ROLES = ("admin", "learner", "actor", "reader")
DIGEST_SUFFIX = ".sha256"

_REPLAY = "/distrl.v1.Replay/"
_PARAMS = "/distrl.v1.Parameters/"
_TELEMETRY = "/distrl.v1.Telemetry/"

_ANY = frozenset({"learner", "actor", "reader"})

# Methods not listed here are for `admin` only.
METHOD_ROLES: dict[str, frozenset[str]] = {
    _REPLAY + "Insert": frozenset({"actor", "learner"}),
    _REPLAY + "Sample": frozenset({"learner"}),
    _REPLAY + "GrantSamples": frozenset({"learner"}),
    _REPLAY + "UpdatePriorities": frozenset({"learner"}),
    _REPLAY + "Info": _ANY,
    _PARAMS + "Publish": frozenset({"learner"}),
    _PARAMS + "Subscribe": frozenset({"actor", "learner"}),
    _PARAMS + "Fetch": frozenset({"actor", "learner"}),
    _PARAMS + "Info": _ANY,
    _TELEMETRY + "Report": frozenset({"actor", "learner"}),
}


class RoleTokensError(ValueError):
    """A roles directory that cannot be used (unknown file, empty token, bad digest)."""


def may_call(role: str, method: str) -> bool:
    """Whether a caller holding `role`'s token may make the gRPC call `method`."""
    return role == "admin" or role in METHOD_ROLES.get(method, frozenset())


def digest(token: str | bytes) -> bytes:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def load_role_digests(directory: Path) -> dict[str, bytes]:
    """The SHA-256 digest of each role's token in `directory`; errors name the bad file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RoleTokensError(f"role_tokens_dir {directory} is not a directory")
    digests: dict[str, bytes] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue  # Kubernetes mounts Secrets through hidden ..data links
        role, is_digest = path.name, False
        if role.endswith(DIGEST_SUFFIX):
            role, is_digest = role[: -len(DIGEST_SUFFIX)], True
        if role not in ROLES:
            raise RoleTokensError(f"{path}: unknown role {role!r}; roles are {', '.join(ROLES)}")
        text = path.read_text().strip()
        if not text:
            raise RoleTokensError(f"{path} is empty")
        if is_digest:
            if len(text) != 64 or any(c not in string.hexdigits for c in text):
                raise RoleTokensError(f"{path}: expected the 64 hex digits of a SHA-256 digest")
            value = bytes.fromhex(text)
        else:
            value = digest(text)
        if role in digests and digests[role] != value:
            raise RoleTokensError(f"{directory}: {role} and {role}{DIGEST_SUFFIX} disagree")
        digests[role] = value
    if not digests:
        names = ", ".join(ROLES)
        raise RoleTokensError(f"role_tokens_dir {directory} holds no token: add files named {names}")
    seen: dict[bytes, str] = {}
    for role, value in digests.items():
        if value in seen:
            raise RoleTokensError(f"{directory}: roles {seen[value]} and {role} share one token")
        seen[value] = role
    return digests


def role_of(token: bytes, digests: dict[str, bytes]) -> str | None:
    """The role whose token is `token`, comparing digests in constant time; None if none."""
    got = digest(token)
    found = None
    for role, value in digests.items():
        if hmac.compare_digest(got, value):
            found = role
    return found
