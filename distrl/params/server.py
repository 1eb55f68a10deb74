"""The parameter server: named sets of weights, versioned, pushed to every subscriber.

The server holds up to `max_sets` named parameter sets ("policy" published every
N updates, a frozen "base" model published once, a shield's "barrier", ...), each
with its own increasing version numbers. Every message names its set; the empty
name means "policy", so callers that name none keep working.

Protocol (`protos/distrl/v1/params.proto`, service `distrl.v1.Parameters`):

- `Publish(stream ParamChunk)`: a learner streams one version of one set. Each
  tensor's raw little-endian bytes are split over consecutive chunks of the same
  name (`offset` increasing from 0, every message < 4 MiB); the last chunk
  carries `end_of_version`. Version 0 means "that set's current + 1"; an explicit
  version must be newer than the set's current one (FAILED_PRECONDITION
  otherwise). A malformed stream (bytes not matching dtype x shape, chunks out
  of order, a missing `end_of_version`, a chunk over the limit, a bad set name,
  chunks naming different sets) fails with INVALID_ARGUMENT; a new set past
  `max_sets` with RESOURCE_EXHAUSTED. Either way the current version is
  untouched: a version is swapped in only whole. Version 0 for a set already at
  MAX_VERSION fails with OUT_OF_RANGE; bytes that are no ParamChunk with
  INVALID_ARGUMENT, like any malformed stream.
- `Subscribe(after_version, param_set)`: streams every version of the set newer
  than `after_version` as it lands (waiting for a set not yet published). A slow
  subscriber is not queued a backlog: once it has taken a version it is sent
  whatever is current then, so it skips to the newest.
- `Fetch(min_version, param_set)`: the set's current version (NOT_FOUND when
  there is none, or it is older than `min_version`).
- `Info(param_set)`: the set's version, tensor names and bytes, subscriber and
  publish counts, and the names of every set held.

Each version's chunk messages are serialized once, when it is published, and the
same bytes are written to every subscriber. The handlers are async and run on the
gRPC server's event loop, so a subscriber waiting for the next version costs a
coroutine, not a thread: one server keeps a stream open to every actor (up to
`max_subscribers`) and still answers Publish, Fetch and Info at once. Serializing
a large version runs in a small thread pool, so a big publish (a frozen base
model) does not stall the streams. The server keeps no state on disk:
after a restart it is empty, and publishers that keep their own version counter
(the learner's update count) let reconnecting subscribers resume.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc

from distrl.params.chunks import (
    DEFAULT_MAX_VERSION_BYTES,
    MAX_MESSAGE_BYTES,
    ChunkStreamError,
    VersionAssembler,
)
from distrl.params.names import DEFAULT_PARAM_SET, MAX_VERSION, resolve_param_set
from distrl.proto.v1 import params_pb2
from distrl.wire.requests import refusing_malformed, request_parser
from distrl.wire.security import KeepaliveConfig, SecurityConfig
from distrl.wire.server import DEFAULT_MAX_CONCURRENT_RPCS, BlockingPool, RunningServer, start_server

SERVICE_NAME = params_pb2.DESCRIPTOR.services_by_name["Parameters"].full_name
DEFAULT_PORT = 50052
# A subscriber costs a coroutine and a gRPC call, not a thread: room for every actor of a big run.
DEFAULT_MAX_SUBSCRIBERS = 1024
DEFAULT_MAX_SETS = 16
# A publish that sends no chunk for this long is ended and its partial version dropped; at most
# this many publishes run at once (a learner publishes one version per set at a time).
DEFAULT_PUBLISH_IDLE_S = 30.0
DEFAULT_MAX_PUBLISHERS = 8
# Calls the gRPC server takes besides the subscriber streams (publishers, fetches, info, health),
# so a full house of subscribers never gets the others refused by the server's call limit.
_OTHER_CALLS = 256
# A version this large is serialized in the commit pool instead of on the event loop.
_SERIALIZE_OFF_LOOP_BYTES = MAX_MESSAGE_BYTES
_COMMIT_THREADS = 2
# The grpc message limit sits above the protocol's 4 MiB so an oversized chunk reaches
# the handler and is refused with INVALID_ARGUMENT naming the problem.
_TRANSPORT_MAX_MESSAGE_BYTES = 4 * MAX_MESSAGE_BYTES
_METADATA_TOO_BIG = "publish rejected: metadata does not fit in the first chunk"


@dataclass(frozen=True)
class _Version:
    """One published version, ready to send: its chunk messages, already serialized."""

    number: int
    messages: tuple[bytes, ...]
    names: tuple[str, ...]
    num_bytes: int
    published_unix_s: float


@dataclass
class _ParamSet:
    """One named set: its current version, publish count and the subscribers waiting on it."""

    current: _Version | None = None
    publishes: int = 0
    subscribers: int = 0
    # Set (and replaced by a fresh one) whenever the set changes or the server closes; subscribers
    # wait on the event they saw with the state, so no wake-up is lost. Touched on the loop only.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        """Wake every subscriber waiting on this set; caller holds the server's lock, on the loop."""
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()


@dataclass
class _PublishLock:
    """Serializes the publishers of one set; dropped when none is using it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


def _already_serialized(message: bytes) -> bytes:
    return message


def _serialize_chunks(assembler: VersionAssembler, name: str, number: int) -> tuple[bytes, ...] | None:
    """The chunk messages of a version numbered `number` of set `name`; None when its metadata
    does not fit in the first chunk."""
    messages = []
    for index, chunk in enumerate(assembler.chunks):
        chunk.version = number
        chunk.param_set = name
        chunk.metadata.clear()
        if index == 0:
            chunk.metadata.update(assembler.metadata)
            if chunk.ByteSize() >= MAX_MESSAGE_BYTES:
                return None
        messages.append(chunk.SerializeToString())
    return tuple(messages)


class ParamServer:
    """Servicer of `distrl.v1.Parameters`; register it with `add_to_server` on a `grpc.aio` server.

    The RPC handlers run on the server's event loop. `version_of`, `sets` and `close` may be
    called from any thread.
    """

    def __init__(
        self,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
        max_version_bytes: int = DEFAULT_MAX_VERSION_BYTES,
        max_sets: int = DEFAULT_MAX_SETS,
        publish_idle_s: float = DEFAULT_PUBLISH_IDLE_S,
        max_publishers: int = DEFAULT_MAX_PUBLISHERS,
    ) -> None:
        if publish_idle_s <= 0:
            raise ValueError(f"publish_idle_s must be > 0, got {publish_idle_s}")
        if max_publishers < 1:
            raise ValueError(f"max_publishers must be >= 1, got {max_publishers}")
        if max_subscribers < 1:
            raise ValueError(f"max_subscribers must be >= 1, got {max_subscribers}")
        if max_version_bytes < 1:
            raise ValueError(f"max_version_bytes must be >= 1, got {max_version_bytes}")
        if max_sets < 1:
            raise ValueError(f"max_sets must be >= 1, got {max_sets}")
        self.max_subscribers = max_subscribers
        self.max_version_bytes = max_version_bytes
        self.max_sets = max_sets
        self.publish_idle_s = publish_idle_s
        self.max_publishers = max_publishers
        self._publishers = 0  # touched on the loop only
        # Guards the state below; held briefly and never across an await (other threads read it).
        self._lock = threading.Lock()
        # Sets that are published or waited on; a set is held once it has a current version.
        self._sets: dict[str, _ParamSet] = {}
        self._subscribers = 0
        self._closed = False
        # The event loop the handlers run on, so close() can wake the subscribers from any thread.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Publishers of one set commit one at a time, so "current + 1" and the newer-than check
        # see a stable current; publishers of different sets (a large base model) do not wait.
        # Touched on the loop only.
        self._publish_locks: dict[str, _PublishLock] = {}
        self._commit_pool = BlockingPool("params-commit", _COMMIT_THREADS)

    @property
    def version(self) -> int:
        """The current version number of the default set (0 before its first publish)."""
        return self.version_of(DEFAULT_PARAM_SET)

    def version_of(self, param_set: str) -> int:
        """The current version number of `param_set` (0 before its first publish)."""
        name = resolve_param_set(param_set)
        with self._lock:
            state = self._sets.get(name)
            return state.current.number if state and state.current else 0

    @property
    def sets(self) -> list[str]:
        """The names of the sets held (published at least once), sorted."""
        with self._lock:
            return self._held_sets()

    def add_to_server(self, server: grpc.aio.Server) -> None:
        # Registered by hand (not with the generated helper) so Subscribe and Fetch can
        # send the bytes serialized once at publish time.
        self._bind_loop()
        handlers = {
            "Publish": grpc.stream_unary_rpc_method_handler(
                self.Publish,
                # Bytes that do not parse reach the VersionAssembler, which refuses them by name.
                request_deserializer=request_parser(params_pb2.ParamChunk),
                response_serializer=params_pb2.PublishResponse.SerializeToString,
            ),
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                refusing_malformed(self.Subscribe),
                request_deserializer=request_parser(params_pb2.SubscribeRequest),
                response_serializer=_already_serialized,
            ),
            "Fetch": grpc.unary_stream_rpc_method_handler(
                refusing_malformed(self.Fetch),
                request_deserializer=request_parser(params_pb2.FetchRequest),
                response_serializer=_already_serialized,
            ),
            "Info": grpc.unary_unary_rpc_method_handler(
                refusing_malformed(self.Info),
                request_deserializer=request_parser(params_pb2.ParamsInfoRequest),
                response_serializer=params_pb2.ParamsInfoResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))

    def close(self) -> None:
        """End every subscriber stream (they reconnect elsewhere); used when shutting down.

        Safe from any thread: the subscribers are woken on the server's event loop.
        """
        with self._lock:
            self._closed = True
            loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:
            pass  # the loop is closed: no subscriber is left to wake

    def release(self) -> None:
        """Free the commit threads; call after the server has stopped."""
        self._commit_pool.close()

    # -- RPCs ---------------------------------------------------------------------------------

    async def Publish(
        self, request_iterator: AsyncIterator[params_pb2.ParamChunk], context: grpc.aio.ServicerContext
    ) -> params_pb2.PublishResponse:
        if self._publishers >= self.max_publishers:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_publishers} publishes are in progress (server option --max-publishers)",
            )
        self._publishers += 1
        try:
            assembler, refusal = await self._receive_version(request_iterator)
        finally:
            self._publishers -= 1
        if refusal:
            await context.abort(*refusal)
        number = await self._commit(assembler, context)
        return params_pb2.PublishResponse(version=number)

    async def _receive_version(
        self, request_iterator: AsyncIterator[params_pb2.ParamChunk]
    ) -> tuple[VersionAssembler, tuple[grpc.StatusCode, str] | None]:
        """A publish's chunks, assembled; or why it is refused (stale, malformed, stalled)."""
        assembler = VersionAssembler(max_version_bytes=self.max_version_bytes)
        chunks = aiter(request_iterator)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(chunks), self.publish_idle_s)
                except StopAsyncIteration:
                    assembler.finish()
                    return assembler, None
                except TimeoutError:
                    # A stalled publisher must not hold its partial version (and a slot) forever.
                    stalled = f"publish stalled: no chunk for {self.publish_idle_s:g}s"
                    return assembler, (grpc.StatusCode.DEADLINE_EXCEEDED, stalled)
                assembler.add(chunk)
                if len(assembler.chunks) == 1:
                    # Refuse a stale version or a set past the limit before the publisher
                    # sends the whole model.
                    refusal = self._publish_refusal(assembler.param_set, assembler.version or 0)
                    if refusal:
                        return assembler, refusal
        except ChunkStreamError as exc:
            return assembler, (grpc.StatusCode.INVALID_ARGUMENT, f"publish rejected: {exc}")

    async def Subscribe(
        self, request: params_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # A coroutine writing with context.write (not an async generator): when the call ends
        # (cancel, deadline, dropped peer) gRPC cancels it wherever it waits, and the finally
        # below releases its place at once.
        self._bind_loop()
        name = await self._param_set_of(request, context)
        if request.after_version < 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"after_version must be >= 0, got {request.after_version}"
            )
        with self._lock:
            full = self._subscribers >= self.max_subscribers
            if not full:
                self._subscribers += 1
                # A set not published yet gets its state now, so its first publish wakes this subscriber.
                state = self._sets.setdefault(name, _ParamSet())
                state.subscribers += 1
        if full:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"subscriber limit {self.max_subscribers} reached (server option --max-subscribers)",
            )
        try:
            last = request.after_version
            while True:
                version = await self._wait_newer(state, last)
                if version is None:
                    return
                # Always the whole version, even if a newer one lands meanwhile: the
                # subscriber only ever assembles complete versions.
                for message in version.messages:
                    await context.write(message)
                last = version.number
        finally:
            with self._lock:
                self._subscribers -= 1
                state.subscribers -= 1
                if state.current is None and not state.subscribers:
                    del self._sets[name]

    async def Fetch(self, request: params_pb2.FetchRequest, context: grpc.aio.ServicerContext) -> None:
        name = await self._param_set_of(request, context)
        with self._lock:
            state = self._sets.get(name)
            current = state.current if state else None
            held = self._held_sets()
        if current is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no version of parameter set {name!r} has been published yet "
                f"(sets held: {', '.join(held) or 'none'})",
            )
        if current.number < request.min_version:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"current version {current.number} of parameter set {name!r} is older than "
                f"min_version {request.min_version}",
            )
        for message in current.messages:
            await context.write(message)

    async def Info(
        self, request: params_pb2.ParamsInfoRequest, context: grpc.aio.ServicerContext
    ) -> params_pb2.ParamsInfoResponse:
        name = await self._param_set_of(request, context)
        with self._lock:
            state = self._sets.get(name)
            current = state.current if state else None
            subscribers = state.subscribers if state else 0
            publishes = state.publishes if state else 0
            held = self._held_sets()
        info = params_pb2.ParamsInfoResponse(
            param_set=name, sets=held, subscribers=subscribers, publishes=publishes
        )
        if current is not None:
            info.version = current.number
            info.num_tensors = len(current.names)
            info.num_bytes = current.num_bytes
            info.last_publish_unix_s = current.published_unix_s
            info.names.extend(current.names)
        return info

    # -- internals ------------------------------------------------------------------------------

    def _bind_loop(self) -> None:
        """Remember the event loop the handlers run on (called on it)."""
        if self._loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # registered outside a loop: the first Subscribe binds it
            with self._lock:
                self._loop = loop

    @staticmethod
    async def _param_set_of(request, context: grpc.aio.ServicerContext) -> str:
        try:
            return resolve_param_set(request.param_set)
        except ValueError as exc:
            message = str(exc)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        raise AssertionError("unreachable: abort raises")

    def _held_sets(self) -> list[str]:
        """The names of the sets that have a version, sorted; caller holds self._lock."""
        return sorted(name for name, state in self._sets.items() if state.current is not None)

    def _set_limit_error(self, name: str) -> str | None:
        """Why a first version of `name` would pass the set limit, or None; caller holds self._lock."""
        held = self._held_sets()
        if name in held or len(held) < self.max_sets:
            return None
        return (
            f"publish rejected: parameter set {name!r} would be a new set, and the server already "
            f"holds its limit of {self.max_sets} ({', '.join(held)}; server option --max-sets)"
        )

    def _publish_refusal(self, name: str | None, requested: int) -> tuple[grpc.StatusCode, str] | None:
        """Why set `name` may not take a version `requested` (0: the next) newer than its current."""
        name = name or DEFAULT_PARAM_SET
        with self._lock:
            limit_error = self._set_limit_error(name)
            state = self._sets.get(name)
            current = state.current.number if state and state.current else 0
        if limit_error:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, limit_error
        if requested and requested <= current:
            return (
                grpc.StatusCode.FAILED_PRECONDITION,
                f"version {requested} is not newer than the current version {current} "
                f"of parameter set {name!r}",
            )
        if not requested and current >= MAX_VERSION:
            # "current + 1" would be a version no subscriber accepts.
            return (
                grpc.StatusCode.OUT_OF_RANGE,
                f"parameter set {name!r} is at version {current}, the highest there is ({MAX_VERSION})",
            )
        return None

    @asynccontextmanager
    async def _publishing(self, name: str) -> AsyncIterator[None]:
        """Hold the publish lock of set `name` (on the loop)."""
        entry = self._publish_locks.setdefault(name, _PublishLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._publish_locks[name]

    async def _commit(self, assembler: VersionAssembler, context: grpc.aio.ServicerContext) -> int:
        name = assembler.param_set or DEFAULT_PARAM_SET
        async with self._publishing(name):
            requested = assembler.version or 0
            refusal = self._publish_refusal(name, requested)
            if refusal:
                await context.abort(*refusal)
            number = requested or self.version_of(name) + 1
            if assembler.num_bytes >= _SERIALIZE_OFF_LOOP_BYTES:
                # Off the loop, so the streams keep flowing while a big version is serialized.
                messages = await self._commit_pool.run(_serialize_chunks, assembler, name, number)
            else:
                messages = _serialize_chunks(assembler, name, number)
            if messages is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _METADATA_TOO_BIG)
            version = _Version(
                number=number,
                messages=messages,
                names=tuple(assembler.names),
                num_bytes=assembler.num_bytes,
                published_unix_s=time.time(),
            )
            with self._lock:
                # Checked again here: publishers of two new sets may race past the first check.
                limit_error = self._set_limit_error(name)
                if limit_error is None:
                    state = self._sets.setdefault(name, _ParamSet())
                    state.current = version
                    state.publishes += 1
                    state.notify()
            if limit_error:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, limit_error)
        return number

    async def _wait_newer(self, state: _ParamSet, last: int) -> _Version | None:
        """The set's current version once it is newer than `last`; None when the server closes.

        The call ending cancels the waiting coroutine, so nothing polls for it.
        """
        while True:
            with self._lock:
                if self._closed:
                    return None
                current = state.current
                if current is not None and current.number > last:
                    return current
                changed = state.changed
            await changed.wait()

    def _wake_all(self) -> None:
        """Wake every waiting subscriber (on the loop), so each sees the server closed."""
        with self._lock:
            for state in self._sets.values():
                state.notify()


@dataclass
class RunningParamServer:
    """A started parameter server: the servicer and the gRPC server around it."""

    params: ParamServer
    running: RunningServer

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def port(self) -> int:
        return self.running.port

    def stop(self, grace: float | None = 1.0) -> None:
        self.params.close()
        try:
            self.running.stop(grace)
        finally:
            self.params.release()


def start_params_server(
    host: str = "127.0.0.1",
    port: int = 0,
    security: SecurityConfig | None = None,
    keepalive: KeepaliveConfig | None = None,
    max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
    max_version_bytes: int = DEFAULT_MAX_VERSION_BYTES,
    max_sets: int = DEFAULT_MAX_SETS,
    publish_idle_s: float = DEFAULT_PUBLISH_IDLE_S,
    max_publishers: int = DEFAULT_MAX_PUBLISHERS,
) -> RunningParamServer:
    """Start a parameter server (with health service, TLS/token and keepalive); port 0 picks one."""
    params = ParamServer(
        max_subscribers=max_subscribers,
        max_version_bytes=max_version_bytes,
        max_sets=max_sets,
        publish_idle_s=publish_idle_s,
        max_publishers=max_publishers,
    )
    try:
        running = start_server(
            register=[params.add_to_server],
            service_names=[SERVICE_NAME],
            host=host,
            port=port,
            security=security,
            keepalive=keepalive,
            max_concurrent_rpcs=max(DEFAULT_MAX_CONCURRENT_RPCS, max_subscribers + _OTHER_CALLS),
            max_message_bytes=_TRANSPORT_MAX_MESSAGE_BYTES,
        )
    except BaseException:
        params.release()
        raise
    return RunningParamServer(params, running)
