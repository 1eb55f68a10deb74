"""Sampling across shards: one Sample stream per shard, learner batches cut in proportion to shard sizes."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import numpy as np

from distrl.proto.v1 import replay_pb2
from distrl.replay.connections import FATAL_CODES, ReplayClientError, status_of
from distrl.replay.messages import META_COLUMNS, DecodedSample, decode_sample_batch, uniform_weights
from distrl.wire.codec import TensorDecodeError

if TYPE_CHECKING:
    from distrl.replay.client import ReplayClient

log = logging.getLogger(__name__)


@dataclass
class SampleBatch:
    """A learner batch drawn across shards.

    Arrays may be read-only views of the received message; copy before writing in place.
    `weights` are importance weights (N P(i))^-beta normalised by the batch maximum
    (ones for uniform sampling); `shard` is the index of the shard owning each item,
    which `ReplayClient.update_priorities` needs beside `keys`.
    """

    fields: dict[str, np.ndarray]
    keys: np.ndarray
    shard: np.ndarray
    weights: np.ndarray
    probabilities: np.ndarray
    policy_version: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class SamplerStats:
    batches: int = 0
    items: int = 0
    # Seconds the shards' Sample streams waited on their rate limiter (DEADLINE_EXCEEDED and retried).
    rate_limited_wait_s: float = 0.0
    # Seconds `sample()` callers waited for the prefetch queue.
    starved_wait_s: float = 0.0
    reconnects: int = 0
    shards_up: list[bool] = field(default_factory=list)
    shard_sizes: list[int] = field(default_factory=list)


def proportional_counts(sizes: Sequence[int], total: int) -> list[int] | None:
    """Split `total` items over shards in proportion to `sizes` (largest remainder); None if all are 0."""
    weight = sum(sizes)
    if weight <= 0:
        return None
    quotas = [s * total / weight for s in sizes]
    counts = [int(q) for q in quotas]
    short = total - sum(counts)
    if short:
        # Ties go to the lower shard index, so the split is deterministic.
        order = sorted(range(len(sizes)), key=lambda i: (counts[i] - quotas[i], i))
        for i in order[:short]:
            counts[i] += 1
    return counts


class _ShardFeed:
    """Items received from one shard's Sample stream, waiting to go into learner batches."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.chunks: deque[DecodedSample] = deque()
        self.offset = 0  # items of chunks[0] already taken
        self.available = 0
        self.size = 0  # the shard's table size with its latest batch
        self.up = False
        self.call = None

    def drop(self) -> None:
        self.chunks.clear()
        self.offset = 0
        self.available = 0
        self.size = 0
        self.up = False

    def take(self, n: int) -> list[dict[str, np.ndarray]]:
        """Up to the first `n` items as column dicts (views; whole chunks pass through uncopied)."""
        pieces = []
        self.available -= n
        while n > 0:
            head = self.chunks[0]
            rest = head.size - self.offset
            if rest <= n:
                cols = head.columns
                pieces.append(cols if self.offset == 0 else {k: v[self.offset :] for k, v in cols.items()})
                self.chunks.popleft()
                self.offset = 0
                n -= rest
            else:
                end = self.offset + n
                pieces.append({k: v[self.offset : end] for k, v in head.columns.items()})
                self.offset = end
                n = 0
        return pieces


class BatchPrefetcher:
    """One long-lived Sample stream per shard filling item buffers; learner batches are cut from them.

    A feed thread that has just received items cuts as many learner batches as the
    prefetch depth allows, so a batch costs one thread hand-off (feed -> caller).
    """

    def __init__(self, client: ReplayClient, batch_size: int) -> None:
        self.batch_size = batch_size
        self._client = client
        self._chunk = client.sample_chunk_size or batch_size
        # Room for a learner batch plus one chunk in flight, so a feed never starves the assembly.
        self._feed_capacity = max(self._chunk, batch_size) + self._chunk
        self._cond = threading.Condition()
        self._feeds = [_ShardFeed(i) for i in range(client.num_shards)]
        self._ready: deque[SampleBatch] = deque()
        self._error: ReplayClientError | None = None
        self._stop = threading.Event()
        self._stats = SamplerStats()
        self._seed_sizes()
        self._threads = [
            threading.Thread(target=self._run_feed, args=(f,), name=f"replay-sample-{f.index}", daemon=True)
            for f in self._feeds
        ]
        for t in self._threads:
            t.start()

    def _seed_sizes(self) -> None:
        """Start from each shard's current size (one Info call), so the first batches are proportional too.

        Otherwise a shard counts as empty until its stream delivers, and the first
        batches come from whichever shard answers first.
        """
        client = self._client
        if client.num_shards == 1:
            return
        timeout = min(client.rpc_timeout_s, 2.0)
        futures = [s.stub.Info.future(replay_pb2.InfoRequest(), timeout=timeout) for s in client.shards]
        for feed, future in zip(self._feeds, futures, strict=True):
            try:
                tables = future.result().tables
            except grpc.RpcError:
                continue  # down: its stream will retry
            for t in tables:
                # Below min_size_to_sample a shard cannot serve yet: it counts once its stream delivers.
                if t.name == client.table and t.size >= max(1, t.min_size_to_sample):
                    feed.size, feed.up = t.size, True

    def get(self, timeout: float | None) -> SampleBatch:
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        with self._cond:
            try:
                while not self._ready:
                    if self._error is not None:
                        raise self._error
                    if self._assemble():
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(
                            f"no sample batch within {timeout}s (shards up: {[f.up for f in self._feeds]}, "
                            f"sizes: {[f.size for f in self._feeds]})"
                        )
                    self._cond.wait(remaining)
                batch = self._ready.popleft()
                self._cond.notify_all()  # room in the prefetch queue: feeds may cut the next batch
                return batch
            finally:
                self._stats.starved_wait_s += time.monotonic() - start

    def stats(self) -> SamplerStats:
        with self._cond:
            s = SamplerStats(**{k: v for k, v in self._stats.__dict__.items() if not isinstance(v, list)})
            s.shards_up = [f.up for f in self._feeds]
            s.shard_sizes = [f.size for f in self._feeds]
            return s

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            calls = [f.call for f in self._feeds if f.call is not None]
            self._cond.notify_all()
        for call in calls:
            call.cancel()
        for t in self._threads:
            t.join(2.0)

    # -- per-shard stream --------------------------------------------------------------------------

    def _run_feed(self, feed: _ShardFeed) -> None:
        client = self._client
        shard = client.shards[feed.index]
        request = replay_pb2.SampleRequest(
            table=client.table,
            batch_size=self._chunk,
            num_batches=0,
            rate_limiter_timeout_ms=max(1, int(client.rate_limiter_timeout_s * 1000)),
        )
        cond = self._cond
        stop = self._stop
        prefetch = client.prefetch
        while not stop.is_set():
            waited_from = time.monotonic()
            try:
                call = shard.stub.Sample(request)
                with cond:
                    feed.call = call
                if stop.is_set():
                    call.cancel()
                    return
                # A failed stream reports its status only after the messages it delivered are read,
                # so a dead shard's buffered items are used up first (they are valid).
                for msg in call:
                    decoded = decode_sample_batch(msg)
                    with cond:
                        while feed.available >= self._feed_capacity and not stop.is_set():
                            if not (len(self._ready) < prefetch and self._assemble()):
                                cond.wait()
                        feed.chunks.append(decoded)
                        feed.available += decoded.size
                        feed.size = decoded.table_size
                        feed.up = True
                        while len(self._ready) < prefetch and self._assemble():
                            pass
                        cond.notify_all()
                    waited_from = time.monotonic()
            except grpc.RpcError as exc:
                if stop.is_set():
                    return
                code, details = status_of(exc)
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    # The shard's rate limiter (or min size) held the batch back: keep waiting.
                    with cond:
                        self._stats.rate_limited_wait_s += time.monotonic() - waited_from
                    continue
                fatal = code in FATAL_CODES or code == grpc.StatusCode.INVALID_ARGUMENT
                with cond:
                    self._stats.reconnects += 1
                    feed.drop()
                    if fatal:
                        self._error = ReplayClientError(
                            f"replay shard {shard.address}: {code.name}: {details}"
                        )
                    cond.notify_all()
                if fatal:
                    return
                log.debug("sample stream to %s failed (%s: %s); retrying", shard.address, code, details)
                stop.wait(client.retry_interval_s)
            except TensorDecodeError as exc:
                log.warning("malformed SampleBatch from %s: %s; reconnecting", shard.address, exc)
                with cond:
                    feed.drop()
                    cond.notify_all()
                stop.wait(client.retry_interval_s)

    # -- learner batches ---------------------------------------------------------------------------

    def _assemble(self) -> bool:
        """(lock held) Cut one learner batch from the feeds into the ready queue, if they hold enough."""
        feeds = self._feeds
        counts = proportional_counts([f.size if f.up else 0 for f in feeds], self.batch_size)
        if counts is None:
            return False
        for f, c in zip(feeds, counts, strict=True):
            if f.available < c:
                return False
        parts = [(f.index, c, f.take(c)) for f, c in zip(feeds, counts, strict=True) if c]
        self._ready.append(_concatenate(parts, self.batch_size))
        self._stats.batches += 1
        self._stats.items += self.batch_size
        return True


# A read-only vector of one shard index per item, shared by every batch of that shard and size.
_SHARD_COLUMNS: dict[tuple[int, int], np.ndarray] = {}


def _shard_column(shard: int, n: int) -> np.ndarray:
    column = _SHARD_COLUMNS.get((shard, n))
    if column is None:
        column = np.full(n, shard, dtype=np.int64)
        column.flags.writeable = False
        _SHARD_COLUMNS[(shard, n)] = column
    return column


def _concatenate(parts: list[tuple[int, int, list[dict[str, np.ndarray]]]], n: int) -> SampleBatch:
    pieces = [p for _, _, ps in parts for p in ps]
    if len(pieces) == 1:
        cols = pieces[0]
    else:
        cols = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    if len(parts) == 1:
        shard = _shard_column(parts[0][0], n)
    else:
        shard = np.repeat(np.array([k for k, _, _ in parts], dtype=np.int64), [c for _, c, _ in parts])
    weights = cols["weights"]
    if weights is not uniform_weights(n):  # uniform batches (the shared ones) need no normalising
        top = weights.max()
        weights = weights / top if top > 0 else np.ones_like(weights)
    return SampleBatch(
        fields={k: v for k, v in cols.items() if k not in META_COLUMNS},
        keys=cols["keys"],
        shard=shard,
        weights=weights,
        probabilities=cols["probabilities"],
        policy_version=cols["policy_version"],
    )
