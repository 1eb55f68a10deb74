"""A replay table's statistics, kept once.

`TableCounters` is what a table counts as it runs; its rate limiter counts
inserts and samples into the same object, and checkpoints store and restore it
(the `counters` attribute of a table's group, one key per field). `TableStats`
adds what describes the table now (size, capacity, sampler, spec, rate limit):
`Table.stats()` returns one, the shard's Info sends it as a `replay_pb2.TableInfo`
(`messages.encode_table_stats`: the message's fields have the same names) and
`ReplayClient.info()` reads it back into one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields


@dataclass
class TableCounters:
    """Totals since the table was created; they survive checkpoints."""

    inserts: int = 0  # items
    samples: int = 0  # items
    inserted_batches: int = 0
    duplicate_batches: int = 0  # resends recognised by their sequence number
    rejected_batches: int = 0
    insert_wait_s: float = 0.0  # seconds inserts waited on the rate limiter
    sample_wait_s: float = 0.0  # seconds samples waited on the rate limiter

    def to_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in COUNTER_NAMES}

    @staticmethod
    def from_dict(values: Mapping[str, float]) -> TableCounters:
        """Counters from stored values (any mapping with these names); a missing one starts at 0."""
        out = TableCounters()
        for name in COUNTER_NAMES:
            default = getattr(out, name)
            setattr(out, name, type(default)(values.get(name, default)))
        return out

    def copy(self) -> TableCounters:
        return TableCounters(**self.to_dict())


COUNTER_NAMES = tuple(f.name for f in fields(TableCounters))


@dataclass
class FieldSpecInfo:
    """One field of a table's spec, as text and numbers (what Info sends, and JSON can hold)."""

    dtype: str
    shape: list[int]


@dataclass(kw_only=True)
class TableStats(TableCounters):
    """A table's counters and what describes it; the fields of a `replay_pb2.TableInfo`."""

    name: str
    size: int
    capacity: int
    samples_per_insert: float  # samples / inserts so far (0 before the first insert)
    sampler: str
    spec: dict[str, FieldSpecInfo] = field(default_factory=dict)  # empty until the spec is fixed
    target_samples_per_insert: float = 0.0  # the configured rate limit; 0 when unset
    min_size_to_sample: int = 1
