"""ReplayClient: the actors' and the learner's view of K replay shards.

Writers (`client.writer(actor_id)`) pack batches into rows and stream them to
the shard picked by a stable hash of the actor id, keep a bounded window of
unacked batches, fail over to the next live shard (resending what was not
acked) and go back home when the home shard serves again. The prefetcher
(`prefetch.BatchPrefetcher`) keeps one long-lived, credit-paced Sample call per
shard (at most `sample_window` learner batches ahead of the learner), draws from
each shard in proportion to its size and hands out learner batches from a
background prefetch queue.
Priority updates go to the shard that owns each item.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from distrl.proto.v1 import replay_pb2
from distrl.replay.connections import ReplayClientError, ShardConnection, status_of
from distrl.replay.messages import decode_table_stats
from distrl.replay.prefetch import BatchPrefetcher, LearnerBatch, PrefetchStats, proportional_counts
from distrl.replay.protocol import DEFAULT_TABLE
from distrl.replay.stats import FieldSpecInfo, TableStats
from distrl.replay.writer import (
    NO_INCARNATION,
    InsertRejectedError,
    ReplayWriter,
    WriterStats,
    home_shard,
    new_incarnation,
)
from distrl.wire.codec import CompressionName, encode
from distrl.wire.security import KeepaliveConfig, SecurityConfig

log = logging.getLogger(__name__)

__all__ = [
    "NO_INCARNATION",
    "CheckpointInfo",
    "FieldSpecInfo",
    "InsertRejectedError",
    "LearnerBatch",
    "PrefetchStats",
    "ReplayClient",
    "ReplayClientError",
    "ReplayWriter",
    "ShardInfo",
    "TableStats",
    "WriterStats",
    "home_shard",
    "new_incarnation",
    "proportional_counts",
]


@dataclass
class ShardInfo:
    index: int
    address: str
    up: bool
    tables: list[TableStats] = field(default_factory=list)
    last_checkpoint: str = ""
    uptime_s: float = 0.0
    error: str = ""

    def table(self, name: str) -> TableStats:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"shard {self.address} has no table {name!r}")


@dataclass
class CheckpointInfo:
    index: int
    address: str
    path: str
    duration_s: float


class ReplayClient:
    """Connections to K replay shards; thread-safe.

    `prefetch` is the depth of the learner-batch queue; `sample_window` how
    many learner batches' worth of items each shard may sample ahead of the
    learner (default: four times `prefetch`). Sampled items count for the
    shard's rate limiter whether or not the learner has them yet, so the window
    bounds how far sampling runs ahead of learning; the client grants credit
    half a window at a time, and each grant costs a few thread switches on
    both sides, so a window of two prefetch depths measured ~25% more CPU per
    batch than four (beyond four, little changes). `max_in_flight` is the
    default unacked window of writers; `sample_chunk_size` the items per
    sampled message (default: the learner batch size); `rate_limiter_timeout_s`
    how long a Sample call waits on a shard's rate limiter before it is
    re-opened (the wait is counted, not an error).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        table: str = DEFAULT_TABLE,
        security: SecurityConfig | None = None,
        keepalive: KeepaliveConfig | None = None,
        *,
        prefetch: int = 4,
        sample_window: int | None = None,
        max_in_flight: int = 8,
        sample_chunk_size: int | None = None,
        rate_limiter_timeout_s: float = 5.0,
        retry_interval_s: float = 0.5,
        probe_interval_s: float = 2.0,
        rpc_timeout_s: float = 10.0,
    ) -> None:
        if isinstance(addresses, str):
            addresses = [addresses]
        if not addresses:
            raise ValueError("addresses: at least one replay shard address is needed")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if sample_window is not None and sample_window < 2:
            # Below two, a shard could run out of credit while the learner waits for its share of a batch.
            raise ValueError(f"sample_window must be >= 2 learner batches, got {sample_window}")
        self.table = table
        self.prefetch = prefetch
        self.sample_window = 4 * prefetch if sample_window is None else sample_window
        self.max_in_flight = max_in_flight
        self.sample_chunk_size = sample_chunk_size
        self.rate_limiter_timeout_s = rate_limiter_timeout_s
        self.retry_interval_s = retry_interval_s
        self.probe_interval_s = probe_interval_s
        self.rpc_timeout_s = rpc_timeout_s
        self._shards = [ShardConnection.open(i, a, security, keepalive) for i, a in enumerate(addresses)]
        self._lock = threading.Lock()
        self._prefetcher: BatchPrefetcher | None = None
        self._writers: list[ReplayWriter] = []
        self._closed = False

    @property
    def shards(self) -> list[ShardConnection]:
        return list(self._shards)

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self._shards]

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    # -- writing ----------------------------------------------------------------------------------

    def writer(
        self,
        actor_id: str,
        *,
        max_in_flight: int | None = None,
        compression: CompressionName = "none",
        first_sequence: int | None = None,
        incarnation: bytes | None = None,
    ) -> ReplayWriter:
        """A writer for one actor; batches go to `home_shard(actor_id)` while it is up.

        `incarnation`: None draws a fresh one, so this writer's batches are never taken
        for another's resend; `NO_INCARNATION` keeps the writer's identity across
        processes (see `ReplayWriter`).
        """
        w = ReplayWriter(
            self,
            actor_id,
            max_in_flight=max_in_flight or self.max_in_flight,
            compression=compression,
            first_sequence=first_sequence,
            incarnation=incarnation,
            on_close=self._forget_writer,
        )
        with self._lock:
            self._writers.append(w)
        return w

    # -- sampling ---------------------------------------------------------------------------------

    def sample(
        self, batch_size: int, timeout: float | None = None, learner_version: int | None = None
    ) -> LearnerBatch:
        """The next learner batch of `batch_size` items from the prefetch queue.

        `learner_version` (the learner's current policy version) goes to the shards,
        which stamp it on the items inserted from then on (`LearnerBatch.learner_version`).
        Raises TimeoutError after `timeout` seconds without a batch, ReplayClientError
        when a shard refuses the stream for good (unknown table, bad token).
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        with self._lock:
            if self._closed:
                raise ReplayClientError("the replay client is closed")
            prefetcher = self._prefetcher
            if prefetcher is None or prefetcher.batch_size != batch_size:
                # A new batch size restarts the streams: buffered items were cut for the old one.
                if prefetcher is not None:
                    prefetcher.close()
                prefetcher = self._prefetcher = BatchPrefetcher(self, batch_size, learner_version or 0)
        return prefetcher.get(timeout, learner_version)

    def prefetch_stats(self) -> PrefetchStats:
        prefetcher = self._prefetcher
        if prefetcher is None:
            return PrefetchStats(shards_up=[False] * self.num_shards, shard_sizes=[0] * self.num_shards)
        return prefetcher.stats()

    def update_priorities(self, shard: np.ndarray, keys: np.ndarray, priorities: np.ndarray) -> int:
        """Send each item's new priority to the shard that owns it; returns how many items were updated.

        Items already evicted are not counted; a shard that is down is skipped (logged).
        """
        shard = np.asarray(shard)
        keys = np.asarray(keys, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if shard.ndim != 1 or keys.shape != shard.shape or priorities.shape != shard.shape:
            raise ValueError(
                f"shard {shard.shape}, keys {keys.shape} and priorities {priorities.shape} "
                "must be 1-D and of one length"
            )
        if shard.size and (shard.min() < 0 or shard.max() >= self.num_shards):
            raise ValueError(
                f"shard: indices must be in [0, {self.num_shards}), got {shard.min()}..{shard.max()}"
            )
        pending = []
        for k in np.unique(shard):
            mask = shard == k
            request = replay_pb2.UpdatePrioritiesRequest(
                table=self.table, keys=encode(keys[mask]), priorities=encode(priorities[mask])
            )
            stub = self._shards[int(k)].stub
            pending.append((int(k), stub.UpdatePriorities.future(request, timeout=self.rpc_timeout_s)))
        updated = 0
        for k, future in pending:
            try:
                updated += future.result().updated
            except grpc.RpcError as exc:
                code, details = status_of(exc)
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    log.warning("priority update to shard %s skipped: %s", self._shards[k].address, details)
                    continue
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise ValueError(
                        f"shard {self._shards[k].address} rejected the priorities: {details}"
                    ) from None
                raise ReplayClientError(f"shard {self._shards[k].address}: {code}: {details}") from None
        return updated

    # -- administration ---------------------------------------------------------------------------

    def info(self, timeout: float | None = None) -> list[ShardInfo]:
        """Per-shard table statistics; a shard that does not answer has `up=False` and `error`."""
        timeout = self.rpc_timeout_s if timeout is None else timeout
        futures = [s.stub.Info.future(replay_pb2.InfoRequest(), timeout=timeout) for s in self._shards]
        out = []
        for shard, future in zip(self._shards, futures, strict=True):
            try:
                resp = future.result()
            except grpc.RpcError as exc:
                code, details = status_of(exc)
                out.append(
                    ShardInfo(
                        shard.index, shard.address, up=False, error=f"{code.name if code else ''}: {details}"
                    )
                )
                continue
            out.append(
                ShardInfo(
                    shard.index,
                    shard.address,
                    up=True,
                    tables=[decode_table_stats(t) for t in resp.tables],
                    last_checkpoint=resp.last_checkpoint,
                    uptime_s=resp.uptime_s,
                )
            )
        return out

    def checkpoint(self, shard: int | None = None, timeout: float = 600.0) -> list[CheckpointInfo]:
        """Ask one shard (or every shard) to checkpoint now; raises ReplayClientError on failure."""
        targets = self._shards if shard is None else [self._shards[shard]]
        futures = [s.stub.Checkpoint.future(replay_pb2.CheckpointRequest(), timeout=timeout) for s in targets]
        done = []
        for s, future in zip(targets, futures, strict=True):
            try:
                resp = future.result()
            except grpc.RpcError as exc:
                code, details = status_of(exc)
                name = code.name if code is not None else "ERROR"
                raise ReplayClientError(f"checkpoint on {s.address} failed: {name}: {details}") from None
            done.append(CheckpointInfo(s.index, s.address, resp.path, resp.duration_s))
        return done

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            writers, self._writers = self._writers, []
            prefetcher, self._prefetcher = self._prefetcher, None
        for w in writers:
            w.close(timeout=0)
        if prefetcher is not None:
            prefetcher.close()
        for s in self._shards:
            s.channel.close()

    def __enter__(self) -> ReplayClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _forget_writer(self, writer: ReplayWriter) -> None:
        with self._lock:
            if writer in self._writers:
                self._writers.remove(writer)
