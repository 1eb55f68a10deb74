"""The parameter server: the latest policy weights, versioned, pushed to every subscriber.

Protocol (`protos/distrl/v1/params.proto`, service `distrl.v1.Parameters`):

- `Publish(stream ParamChunk)`: a learner streams one version. Each tensor's raw
  little-endian bytes are split over consecutive chunks of the same name
  (`offset` increasing from 0, every message < 4 MiB); the last chunk carries
  `end_of_version`. Version 0 means "current + 1"; an explicit version must be
  newer than the current one (FAILED_PRECONDITION otherwise). A malformed stream
  (bytes not matching dtype x shape, chunks out of order, a missing
  `end_of_version`, a chunk over the limit) fails with INVALID_ARGUMENT. Either
  way the current version is untouched: a version is swapped in only whole.
- `Subscribe(after_version)`: streams every version newer than `after_version`
  as it lands. A slow subscriber is not queued a backlog: once it has taken a
  version it is sent whatever is current then, so it skips to the newest.
- `Fetch(min_version)`: the current version (NOT_FOUND when there is none, or it
  is older than `min_version`).
- `Info`: version, tensor names and bytes, subscriber and publish counts.

Each version's chunk messages are serialized once, when it is published, and the
same bytes are written to every subscriber. The server keeps no state on disk:
after a restart it is empty, and publishers that keep their own version counter
(the learner's update count) let reconnecting subscribers resume.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from distrl.params.chunks import (
    DEFAULT_MAX_VERSION_BYTES,
    MAX_MESSAGE_BYTES,
    ChunkStreamError,
    VersionAssembler,
)
from distrl.proto.v1 import params_pb2
from distrl.wire.security import KeepaliveConfig, SecurityConfig
from distrl.wire.server import RunningServer, start_server

SERVICE_NAME = params_pb2.DESCRIPTOR.services_by_name["Parameters"].full_name
DEFAULT_PORT = 50052
DEFAULT_MAX_SUBSCRIBERS = 128
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


def _already_serialized(message: bytes) -> bytes:
    return message


class ParamServer:
    """Servicer of `distrl.v1.Parameters`; register it with `add_to_server`."""

    def __init__(
        self,
        max_subscribers: int = DEFAULT_MAX_SUBSCRIBERS,
        max_version_bytes: int = DEFAULT_MAX_VERSION_BYTES,
    ) -> None:
        if max_subscribers < 1:
            raise ValueError(f"max_subscribers must be >= 1, got {max_subscribers}")
        if max_version_bytes < 1:
            raise ValueError(f"max_version_bytes must be >= 1, got {max_version_bytes}")
        self.max_subscribers = max_subscribers
        self.max_version_bytes = max_version_bytes
        self._cond = threading.Condition()
        # Publishers commit one at a time, so "current + 1" and the newer-than check see a stable current.
        self._publish_lock = threading.Lock()
        self._current: _Version | None = None
        self._subscribers = 0
        self._publishes = 0
        self._closed = False

    @property
    def version(self) -> int:
        """The current version number (0 before the first publish)."""
        current = self._current
        return current.number if current else 0

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
                if len(assembler.chunks) == 1 and assembler.version:
                    # Refuse a stale version before the publisher sends the whole model.
                    self._check_newer(assembler.version, context)
            assembler.finish()
        except ChunkStreamError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"publish rejected: {exc}")
        number = self._commit(assembler, context)
        return params_pb2.PublishResponse(version=number)

    def Subscribe(
        self, request: params_pb2.SubscribeRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
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
        try:
            # Wake the waiting loop as soon as the call ends (cancel, deadline, dropped peer).
            context.add_callback(self._wake_all)
            last = request.after_version
            while True:
                version = self._wait_newer(last, context)
                if version is None:
                    return
                # Always the whole version, even if a newer one lands meanwhile: the
                # subscriber only ever assembles complete versions.
                yield from version.messages
                last = version.number
        finally:
            with self._cond:
                self._subscribers -= 1

    def Fetch(self, request: params_pb2.FetchRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        current = self._current
        if current is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no version has been published yet")
        if current.number < request.min_version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"current version {current.number} is older than min_version {request.min_version}",
            )
        yield from current.messages

    def Info(self, request: params_pb2.ParamsInfoRequest, context: grpc.ServicerContext):
        with self._cond:
            current, subscribers, publishes = self._current, self._subscribers, self._publishes
        if current is None:
            return params_pb2.ParamsInfoResponse(subscribers=subscribers, publishes=publishes)
        return params_pb2.ParamsInfoResponse(
            version=current.number,
            num_tensors=len(current.names),
            num_bytes=current.num_bytes,
            subscribers=subscribers,
            publishes=publishes,
            last_publish_unix_s=current.published_unix_s,
            names=current.names,
        )

    # -- internals ------------------------------------------------------------------------------

    def _check_newer(self, requested: int, context: grpc.ServicerContext) -> None:
        current = self.version
        if requested <= current:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"version {requested} is not newer than the current version {current}",
            )

    def _commit(self, assembler: VersionAssembler, context: grpc.ServicerContext) -> int:
        with self._publish_lock:
            requested = assembler.version or 0
            if requested:
                self._check_newer(requested, context)
                number = requested
            else:
                number = self.version + 1
            messages = []
            for index, chunk in enumerate(assembler.chunks):
                chunk.version = number
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
                self._current = version
                self._publishes += 1
                self._cond.notify_all()
        return number

    def _wait_newer(self, last: int, context: grpc.ServicerContext) -> _Version | None:
        """The current version once it is newer than `last`; None when the call or server ends."""
        with self._cond:
            while True:
                if self._closed or not context.is_active():
                    return None
                current = self._current
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
) -> RunningParamServer:
    """Start a parameter server (with health service, TLS/token and keepalive); port 0 picks one."""
    params = ParamServer(max_subscribers=max_subscribers, max_version_bytes=max_version_bytes)
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
