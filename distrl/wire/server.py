"""Building a gRPC server the same way for every component.

Every server gets: the standard grpc.health.v1 service, keepalive, message
size limits, optional TLS (with optional client certificates) and an optional
bearer token checked on every call except health checks (Kubernetes probes
cannot send one).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from distrl.wire.security import KeepaliveConfig, SecurityConfig, read_bytes

HEALTH_PREFIX = "/grpc.health.v1.Health/"
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses any call without `authorization: Bearer <token>` (health checks excepted)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(got, self._expected):
                    return continuation(handler_call_details)
                break
        handler = continuation(handler_call_details)
        return _refusal(handler, "missing or invalid bearer token")


def _refusal(handler, message: str):
    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:
        return None
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def keepalive_options(keepalive: KeepaliveConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.keepalive_time_ms", int(keepalive.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive.timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass
class RunningServer:
    """A started gRPC server and the address it listens on."""

    server: grpc.Server
    host: str
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def start_server(
    register: Iterable[Callable[[grpc.Server], None]],
    service_names: Iterable[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    security: SecurityConfig | None = None,
    keepalive: KeepaliveConfig | None = None,
    max_workers: int = 32,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Start a server with the given servicers registered; port 0 picks a free port."""
    security = security or SecurityConfig()
    keepalive = keepalive or KeepaliveConfig()
    token = security.resolved_token()
    interceptors = [TokenInterceptor(token)] if token else []
    options = [
        *keepalive_options(keepalive),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=options,
        maximum_concurrent_rpcs=max_workers * 4,
    )
    for add in register:
        add(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bind = f"{host}:{port}"
    if security.server_tls:
        creds = grpc.ssl_server_credentials(
            [(read_bytes(security.tls_key), read_bytes(security.tls_cert))],
            root_certificates=read_bytes(security.tls_client_ca),
            require_client_auth=security.tls_client_ca is not None,
        )
        bound = server.add_secure_port(bind, creds)
    else:
        bound = server.add_insecure_port(bind)
    if bound == 0:
        raise OSError(f"cannot listen on {bind}")
    server.start()
    names = tuple(service_names)
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, host, bound, health_servicer, names)
