"""The wire: Tensor codec, channel and server construction, TLS and tokens."""

from distrl.wire.channel import check_health, open_channel, wait_until_serving
from distrl.wire.codec import TensorDecodeError, decode, decode_fields, encode, encode_fields
from distrl.wire.security import KeepaliveConfig, SecurityConfig
from distrl.wire.server import RunningServer, start_server

__all__ = [
    "KeepaliveConfig",
    "RunningServer",
    "SecurityConfig",
    "TensorDecodeError",
    "check_health",
    "decode",
    "decode_fields",
    "encode",
    "encode_fields",
    "open_channel",
    "start_server",
    "wait_until_serving",
]
