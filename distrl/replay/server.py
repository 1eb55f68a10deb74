"""The replay shard: named tables served over gRPC (`distrl.v1.Replay`).

`ReplayShard` owns the tables (restored from the newest checkpoint on start,
checkpointed on request, periodically and on shutdown); `ReplayServicer`
turns RPCs into table calls and table errors into status codes:

- a batch (packed rows or per-field tensors) that does not match the table's
  spec, or whose layout or tensors are malformed -> INVALID_ARGUMENT naming the
  field (nothing of it stored; the stream ends, the shard keeps serving);
- Insert or UpdatePriorities request bytes that do not parse -> INVALID_ARGUMENT
  naming the message type (`wire.requests`);
- a paced Sample call (`credit_id`) that shares its id with an open one -> ALREADY_EXISTS;
- an unknown table -> NOT_FOUND;
- a prioritized Sample when every stored item has priority 0 -> FAILED_PRECONDITION;
- a rate-limiter wait that ran out -> DEADLINE_EXCEEDED saying which side waited;
- a shard shutting down -> UNAVAILABLE (clients fail over).

Sample yields (proto) SampleBatch messages serialized by hand (`encode_sample_batch`:
the gathered rows copied once) and registers its handlers itself to pass them
through. A paced Sample call sends one batch per unit of credit, which its
GrantSamples stream tops up (`_SampleCredits`). The learner version a Sample
request or grant carries goes to the table (`Table.note_learner_version`),
which stamps it on the items inserted from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from distrl.proto.v1 import replay_pb2, replay_pb2_grpc
from distrl.replay.acks import CumulativeAcks
from distrl.replay.checkpoint import restore_tables, write_checkpoint
from distrl.replay.config import ReplayShardConfig
from distrl.replay.item_samplers import NoPriorityMass
from distrl.replay.messages import decode_transition_batch, encode_sample_batch, encode_table_stats
from distrl.replay.protocol import DEFAULT_TABLE, REJECTED_FIELD_KEY, SERVICE_NAME
from distrl.replay.rows import LayoutError, PackedBatch
from distrl.replay.sequences import MAX_INCARNATION_BYTES
from distrl.replay.spec import SpecViolation
from distrl.replay.stats import TableStats
from distrl.replay.table import RateLimiterTimeout, Table, TableClosed
from distrl.wire.codec import TensorDecodeError, decode
from distrl.wire.requests import (
    MAX_DETAILS,
    MalformedRequest,
    header_safe,
    refuse_if_malformed,
    refusing_malformed,
    request_parser,
)
from distrl.wire.security import KeepaliveConfig, SecurityConfig
from distrl.wire.server import BlockingPool, CallGone, RunningServer, start_server

log = logging.getLogger(__name__)

# The largest batch one Sample message may carry (a learner batch is hundreds to a few thousand).
MAX_SAMPLE_BATCH = 65536
# How often a paced Sample call waiting for credit checks whether its caller went away.
_CREDIT_POLL_S = 0.2


@dataclass(frozen=True)
class CheckpointResult:
    path: Path
    duration_s: float


class ReplayShard:
    """The tables of one shard and their checkpoints.

    Restores from the newest checkpoint in `config.checkpoint_dir` (fresh tables
    when there is none) and, with `checkpoint_every_s`, checkpoints in a
    background thread.
    """

    def __init__(self, config: ReplayShardConfig) -> None:
        self.config = config
        self._started = time.monotonic()
        self._closing = threading.Event()
        self._checkpoint_lock = threading.Lock()
        self._closed = False
        # Batches rejected before they reached a table (undecodable tensors, no actor id), per table.
        self._undecodable: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        directory = Path(config.checkpoint_dir) if config.checkpoint_dir is not None else None
        self.tables, self.last_checkpoint = restore_tables(config.tables, directory, config.seed)
        if self.last_checkpoint is not None:
            log.info("restored replay tables from %s", self.last_checkpoint)
        self._periodic: threading.Thread | None = None
        if config.checkpoint_dir is not None and config.checkpoint_every_s is not None:
            self._periodic = threading.Thread(
                target=self._checkpoint_periodically, name="replay-checkpoint", daemon=True
            )
            self._periodic.start()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self._started

    def table(self, name: str) -> Table:
        """The table called `name` (the empty name means `default`); KeyError names the known ones."""
        try:
            return self.tables[name or DEFAULT_TABLE]
        except KeyError:
            raise KeyError(f"no table {name!r} on this shard (tables: {sorted(self.tables)})") from None

    def checkpoint(self) -> CheckpointResult:
        """Write every table to a new checkpoint; raises RuntimeError without a checkpoint_dir."""
        if self.config.checkpoint_dir is None:
            raise RuntimeError("this shard has no checkpoint_dir configured")
        with self._checkpoint_lock:
            start = time.perf_counter()
            path = write_checkpoint(
                self.tables.values(), Path(self.config.checkpoint_dir), keep=self.config.keep_checkpoints
            )
            self.last_checkpoint = path
            return CheckpointResult(path, time.perf_counter() - start)

    def count_undecodable(self, table: str) -> None:
        with self._counts_lock:
            self._undecodable[table] = self._undecodable.get(table, 0) + 1

    def undecodable_batches(self, table: str) -> int:
        """Batches for `table` rejected before reaching it (undecodable tensors, no actor id)."""
        return self._undecodable.get(table, 0)

    def table_stats(self, name: str) -> TableStats:
        """A table's statistics, counting the batches rejected before they reached it as rejected too."""
        stats = self.tables[name].stats()
        return dataclasses.replace(
            stats, rejected_batches=stats.rejected_batches + self.undecodable_batches(name)
        )

    def begin_shutdown(self) -> None:
        """Refuse new work: waiting calls stop waiting and end with UNAVAILABLE."""
        self._closing.set()

    def close(self, final_checkpoint: bool = True) -> None:
        """Stop the periodic checkpoints, write a final one (with a checkpoint_dir), close the tables.

        Idempotent: only the first call checkpoints.
        """
        self.begin_shutdown()
        with self._checkpoint_lock:
            if self._closed:
                return
            self._closed = True
        if self._periodic is not None:
            self._periodic.join()
        try:
            if final_checkpoint and self.config.checkpoint_dir is not None:
                result = self.checkpoint()
                log.info("final checkpoint %s (%.2fs)", result.path, result.duration_s)
        finally:
            for table in self.tables.values():
                table.close()

    def _checkpoint_periodically(self) -> None:
        every = float(self.config.checkpoint_every_s or 0)
        while not self._closing.wait(every):
            try:
                self.checkpoint()
            except Exception:  # a failed checkpoint must not kill the shard; the next one may succeed
                log.exception("periodic checkpoint failed")


class ReplayServicer(replay_pb2_grpc.ReplayServicer):
    """`distrl.v1.Replay` over a `ReplayShard`, as async handlers on the server's event loop.

    An open stream holds no thread: table work runs in thread pools, one for
    writers (inserts, which may wait for the rate limiter) and one for the
    learner (samples and priority updates), so writers held back by the limiter
    never delay the samples that release them. Info and Checkpoint use a third.
    """

    def __init__(self, shard: ReplayShard, writer_threads: int = 16, learner_threads: int = 4) -> None:
        self.shard = shard
        self._credits = _SampleCredits()
        self._writers = BlockingPool("replay-insert", writer_threads)
        self._learner = BlockingPool("replay-sample", learner_threads)
        self._control = BlockingPool("replay-control", 2)
        # Inserts waiting in the writers' pool (event loop only).
        self._held_back = 0
        self._ack_delay_s = shard.config.ack_delay_ms / 1000.0

    def register(self, server: grpc.aio.Server) -> None:
        # As `replay_pb2_grpc.add_ReplayServicer_to_server`, except that Sample yields its
        # SampleBatch messages already serialized (`encode_sample_batch`).
        pb = replay_pb2
        handlers = {
            "Insert": grpc.stream_stream_rpc_method_handler(
                self.Insert, request_parser(pb.TransitionBatch), pb.InsertAck.SerializeToString
            ),
            "Sample": grpc.unary_stream_rpc_method_handler(
                refusing_malformed(self.Sample), request_parser(pb.SampleRequest), _as_is
            ),
            "GrantSamples": grpc.stream_unary_rpc_method_handler(
                self.GrantSamples, request_parser(pb.SampleGrant), pb.GrantSamplesResponse.SerializeToString
            ),
            "UpdatePriorities": grpc.unary_unary_rpc_method_handler(
                self.UpdatePriorities,
                request_parser(pb.UpdatePrioritiesRequest),
                pb.UpdatePrioritiesResponse.SerializeToString,
            ),
            "Info": grpc.unary_unary_rpc_method_handler(
                refusing_malformed(self.Info),
                request_parser(pb.InfoRequest),
                pb.InfoResponse.SerializeToString,
            ),
            "Checkpoint": grpc.unary_unary_rpc_method_handler(
                refusing_malformed(self.Checkpoint),
                request_parser(pb.CheckpointRequest),
                pb.CheckpointResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))

    def close(self) -> None:
        for pool in (self._writers, self._learner, self._control):
            pool.close()

    # -- RPCs --------------------------------------------------------------------------------------

    async def Insert(self, request_iterator, context):
        # Per message this is the hot path: context.read() rather than `async for` (measured
        # ~25% less CPU per message in grpc.aio), no coroutine calls unless a batch must wait
        # or fail, and cumulative acks written by their own task (`CumulativeAcks`), so a busy
        # stream reads on while an ack is in flight and sends fewer acks than batches.
        active = self._active(context)
        shard = self.shard
        acks = CumulativeAcks(context, self._ack_delay_s)
        try:
            while (request := await context.read()) is not grpc.aio.EOF:
                if request.__class__ is MalformedRequest:
                    await acks.flush()
                    await _abort_malformed(context, request)
                table = shard.tables.get(request.table or DEFAULT_TABLE)
                if table is None or shard.closing:
                    await acks.flush()
                    table = await self._table(request.table, context)  # aborts, naming the problem
                try:
                    result = None
                    if not self._held_back:
                        try:  # most inserts need no wait: stored here, without a hop to a pool thread
                            result = self._insert(table, request, 0.0, active)
                        except RateLimiterTimeout:
                            pass
                    if result is None:
                        result = await self._insert_in_turn(table, request, context, active)
                except _Undecodable as exc:
                    self.shard.count_undecodable(table.name)
                    await acks.flush()  # the writer takes the batch after the last ack as the bad one
                    await _abort_rejected(context, request, exc.field, exc.message)
                except SpecViolation as exc:
                    await acks.flush()
                    await _abort_rejected(context, request, exc.field, str(exc))
                except RateLimiterTimeout as exc:
                    await acks.flush()
                    await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"rate limiter: {exc}")
                except TableClosed:
                    await acks.flush()
                    await self._abort_closed(context)
                    return  # the caller went away
                acks.add(request, result.stored, result.table_size)
            await acks.flush()
        finally:
            acks.cancel()

    async def _insert_in_turn(self, table: Table, request, context, active: Callable[[], bool]):
        """Insert one batch that could not be stored at once: wait in the writers' pool.

        While any insert waits there for the rate limiter, new ones queue behind it (first
        come, first served: `Insert` tries no batch at once while `_held_back`) instead of
        slipping in whenever the limiter opens.
        """
        self._held_back += 1
        try:
            limit = self._wait_limit(table, context)
            return await self._writers.run(self._insert, table, request, limit, active)
        finally:
            self._held_back -= 1

    @staticmethod
    def _insert(table: Table, request: replay_pb2.TransitionBatch, limit: float, active: Callable[[], bool]):
        """(writer pool) Decode one batch and insert it, waiting for the rate limiter up to `limit`."""
        return table.insert(
            _decode_batch(request),
            actor_id=request.actor_id,
            sequence=request.sequence,
            incarnation=request.incarnation,
            policy_version=request.policy_version,
            timeout=limit,
            is_active=active,
        )

    async def Sample(self, request, context):
        table = await self._table(request.table, context)
        await self._check_sample_request(request, context)
        table.note_learner_version(request.learner_version)
        if not request.credit_id:
            count = itertools.count() if request.num_batches == 0 else range(request.num_batches)
            async for message in self._sample_batches(table, request, context, _counted(count)):
                await context.write(message)
            return
        active = self._active(context)
        credit = self._credits.open(request.credit_id, request.num_batches, table.note_learner_version)
        if credit is None:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"credit_id {request.credit_id!r} is in use")
        try:
            # One batch per unit of credit, waiting for grants when out of it.
            async for message in self._sample_batches(table, request, context, credit.units(active)):
                await context.write(message)
        finally:
            self._credits.close(request.credit_id, credit)
        if self.shard.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replay shard is shutting down")

    async def GrantSamples(self, request_iterator, context):
        async for grant in request_iterator:
            await refuse_if_malformed(grant, context)
            if grant.num_batches < 0:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"num_batches must be >= 0, got {grant.num_batches}"
                )
            self._credits.grant(grant.credit_id, grant.num_batches, grant.learner_version)
        return replay_pb2.GrantSamplesResponse()

    async def _sample_batches(self, table: Table, request, context, credit):
        """One encoded batch of `request.batch_size` items per item of `credit` (an async iterator)."""
        active = self._active(context)
        prioritized = table.config.sampler != "uniform"
        shard = self.shard
        async for _ in credit:
            if shard.closing:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "replay shard is shutting down")
            try:
                try:  # a batch that needs no wait is drawn here, without a hop to a pool thread
                    message = _sample_encoded(table, request.batch_size, 0.0, active, prioritized)
                except RateLimiterTimeout:
                    limit = self._wait_limit(table, context, request.rate_limiter_timeout_ms)
                    message = await self._learner.run(
                        _sample_encoded, table, request.batch_size, limit, active, prioritized
                    )
            except RateLimiterTimeout as exc:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"rate limiter: {exc}")
            except NoPriorityMass as exc:  # priority updates set every item to 0
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"table {table.name!r}: {exc}")
            except TableClosed:
                await self._abort_closed(context)
                return
            yield message

    @staticmethod
    async def _check_sample_request(request: replay_pb2.SampleRequest, context) -> None:
        if request.batch_size <= 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"batch_size must be > 0, got {request.batch_size}"
            )
        if request.batch_size > MAX_SAMPLE_BATCH:
            # The batch is gathered under the table's lock: a huge one would stall every writer.
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"batch_size must be at most {MAX_SAMPLE_BATCH}, got {request.batch_size}",
            )
        if request.num_batches < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"num_batches must be >= 0, got {request.num_batches}"
            )

    async def UpdatePriorities(self, request, context):
        if request.__class__ is MalformedRequest:
            await _abort_malformed(context, request)
        table = await self._table(request.table, context)
        try:
            updated = await self._learner.run(_update_priorities, table, request)
        except TensorDecodeError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, header_safe(str(exc), MAX_DETAILS))
        except SpecViolation as exc:
            context.set_trailing_metadata(((REJECTED_FIELD_KEY, header_safe(exc.field)),))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, header_safe(str(exc), MAX_DETAILS))
        return replay_pb2.UpdatePrioritiesResponse(updated=updated)

    async def Info(self, request, context):
        return await self._control.run(self._info)

    def _info(self) -> replay_pb2.InfoResponse:
        last = self.shard.last_checkpoint
        return replay_pb2.InfoResponse(
            tables=[encode_table_stats(self.shard.table_stats(name)) for name in self.shard.tables],
            last_checkpoint=str(last) if last is not None else "",
            uptime_s=self.shard.uptime_s,
        )

    async def Checkpoint(self, request, context):
        if self.shard.config.checkpoint_dir is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "this shard has no checkpoint_dir configured"
            )
        try:
            result = await self._control.run(self.shard.checkpoint)
        except OSError as exc:
            await context.abort(grpc.StatusCode.INTERNAL, f"checkpoint failed: {exc}")
        return replay_pb2.CheckpointResponse(path=str(result.path), duration_s=result.duration_s)

    # -- helpers -----------------------------------------------------------------------------------

    async def _table(self, name: str, context) -> Table:
        if self.shard.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replay shard is shutting down")
        try:
            return self.shard.table(name)
        except KeyError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, header_safe(str(exc.args[0]), MAX_DETAILS))
            raise  # unreachable: abort raises

    def _active(self, context) -> Callable[[], bool]:
        """Whether the call is still on (read from pool threads too)."""
        gone = CallGone(context)
        shard = self.shard
        return lambda: not gone.is_set() and not shard.closing

    async def _abort_closed(self, context) -> None:
        """End a call whose wait was cut short: by shutdown (UNAVAILABLE) or by its caller leaving."""
        if not context.done():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "replay shard is shutting down")

    @staticmethod
    def _wait_limit(table: Table, context, requested_ms: int = 0) -> float:
        """The smaller of the request's limit, the table's max_wait_s and the call's deadline."""
        limit = float(table.config.max_wait_s)
        if requested_ms > 0:
            limit = min(limit, requested_ms / 1000.0)
        remaining = context.time_remaining()
        if remaining is not None:
            limit = min(limit, max(remaining, 0.0))
        return limit


def _decode_batch(request: replay_pb2.TransitionBatch) -> dict[str, np.ndarray] | PackedBatch:
    """The batch's rows or columns; _Undecodable names what is missing or malformed."""
    if not request.actor_id:
        raise _Undecodable("actor_id", "field 'actor_id': required to ack and de-duplicate batches")
    if len(request.incarnation) > MAX_INCARNATION_BYTES:
        raise _Undecodable(
            "incarnation",
            f"field 'incarnation': {len(request.incarnation)} bytes, at most {MAX_INCARNATION_BYTES}",
        )
    try:
        return decode_transition_batch(request)
    except LayoutError as exc:
        raise _Undecodable(exc.column, str(exc)) from None


def _sample_encoded(
    table: Table, batch_size: int, limit: float, active: Callable[[], bool], prioritized: bool
) -> bytes:
    """(learner pool) Draw one batch and serialize it as a SampleBatch message."""
    batch = table.sample(batch_size, timeout=limit, is_active=active)
    # Uniform sampling sends no probabilities or weights: the client fills them in.
    return encode_sample_batch(
        table.name,
        batch.rows,
        batch.layout,
        batch.table_size,
        probabilities=batch.probabilities if prioritized else None,
        weights=batch.weights if prioritized else None,
    )


def _update_priorities(table: Table, request: replay_pb2.UpdatePrioritiesRequest) -> int:
    keys = decode(request.keys, name="keys")
    priorities = decode(request.priorities, name="priorities")
    return table.update_priorities(keys, priorities)


async def _counted(count: Iterable[int]) -> AsyncIterator[int]:
    for item in count:
        yield item


def _as_is(message: bytes) -> bytes:
    return message


class _SampleCredit:
    """How many more batches a paced Sample call may send; GrantSamples adds to it.

    Lives on the server's event loop. A grant's learner version goes to
    `on_learner_version` (the call's table).
    """

    def __init__(self, granted: int, on_learner_version: Callable[[int], None]) -> None:
        self._left = granted
        self._granted = asyncio.Event()
        self.on_learner_version = on_learner_version

    def grant(self, n: int, learner_version: int) -> None:
        self.on_learner_version(learner_version)
        self._left += n
        self._granted.set()

    async def units(self, active: Callable[[], bool]) -> AsyncIterator[None]:
        """One item per unit of credit, waiting for grants when there is none; ends when the call does."""
        while True:
            while self._left <= 0:
                if not active():
                    return
                self._granted.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._granted.wait(), _CREDIT_POLL_S)
            self._left -= 1
            yield


class _SampleCredits:
    """The credit of every open paced Sample call, by credit id (event loop only)."""

    def __init__(self) -> None:
        self._by_id: dict[str, _SampleCredit] = {}

    def open(
        self, credit_id: str, granted: int, on_learner_version: Callable[[int], None]
    ) -> _SampleCredit | None:
        """A new credit for `credit_id`; None when an open call holds that id."""
        if credit_id in self._by_id:
            return None
        credit = self._by_id[credit_id] = _SampleCredit(granted, on_learner_version)
        return credit

    def close(self, credit_id: str, credit: _SampleCredit) -> None:
        if self._by_id.get(credit_id) is credit:
            del self._by_id[credit_id]

    def grant(self, credit_id: str, n: int, learner_version: int) -> None:
        credit = self._by_id.get(credit_id)
        if credit is not None:  # else the call has ended: nothing to pace
            credit.grant(n, learner_version)


class _Undecodable(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


async def _abort_rejected(context, request, field_name: str, message: str) -> None:
    # The field name and the actor id come from the request: made fit for headers.
    context.set_trailing_metadata(((REJECTED_FIELD_KEY, header_safe(field_name)),))
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        header_safe(
            f"batch {request.sequence} from actor {request.actor_id!r} rejected: {message}", MAX_DETAILS
        ),
    )


async def _abort_malformed(context, request: MalformedRequest) -> None:
    context.set_trailing_metadata(((REJECTED_FIELD_KEY, "<message>"),))
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.describe())


@dataclass
class ReplayServer(RunningServer):
    """A running replay server: stopping it first tells the shard to refuse new work."""

    shard: ReplayShard | None = field(default=None)
    servicer: ReplayServicer | None = field(default=None)

    def stop(self, grace: float | None = 2.0) -> None:
        if self.shard is not None:
            self.shard.begin_shutdown()
        try:
            super().stop(grace)
        finally:
            if self.servicer is not None:
                self.servicer.close()


def serve_replay_shard(
    config: ReplayShardConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    security: SecurityConfig | None = None,
    keepalive: KeepaliveConfig | None = None,
    extra_register: list[Callable[[grpc.aio.Server], None]] | None = None,
) -> tuple[ReplayShard, ReplayServer]:
    """Build a shard from `config` and serve it; port 0 picks a free port.

    `running.stop()` ends calls (clients see UNAVAILABLE); `shard.close()` then
    writes the final checkpoint. `extra_register` adds other services to the same
    server (benchmarks use it for a raw-bytes baseline).
    """
    shard = ReplayShard(config)
    servicer = ReplayServicer(shard)
    try:
        running = start_server(
            register=[lambda server: servicer.register(server), *(extra_register or [])],
            service_names=[SERVICE_NAME],
            host=host,
            port=port,
            security=security,
            keepalive=keepalive,
        )
    except BaseException:
        servicer.close()
        shard.close(final_checkpoint=False)
        raise
    return shard, ReplayServer(
        running.server,
        running.host,
        running.port,
        running.health,
        running.service_names,
        running.loop,
        shard=shard,
        servicer=servicer,
    )
