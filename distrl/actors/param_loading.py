"""Published parameter sets into an actor's or evaluator's policy, surviving a set it refuses.

A policy refuses a set that does not fit it (a wrong tensor name or shape, a non-finite value:
`Policy.load_params` raises ValueError and keeps the old parameters whole). Such a version comes
from a misconfigured or hostile learner, and restarting the actor would only meet it again: the
loader keeps acting with what it has, logs the refusal once per version, counts it, and takes
the next version that fits.
"""

from __future__ import annotations

import logging

from distrl.algos import Policy

log = logging.getLogger(__name__)


class ParamLoader:
    """The versions of each set a policy holds (`loaded`) and the newest it refused (`refused`)."""

    def __init__(self, policy: Policy, who: str) -> None:
        self.policy = policy
        self.who = who
        self.loaded: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.refusals = 0

    def is_new(self, name: str, latest) -> bool:
        """Whether `latest` (a subscription's newest version, or None) is newer than any tried."""
        return latest is not None and latest.version > max(
            self.loaded.get(name, 0), self.refused.get(name, 0)
        )

    def load(self, name: str, latest) -> bool:
        """Load `latest` into the policy; False (old parameters kept) when the policy refuses it."""
        try:
            self.policy.load_params(name, latest.tensors)
        except ValueError as exc:
            self.refused[name] = latest.version
            self.refusals += 1
            held = self.loaded.get(name)
            log.warning(
                "%s: refused version %d of parameter set %r, keeping %s: %s",
                self.who,
                latest.version,
                name,
                f"version {held}" if held else "none (waiting for one that fits)",
                exc,
            )
            return False
        self.loaded[name] = latest.version
        return True
