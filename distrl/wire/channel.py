"""Client channels with the same TLS, token and keepalive settings as servers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distrl.wire.security import KeepaliveConfig, SecurityConfig, read_bytes
from distrl.wire.server import DEFAULT_MAX_MESSAGE_BYTES, keepalive_options


class _TokenMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._pair = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = [*(details.metadata or ()), self._pair]
        return (
            details._replace(metadata=metadata)
            if hasattr(details, "_replace")
            else _Details(details, metadata)
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base, metadata) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


def open_channel(
    address: str,
    security: SecurityConfig | None = None,
    keepalive: KeepaliveConfig | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    extra_options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to `address` (host:port) honouring TLS, token and keepalive settings.

    `extra_options` are further gRPC channel options (`(key, value)` pairs).
    """
    security = security or SecurityConfig()
    options = [
        *keepalive_options(keepalive or KeepaliveConfig()),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        # Fail fast when a peer is down instead of backing off for up to two minutes.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        *extra_options,
    ]
    if security.tls_server_name:
        options.append(("grpc.ssl_target_name_override", security.tls_server_name))
    if security.client_tls:
        creds = grpc.ssl_channel_credentials(
            root_certificates=read_bytes(security.tls_ca),
            private_key=read_bytes(security.tls_key),
            certificate_chain=read_bytes(security.tls_cert),
        )
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    token = security.resolved_token()
    if token:
        channel = grpc.intercept_channel(channel, _TokenMetadata(token))
    return channel


def check_health(channel: grpc.Channel, service: str = "", timeout: float = 5.0) -> str:
    """The serving status name reported by a server's health service."""
    stub = health_pb2_grpc.HealthStub(channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def wait_until_serving(channel: grpc.Channel, timeout: float = 30.0) -> None:
    """Block until the channel connects; raises grpc.FutureTimeoutError otherwise."""
    grpc.channel_ready_future(channel).result(timeout=timeout)
