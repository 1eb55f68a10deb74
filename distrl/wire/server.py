"""Building a gRPC server the same way for every component.

Every server is a `grpc.aio` server on one event loop per process (a daemon
thread, `server_loop`), so an open stream costs a coroutine, not a thread: one shard, the
params server and the coordinator each hold hundreds of actor streams while
their other calls are served at once. Servicers register async handlers;
work that blocks (a table waiting for its rate limiter, a checkpoint) runs in
thread pools the servicer owns (`BlockingPool`).

Every server gets: the standard grpc.health.v1 service, keepalive, message
size limits, optional TLS (with optional client certificates) and optional
bearer tokens checked on every call except health checks (Kubernetes probes
cannot send one): one shared token, or one per role (`distrl.wire.roles`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from distrl.wire.roles import digest, load_role_digests, may_call, role_of
from distrl.wire.security import KeepaliveConfig, SecurityConfig, read_bytes

HEALTH_PREFIX = "/grpc.health.v1.Health/"
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Concurrent calls one server takes before refusing more with RESOURCE_EXHAUSTED.
DEFAULT_MAX_CONCURRENT_RPCS = 4096
SERVER_LOOP_ENV = "DISTRL_SERVER_LOOP"

T = TypeVar("T")


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks `authorization: Bearer <token>` on every call but health checks (probes send none).

    `digests` maps each role to its token's SHA-256 (one `admin` entry for a shared token).
    A call without a known token ends UNAUTHENTICATED; a call its token's role may not make
    ends PERMISSION_DENIED. Either way the server reads nothing of the request: the refusal
    is a streaming handler that never asks for a message, so a stranger's 256 MiB unary
    request is not received before it is refused.
    """

    def __init__(self, digests: dict[str, bytes]) -> None:
        self._digests = dict(digests)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(HEALTH_PREFIX):
            return await continuation(handler_call_details)
        role = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                if got.startswith(b"Bearer "):
                    role = role_of(got[len(b"Bearer ") :], self._digests)
                break
        if role is None:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")
        if not may_call(role, method):
            return _refusal(grpc.StatusCode.PERMISSION_DENIED, f"the {role} role may not call {method}")
        return await continuation(handler_call_details)


def _refusal(code: grpc.StatusCode, message: str):
    """A handler that ends the call with `code` without reading the request."""

    async def abort(_requests, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator, as a streaming handler is

    return grpc.stream_stream_rpc_method_handler(abort)


def server_digests(security: SecurityConfig) -> dict[str, bytes]:
    """The tokens a server accepts, by role; empty when auth is off."""
    if security.role_tokens_dir is not None:
        return load_role_digests(security.role_tokens_dir)
    token = security.resolved_token()
    return {"admin": digest(token)} if token else {}


def keepalive_options(keepalive: KeepaliveConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", int(keepalive.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive.timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class BlockingPool:
    """A named thread pool for a servicer's blocking work, awaited from its async handlers.

    Separate pools keep one kind of waiting (inserts held by the rate limiter) from
    delaying another (the learner's samples).
    """

    def __init__(self, name: str, threads: int) -> None:
        self._pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    def run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class CallGone:
    """A flag set when a call ends (finished, cancelled, its peer gone), readable from any thread."""

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self._event = threading.Event()
        context.add_done_callback(lambda _call: self._event.set())

    def is_set(self) -> bool:
        return self._event.is_set()


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a server's CPU per insert message ~6-11% lower than on
    asyncio's loop, `benchmarks/replay_throughput.py`); DISTRL_SERVER_LOOP=asyncio opts out."""
    if os.environ.get(SERVER_LOOP_ENV, "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class _EventLoopThread:
    """An asyncio event loop running in a daemon thread for the life of the process.

    Every server of a process shares it. It is never closed: gRPC's completion-queue
    poller hands late events (a cancelled call's last ops) to the loop that started
    them, and a closed loop turns those into errors that hold up other loops' events.
    """

    def __init__(self, name: str) -> None:
        self.loop = _new_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        """Run `coro` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


_shared_loop: _EventLoopThread | None = None
_shared_loop_lock = threading.Lock()


def server_loop() -> _EventLoopThread:
    """The event loop this process's servers run on, started on first use."""
    global _shared_loop
    with _shared_loop_lock:
        if _shared_loop is None or not _shared_loop._thread.is_alive():
            _shared_loop = _EventLoopThread("grpc-servers")
        return _shared_loop


@dataclass
class RunningServer:
    """A started gRPC server and the address it listens on."""

    server: grpc.aio.Server
    host: str
    port: int
    health: health.aio.HealthServicer
    service_names: tuple[str, ...]
    loop: _EventLoopThread | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the server's event loop (thread-safe)."""
        if self.loop is not None:
            self.loop.loop.call_soon_threadsafe(fn, *args)

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop taking calls, give open ones `grace` seconds, then end them; idempotent."""
        if self.loop is None:
            return

        async def shutdown() -> None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)

        self.loop.call(shutdown(), timeout=(grace or 0) + 10.0)


def start_server(
    register: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Iterable[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    security: SecurityConfig | None = None,
    keepalive: KeepaliveConfig | None = None,
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Start a server with the given servicers registered; port 0 picks a free port.

    Each `register(server)` adds async handlers to the `grpc.aio` server. The
    server runs on the process's server loop; `RunningServer.stop` ends it.
    """
    security = security or SecurityConfig()
    keepalive = keepalive or KeepaliveConfig()
    digests = server_digests(security)
    interceptors = [AuthInterceptor(digests)] if digests else []
    options = [
        *keepalive_options(keepalive),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    bind = f"{host}:{port}"
    credentials = None
    if security.server_tls:
        credentials = grpc.ssl_server_credentials(
            [(read_bytes(security.tls_key), read_bytes(security.tls_cert))],
            root_certificates=read_bytes(security.tls_client_ca),
            require_client_auth=security.tls_client_ca is not None,
        )
    names = tuple(service_names)

    async def build() -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
        server = grpc.aio.server(
            interceptors=interceptors, options=options, maximum_concurrent_rpcs=max_concurrent_rpcs
        )
        for add in register:
            add(server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if credentials is not None:
            bound = server.add_secure_port(bind, credentials)
        else:
            bound = server.add_insecure_port(bind)
        await server.start()
        for service in ("", *names):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        return server, health_servicer, bound

    loop = server_loop()
    try:
        server, health_servicer, bound = loop.call(build(), timeout=30.0)
    except RuntimeError as exc:  # grpc.aio raises RuntimeError when it cannot bind
        raise OSError(f"cannot listen on {bind}: {exc}") from exc
    return RunningServer(server, host, bound, health_servicer, names, loop)
