"""Exponential backoff between retries, shared by every client that reconnects and every supervisor.

`Backoff.delay(n)` is the wait after the n-th failure in a row: `initial_s`,
then `multiplier` times longer each time, never more than `max_s`, and with `jitter` a
random part of it taken off (so that clients a failure hit together do not all
retry together). Used statefully, `failed()` counts a failure and returns its
delay, `reset()` starts over after a success, and `sleep(stop)` waits one
failure's delay unless `stop` is set first.
"""

from __future__ import annotations

import random
import threading

# Past this many doublings every delay is at its cap; the exponent stops here so it cannot overflow.
_MAX_EXPONENT = 64


class Backoff:
    """Exponential backoff with optional jitter; counts consecutive failures."""

    def __init__(
        self,
        initial_s: float,
        max_s: float,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial_s < 0 or max_s < 0:
            raise ValueError(f"backoff delays must be >= 0, got initial_s={initial_s}, max_s={max_s}")
        if multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {multiplier}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {jitter}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.multiplier = multiplier
        self.jitter = jitter
        self._random = (rng or random).random
        self.failures = 0  # in a row, since the last reset

    def delay(self, failures: int) -> float:
        """The wait after `failures` failures in a row (0 for none); jitter takes up to its fraction off."""
        if failures <= 0:
            return 0.0
        base = min(self.max_s, self.initial_s * self.multiplier ** min(failures - 1, _MAX_EXPONENT))
        if self.jitter:
            base *= 1.0 - self.jitter * self._random()
        return base

    def failed(self) -> float:
        """Count one more failure; returns how long to wait before the next try."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """A success: the next failure waits `initial_s` again."""
        self.failures = 0

    def sleep(self, stop: threading.Event) -> bool:
        """Count a failure and wait its delay; True if `stop` was set (at once, or while waiting)."""
        return stop.wait(self.failed())
