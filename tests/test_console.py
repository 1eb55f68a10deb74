"""The console display: policy lag and sample age, and the smoothed rates and ETA."""

from __future__ import annotations

import io

from rich.console import Console

from distrl.telemetry.aggregate import TelemetrySnapshot
from distrl.telemetry.console import format_line, render_panel


def _snapshot(smoothed: float | None = 40.0, **last: float) -> TelemetrySnapshot:
    return TelemetrySnapshot(
        env_steps=2500,
        updates=300,
        wall_time=75.0,
        env_steps_per_s=90.0,  # the last 10 s (what metrics.jsonl rows carry)
        updates_per_s=9.0,
        live_actors=4,
        live_sources=("actor/0",),
        total_env_steps=10_000,
        rows=3,
        last=dict(last),
        smoothed_env_steps_per_s=smoothed,
        smoothed_updates_per_s=None if smoothed is None else 6.0,
    )


def _rendered(snapshot: TelemetrySnapshot) -> str:
    out = Console(file=io.StringIO(), width=120, color_system=None)
    out.print(render_panel(snapshot))
    return out.file.getvalue()


LAGS = {
    "learner/actor_lag_mean": 1.25,
    "learner/actor_lag_max": 3.0,
    "learner/sample_age_mean": 40.5,
    "learner/sample_age_max": 120.0,
}


def test_console_shows_policy_lag_and_sample_age():
    snap = _snapshot(**LAGS)
    text = _rendered(snap)
    assert "policy lag" in text and "mean 1.25  max 3" in text
    assert "sample age" in text and "mean 40.50  max 120" in text
    assert "staleness" not in text
    line = format_line(snap)
    assert "policy lag 1.25/3" in line and "sample age 40.50/120" in line
    empty = _snapshot()
    assert "policy lag -/-" in format_line(empty) and "mean -  max -" in _rendered(empty)


def test_console_shows_the_smoothed_rates_and_eta():
    snap = _snapshot(40.0)
    assert snap.eta_s == 7500 / 40.0  # 3m08s, not the 10 s rate's 1m23s
    line = format_line(snap)
    assert "ETA 3m08s" in line and "40 steps/s" in line and "(6/s)" in line
    text = _rendered(snap)
    assert "ETA 3m08s" in text and "40" in text and "90" not in text
    # Not measured yet: the 10 s rates stand in.
    unsmoothed = _snapshot(None)
    assert unsmoothed.eta_s == 7500 / 90.0 and "90 steps/s" in format_line(unsmoothed)
    assert unsmoothed.to_json_dict()["smoothed_env_steps_per_s"] == 90.0
