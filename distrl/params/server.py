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
  untouched: a version is swapped in only whole.
- `Subscribe(after_version, param_set)`: streams every version of the set newer
  than `after_version` as it lands (waiting for a set not yet published). A slow
  subscriber is not queued a backlog: once it has taken a version it is sent
  whatever is current then, so it skips to the newest.
- `Fetch(min_version, param_set)`: the set's current version (NOT_FOUND when
  there is none, or it is older than `min_version`).
- `Info(param_set)`: the set's version, tensor names and bytes, subscriber and
  publish counts, and the names of every set held.

Each version's chunk messages are serialized once, when it is published, and the
same bytes are written to every subscriber. The server keeps no state on disk:
after a restart it is empty, and publishers that keep their own version counter
(the learner's update count) let reconnecting subscribers resume.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from distrl.params.chunks import (
    DEFAULT_MAX_VERSION_BYTES,
    MAX_MESSAGE_BYTES,
    ChunkStreamError,
    VersionAssembler,
)
from distrl.params.names import DEFAULT_PARAM_SET, resolve_param_set
from distrl.proto.v1 import params_pb2
from distrl.wire.security import KeepaliveConfig, SecurityConfig
from distrl.wire.server import RunningServer, start_server

SERVICE_NAME = params_pb2.DESCRIPTOR.services_by_name["Parameters"].full_name
DEFAULT_PORT = 50052
DEFAULT_MAX_SUBSCRIBERS = 128
DEFAULT_MAX_SETS = 16
# Worker threads kept free of subscriber streams, so Publish, Fetch and Info always get one.
_SPARE_WORKERS = 8
# Waiting subscribers re-check cancellation at least this often (callbacks usually wake them sooner).
_WAIT_POLL_S = 1.0
# The grpc message limit sits above the protocol's 4 MiB so an oversized chunk reaches
# the handler and is refused with INVALID_ARGUMENT naming the problem.
_TRANSPORT_MAX_MESSAGE_BYTES = 4 * MAX_MESSAGE_BYTES


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


@dataclass
class _PublishLock:
    """Serializes the publishers of one set; dropped when none is using it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


def _already_serialized(message: bytes) -> bytes:
    return message


class ParamServer:
    """Servicer of `distrl.v1.Parameters`; register it with `add_to_server`."""

    def __init__(
        self,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
        max_version_bytes: int = DEFAULT_MAX_VERSION_BYTES,
        max_sets: int = DEFAULT_MAX_SETS,
    ) -> None:
        if max_subscribers < 1:
            raise ValueError(f"max_subscribers must be >= 1, got {max_subscribers}")
        if max_version_bytes < 1:
            raise ValueError(f"max_version_bytes must be >= 1, got {max_version_bytes}")
        if max_sets < 1:
            raise ValueError(f"max_sets must be >= 1, got {max_sets}")
        self.max_subscribers = max_subscribers
        self.max_version_bytes = max_version_bytes
        self.max_sets = max_sets
        self._cond = threading.Condition()
        # Sets that are published or waited on; a set is held once it has a current version.
        self._sets: dict[str, _ParamSet] = {}
        # Publishers of one set commit one at a time, so "current + 1" and the newer-than check
        # see a stable current; publishers of different sets (a large base model) do not wait.
        self._publish_locks: dict[str, _PublishLock] = {}
        self._subscribers = 0
        self._closed = False

    @property
    def version(self) -> int:
        """The current version number of the default set (0 before its first publish)."""
        return self.version_of(DEFAULT_PARAM_SET)

    def version_of(self, param_set: str) -> int:
        """The current version number of `param_set` (0 before its first publish)."""
        with self._cond:
            state = self._sets.get(resolve_param_set(param_set))
            return state.current.number if state and state.current else 0

    @property
    def sets(self) -> list[str]:
        """The names of the sets held (published at least once), sorted."""
        with self._cond:
            return self._held_sets()

    def add_to_server(self, server: grpc.Server) -> None:
        # Registered by hand (not with the generated helper) so Subscribe and Fetch can
        # send the bytes serialized once at publish time.
        handlers = {
            "Publish": grpc.stream_unary_rpc_method_handler(
                self.Publish,
                request_deserializer=params_pb2.ParamChunk.FromString,
                response_serializer=params_pb2.PublishResponse.SerializeToString,
            ),
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self.Subscribe,
                request_deserializer=params_pb2.SubscribeRequest.FromString,
                response_serializer=_already_serialized,
            ),
            "Fetch": grpc.unary_stream_rpc_method_handler(
                self.Fetch,
                request_deserializer=params_pb2.FetchRequest.FromString,
                response_serializer=_already_serialized,
            ),
            "Info": grpc.unary_unary_rpc_method_handler(
                self.Info,
                request_deserializer=params_pb2.ParamsInfoRequest.FromString,
                response_serializer=params_pb2.ParamsInfoResponse.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))

    def close(self) -> None:
        """End every subscriber stream (they reconnect elsewhere); used when shutting down."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- RPCs ---------------------------------------------------------------------------------

    def Publish(self, request_iterator: Iterator[params_pb2.ParamChunk], context: grpc.ServicerContext):
        assembler = VersionAssembler(max_version_bytes=self.max_version_bytes)
        try:
            for chunk in request_iterator:
                assembler.add(chunk)
                if len(assembler.chunks) == 1:
                    # Refuse a stale version or a set past the limit before the publisher
                    # sends the whole model.
                    self._check_publishable(assembler.param_set, assembler.version or 0, context)
            assembler.finish()
        except ChunkStreamError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"publish rejected: {exc}")
        number = self._commit(assembler, context)
        return params_pb2.PublishResponse(version=number)

    def Subscribe(
        self, request: params_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        name = self._param_set_of(request, context)
        if request.after_version < 0:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"after_version must be >= 0, got {request.after_version}"
            )
        with self._cond:
            if self._subscribers >= self.max_subscribers:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"subscriber limit {self.max_subscribers} reached (server option --max-subscribers)",
                )
            self._subscribers += 1
            # A set not published yet gets its state now, so its first publish wakes this subscriber.
            state = self._sets.setdefault(name, _ParamSet())
            state.subscribers += 1
        try:
            # Wake the waiting loop as soon as the call ends (cancel, deadline, dropped peer).
            context.add_callback(self._wake_all)
            last = request.after_version
            while True:
                version = self._wait_newer(state, last, context)
                if version is None:
                    return
                # Always the whole version, even if a newer one lands meanwhile: the
                # subscriber only ever assembles complete versions.
                yield from version.messages
                last = version.number
        finally:
            with self._cond:
                self._subscribers -= 1
                state.subscribers -= 1
                if state.current is None and not state.subscribers:
                    del self._sets[name]

    def Fetch(self, request: params_pb2.FetchRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        name = self._param_set_of(request, context)
        with self._cond:
            state = self._sets.get(name)
            current = state.current if state else None
            held = self._held_sets()
        if current is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no version of parameter set {name!r} has been published yet "
                f"(sets held: {', '.join(held) or 'none'})",
            )
        if current.number < request.min_version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"current version {current.number} of parameter set {name!r} is older than "
                f"min_version {request.min_version}",
            )
        yield from current.messages

    def Info(self, request: params_pb2.ParamsInfoRequest, context: grpc.ServicerContext):
        name = self._param_set_of(request, context)
        with self._cond:
            state = self._sets.get(name) or _ParamSet()
            current, subscribers, publishes = state.current, state.subscribers, state.publishes
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

    @staticmethod
    def _param_set_of(request, context: grpc.ServicerContext) -> str:
        try:
            return resolve_param_set(request.param_set)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    def _held_sets(self) -> list[str]:
        """The names of the sets that have a version, sorted; caller holds self._cond."""
        return sorted(name for name, state in self._sets.items() if state.current is not None)

    def _set_limit_error(self, name: str) -> str | None:
        """Why a first version of `name` would pass the set limit, or None; caller holds self._cond."""
        held = self._held_sets()
        if name in held or len(held) < self.max_sets:
            return None
        return (
            f"publish rejected: parameter set {name!r} would be a new set, and the server already "
            f"holds its limit of {self.max_sets} ({', '.join(held)}; server option --max-sets)"
        )

    def _check_publishable(self, name: str, requested: int, context: grpc.ServicerContext) -> None:
        """Abort unless set `name` may take a version `requested` (0: the next) newer than its current."""
        with self._cond:
            limit_error = self._set_limit_error(name)
            state = self._sets.get(name)
            current = state.current.number if state and state.current else 0
        if limit_error:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, limit_error)
        if requested and requested <= current:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"version {requested} is not newer than the current version {current} "
                f"of parameter set {name!r}",
            )

    @contextmanager
    def _publishing(self, name: str) -> Iterator[None]:
        """Hold the publish lock of set `name`."""
        with self._cond:
            entry = self._publish_locks.setdefault(name, _PublishLock())
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._cond:
                entry.users -= 1
                if not entry.users:
                    del self._publish_locks[name]

    def _commit(self, assembler: VersionAssembler, context: grpc.ServicerContext) -> int:
        name = assembler.param_set or DEFAULT_PARAM_SET
        with self._publishing(name):
            requested = assembler.version or 0
            self._check_publishable(name, requested, context)
            number = requested or self.version_of(name) + 1
            messages = []
            for index, chunk in enumerate(assembler.chunks):
                chunk.version = number
                chunk.param_set = name
                chunk.metadata.clear()
                if index == 0:
                    chunk.metadata.update(assembler.metadata)
                    if chunk.ByteSize() >= MAX_MESSAGE_BYTES:
                        context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            "publish rejected: metadata does not fit in the first chunk",
                        )
                messages.append(chunk.SerializeToString())
            version = _Version(
                number=number,
                messages=tuple(messages),
                names=tuple(assembler.names),
                num_bytes=assembler.num_bytes,
                published_unix_s=time.time(),
            )
            with self._cond:
                # Checked again here: publishers of two new sets may race past the first check.
                limit_error = self._set_limit_error(name)
                if limit_error is None:
                    state = self._sets.setdefault(name, _ParamSet())
                    state.current = version
                    state.publishes += 1
                    self._cond.notify_all()
            if limit_error:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, limit_error)
        return number

    def _wait_newer(self, state: _ParamSet, last: int, context: grpc.ServicerContext) -> _Version | None:
        """The set's current version once it is newer than `last`; None when the call or server ends."""
        with self._cond:
            while True:
                if self._closed or not context.is_active():
                    return None
                current = state.current
                if current is not None and current.number > last:
                    return current
                self._cond.wait(_WAIT_POLL_S)

    def _wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()


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
        self.running.stop(grace)


def start_params_server(
    host: str = "127.0.0.1",
    port: int = 0,
    security: SecurityConfig | None = None,
    keepalive: KeepaliveConfig | None = None,
    max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
    max_version_bytes: int = DEFAULT_MAX_VERSION_BYTES,
    max_sets: int = DEFAULT_MAX_SETS,
) -> RunningParamServer:
    """Start a parameter server (with health service, TLS/token and keepalive); port 0 picks one."""
    params = ParamServer(
        max_subscribers=max_subscribers, max_version_bytes=max_version_bytes, max_sets=max_sets
    )
    running = start_server(
        register=[params.add_to_server],
        service_names=[SERVICE_NAME],
        host=host,
        port=port,
        security=security,
        keepalive=keepalive,
        # The sync server gives each open Subscribe stream a thread for its lifetime.
        max_workers=max_subscribers + _SPARE_WORKERS,
        max_message_bytes=_TRANSPORT_MAX_MESSAGE_BYTES,
    )
    return RunningParamServer(params, running)
