"""ReplayWriter: one actor's batches to its home shard, with failover and a bounded unacked window.

Batches are packed into rows before they are queued (`pack_transition_batch`),
so a batch that cannot be packed fails in `insert` itself, and a resend is the
same bytes again.
"""

from __future__ import annotations

import logging
import queue
import re
import secrets
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from distrl.proto.v1 import replay_pb2
from distrl.replay.connections import (
    FATAL_CODES,
    REJECTED_CODES,
    ReplayClientError,
    ShardConnection,
    status_of,
)
from distrl.replay.ledger import AckLedger
from distrl.replay.messages import pack_transition_batch
from distrl.replay.protocol import REJECTED_FIELD_KEY, SERVICE_NAME
from distrl.wire.codec import CompressionName
from distrl.wire.retry import Backoff

if TYPE_CHECKING:
    from distrl.replay.client import ReplayClient

log = logging.getLogger(__name__)

_NUMBERED = re.compile(r"(.*)-([0-9]+)", re.DOTALL)
# A writer that keeps its actor_id across restarts on purpose (see `ReplayWriter`).
NO_INCARNATION = b""
# The longest a writer waits before going round the shards again.
_MAX_ROUND_BACKOFF_S = 5.0


class InsertRejectedError(ValueError):
    """The writer's report that a shard rejected one of its batches (`spec.SpecViolation` on the shard).

    `field` names the offending field, `sequence` the batch.
    """

    def __init__(self, actor_id: str, sequence: int, field: str, message: str) -> None:
        super().__init__(message)
        self.actor_id = actor_id
        self.sequence = sequence
        self.field = field


@dataclass
class WriterStats:
    batches_sent: int = 0
    bytes_sent: int = 0  # serialized TransitionBatch bytes queued (after compression), resends excluded
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    failovers: int = 0
    rate_limited_retries: int = 0
    home_shard: int = 0
    current_shard: int | None = None
    table_size: int = 0


def new_incarnation() -> bytes:
    """128 random bits from the OS: no two writer incarnations ever share one."""
    return secrets.token_bytes(16)


def home_shard(actor_id: str, num_shards: int) -> int:
    """The shard an actor writes to while it is up; stable across processes and runs.

    Launchers number their actors (`actor-0`, `actor-1`, ...): an id ending in
    `-<digits>` goes to `(crc32(prefix) + index) % num_shards`, so consecutive
    actors land on consecutive shards instead of wherever their hashes fall.
    Other ids go to `crc32(id) % num_shards`.
    """
    match = _NUMBERED.fullmatch(actor_id)
    if match is None:
        return zlib.crc32(actor_id.encode()) % num_shards
    prefix, index = match.groups()
    return (zlib.crc32(prefix.encode()) + int(index)) % num_shards


def _rejected_field(error: grpc.RpcError) -> str:
    try:
        for key, value in error.trailing_metadata() or ():
            if key == REJECTED_FIELD_KEY:
                return value
    except Exception:  # a locally generated error carries no trailing metadata
        pass
    return "<batch>"


class _InsertStream:
    """One Insert call to one shard: a request queue feeding gRPC and a thread reading acks."""

    def __init__(self, writer: ReplayWriter, shard: ShardConnection) -> None:
        self.writer = writer
        self.shard = shard
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self.call = shard.stub.Insert(self._iterate())
        self._reader = threading.Thread(
            target=self._read, name=f"replay-acks-{writer.actor_id}-{shard.index}", daemon=True
        )
        self._reader.start()

    def _iterate(self):
        get = self._requests.get
        while (item := get()) is not None:
            yield item

    def send(self, request: replay_pb2.TransitionBatch) -> None:
        self._requests.put(request)

    def half_close(self) -> None:
        """No more requests: the server finishes the ones sent and ends the call."""
        self._requests.put(None)

    def cancel(self) -> None:
        self.half_close()
        self.call.cancel()

    def join(self, timeout: float | None) -> None:
        if self._reader is not threading.current_thread():
            self._reader.join(timeout)

    def _read(self) -> None:
        error: grpc.RpcError | None = None
        try:
            for ack in self.call:
                self.writer._on_ack(self, ack)
        except grpc.RpcError as exc:
            error = exc
        # gRPC's sending thread may be parked in _iterate; release it.
        self.half_close()
        self.writer._on_stream_end(self, error)


class ReplayWriter:
    """Streams one actor's batches to its home shard, with failover and a bounded unacked window.

    Every batch gets the next sequence number; the shard acks it and recognises
    a resend by (actor_id, incarnation, sequence), so after a reconnect the
    unacked batches are simply sent again. `actor_id` names the writer for people
    and picks its home shard; two writers may share it (colliding pod-name
    hashes, an actor and its restart). The incarnation tells them apart: random
    bytes drawn per writer (`new_incarnation`, or the caller's own, used for one
    writer only), so one writer's batches are never taken for another's resend.
    `incarnation=NO_INCARNATION` opts out: the writer is its actor_id across
    processes, and a restarted one that starts from the same `first_sequence`
    has its resends recognised (the learner's demo inserter). Sequences start at
    the wall clock in microseconds unless `first_sequence` says otherwise.
    """

    def __init__(
        self,
        client: ReplayClient,
        actor_id: str,
        *,
        max_in_flight: int = 8,
        compression: CompressionName = "none",
        first_sequence: int | None = None,
        incarnation: bytes | None = None,
        on_close: Callable[[ReplayWriter], None] | None = None,
    ) -> None:
        if not actor_id:
            raise ValueError("actor_id must be a non-empty string")
        self.actor_id = actor_id
        self.incarnation = new_incarnation() if incarnation is None else bytes(incarnation)
        self.max_in_flight = max_in_flight
        self.compression: CompressionName = compression
        self._client = client
        self._on_close = on_close
        self._shards = client.shards
        self.home = home_shard(actor_id, len(self._shards))
        self._next_sequence = time.time_ns() // 1000 if first_sequence is None else int(first_sequence)
        self._cond = threading.Condition()
        self._unacked: deque[replay_pb2.TransitionBatch] = deque()
        self._stream: _InsertStream | None = None
        # True while a failed stream's reader thread picks (and may back off before) the next shard.
        self._reconnecting = False
        self._rejections: deque[InsertRejectedError] = deque()
        self._fatal: ReplayClientError | None = None
        self._closed = False
        self._stop = threading.Event()
        self._failures_since_ack = 0
        # Waits between rounds of the shards, once every shard failed since the last ack.
        self._round_backoff = Backoff(client.retry_interval_s, _MAX_ROUND_BACKOFF_S)
        self._next_probe = 0.0
        self._probing = False
        self._home_ready = False
        self._stats = WriterStats(home_shard=self.home)
        # Opt-in (DISTRL_ACK_LEDGER_DIR): a line per batch sent and acked, to count losses after a crash.
        self._ledger = AckLedger.from_env(actor_id, self.incarnation)

    @property
    def next_sequence(self) -> int:
        return self._next_sequence

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._unacked)

    def stats(self) -> WriterStats:
        with self._cond:
            s = WriterStats(**self._stats.__dict__)
            s.current_shard = self._stream.shard.index if self._stream is not None else None
            return s

    def insert(
        self, fields: dict[str, np.ndarray], policy_version: int = 0, timeout: float | None = None
    ) -> int:
        """Queue one batch (columnar arrays with a shared leading dimension); returns its sequence.

        Blocks while `max_in_flight` batches are unacked (the shard's rate limiter
        holds acks back). Raises ValueError naming a field that cannot be packed (a
        scalar, a length that differs from the first field's, an unsupported dtype),
        InsertRejectedError for an earlier batch the shard rejected (this call's batch is
        then not queued), ReplayClientError on unrecoverable errors and TimeoutError when
        the window stays full for `timeout`.
        """
        request = pack_transition_batch(
            fields,
            table=self._client.table,
            actor_id=self.actor_id,
            policy_version=int(policy_version),
            compression=self.compression,
        )
        request.incarnation = self.incarnation
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._raise_pending()
            while True:
                if self._should_go_home():
                    if not self._unacked:
                        self._go_home()
                    else:  # acks must come from the shard that stored the batches: drain first
                        self._wait(deadline, timeout)
                        continue
                if len(self._unacked) < self.max_in_flight:
                    break
                self._wait(deadline, timeout)
            request.sequence = sequence = self._next_sequence
            self._next_sequence += 1
            self._unacked.append(request)
            if self._ledger is not None:
                self._ledger.sent(sequence, len(next(iter(fields.values()))))
            self._stats.batches_sent += 1
            self._stats.bytes_sent += request.ByteSize()
            if self._stream is not None:
                self._stream.send(request)
            elif not self._reconnecting:
                self._open(self._last_shard)
            # else: the reconnecting reader sends every unacked batch, this one included
            return sequence

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued batch is acked.

        Raises TimeoutError, InsertRejectedError (a batch the shard rejected) or ReplayClientError.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._unacked:
                self._wait(deadline, timeout)
            self._raise_pending()

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush (up to `timeout`), then end the stream. Unacked batches left are dropped."""
        try:
            if timeout is None or timeout > 0:
                self.flush(timeout)
        finally:
            with self._cond:
                self._closed = True
                self._stop.set()
                stream, self._stream = self._stream, None
                self._cond.notify_all()
            if stream is not None:
                stream.half_close()
                stream.join(1.0)
                stream.call.cancel()
            if self._ledger is not None:
                self._ledger.close()
            if self._on_close is not None:
                self._on_close(self)

    def __enter__(self) -> ReplayWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals (called with or without the lock as noted) --------------------------------------

    @property
    def _last_shard(self) -> int:
        return self._stats.current_shard if self._stats.current_shard is not None else self.home

    def _raise_pending(self) -> None:
        """(lock held)"""
        if self._fatal is not None:
            raise self._fatal
        if self._closed:
            raise ReplayClientError(f"writer {self.actor_id!r} is closed")
        if self._rejections:
            raise self._rejections.popleft()

    def _open(self, index: int) -> None:
        """(lock held) Start a stream to shard `index` and (re)send every unacked batch on it."""
        stream = _InsertStream(self, self._shards[index])
        for request in self._unacked:
            stream.send(request)
        self._stream = stream
        self._stats.current_shard = index

    def _on_ack(self, stream: _InsertStream, ack: replay_pb2.InsertAck) -> None:
        with self._cond:
            if stream is not self._stream:
                return
            # Acks are cumulative: this one covers every unacked batch up to its sequence.
            unacked = self._unacked
            covered = 0
            resent = set(ack.resent) if ack.resent else ()
            ledger = self._ledger
            while unacked and unacked[0].sequence <= ack.sequence:
                sequence = unacked.popleft().sequence
                covered += 1
                if ledger is not None:
                    stored = sequence not in resent and (sequence != ack.sequence or ack.stored)
                    ledger.acked(stream.shard.index, sequence, stored)
            duplicates = len(resent) if ack.batches else int(not ack.stored)
            self._stats.stored += max(covered - duplicates, 0)
            self._stats.duplicates += duplicates
            self._stats.table_size = ack.table_size
            self._failures_since_ack = 0
            self._cond.notify_all()

    def _on_stream_end(self, stream: _InsertStream, error: grpc.RpcError | None) -> None:
        with self._cond:
            if stream is not self._stream or self._closed:
                return  # replaced (going home) or closed on purpose
            self._stream = None
            self._reconnecting = True
            code, details = status_of(error) if error is not None else (None, "stream ended")
            target = stream.shard.index
            delay = 0.0
            if code in REJECTED_CODES:
                if self._unacked:
                    # A shard handles a stream in order and acked all before the bad batch: it is the head.
                    bad = self._unacked.popleft()
                    self._stats.rejected += 1
                    self._rejections.append(
                        InsertRejectedError(self.actor_id, bad.sequence, _rejected_field(error), details)
                    )
            elif code in FATAL_CODES:
                self._fatal = ReplayClientError(
                    f"replay shard {stream.shard.address}: {code.name}: {details}"
                )
                self._reconnecting = False
                self._cond.notify_all()
                return
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                # The rate limiter held this batch longer than the shard's max wait: keep waiting there.
                self._stats.rate_limited_retries += 1
            else:
                # UNAVAILABLE, CANCELLED, a reset connection: try the next shard in order.
                self._failures_since_ack += 1
                self._stats.failovers += 1
                target = (target + 1) % len(self._shards)
                # Once every shard failed since the last ack, back off before going round again.
                delay = self._round_backoff.delay(self._failures_since_ack // len(self._shards))
                log.info(
                    "writer %s: shard %s failed (%s: %s)", self.actor_id, stream.shard.address, code, details
                )
            self._cond.notify_all()
        if delay:
            self._stop.wait(delay)
        with self._cond:
            self._reconnecting = False
            if not self._closed and self._stream is None and self._fatal is None:
                self._open(target)

    def _wait(self, deadline: float | None, timeout: float | None) -> None:
        """(lock held) Wait for an ack or a state change; TimeoutError past `deadline`."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(
                f"writer {self.actor_id!r}: {len(self._unacked)} batches unacked after {timeout}s"
            )
        self._cond.wait(remaining)
        self._raise_pending()

    def _should_go_home(self) -> bool:
        """(lock held) Away from home: probe it now and then; True once it serves again."""
        stream = self._stream
        if stream is None or stream.shard.index == self.home:
            self._home_ready = False
            return False
        if self._home_ready:
            return True
        now = time.monotonic()
        if not self._probing and now >= self._next_probe:
            self._probing = True
            self._next_probe = now + self._client.probe_interval_s
            future = self._shards[self.home].health.Check.future(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=1.0
            )
            future.add_done_callback(self._probe_done)
        return False

    def _go_home(self) -> None:
        """(lock held, nothing unacked) End the stream to the stand-in shard and open one to home."""
        stream = self._stream
        assert stream is not None and not self._unacked
        self._stream = None
        self._home_ready = False
        stream.half_close()
        self._open(self.home)

    def _probe_done(self, future) -> None:
        try:
            ok = future.result().status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            ok = False
        with self._cond:
            self._probing = False
            self._home_ready = ok
