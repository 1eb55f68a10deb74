"""Reverb's SampleToInsertRatio rate limiter.

Counts are in items: a batch of 64 transitions is 64 inserts, a learner batch
of 256 is 256 samples. With `samples_per_insert` (SPI) set, the limiter keeps
`diff = inserts * SPI - samples` inside
`[min_size * SPI - error_buffer, min_size * SPI + error_buffer]`: an insert
waits while it would push `diff` above the top, a sample while it would push it
below the bottom. An operation that may start takes its whole batch, so the
bound can be overshot by one batch. Without SPI only `min_size_to_sample` is
enforced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distrl.replay.stats import TableCounters


@dataclass
class RateLimiter:
    samples_per_insert: float | None
    min_size_to_sample: int
    error_buffer: float
    # Where inserts and samples are counted: the table's counters (so Info and checkpoints see them).
    counters: TableCounters = field(default_factory=TableCounters)

    @property
    def inserts(self) -> int:
        return self.counters.inserts

    @property
    def samples(self) -> int:
        return self.counters.samples

    @property
    def _diff(self) -> float:
        return self.inserts * (self.samples_per_insert or 0.0) - self.samples

    def _bounds(self) -> tuple[float, float]:
        centre = self.min_size_to_sample * (self.samples_per_insert or 0.0)
        return centre - self.error_buffer, centre + self.error_buffer

    def can_insert(self, size: int) -> bool:
        if self.samples_per_insert is None or size < self.min_size_to_sample:
            return True
        return self._diff + self.samples_per_insert <= self._bounds()[1]

    def can_sample(self, size: int) -> bool:
        if size < max(1, self.min_size_to_sample):
            return False
        if self.samples_per_insert is None:
            return True
        return self._diff - 1 >= self._bounds()[0]

    def record_insert(self, n: int) -> None:
        self.counters.inserts += n

    def record_sample(self, n: int) -> None:
        self.counters.samples += n

    def describe(self, size: int) -> str:
        spi = "unset" if self.samples_per_insert is None else f"{self.samples_per_insert:g}"
        return (
            f"size={size} min_size_to_sample={self.min_size_to_sample} inserts={self.inserts} "
            f"samples={self.samples} samples_per_insert={spi} error_buffer={self.error_buffer:g}"
        )
