"""What each reporting source said last: the per-component view beside the run's aggregate.

`RunAggregate` merges every source into one row per window; `SourceLatest` keeps the latest
value of each metric per source (`actor/3`, `learner/0`, ...), so Prometheus can label series
by component and index and the dashboard can draw one line per actor. It is read at scrape
or request time, so nothing is stored twice and a source that stops reporting drops out of
`table()` once it has been silent for `live_after_s`.

Bounded: at most `max_sources` sources (a new one evicts the least recently seen) and
`max_names` metric names per source besides its counts (later new names are dropped); both
are counted (`evicted_sources`, `dropped_names`).
Thread-safe: the coordinator observes under its own lock, while Prometheus scrapes and the
dashboard read from their own threads.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_SOURCES = 1024
MAX_NAMES_PER_SOURCE = 256  # besides the counts
COUNT_NAMES = ("env_steps", "updates")


@dataclass
class _SourceValues:
    last_seen: float
    values: dict[str, float] = field(default_factory=dict)


class SourceLatest:
    """The latest value of every metric of every source, bounded in sources and names."""

    def __init__(self, max_sources: int = MAX_SOURCES, max_names: int = MAX_NAMES_PER_SOURCE) -> None:
        if max_sources < 1 or max_names < 1:
            raise ValueError(f"max_sources and max_names must be >= 1, got {max_sources}, {max_names}")
        self.max_sources = max_sources
        self.max_names = max_names
        self.evicted_sources = 0
        self.dropped_names = 0
        self._lock = threading.Lock()
        # Least recently seen first, so eviction is popping the front.
        self._sources: OrderedDict[str, _SourceValues] = OrderedDict()

    @staticmethod
    def labels(source: str) -> tuple[str, str]:
        """`actor/3` -> `("actor", "3")`: the component and index labels (index "0" when absent)."""
        component, _, index = source.partition("/")
        return component, index or "0"

    def observe(
        self,
        source: str,
        pairs: Iterable[tuple[str, float]],
        now: float,
        env_steps: int | None = None,
        updates: int | None = None,
    ) -> None:
        """Record one batch from `source` at `now` (any clock, the same one `table()` is given).

        Names lose the source's own component prefix (`learner/replay/0/size` from `learner/0`
        is `replay/0/size`), so a metric has one name however it was spelled. Non-finite values
        are skipped. `env_steps` / `updates` become the metrics `env_steps` / `updates`; a count of
        0 is taken as not reported, since the wire cannot tell the two apart.
        """
        prefix = self.labels(source)[0] + "/"
        # The source's own counts win over a metric of the same name.
        counts = zip(COUNT_NAMES, (env_steps, updates), strict=True)
        values = [(name, float(count)) for name, count in counts if count]
        counted = {name for name, _ in values}
        for name, value in pairs:
            number = float(value)
            name = name[len(prefix) :] if name.startswith(prefix) else name
            if math.isfinite(number) and name not in counted:
                values.append((name, number))
        with self._lock:
            state = self._sources.get(source)
            if state is None:
                while len(self._sources) >= self.max_sources:
                    self._sources.popitem(last=False)
                    self.evicted_sources += 1
                state = self._sources[source] = _SourceValues(now)
            else:
                self._sources.move_to_end(source)
                state.last_seen = now
            for name, number in values:
                if not name:
                    continue
                if name not in state.values and name not in COUNT_NAMES:
                    named = len(state.values) - sum(n in state.values for n in COUNT_NAMES)
                    if named >= self.max_names:
                        self.dropped_names += 1
                        continue
                state.values[name] = number

    def table(self, now: float, live_after_s: float) -> dict[str, dict[str, float]]:
        """source -> {metric name -> latest value}, for sources seen within `live_after_s` of `now`.

        Sources come in label order (`actor/2` before `actor/10`); the dicts are copies.
        """
        with self._lock:
            live = {
                source: dict(state.values)
                for source, state in self._sources.items()
                if now - state.last_seen <= live_after_s
            }
        return {source: live[source] for source in sorted(live, key=_label_order)}

    def __len__(self) -> int:
        with self._lock:
            return len(self._sources)


def _label_order(source: str) -> tuple[str, int, str]:
    component, index = SourceLatest.labels(source)
    return (component, int(index), "") if index.isascii() and index.isdigit() else (component, -1, index)
