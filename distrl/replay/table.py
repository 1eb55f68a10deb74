"""A replay table: ring storage x sampler x FIFO remover x rate limiter, behind one lock."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from distrl.replay.config import TableConfig
from distrl.replay.item_samplers import ItemSampler, PrioritizedSampler, UniformSampler
from distrl.replay.rate_limiter import RateLimiter
from distrl.replay.rows import KEYS, LEARNER_VERSION, POLICY_VERSION, PackedBatch, RowLayout
from distrl.replay.sequences import IncarnationSequence, WriterSequences
from distrl.replay.spec import PackedCheck, SpecViolation, TableSpec
from distrl.replay.stats import FieldSpecInfo, TableCounters, TableStats
from distrl.replay.storage import FifoRemover, RingStorage

# How often a waiting call re-checks whether its caller went away.
_POLL_S = 0.2
# Packed-row layouts a table remembers as checked (writers all send the same one, normally).
_MAX_LAYOUTS = 64


class RateLimiterTimeout(TimeoutError):
    """An insert or sample waited longer than its timeout for the other side."""


class TableClosed(RuntimeError):
    """The table is shutting down."""


@dataclass
class InsertResult:
    stored: bool
    table_size: int


@dataclass
class SampledRows:
    """What `Table.sample` draws: the items' storage rows (one gathered block); fields and metadata are views.

    The shard sends these rows as they are (a SampleBatch message); the learner's
    `prefetch.LearnerBatch` is cut from what the shards send.
    """

    rows: np.ndarray  # (n, layout.row_bytes) uint8
    layout: RowLayout
    table_size: int
    # Probability of each item within the table; None for uniform sampling (all 1 / table_size).
    sampled_probabilities: np.ndarray | None
    importance_exponent: float

    def __len__(self) -> int:
        return len(self.rows)

    @cached_property
    def _views(self) -> dict[str, np.ndarray]:
        return self.layout.views(self.rows)

    @property
    def fields(self) -> dict[str, np.ndarray]:
        views = self._views
        return {name: views[name] for name in self.layout.field_names}

    @property
    def keys(self) -> np.ndarray:
        return self._views[KEYS]

    @property
    def policy_version(self) -> np.ndarray:
        return self._views[POLICY_VERSION]

    @property
    def learner_version(self) -> np.ndarray:
        return self._views[LEARNER_VERSION]

    @property
    def probabilities(self) -> np.ndarray:
        if self.sampled_probabilities is None:
            return np.full(len(self), 1.0 / self.table_size)
        return self.sampled_probabilities

    @property
    def weights(self) -> np.ndarray:
        """Unnormalised importance weights (N P(i))^-beta; ones for uniform sampling."""
        if self.sampled_probabilities is None:
            return np.ones(len(self))
        return (self.table_size * self.sampled_probabilities) ** (-self.importance_exponent)


@dataclass
class TableSnapshot:
    """Everything a table holds, items oldest first; what a checkpoint stores."""

    config: TableConfig
    spec: TableSpec | None
    fields: dict[str, np.ndarray]
    keys: np.ndarray
    policy_version: np.ndarray
    # The learner version each item was inserted at (see rows.LEARNER_VERSION).
    learner_version: np.ndarray
    priorities: np.ndarray
    next_key: int
    counters: TableCounters
    # Writers without an incarnation (stable ids such as the learner's "demos"): actor_id -> sequence.
    last_sequence: dict[str, int]
    max_priority: float = 1.0
    # The newest learner version the table had seen (what it stamps new items with).
    latest_learner_version: int = 0
    # Writers with an incarnation (every actor), least recently stored first.
    incarnation_sequences: list[IncarnationSequence] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class Table:
    def __init__(self, config: TableConfig, seed: int | None = None) -> None:
        self.config = config
        self.name = config.name
        self._rng = np.random.default_rng(seed)
        self._cond = threading.Condition(threading.Lock())
        # What the table has done (the limiter counts inserts and samples into it too); see `stats`.
        self._counters = TableCounters()
        self._limiter = RateLimiter(
            config.samples_per_insert, config.min_size_to_sample, config.resolved_error_buffer, self._counters
        )
        self._remover = FifoRemover()
        self._sampler: ItemSampler = (
            PrioritizedSampler(config.capacity, config.priority_exponent)
            if config.sampler == "prioritized"
            else UniformSampler(config.capacity)
        )
        self._storage: RingStorage | None = None
        self._spec: TableSpec | None = None
        if config.spec is not None:
            self._set_spec(TableSpec.from_config(config.spec))
        self._sequences = WriterSequences()
        self._packed_checks: dict[RowLayout, tuple[PackedCheck, bool]] = {}
        # The newest learner version the table knows of (see `learner_version`); stamped on every insert.
        self._learner_version = 0
        self._closed = False

    # -- public ---------------------------------------------------------------

    @property
    def spec(self) -> TableSpec | None:
        return self._spec

    def __len__(self) -> int:
        return 0 if self._storage is None else self._storage.size

    @property
    def learner_version(self) -> int:
        """The newest learner version the table knows of: what items inserted now are stamped with.

        Sampling learners tell it (`note_learner_version`); an inserted batch's policy
        version implies it too, as every policy version is one the learner has reached,
        so a batch whose weights arrived before the learner's next grant is not stamped
        below its own version (no negative actor lag).
        """
        return self._learner_version

    def note_learner_version(self, version: int) -> None:
        """A learner's Sample call or grant says its version; the largest wins.

        So a grant overtaken by a newer one (or a sampler that sends none, 0) never
        moves the stamp back.
        """
        if version > self._learner_version:
            with self._cond:
                self._learner_version = max(self._learner_version, int(version))

    def insert(
        self,
        batch: dict[str, np.ndarray] | PackedBatch,
        *,
        actor_id: str,
        sequence: int,
        incarnation: bytes = b"",
        policy_version: int = 0,
        timeout: float | None = None,
        is_active: Callable[[], bool] | None = None,
    ) -> InsertResult:
        """Store a batch (columns, or rows packed as the writer sends them) unless it is a resend.

        A resend is a batch at or below the last sequence stored from the same writer,
        `(actor_id, incarnation)` (see `sequences.WriterSequences`).

        Waits while the rate limiter holds inserts back. Raises SpecViolation (nothing
        stored), RateLimiterTimeout or TableClosed.
        """
        packed = batch if isinstance(batch, PackedBatch) else None
        # A layout seen before was checked against the spec in full: only values are left to check.
        known = self._packed_checks.get(packed.layout) if packed is not None else None
        spec = self._spec
        fields: dict[str, np.ndarray] | None = None
        try:
            if known is not None:
                n = known[0].count(packed.rows)
            else:
                fields = packed.fields if packed is not None else batch
                candidate = spec if spec is not None else TableSpec.from_batch(fields)
                n = candidate.validate(fields)
        except SpecViolation:
            with self._cond:
                self._counters.rejected_batches += 1
            raise
        with self._cond:
            if known is None:
                if self._spec is None:
                    self._set_spec(candidate)
                elif candidate is not self._spec:
                    try:  # another batch fixed the spec while this one was validated
                        self._spec.validate(fields)
                    except SpecViolation:
                        self._counters.rejected_batches += 1
                        raise
                if packed is not None:
                    known = self._remember_layout(packed.layout)
            if self._sequences.is_resend(actor_id, incarnation, sequence):
                self._counters.duplicate_batches += 1
                return InsertResult(stored=False, table_size=len(self))
            if self._closed or not self._limiter.can_insert(len(self)):
                self._counters.insert_wait_s += self._wait(
                    lambda: self._limiter.can_insert(len(self)), timeout, is_active, "insert"
                )
                # A resend may have raced this batch while it waited.
                if self._sequences.is_resend(actor_id, incarnation, sequence):
                    self._counters.duplicate_batches += 1
                    return InsertResult(stored=False, table_size=len(self))
            self._learner_version = max(self._learner_version, int(policy_version))
            if known is not None and known[1]:
                self._store_rows(packed, n, policy_version)
            else:
                self._store(fields if fields is not None else packed.fields, n, policy_version)
            self._sequences.record(actor_id, incarnation, sequence)
            self._counters.inserted_batches += 1
            self._cond.notify_all()
            return InsertResult(stored=True, table_size=len(self))

    def sample(
        self,
        batch_size: int,
        *,
        timeout: float | None = None,
        is_active: Callable[[], bool] | None = None,
    ) -> SampledRows:
        """Draw `batch_size` items (with replacement); waits for min size and the rate limiter."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        limiter = self._limiter
        with self._cond:
            if self._closed or not limiter.can_sample(len(self)):
                self._counters.sample_wait_s += self._wait(
                    lambda: limiter.can_sample(len(self)), timeout, is_active, "sample"
                )
            storage = self._storage
            assert storage is not None  # can_sample implies items
            slots, probs = self._sampler.sample(batch_size, self._rng)
            batch = SampledRows(
                rows=storage.gather(slots),
                layout=storage.layout,
                table_size=storage.size,
                sampled_probabilities=probs,
                importance_exponent=self.config.importance_exponent,
            )
            limiter.record_sample(batch_size)
            if limiter.samples_per_insert is not None:  # only then can inserts wait for samples
                self._cond.notify_all()
            return batch

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> int:
        """Set the priorities of items still stored; returns how many were."""
        keys = np.asarray(keys)
        priorities = np.asarray(priorities, dtype=np.float64)
        if keys.ndim != 1 or priorities.shape != keys.shape:
            raise SpecViolation("priorities", f"shape {priorities.shape} does not match keys {keys.shape}")
        if keys.dtype.kind not in "iu":
            raise SpecViolation("keys", f"must be integers, got {keys.dtype}")
        if not np.isfinite(priorities).all() or (priorities < 0).any():
            raise SpecViolation("priorities", "must be finite and non-negative")
        with self._cond:
            if self._storage is None:
                return 0
            keys = keys.astype(np.int64)
            slots = keys % self._storage.capacity
            live = self._storage.keys[slots] == keys
            self._sampler.update(slots[live], priorities[live])
            return int(live.sum())

    def stats(self) -> TableStats:
        """The table's counters and what describes it now (what the shard's Info reports)."""
        config = self.config
        target = config.samples_per_insert
        with self._cond:
            counters = self._counters.to_dict()
            spec = self._spec
            size = len(self)
        return TableStats(
            **counters,
            name=self.name,
            size=size,
            capacity=config.capacity,
            samples_per_insert=counters["samples"] / counters["inserts"] if counters["inserts"] else 0.0,
            sampler=self._sampler.name,
            spec={}
            if spec is None
            else {f.name: FieldSpecInfo(str(f.dtype), list(f.shape)) for f in spec.fields.values()},
            target_samples_per_insert=target if target is not None and math.isfinite(target) else 0.0,
            min_size_to_sample=config.min_size_to_sample,
        )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- checkpointing ----------------------------------------------------------

    def snapshot(self) -> TableSnapshot:
        """A consistent copy of the table's contents and counters."""
        with self._cond:
            storage = self._storage
            if storage is None:
                slots = np.zeros(0, dtype=np.int64)
                fields: dict[str, np.ndarray] = {}
                keys = policy_version = learner_version = np.zeros(0, dtype=np.int64)
            else:
                slots = storage.slots_oldest_first()
                fields = storage.read(slots)
                keys = storage.keys[slots]
                policy_version = storage.policy_version[slots]
                learner_version = storage.learner_version[slots]
            return TableSnapshot(
                config=self.config,
                spec=self._spec,
                fields=fields,
                keys=keys,
                policy_version=policy_version,
                learner_version=learner_version,
                priorities=self._sampler.priorities(slots).astype(np.float64),
                next_key=0 if storage is None else storage.next_key,
                counters=self._counters.copy(),
                last_sequence=self._sequences.stable(),
                max_priority=getattr(self._sampler, "max_priority", 1.0),
                latest_learner_version=self._learner_version,
                incarnation_sequences=self._sequences.incarnations(),
            )

    @classmethod
    def from_snapshot(cls, config: TableConfig, snap: TableSnapshot, seed: int | None = None) -> Table:
        """Rebuild a table; items keep their keys, so outstanding priority updates still land."""
        table = cls(config, seed)
        if snap.spec is not None:
            if table._spec is not None and table._spec != snap.spec:
                raise ValueError(f"table {config.name!r}: {_spec_difference(snap.spec, table._spec)}")
            if table._spec is None:
                table._set_spec(snap.spec)
        keys = snap.keys
        if len(keys) > config.capacity:  # restored into a smaller table: keep the newest
            keep = slice(len(keys) - config.capacity, None)
            keys = keys[keep]
            snap = TableSnapshot(
                **{
                    **snap.__dict__,
                    "fields": {k: v[keep] for k, v in snap.fields.items()},
                    "keys": keys,
                    "policy_version": snap.policy_version[keep],
                    "learner_version": snap.learner_version[keep],
                    "priorities": snap.priorities[keep],
                }
            )
        storage = table._storage
        if storage is not None and len(keys):
            slots = keys % config.capacity
            for name, arr in storage.fields.items():
                arr[slots] = snap.fields[name]
            storage.keys[slots] = keys
            storage.policy_version[slots] = snap.policy_version
            storage.learner_version[slots] = snap.learner_version
            storage.size = len(keys)
            table._sampler.insert(slots)
            if isinstance(table._sampler, PrioritizedSampler):
                table._sampler.update(slots, snap.priorities)
                table._sampler.max_priority = max(snap.max_priority, table._sampler.max_priority)
        if storage is not None:
            storage.next_key = snap.next_key
        table._counters = table._limiter.counters = snap.counters.copy()
        table._sequences = WriterSequences.restore(snap.last_sequence, snap.incarnation_sequences)
        table._learner_version = int(snap.latest_learner_version)
        return table

    # -- internals --------------------------------------------------------------

    def _set_spec(self, spec: TableSpec) -> None:
        self._spec = spec
        self._storage = RingStorage(spec, self.config.capacity)

    def _remember_layout(self, layout: RowLayout) -> tuple[PackedCheck, bool]:
        """(lock held, layout validated against the spec) Its check, and whether its rows copy as a block."""
        if len(self._packed_checks) >= _MAX_LAYOUTS:
            self._packed_checks.clear()
        assert self._storage is not None
        known = (PackedCheck.of(layout), layout.is_prefix_of(self._storage.layout))
        self._packed_checks[layout] = known
        return known

    def _store(self, fields: dict[str, np.ndarray], n: int, policy_version: int) -> None:
        storage = self._storage
        assert storage is not None
        if n > storage.capacity:  # only the newest `capacity` items can be kept
            fields = {k: v[n - storage.capacity :] for k, v in fields.items()}
            n = storage.capacity
        slots = self._make_room(n)
        storage.write(slots, fields, policy_version, self._learner_version)
        self._sampler.insert(slots)
        self._limiter.record_insert(n)

    def _store_rows(self, packed: PackedBatch, n: int, policy_version: int) -> None:
        """Store rows packed as the storage lays them out: one block copy."""
        storage = self._storage
        assert storage is not None
        rows = packed.rows
        if n > storage.capacity:
            rows, n = rows[n - storage.capacity :], storage.capacity
        slots = self._make_room(n)
        storage.write_rows(slots, rows, packed.layout, policy_version, self._learner_version)
        self._sampler.insert(slots)
        self._limiter.record_insert(n)

    def _make_room(self, n: int) -> np.ndarray:
        """The slots for `n` new items, evicting the items that held them."""
        storage = self._storage
        assert storage is not None
        slots, evict = self._remover.select(storage, n)
        if len(evict):
            self._sampler.delete(evict)
            storage.free(evict)
        return slots

    def _wait(
        self,
        ready: Callable[[], bool],
        timeout: float | None,
        is_active: Callable[[], bool] | None,
        side: str,
    ) -> float:
        """Wait (lock held, released while waiting) until `ready`; returns the seconds waited."""
        if self._closed:
            raise TableClosed(f"table {self.name!r} is shutting down")
        if ready():
            return 0.0
        start = time.monotonic()
        limit = self.config.max_wait_s if timeout is None else min(timeout, self.config.max_wait_s)
        deadline = start + limit
        while not ready():
            if self._closed:
                raise TableClosed(f"table {self.name!r} is shutting down")
            if is_active is not None and not is_active():
                raise TableClosed(f"the caller waiting to {side} on table {self.name!r} went away")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                other = "samples" if side == "insert" else "inserts"
                raise RateLimiterTimeout(
                    f"table {self.name!r}: {side} waited {limit:.1f}s for {other} "
                    f"({self._limiter.describe(len(self))})"
                )
            self._cond.wait(min(remaining, _POLL_S))
        return time.monotonic() - start


def _spec_difference(saved: TableSpec, configured: TableSpec) -> str:
    """Which fields a checkpoint's spec lacks, adds or stores differently from the configured one."""
    old, new = saved.fields, configured.fields
    parts = []
    missing = sorted(set(new) - set(old))
    if missing:
        parts.append(
            f"the checkpoint has no field {', '.join(map(repr, missing))} that the configured table needs"
        )
    extra = sorted(set(old) - set(new))
    if extra:
        parts.append(f"it holds field(s) {', '.join(map(repr, extra))} the configured table does not")
    changed = [n for n in sorted(set(old) & set(new)) if old[n] != new[n]]
    parts += [f"field {n!r} is {old[n].describe()} there, {new[n].describe()} here" for n in changed]
    return (
        "the replay checkpoint does not match the configured spec: "
        + "; ".join(parts)
        + " (the experiment's algorithm or demos.placement changed since it was written?)"
    )
