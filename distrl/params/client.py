"""Client of the parameter server: publish (learners), fetch and subscribe (actors).

Every call names a parameter set (`param_set`, "policy" by default); each set
has its own version numbers. `ParamsClient.subscribe()` returns a
`ParamSubscription` bound to one set: a background thread that keeps a Subscribe
stream open, reassembles each version from its chunks (exposing it only when
complete), and after a dropped connection or a server restart reconnects with
backoff, resuming after the newest version of that set it holds. A complete
version it cannot decode (a shape no array can have) is skipped with a warning,
and the next one is taken: a bad publish never stops a subscriber for good.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
import numpy as np

from distrl.params.chunks import (
    DEFAULT_CHUNK_BYTES,
    ChunkStreamError,
    VersionAssembler,
    check_metadata,
    iter_chunks,
    prepare_tensors,
)
from distrl.params.names import DEFAULT_PARAM_SET, resolve_param_set
from distrl.proto.v1 import params_pb2, params_pb2_grpc
from distrl.wire.channel import open_channel
from distrl.wire.retry import Backoff
from distrl.wire.security import KeepaliveConfig, SecurityConfig

# Errors that reconnecting cannot fix: the subscription stops and reports them.
_FATAL_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    }
)


@dataclass(frozen=True)
class ParamsVersion:
    """One complete version of one parameter set."""

    version: int
    tensors: dict[str, np.ndarray]
    metadata: dict[str, str] = field(default_factory=dict)
    param_set: str = DEFAULT_PARAM_SET


@dataclass(frozen=True)
class ParamsInfo:
    """What a parameter server holds of one set, and which sets it holds (see `ParamsClient.info`)."""

    version: int
    num_tensors: int
    num_bytes: int
    subscribers: int
    publishes: int
    last_publish_unix_s: float
    names: list[str]
    param_set: str
    sets: list[str]


log = logging.getLogger(__name__)


class ParamsSubscriptionError(RuntimeError):
    """A subscription stopped on an error that retrying cannot fix (e.g. a refused token)."""


def _read_version(stream, param_set: str) -> ParamsVersion:
    """Assemble one complete version of `param_set` from a chunk stream (Fetch)."""
    assembler = VersionAssembler()
    for chunk in stream:
        if assembler.add(chunk):
            break
    return _to_version(assembler, param_set)


def _to_version(assembler: VersionAssembler, param_set: str) -> ParamsVersion:
    tensors = assembler.tensors()
    if assembler.param_set != param_set:
        raise ChunkStreamError(f"asked for parameter set {param_set!r}, got {assembler.param_set!r}")
    return ParamsVersion(assembler.version or 0, tensors, dict(assembler.metadata), param_set)


class ParamsClient:
    """Talks to one parameter server. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        address: str,
        security: SecurityConfig | None = None,
        keepalive: KeepaliveConfig | None = None,
        timeout_s: float = 60.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        check_metadata(None, chunk_bytes)
        self.address = address
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
        self._channel = open_channel(address, security, keepalive)
        self._stub = params_pb2_grpc.ParametersStub(self._channel)
        self._subscriptions: list[ParamSubscription] = []

    def publish(
        self,
        tensors: Mapping[str, np.ndarray],
        version: int | None = None,
        metadata: Mapping[str, str] | None = None,
        param_set: str = DEFAULT_PARAM_SET,
    ) -> int:
        """Publish one version of `param_set`; returns its number (that set's current + 1 when
        `version` is None).

        Raises grpc.RpcError with FAILED_PRECONDITION when `version` is not newer than the
        set's version on the server, RESOURCE_EXHAUSTED when a new set would pass the server's
        limit, ValueError/TypeError for input that cannot be sent (a bad set name included).
        """
        if version is not None and (not isinstance(version, int) or version < 1):
            raise ValueError(f"version must be a positive int or None, got {version!r}")
        name = resolve_param_set(param_set)
        arrays = prepare_tensors(tensors)
        meta = check_metadata(metadata, self.chunk_bytes)
        chunks = iter_chunks(version or 0, arrays, meta, self.chunk_bytes, param_set=name)
        response = self._stub.Publish(chunks, timeout=self.timeout_s)
        return response.version

    def fetch(self, min_version: int = 0, param_set: str = DEFAULT_PARAM_SET) -> ParamsVersion:
        """The current version of `param_set`; grpc.RpcError NOT_FOUND when it has none (or it is
        older than `min_version`)."""
        name = resolve_param_set(param_set)
        request = params_pb2.FetchRequest(min_version=min_version, param_set=name)
        stream = self._stub.Fetch(request, timeout=self.timeout_s)
        try:
            return _read_version(stream, name)
        except ChunkStreamError as exc:
            raise ChunkStreamError(f"malformed version from {self.address}: {exc}") from None

    def info(self, param_set: str = DEFAULT_PARAM_SET) -> ParamsInfo:
        """What the server holds of `param_set` (zeros before its first publish), and every set's name."""
        request = params_pb2.ParamsInfoRequest(param_set=resolve_param_set(param_set))
        resp = self._stub.Info(request, timeout=self.timeout_s)
        return ParamsInfo(
            version=resp.version,
            num_tensors=resp.num_tensors,
            num_bytes=resp.num_bytes,
            subscribers=resp.subscribers,
            publishes=resp.publishes,
            last_publish_unix_s=resp.last_publish_unix_s,
            names=list(resp.names),
            # An old server leaves the set empty; it only ever held the default set.
            param_set=resp.param_set or DEFAULT_PARAM_SET,
            sets=list(resp.sets),
        )

    def subscribe(
        self,
        after_version: int = 0,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        param_set: str = DEFAULT_PARAM_SET,
    ) -> ParamSubscription:
        """Start receiving every new version of `param_set` in the background (see
        `ParamSubscription`); a set not published yet is waited for."""
        subscription = ParamSubscription(
            self._stub, after_version, initial_backoff_s, max_backoff_s, param_set=param_set
        )
        self._subscriptions.append(subscription)
        return subscription

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()
        self._channel.close()

    def __enter__(self) -> ParamsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ParamSubscription:
    """The newest version of one parameter set, kept up to date by a background thread.

    Reconnects with exponential backoff (with jitter) whenever the stream ends or
    fails, asking only for versions newer than the one it holds. Stops on errors
    that retrying cannot fix (bad token, unknown service); `wait_for_version` then
    raises ParamsSubscriptionError.
    """

    def __init__(
        self,
        stub: params_pb2_grpc.ParametersStub,
        after_version: int = 0,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        param_set: str = DEFAULT_PARAM_SET,
    ) -> None:
        self.param_set = resolve_param_set(param_set)
        if after_version < 0:
            raise ValueError(f"after_version must be >= 0, got {after_version}")
        if not 0 < initial_backoff_s <= max_backoff_s:
            raise ValueError("backoff must satisfy 0 < initial_backoff_s <= max_backoff_s")
        self._stub = stub
        self._after = after_version
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._cond = threading.Condition()
        self._latest: ParamsVersion | None = None
        self._error: BaseException | None = None
        self._call = None
        self._closed = threading.Event()
        self.reconnects = 0
        self.skipped_versions = 0  # complete versions that could not be decoded
        self._thread = threading.Thread(target=self._run, name="param-subscription", daemon=True)
        self._thread.start()

    @property
    def version(self) -> int:
        """The newest complete version held (0 before the first one)."""
        latest = self._latest
        return latest.version if latest else 0

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the subscription, if any."""
        return self._error

    def latest(self) -> ParamsVersion | None:
        """The newest complete version received, or None before the first one."""
        return self._latest

    def wait_for_version(self, version: int = 1, timeout: float | None = None) -> ParamsVersion:
        """Block until a version >= `version` is held; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.version < version:
                if self._error is not None:
                    raise ParamsSubscriptionError(f"subscription stopped: {self._error}") from self._error
                if self._closed.is_set():
                    raise ParamsSubscriptionError("subscription is closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"no version >= {version} within {timeout}s (newest held: {self.version})"
                    )
                self._cond.wait(remaining)
            return self._latest

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background thread (cancelling the open stream)."""
        self._closed.set()
        with self._cond:
            call = self._call
            self._cond.notify_all()
        if call is not None:
            call.cancel()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> ParamSubscription:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- background thread ------------------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(self._initial_backoff_s, self._max_backoff_s, jitter=0.5)
        while not self._closed.is_set():
            try:
                if self._stream_once():
                    backoff.reset()
            except grpc.RpcError as exc:
                if self._closed.is_set():
                    break
                if exc.code() in _FATAL_CODES:
                    self._stop_with(exc)
                    return
            except ChunkStreamError:
                pass  # a broken stream: drop the partial version and ask again
            except Exception as exc:  # never die silently in a background thread
                self._stop_with(exc)
                return
            if backoff.sleep(self._closed):
                break
            self.reconnects += 1
        with self._cond:
            self._cond.notify_all()

    def _stream_once(self) -> bool:
        """Read one Subscribe stream until it ends; True if it delivered at least one version."""
        request = params_pb2.SubscribeRequest(
            after_version=max(self._after, self.version), param_set=self.param_set
        )
        call = self._stub.Subscribe(request)
        with self._cond:
            self._call = call
        if self._closed.is_set():  # close() may have run before the call was visible to it
            call.cancel()
            return False
        delivered = False
        assembler = VersionAssembler()
        skipping = False  # through the rest of a version that failed its checks
        for chunk in call:
            if skipping:
                skipping = not chunk.end_of_version
                continue
            try:
                if not assembler.add(chunk):
                    continue
                finished, assembler = assembler, VersionAssembler()
                version = _to_version(finished, self.param_set)
            except ChunkStreamError as exc:
                # A version no array can be built from: skip to the next one on the same stream.
                self.skipped_versions += 1
                log.warning("skipping version %s of %r: %s", chunk.version, self.param_set, exc)
                skipping = not chunk.end_of_version
                assembler = VersionAssembler()
                continue
            if version.version <= self.version:
                continue  # never go backwards
            with self._cond:
                self._latest = version
                self._cond.notify_all()
            delivered = True
        return delivered

    def _stop_with(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()
