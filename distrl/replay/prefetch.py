"""The learner's prefetcher: a credit-paced Sample call per shard, learner batches cut in proportion to size.

(Which items a shard draws is its table's item sampler, `item_samplers`.)

Every batch a shard streams counts as sampled for its rate limiter, whether or
not the learner has taken it yet. An open-ended stream lets HTTP/2 flow control
buffer thousands of small batches nobody asked for, which defeats the limiter
(actors then run far ahead of `samples_per_insert`). So each shard's Sample
call is paced by credit: the shard has a window of `window` chunks
(`ReplayClient.sample_window` learner batches, by default four prefetch
depths); a chunk is owed from when the client grants it until the learner
receives the batch holding it; and the client grants more (on a GrantSamples
stream beside the call) as the learner takes batches. So a shard never
samples more than the window ahead of the learner.

The call and every grant carry the learner's current version (`get`'s
`learner_version`), which the shard stamps on the items inserted from then on:
what tells actor lag from sample age. A shard hears of a new version with the
next grant, so its stamp trails the learner by at most half a window of
learner batches.

A shard whose rate limiter has held its stream back for a whole
`rate_limiter_timeout_s` (no actor writes to it any more, say, after a
scale-down) is left out of the proportional split until it delivers again, so
the learner goes on with the shards that do get data instead of waiting on
one that never will. Shorter holds do not count: shards fed at a similar pace
stay in every batch.

Both calls are long-lived. Bounded Sample calls re-opened as they drain
(`num_batches` as the credit) were measured at under half the throughput:
every call pays gRPC's call setup and starts with a fresh HTTP/2 flow-control
window. And the batches come on a
unary-stream call, which the feed thread polls itself (the channel option in
`connections`), rather than on a bidirectional one, which gRPC hands over
through its channel-spin thread: one thread switch less per batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from distrl.proto.v1 import replay_pb2, replay_pb2_grpc
from distrl.replay.connections import FATAL_CODES, ReplayClientError, status_of
from distrl.replay.messages import DecodedSample, decode_sample_batch
from distrl.replay.rows import KEYS, LEARNER_VERSION, POLICY_VERSION
from distrl.wire.codec import TensorDecodeError

if TYPE_CHECKING:
    from distrl.replay.client import ReplayClient

log = logging.getLogger(__name__)

# Grant once 1/_GRANT_FRACTION of the window is free: one grant message per several batches, and
# the shard still holds the rest of its credit while the grant travels.
_GRANT_FRACTION = 2


@dataclass
class LearnerBatch:
    """A learner batch drawn across shards (built from the shards' SampleBatch messages).

    Arrays may be read-only, strided views of the received rows; copy before
    writing in place or handing them to code that needs contiguous memory.
    `weights` are importance weights (N P(i))^-beta normalised by the batch
    maximum (ones for uniform sampling); `shard` is the index of the shard owning
    each item, which `ReplayClient.update_priorities` needs beside `keys`.
    `policy_version` is the version of the policy that produced each item,
    `learner_version` the learner's version (as its shard had last heard it) when
    the item was inserted.
    """

    fields: dict[str, np.ndarray]
    keys: np.ndarray
    shard: np.ndarray
    weights: np.ndarray
    probabilities: np.ndarray
    policy_version: np.ndarray
    learner_version: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class PrefetchStats:
    batches: int = 0
    items: int = 0
    # Seconds the shards' streams waited on their rate limiter (DEADLINE_EXCEEDED and re-opened).
    rate_limited_wait_s: float = 0.0
    # Seconds `sample()` callers waited for the prefetch queue.
    starved_wait_s: float = 0.0
    reconnects: int = 0
    # Credit grants sent to the shards (each lets a shard send some more chunks).
    grants: int = 0
    shards_up: list[bool] = field(default_factory=list)
    # Shards left out of batches because their rate limiter holds them back (see the module doc).
    shards_held_back: list[bool] = field(default_factory=list)
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
    """Chunks received from one shard, waiting to go into learner batches, and the shard's credit."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.chunks: deque[DecodedSample] = deque()
        self.offset = 0  # items of chunks[0] already taken
        self.available = 0  # items received, not yet in a learner batch
        self.in_ready = 0  # items in learner batches the learner has not received yet
        self.granted = 0  # chunks granted to the open call, not received yet
        self.grants: _GrantStream | None = None  # the open call's credit
        self.call = None
        self.size = 0  # the shard's table size with its latest batch
        self.up = False
        self.waiting_since = time.monotonic()  # last message (or rate-limiter timeout) seen
        # The rate limiter held the call back for a whole timeout since the last message: the shard is
        # left out of learner batches until it delivers again.
        self.held_back = False

    def drop(self) -> None:
        self.chunks.clear()
        self.offset = 0
        self.available = 0
        self.size = 0
        self.up = False
        self.held_back = False

    def take(self, n: int) -> list[DecodedSample]:
        """The first `n` items as pieces (views; whole chunks pass through uncopied)."""
        pieces = []
        self.available -= n
        while n > 0:
            head = self.chunks[0]
            rest = head.size - self.offset
            if rest <= n:
                pieces.append(head if self.offset == 0 else _slice(head, self.offset, head.size))
                self.chunks.popleft()
                self.offset = 0
                n -= rest
            else:
                end = self.offset + n
                pieces.append(_slice(head, self.offset, end))
                self.offset = end
                n = 0
        return pieces


def _slice(chunk: DecodedSample, start: int, stop: int) -> DecodedSample:
    return DecodedSample(
        chunk.rows[start:stop],
        chunk.layout,
        chunk.table_size,
        None if chunk.probabilities is None else chunk.probabilities[start:stop],
        None if chunk.weights is None else chunk.weights[start:stop],
    )


class BatchPrefetcher:
    """A credit-paced Sample call per shard filling item buffers; learner batches are cut from them.

    A feed thread that has just received items cuts as many learner batches as the
    prefetch depth allows, so a batch costs one thread hand-off (feed -> caller).
    """

    def __init__(self, client: ReplayClient, batch_size: int, learner_version: int = 0) -> None:
        self.batch_size = batch_size
        self._client = client
        self._chunk = client.sample_chunk_size or batch_size
        chunks_per_batch = -(-batch_size // self._chunk)
        # Credit per shard, in chunks: `client.sample_window` learner batches (at least two, so a shard
        # always has the credit to fill its share of the batch the learner waits for).
        self.window = client.sample_window * chunks_per_batch
        self._grant_min = max(1, self.window // _GRANT_FRACTION)
        self._cond = threading.Condition()
        self._feeds = [_ShardFeed(i) for i in range(client.num_shards)]
        # Learner batches with the items each shard contributed (its credit, returned on hand-out).
        self._ready: deque[tuple[LearnerBatch, list[int]]] = deque()
        self._error: ReplayClientError | None = None
        self._stop = threading.Event()
        self._stats = PrefetchStats()
        # The learner's version as of its latest `get`: sent with every call and grant.
        self._learner_version = learner_version
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

    def get(self, timeout: float | None, learner_version: int | None = None) -> LearnerBatch:
        """The next learner batch; `learner_version` (the caller's policy version) goes to the shards."""
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        with self._cond:
            if learner_version is not None:
                self._learner_version = int(learner_version)
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
                batch, counts = self._ready.popleft()
                for feed, count in zip(self._feeds, counts, strict=True):
                    feed.in_ready -= count
                # Refill the prefetch queue from what the feeds hold, and grant the shards the
                # credit returned above.
                self._fill_ready()
                for feed in self._feeds:
                    self._grant(feed)
                return batch
            finally:
                self._stats.starved_wait_s += time.monotonic() - start

    def stats(self) -> PrefetchStats:
        with self._cond:
            s = PrefetchStats(**{k: v for k, v in self._stats.__dict__.items() if not isinstance(v, list)})
            s.shards_up = [f.up for f in self._feeds]
            s.shards_held_back = [f.held_back for f in self._feeds]
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

    # -- credit ------------------------------------------------------------------------------------

    def _free_chunks(self, feed: _ShardFeed) -> int:
        """(lock held) The window less what the shard is owed for: granted, received or in ready batches."""
        return self.window - feed.granted - -(-(feed.available + feed.in_ready) // self._chunk)

    def _grant(self, feed: _ShardFeed) -> None:
        """(lock held) Grant the shard's call the free credit, once there is enough for one message."""
        free = self._free_chunks(feed)
        if feed.grants is not None and free >= self._grant_min:
            feed.grants.send(free, self._learner_version)
            feed.granted += free
            self._stats.grants += 1

    # -- per-shard calls ---------------------------------------------------------------------------

    def _run_feed(self, feed: _ShardFeed) -> None:
        client = self._client
        cond = self._cond
        stop = self._stop
        shard = client.shards[feed.index]
        while not stop.is_set():
            credit_id = uuid.uuid4().hex
            with cond:
                # A new call starts with what is free (maybe nothing: get() grants as it frees).
                feed.granted = first = max(0, self._free_chunks(feed))
                learner_version = self._learner_version
            request = replay_pb2.SampleRequest(
                table=client.table,
                batch_size=self._chunk,
                num_batches=first,
                rate_limiter_timeout_ms=max(1, int(client.rate_limiter_timeout_s * 1000)),
                credit_id=credit_id,
                learner_version=learner_version,
            )
            call = shard.stub.Sample(request)
            # Without its grants the call would stall: when they stop, so does the call (and is re-opened).
            grants = _GrantStream(shard.stub, credit_id, on_end=call.cancel)
            with cond:
                feed.call, feed.grants = call, grants
            try:
                if stop.is_set():  # close() may have looked before the call existed
                    return
                self._read(feed, call)
                # The shard ended the call without an error (it does not, normally): open another.
            except grpc.RpcError as exc:
                if stop.is_set() or not self._call_failed(feed, exc, shard.address):
                    return
            except TensorDecodeError as exc:
                log.warning("malformed SampleBatch message from %s: %s; reconnecting", shard.address, exc)
                self._drop(feed)
                stop.wait(client.retry_interval_s)
            finally:
                with cond:
                    feed.grants, feed.granted, feed.call = None, 0, None
                grants.close()
                call.cancel()

    def _read(self, feed: _ShardFeed, call) -> None:
        """Take in a call's batches until it ends (a failed call raises after those it delivered)."""
        cond = self._cond
        for msg in call:
            decoded = decode_sample_batch(msg)
            with cond:
                feed.granted = max(0, feed.granted - 1)
                feed.chunks.append(decoded)
                feed.available += decoded.size
                feed.size = decoded.table_size
                feed.up = True
                feed.held_back = False
                feed.waiting_since = time.monotonic()
                self._fill_ready()
                cond.notify_all()

    def _call_failed(self, feed: _ShardFeed, exc: grpc.RpcError, address: str) -> bool:
        """Handle a call that ended with an error; False when the feed must stop (a fatal error)."""
        code, details = status_of(exc)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            # The shard's rate limiter (or min size) held the batch back: keep asking.
            with self._cond:
                now = time.monotonic()
                self._stats.rate_limited_wait_s += now - feed.waiting_since
                feed.waiting_since = now
                if not feed.held_back:
                    feed.held_back = True
                    if feed.up and any(f.up and not f.held_back for f in self._feeds):
                        log.info(
                            "replay shard %s: its rate limiter holds sampling back (no new data?); "
                            "sampling the other shards until it delivers again",
                            address,
                        )
                    self._fill_ready()  # the other shards may now make a batch on their own
                    self._cond.notify_all()
            return True
        fatal = code in FATAL_CODES or code == grpc.StatusCode.INVALID_ARGUMENT
        self._drop(feed)
        with self._cond:
            self._stats.reconnects += 1
            if fatal:
                self._error = ReplayClientError(f"replay shard {address}: {code.name}: {details}")
                self._cond.notify_all()
                return False
        log.debug("sample call to %s failed (%s: %s); retrying", address, code, details)
        self._stop.wait(self._client.retry_interval_s)
        return True

    def _drop(self, feed: _ShardFeed) -> None:
        """Forget what the shard delivered: it counts as down until it answers again."""
        with self._cond:
            feed.drop()
            self._cond.notify_all()

    # -- learner batches ---------------------------------------------------------------------------

    def _fill_ready(self) -> None:
        """(lock held) Cut learner batches until the prefetch queue is full or the feeds run short."""
        while len(self._ready) < self._client.prefetch and self._assemble():
            pass

    def _assemble(self) -> bool:
        """(lock held) Cut one learner batch from the feeds into the ready queue, if they hold enough."""
        feeds = self._feeds
        counts = proportional_counts(
            [f.size if f.up and not f.held_back else 0 for f in feeds], self.batch_size
        )
        if counts is None:
            return False
        for f, c in zip(feeds, counts, strict=True):
            if f.available < c:
                return False
        parts = [(f.index, c, f.take(c)) for f, c in zip(feeds, counts, strict=True) if c]
        try:
            batch = _concatenate(parts, self.batch_size)
        except ValueError as exc:  # shards whose tables hold different fields cannot share a batch
            self._error = ReplayClientError(f"cannot combine batches from shards: {exc}")
            self._cond.notify_all()
            return False
        for f, c in zip(feeds, counts, strict=True):
            f.in_ready += c
        self._ready.append((batch, counts))
        self._stats.batches += 1
        self._stats.items += self.batch_size
        return True


# Read-only vectors shared by every batch of one size (and shard): they are never written.
_SHARD_COLUMNS: dict[tuple[int, int], np.ndarray] = {}
_ONES: dict[int, np.ndarray] = {}


def _shard_column(shard: int, n: int) -> np.ndarray:
    column = _SHARD_COLUMNS.get((shard, n))
    if column is None:
        column = np.full(n, shard, dtype=np.int64)
        column.flags.writeable = False
        _SHARD_COLUMNS[(shard, n)] = column
    return column


def _ones(n: int) -> np.ndarray:
    ones = _ONES.get(n)
    if ones is None:
        ones = np.ones(n)
        ones.flags.writeable = False
        _ONES[n] = ones
    return ones


def _concatenate(parts: list[tuple[int, int, list[DecodedSample]]], n: int) -> LearnerBatch:
    pieces = [p for _, _, ps in parts for p in ps]
    first = pieces[0]
    names = first.layout.field_names
    if len(pieces) == 1:
        rows = first.rows
    elif all(p.rows.dtype == first.rows.dtype for p in pieces):
        rows = np.concatenate([p.rows for p in pieces])  # one block copy per piece
    else:  # shards laid their rows out differently: gather column by column
        missing = [name for p in pieces for name in names if name not in p.layout.by_name]
        if missing or any(len(p.layout.field_names) != len(names) for p in pieces):
            raise ValueError(f"fields differ between shards ({sorted(names)} vs. others)")
        rows = {
            name: np.concatenate([p.rows[name] for p in pieces])
            for name in (*names, KEYS, POLICY_VERSION, LEARNER_VERSION)
        }
    if len(parts) == 1:
        shard = _shard_column(parts[0][0], n)
    else:
        shard = np.repeat(np.array([k for k, _, _ in parts], dtype=np.int64), [c for _, c, _ in parts])
    if all(p.probabilities is None for p in pieces):
        if len(pieces) == 1:
            probabilities = np.full(n, 1.0 / first.table_size)
        else:
            probabilities = np.concatenate([np.full(p.size, 1.0 / p.table_size) for p in pieces])
        weights = _ones(n)
    else:
        probabilities = np.concatenate(
            [
                np.full(p.size, 1.0 / p.table_size) if p.probabilities is None else p.probabilities
                for p in pieces
            ]
        )
        weights = np.concatenate([np.ones(p.size) if p.weights is None else p.weights for p in pieces])
        top = weights.max()
        weights = weights / top if top > 0 else np.ones_like(weights)
    return LearnerBatch(
        fields={name: rows[name] for name in names},
        keys=rows[KEYS],
        shard=shard,
        weights=weights,
        probabilities=probabilities,
        policy_version=rows[POLICY_VERSION],
        learner_version=rows[LEARNER_VERSION],
    )


class _GrantStream:
    """A GrantSamples call carrying one Sample call's credit; `on_end` runs when it ends (for any reason)."""

    def __init__(self, stub: replay_pb2_grpc.ReplayStub, credit_id: str, on_end: Callable[[], Any]) -> None:
        self._credit_id = credit_id
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._future = stub.GrantSamples.future(_iterate(self._queue))
        self._future.add_done_callback(lambda _: on_end())

    def send(self, num_batches: int, learner_version: int) -> None:
        self._queue.put(
            replay_pb2.SampleGrant(
                credit_id=self._credit_id, num_batches=num_batches, learner_version=learner_version
            )
        )

    def close(self) -> None:
        self._queue.put(None)  # ends gRPC's request-sending thread
        self._future.cancel()


def _iterate(requests: queue.SimpleQueue) -> Iterator[replay_pb2.SampleGrant]:
    """Requests as gRPC sends them; None ends the stream."""
    while (request := requests.get()) is not None:
        yield request
