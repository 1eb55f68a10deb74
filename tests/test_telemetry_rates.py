"""The run's rates and ETA: rows keep the 10 s rates, the console and the ETA a smoothed one."""

from __future__ import annotations

import numpy as np
import pytest

from distrl.telemetry.aggregate import RunAggregate, SmoothedRate

TOTAL = 5_000_000
ACTOR_RATE = 250.0  # env steps/s of each of 4 actors: 1000 steps/s, an ETA of about 1h20m


def _bursty_run(seed: int, until: float, pace=lambda t: 1.0):
    """Four actors stepping steadily (times `pace(t)`) whose reports come late in bursts.

    Each reports its cumulative count about every second, but one report in five comes
    3-6 s late (a reporter back-off, an insert held by the rate limiter), carrying the
    steps of the whole gap. Yields (now, snapshot, row) once per 1 s window.
    """
    rng = np.random.default_rng(seed)
    agg = RunAggregate(window_s=1.0, now=0.0, total_env_steps=TOTAL)
    next_report = rng.uniform(0, 1, size=4)
    steps = np.zeros(4)
    for tick in range(1, int(until * 10) + 1):
        now = tick / 10
        steps += ACTOR_RATE * pace(now) * 0.1
        for a in np.flatnonzero(now >= next_report):
            agg.ingest(f"actor/{a}", int(steps[a]), None, [], now=now)
            next_report[a] = now + (1.0 if rng.random() < 0.8 else rng.uniform(3, 6))
        if tick % 10 == 0:
            row = agg.close_window(now, unix_time=now)
            yield now, agg.snapshot(now), row


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / min(values)


@pytest.mark.parametrize("seed", [0, 1])
def test_eta_of_a_steady_run_with_bursty_reports_varies_less_than_10_percent_in_a_minute(seed):
    eta, eta_10s, rows = [], [], []
    for now, snap, row in _bursty_run(seed, until=180):
        if now >= 120:  # the third minute
            eta.append(snap.eta_s)
            eta_10s.append((TOTAL - snap.env_steps) / snap.env_steps_per_s)  # the ETA as it was
            if row is not None:  # a window without reports writes no row
                rows.append(row.env_steps_per_s)
    assert _spread(eta) < 0.10
    assert _spread(eta_10s) > 0.3  # what the console showed before: the ETA jumped around
    assert eta[-1] == pytest.approx(TOTAL / 1000 - 180, rel=0.05)
    # metrics.jsonl keeps the 10 s rate
    assert _spread(rows) > 0.3 and np.mean(rows) == pytest.approx(1000, rel=0.1)


def test_smoothed_rate_is_the_plain_average_while_the_run_is_young():
    first = next(snap for now, snap, _ in _bursty_run(0, until=30) if now == 20)
    assert first.steady_env_steps_per_s == pytest.approx(1000, rel=0.25)  # not ramping up from 0
    assert first.eta_s is not None and first.eta_s < 2 * TOTAL / 1000


def test_smoothed_rate_follows_a_real_change_of_pace_within_a_few_minutes():
    # Half the pace from minute 3 on (an actor host lost, say).
    by_time = {
        now: snap for now, snap, _ in _bursty_run(2, until=420, pace=lambda t: 1.0 if t < 180 else 0.5)
    }
    assert by_time[170].steady_env_steps_per_s == pytest.approx(1000, rel=0.1)
    assert by_time[240].steady_env_steps_per_s < 750  # on its way after a minute
    assert by_time[420].steady_env_steps_per_s == pytest.approx(500, rel=0.1)


def test_smoothed_rate_fades_old_counts_with_its_time_constant():
    rate = SmoothedRate(60.0, now=0.0, count=100)
    assert rate.per_s is None
    rate.update(10.0, 1100)
    assert rate.per_s == pytest.approx(100.0)
    rate.update(10.0, 5000)  # no time passed: nothing to measure yet
    assert rate.per_s == pytest.approx(100.0)
    rate.update(70.0, 1100)  # a minute without steps
    fade = np.exp(-1.0)
    assert rate.per_s == pytest.approx(1000 * fade / (10 * fade + 60))
