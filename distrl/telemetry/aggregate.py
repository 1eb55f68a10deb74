"""The coordinator's math: restart-aware run counters and per-window metric reductions.

No I/O and no threads here (the coordinator adds the lock, the files and the
sinks), and every method takes `now` (a monotonic clock reading) so the rules
can be tested without sleeping.

Counting. Each source reports its own *cumulative* `env_steps` / `updates`.
The run's count is the sum over sources, but the two counts restart differently.
An actor's env steps count from 0 in every process: a count that drops means the
actor restarted (it reuses its name), so the total it had reached is kept and its
new count is added on top. A learner's updates are restored from its checkpoint:
the count follows the source's latest value, so a learner that crash-restarts from
an older checkpoint (520, then 500) counts 500, not 1020. A count of 0 is taken as
not reported there (the wire cannot tell the two apart). A resumed run restores
every source's state from `progress.json`.

Reducing a window. A metric named `*_per_s` is a rate: the window's value is
the sum over live sources of each one's latest value (eight actors at 1000
steps/s are 8000 steps/s). `*_max` / `*_min` take the max / min of the window.
Everything else is the mean of every value received in the window, episode
events included.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

# A source that has not reported for this long (or 3 windows, if longer) is not live.
LIVE_AFTER_S = 15.0
# Run-level rates are measured over this span (or 5 windows, if longer), so a source
# that reports just before or after a window boundary does not make the rate jump.
RATE_HORIZON_S = 10.0
# The console's rates and the ETA fade old counts with this time constant (see SmoothedRate):
# a report that arrives late, or actors that stall on the rate limiter and then catch up,
# barely move them, while a real change of pace shows within a minute or two.
SMOOTHING_S = 60.0


class Reduction(str, Enum):
    MEAN = "mean"
    SUM_OF_LATEST = "sum_of_latest"
    MAX = "max"
    MIN = "min"


def reduction_for(name: str) -> Reduction:
    """How values of the metric `name` combine within a window (and across sources)."""
    if name.endswith("_per_s"):
        return Reduction.SUM_OF_LATEST
    if name.endswith("_max"):
        return Reduction.MAX
    if name.endswith("_min"):
        return Reduction.MIN
    return Reduction.MEAN


def source_kind(source: str) -> str:
    """`actor/3` -> `actor`: the prefix every metric of that source is logged under."""
    return source.split("/", 1)[0]


def qualified_name(source: str, name: str) -> str:
    """`("actor/3", "episode_return")` -> `actor/episode_return` (an existing prefix is kept)."""
    kind = source_kind(source)
    return name if name.startswith(f"{kind}/") else f"{kind}/{name}"


@dataclass
class SourceCount:
    """One source's cumulative count, surviving restarts of that source.

    `restored` counts (a learner's updates) come back from the source's checkpoint on a
    restart, so the latest value is the count; the others start again from 0.
    """

    previous: int = 0  # what earlier incarnations of the source had counted
    current: int = 0  # the latest count of the current incarnation
    restored: bool = False

    @property
    def total(self) -> int:
        return self.previous + self.current

    def observe(self, value: int) -> None:
        if self.restored:
            if value:  # 0 is a report without a count (e.g. a heartbeat before the first update)
                self.current = value
            return
        if value < self.current:  # the source restarted and counts from 0 again
            self.previous += self.current
        self.current = value


class RunCounter:
    """A run total: a base (counts whose sources are unknown) plus every source's count.

    `restored=True` for counts a restarted source restores from its checkpoint (updates);
    False for counts that start again from 0 in every process (an actor's env steps).
    """

    def __init__(
        self, base: int = 0, sources: dict[str, SourceCount] | None = None, restored: bool = False
    ) -> None:
        self.base = base
        self.sources: dict[str, SourceCount] = dict(sources or {})
        self.restored = restored

    @property
    def total(self) -> int:
        return self.base + sum(s.total for s in self.sources.values())

    def observe(self, source: str, value: int) -> None:
        state = self.sources.get(source)
        if state is None:
            if value == 0:  # nothing to count yet; keeps learners out of the env-step table
                return
            state = self.sources[source] = SourceCount(restored=self.restored)
        state.observe(value)

    def latest(self, source: str) -> int:
        """The count `source` last reported (0 before its first report)."""
        state = self.sources.get(source)
        return state.current if state is not None else 0

    def source_state(self) -> dict[str, tuple[int, int]]:
        return {name: (s.previous, s.current) for name, s in self.sources.items()}

    @classmethod
    def restore(cls, total: int, sources: dict[str, tuple[int, int]], restored: bool = False) -> RunCounter:
        # Counts from sources the file does not list (or a hand-edited total) stay in the base.
        base = max(0, total - sum(previous + current for previous, current in sources.values()))
        if restored:  # the latest value is the count (an older file may hold a double-counted `previous`)
            counts = {name: SourceCount(0, current, restored=True) for name, (_, current) in sources.items()}
        else:
            counts = {name: SourceCount(previous, current) for name, (previous, current) in sources.items()}
        return cls(base, counts, restored=restored)


class Progress(BaseModel):
    """The contents of `run_dir/progress.json`: where a resumed run continues from."""

    model_config = ConfigDict(extra="ignore")

    env_steps: int = Field(0, ge=0)
    updates: int = Field(0, ge=0)
    wall_time: float = Field(0.0, ge=0)
    rows: int = Field(0, ge=0)
    unix_time: float | None = None
    # source -> (count of earlier incarnations, count of the current one); updates are
    # restored from the source's checkpoint, so their earlier-incarnations count is 0.
    env_steps_by_source: dict[str, tuple[int, int]] = Field(default_factory=dict)
    updates_by_source: dict[str, tuple[int, int]] = Field(default_factory=dict)


@dataclass(frozen=True)
class MetricsRow:
    """One window: a line of metrics.jsonl, a W&B step, a dashboard point."""

    index: int
    env_steps: int
    updates: int
    wall_time: float
    unix_time: float
    env_steps_per_s: float
    updates_per_s: float
    live_actors: int
    metrics: dict[str, float]

    def to_json_dict(self) -> dict[str, float | int]:
        return {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "wall_time": self.wall_time,
            "time": round(self.unix_time, 3),
            "env_steps_per_s": self.env_steps_per_s,
            "updates_per_s": self.updates_per_s,
            "live_actors": self.live_actors,
            **self.metrics,
        }


@dataclass(frozen=True)
class TelemetrySnapshot:
    """The run as the coordinator sees it now (for the launcher, the console, the dashboard)."""

    env_steps: int
    updates: int
    wall_time: float
    env_steps_per_s: float
    updates_per_s: float
    live_actors: int
    live_sources: tuple[str, ...]
    total_env_steps: int | None
    rows: int
    last: dict[str, float]  # the last known value of every metric, across windows
    notes: tuple[str, ...] = ()
    # The rates over about a minute (SMOOTHING_S), for the console and the ETA; None where not
    # measured, and the 10 s rates above (the rows' rates) stand in.
    smoothed_env_steps_per_s: float | None = None
    smoothed_updates_per_s: float | None = None

    @property
    def fraction_done(self) -> float | None:
        if not self.total_env_steps:
            return None
        return min(1.0, self.env_steps / self.total_env_steps)

    @property
    def steady_env_steps_per_s(self) -> float:
        """The smoothed env-step rate (what the ETA and the console use)."""
        smoothed = self.smoothed_env_steps_per_s
        return self.env_steps_per_s if smoothed is None else smoothed

    @property
    def steady_updates_per_s(self) -> float:
        smoothed = self.smoothed_updates_per_s
        return self.updates_per_s if smoothed is None else smoothed

    @property
    def eta_s(self) -> float | None:
        rate = self.steady_env_steps_per_s
        if not self.total_env_steps or rate <= 0:
            return None
        return max(0.0, self.total_env_steps - self.env_steps) / rate

    def to_json_dict(self) -> dict:
        return {
            "env_steps": self.env_steps,
            "updates": self.updates,
            "wall_time": self.wall_time,
            "env_steps_per_s": self.env_steps_per_s,
            "updates_per_s": self.updates_per_s,
            "smoothed_env_steps_per_s": self.steady_env_steps_per_s,
            "smoothed_updates_per_s": self.steady_updates_per_s,
            "live_actors": self.live_actors,
            "live_sources": list(self.live_sources),
            "total_env_steps": self.total_env_steps,
            "fraction_done": self.fraction_done,
            "eta_s": self.eta_s,
            "rows": self.rows,
            "last": self.last,
            "notes": list(self.notes),
        }


class SmoothedRate:
    """Counts per second over an exponentially fading past: faded counts / faded seconds.

    Both sums fade with `time_constant_s`. Against a 60 s window this never jumps when
    an old burst of counts leaves the window: a burst raises the rate by burst / time
    constant and then fades out. Dividing by the faded seconds (not by the time
    constant) makes it the plain average while the run is younger than the time
    constant, so the first minute's ETA is not inflated.
    """

    def __init__(self, time_constant_s: float, now: float, count: int) -> None:
        self.time_constant_s = time_constant_s
        self._time = now
        self._count = count
        self._counts = 0.0
        self._seconds = 0.0

    @property
    def per_s(self) -> float | None:
        """None until some time has passed."""
        return self._counts / self._seconds if self._seconds > 0 else None

    def update(self, now: float, count: int) -> None:
        dt = now - self._time
        if dt <= 0:
            return
        fade = math.exp(-dt / self.time_constant_s)
        self._counts = self._counts * fade + max(0, count - self._count)
        self._seconds = self._seconds * fade + dt
        self._time, self._count = now, count


@dataclass
class _Values:
    """Everything received for one metric in one window."""

    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)


@dataclass
class _Window:
    values: dict[str, _Values] = field(default_factory=dict)
    batches: int = 0


# Reported values are clamped to this magnitude, so sums over a window or over sources stay finite.
MAX_METRIC_ABS = 1e250
# The fastest a source's env-step or update count may grow (per second since its previous
# report, at least one second's worth): a count past it is a reporter's bug or lie, which
# would otherwise end the run by "reaching" total_env_steps.
MAX_COUNT_RATE_PER_S = 10_000_000
MAX_SOURCES = 4096


class ReportRefused(ValueError):
    """A batch the aggregate will not take: `exhausted` for a limit reached, else a bad batch."""

    def __init__(self, message: str, exhausted: bool = False) -> None:
        super().__init__(message)
        self.exhausted = exhausted


class RunAggregate:
    """Counters, the open window and the last known values of one run."""

    def __init__(
        self,
        window_s: float,
        now: float,
        total_env_steps: int | None = None,
        progress: Progress | None = None,
        max_metric_names: int = 4096,
    ) -> None:
        progress = progress or Progress()
        self.window_s = window_s
        self.total_env_steps = total_env_steps
        self.live_after_s = max(LIVE_AFTER_S, 3 * window_s)
        self.rate_horizon_s = max(RATE_HORIZON_S, 5 * window_s)
        self.max_metric_names = max_metric_names
        self.env_steps = RunCounter.restore(progress.env_steps, progress.env_steps_by_source)
        self.updates = RunCounter.restore(progress.updates, progress.updates_by_source, restored=True)
        self._started = now
        self._wall_time_offset = progress.wall_time
        self._rows = progress.rows
        self._window = _Window()
        self._last: dict[str, float] = {}
        self._known_names: set[str] = set()
        # rate metric -> source -> (latest value, when it arrived)
        self._latest_rates: dict[str, dict[str, tuple[float, float]]] = {}
        self._last_seen: dict[str, float] = {}
        self._samples: deque[tuple[float, int, int]] = deque(
            [(now, self.env_steps.total, self.updates.total)]
        )
        self._env_steps_per_s = 0.0
        self._updates_per_s = 0.0
        self._smoothed_env_steps = SmoothedRate(SMOOTHING_S, now, self.env_steps.total)
        self._smoothed_updates = SmoothedRate(SMOOTHING_S, now, self.updates.total)
        self.dropped_names = 0

    # -- input ----------------------------------------------------------------------------------

    def ingest(
        self,
        source: str,
        env_steps: int | None,
        updates: int | None,
        metrics: Iterable[tuple[str, float]],
        now: float,
    ) -> int:
        """Take one batch; returns how many metric values were kept (non-finite ones are not).

        Raises ReportRefused (nothing of the batch taken) for a new source past MAX_SOURCES or
        a count growing faster than MAX_COUNT_RATE_PER_S.
        """
        previous = self._last_seen.get(source)
        if previous is None and len(self._last_seen) >= MAX_SOURCES:
            raise ReportRefused(
                f"{source}: this run already has {MAX_SOURCES} telemetry sources", exhausted=True
            )
        allowed = MAX_COUNT_RATE_PER_S * max(1.0, now - previous if previous is not None else 1.0)
        for what, counter, value in (
            ("env_steps", self.env_steps, env_steps),
            ("updates", self.updates, updates),
        ):
            if value is not None and value - counter.latest(source) > allowed:
                raise ReportRefused(
                    f"{source}: {what} {value} grew by more than {MAX_COUNT_RATE_PER_S:,}/s "
                    "since its last report"
                )
        self._last_seen[source] = now
        if env_steps is not None:
            self.env_steps.observe(source, env_steps)
        if updates is not None:
            self.updates.observe(source, updates)
        self._window.batches += 1
        kept = 0
        for name, value in metrics:
            if not name or not math.isfinite(value):
                continue
            value = min(max(value, -MAX_METRIC_ABS), MAX_METRIC_ABS)
            key = qualified_name(source, name)
            if key not in self._known_names:
                if len(self._known_names) >= self.max_metric_names:
                    self.dropped_names += 1
                    continue
                self._known_names.add(key)
            self._window.values.setdefault(key, _Values()).add(value)
            if reduction_for(key) is Reduction.SUM_OF_LATEST:
                self._latest_rates.setdefault(key, {})[source] = (value, now)
            kept += 1
        return kept

    # -- output ---------------------------------------------------------------------------------

    def wall_time(self, now: float) -> float:
        return self._wall_time_offset + (now - self._started)

    def close_window(self, now: float, unix_time: float) -> MetricsRow | None:
        """End the open window; returns its row, or None when nothing arrived in it."""
        self._update_rates(now)
        window, self._window = self._window, _Window()
        if window.batches == 0:
            return None
        metrics = {name: self._reduce(name, values, now) for name, values in sorted(window.values.items())}
        self._last.update(metrics)
        row = MetricsRow(
            index=self._rows,
            env_steps=self.env_steps.total,
            updates=self.updates.total,
            wall_time=self.wall_time(now),
            unix_time=unix_time,
            env_steps_per_s=round(self._env_steps_per_s, 3),
            updates_per_s=round(self._updates_per_s, 3),
            live_actors=len(self._live("actor", now)),
            metrics=metrics,
        )
        self._rows += 1
        return row

    def snapshot(self, now: float, notes: tuple[str, ...] = ()) -> TelemetrySnapshot:
        live = self._live(None, now)
        return TelemetrySnapshot(
            env_steps=self.env_steps.total,
            updates=self.updates.total,
            wall_time=self.wall_time(now),
            env_steps_per_s=self._env_steps_per_s,
            updates_per_s=self._updates_per_s,
            live_actors=sum(1 for s in live if source_kind(s) == "actor"),
            live_sources=tuple(live),
            total_env_steps=self.total_env_steps,
            rows=self._rows,
            last=dict(self._last),
            notes=notes,
            smoothed_env_steps_per_s=self._smoothed_env_steps.per_s,
            smoothed_updates_per_s=self._smoothed_updates.per_s,
        )

    def progress(self, now: float, unix_time: float | None = None) -> Progress:
        return Progress(
            env_steps=self.env_steps.total,
            updates=self.updates.total,
            wall_time=self.wall_time(now),
            rows=self._rows,
            unix_time=unix_time,
            env_steps_by_source=self.env_steps.source_state(),
            updates_by_source=self.updates.source_state(),
        )

    # -- helpers --------------------------------------------------------------------------------

    def _reduce(self, name: str, values: _Values, now: float) -> float:
        reduction = reduction_for(name)
        if reduction is Reduction.SUM_OF_LATEST:
            latest = self._latest_rates.get(name, {})
            for source in [s for s, (_, t) in latest.items() if now - t > self.live_after_s]:
                del latest[source]
            return float(sum(v for v, _ in latest.values()))
        if reduction is Reduction.MAX:
            return values.high
        if reduction is Reduction.MIN:
            return values.low
        return values.total / values.count

    def _update_rates(self, now: float) -> None:
        self._samples.append((now, self.env_steps.total, self.updates.total))
        # Keep one sample at or before the horizon so the rate spans all of it.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.rate_horizon_s:
            self._samples.popleft()
        t0, env0, upd0 = self._samples[0]
        if now - t0 > 0:
            self._env_steps_per_s = max(0.0, (self.env_steps.total - env0) / (now - t0))
            self._updates_per_s = max(0.0, (self.updates.total - upd0) / (now - t0))
        self._smoothed_env_steps.update(now, self.env_steps.total)
        self._smoothed_updates.update(now, self.updates.total)

    def _live(self, kind: str | None, now: float) -> list[str]:
        return sorted(
            s
            for s, t in self._last_seen.items()
            if now - t <= self.live_after_s and (kind is None or source_kind(s) == kind)
        )
