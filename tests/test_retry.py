"""The one retry/backoff helper every reconnecting client and the local launcher use."""

from __future__ import annotations

import random
import threading
import time

import pytest

from distrl.wire.retry import Backoff


def test_delays_double_from_initial_up_to_the_cap():
    backoff = Backoff(0.5, 5.0)
    assert [backoff.delay(n) for n in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert Backoff(1.0, 60.0, multiplier=3.0).delay(3) == 9.0
    assert backoff.delay(10_000) == 5.0  # no overflow however long it keeps failing


def test_failed_counts_and_reset_starts_over():
    backoff = Backoff(0.1, 1.0)
    assert [backoff.failed() for _ in range(3)] == pytest.approx([0.1, 0.2, 0.4])
    assert backoff.failures == 3
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.failed() == pytest.approx(0.1)


def test_jitter_takes_off_at_most_its_fraction():
    backoff = Backoff(1.0, 8.0, jitter=0.25, rng=random.Random(0))
    for n in (1, 2, 3, 4, 5):
        base = min(8.0, 2.0 ** (n - 1))
        delays = [backoff.delay(n) for _ in range(200)]
        assert all(0.75 * base <= d <= base for d in delays)
        assert max(delays) - min(delays) > 0.1 * base  # actually spread out


def test_initial_above_the_cap_waits_the_cap():
    assert Backoff(10.0, 5.0).delay(1) == 5.0


def test_sleep_waits_and_returns_early_when_stopped():
    stop = threading.Event()
    backoff = Backoff(0.05, 0.05)
    start = time.monotonic()
    assert backoff.sleep(stop) is False
    assert time.monotonic() - start >= 0.04
    assert backoff.failures == 1

    slow = Backoff(30.0, 30.0)
    threading.Timer(0.05, stop.set).start()
    start = time.monotonic()
    assert slow.sleep(stop) is True
    assert time.monotonic() - start < 5.0


def test_bad_arguments():
    with pytest.raises(ValueError, match=">= 0"):
        Backoff(-1.0, 5.0)
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(1.0, 5.0, multiplier=0.5)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(1.0, 5.0, jitter=1.5)
