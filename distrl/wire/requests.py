"""Request bytes that do not parse: a refusal that names them instead of gRPC's UNKNOWN.

When a request deserializer raises, gRPC ends the call with UNKNOWN ("Unexpected
DecodeError ..."), which a client cannot tell from a crash in the server. A servicer
registers `request_parser(MessageType)` instead: bytes that do not parse as the message
come to its handler as a `MalformedRequest`, which it refuses with INVALID_ARGUMENT
(`describe()` says which message type and why). Status details and trailing metadata
travel as HTTP/2 headers, so `header_safe` makes any text (a field name from the
request, say) fit in one.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

# Longest text from a request that a metadata value repeats, and longest status detail (headers are small).
MAX_HEADER_TEXT = 200
MAX_DETAILS = 2000


@dataclass(frozen=True)
class MalformedRequest:
    """Request bytes that are not a valid message of `type_name` (`reason`: protobuf's words)."""

    type_name: str
    reason: str
    num_bytes: int

    def describe(self) -> str:
        return f"a request of {self.num_bytes} bytes is not a valid {self.type_name}: {self.reason}"


def request_parser(message_type: Any) -> Callable[[bytes], Any]:
    """A gRPC request deserializer for `message_type` that returns a MalformedRequest instead of raising."""
    parse = message_type.FromString
    type_name = message_type.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return MalformedRequest(type_name, str(exc), len(data))

    return deserialize


def header_safe(text: str, limit: int = MAX_HEADER_TEXT) -> str:
    """`text` cut to `limit` characters, anything but printable ASCII escaped.

    gRPC refuses a metadata value with other characters (the call then ends INTERNAL
    "Invalid metadata"), and a status detail past the peer's header limit reaches it as
    RESOURCE_EXHAUSTED "received metadata size exceeds hard limit", the problem unnamed.
    """
    cut = len(text) > limit
    text = text[:limit]
    if not (text.isascii() and text.isprintable()):
        escaped = "".join(c if " " <= c <= "~" else ascii(c)[1:-1] for c in text)
        cut, text = cut or len(escaped) > limit, escaped[:limit]
    return text + "..." if cut else text


async def refuse_if_malformed(request: Any, context: Any) -> None:
    """End the call INVALID_ARGUMENT if `request` is a MalformedRequest (its bytes did not parse)."""
    if isinstance(request, MalformedRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, header_safe(request.describe(), MAX_DETAILS))


def refusing_malformed(handler: Callable[..., Any]) -> Callable[..., Any]:
    """A unary-request async handler (coroutine or async generator) that first refuses unparseable
    bytes; register it with `request_parser` as the deserializer."""
    if inspect.isasyncgenfunction(handler):

        async def stream(request: Any, context: Any) -> Any:
            await refuse_if_malformed(request, context)
            async for response in handler(request, context):
                yield response

        return functools.wraps(handler)(stream)

    async def call(request: Any, context: Any) -> Any:
        await refuse_if_malformed(request, context)
        return await handler(request, context)

    return functools.wraps(handler)(call)
