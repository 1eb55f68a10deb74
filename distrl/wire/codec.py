"""numpy <-> Tensor codec. Raw little-endian bytes, optionally lz4/zstd compressed.

Nothing here unpickles: a tensor is a dtype tag, a shape and bytes, and a
tensor whose byte length disagrees with dtype x shape is rejected.
"""

from __future__ import annotations

import math
from typing import Literal

import lz4.block
import numpy as np
import zstandard

from distrl.proto.v1 import tensor_pb2

CompressionName = Literal["none", "lz4", "zstd"]


class TensorDecodeError(ValueError):
    """A Tensor message that does not describe a valid array."""


_TO_PROTO: dict[np.dtype, int] = {
    np.dtype(np.float32): tensor_pb2.FLOAT32,
    np.dtype(np.float64): tensor_pb2.FLOAT64,
    np.dtype(np.float16): tensor_pb2.FLOAT16,
    np.dtype(np.int8): tensor_pb2.INT8,
    np.dtype(np.int16): tensor_pb2.INT16,
    np.dtype(np.int32): tensor_pb2.INT32,
    np.dtype(np.int64): tensor_pb2.INT64,
    np.dtype(np.uint8): tensor_pb2.UINT8,
    np.dtype(np.uint16): tensor_pb2.UINT16,
    np.dtype(np.uint32): tensor_pb2.UINT32,
    np.dtype(np.uint64): tensor_pb2.UINT64,
    np.dtype(np.bool_): tensor_pb2.BOOL,
}
_FROM_PROTO: dict[int, np.dtype] = {v: k.newbyteorder("<") for k, v in _TO_PROTO.items()}
_COMPRESSION = {
    "none": tensor_pb2.COMPRESSION_NONE,
    "lz4": tensor_pb2.COMPRESSION_LZ4,
    "zstd": tensor_pb2.COMPRESSION_ZSTD,
}
# Compressing tiny payloads costs more than it saves.
_MIN_COMPRESS_BYTES = 512

# The most a compressed tensor may decompress to. An uncompressed one is bounded by the message
# that carried it; a compressed one could claim any shape (a few KiB of zstd zeros "are" 1 GiB),
# so its size is checked against this before anything is allocated.
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
_LZ4_SIZE_HEADER = 4

_zstd_c = zstandard.ZstdCompressor(level=1)
_zstd_d = zstandard.ZstdDecompressor()


def dtype_to_proto(dtype: np.dtype | type | str) -> int:
    """The wire enum for a numpy dtype; raises TypeError for unsupported ones."""
    dt = np.dtype(dtype)
    try:
        return _TO_PROTO[dt.newbyteorder("=")]
    except KeyError:
        raise TypeError(f"dtype {dt} cannot travel on the wire; supported: {supported_dtypes()}") from None


def dtype_from_proto(value: int) -> np.dtype:
    try:
        return _FROM_PROTO[value]
    except KeyError:
        raise TensorDecodeError(f"unknown dtype enum {value}") from None


def supported_dtypes() -> list[str]:
    return [str(d) for d in _TO_PROTO]


def encode(array: np.ndarray, compression: CompressionName = "none") -> tensor_pb2.Tensor:
    """Encode an array as a Tensor message (C order, little-endian)."""
    arr = np.asarray(array)
    tag = dtype_to_proto(arr.dtype)
    if arr.dtype.byteorder == ">" or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    raw = arr.tobytes()
    kind = _COMPRESSION[compression]
    if kind != tensor_pb2.COMPRESSION_NONE and len(raw) >= _MIN_COMPRESS_BYTES:
        if kind == tensor_pb2.COMPRESSION_LZ4:
            raw = lz4.block.compress(raw, store_size=True)
        else:
            raw = _zstd_c.compress(raw)
    else:
        kind = tensor_pb2.COMPRESSION_NONE
    return tensor_pb2.Tensor(dtype=tag, shape=arr.shape, data=raw, compression=kind)


def decode(
    tensor: tensor_pb2.Tensor, name: str = "tensor", max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES
) -> np.ndarray:
    """Decode a Tensor message into a numpy array (read-only view when uncompressed).

    A compressed tensor is decompressed only if dtype x shape is at most
    `max_decompressed_bytes` and (lz4) its size header says the same: the sender's
    claims are checked before anything is allocated. Raises TensorDecodeError naming
    `name` when the message is malformed.
    """
    dtype = dtype_from_proto(tensor.dtype)
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise TensorDecodeError(f"{name}: negative dimension in shape {shape}")
    expected = dtype.itemsize * math.prod(shape)
    data = tensor.data
    compressed = tensor.compression != tensor_pb2.COMPRESSION_NONE
    if compressed and expected > max_decompressed_bytes:
        raise TensorDecodeError(
            f"{name}: a compressed tensor of dtype {dtype.newbyteorder('=')} x shape {shape} would be "
            f"{expected} bytes, more than the {max_decompressed_bytes} allowed"
        )
    try:
        if tensor.compression == tensor_pb2.COMPRESSION_LZ4:
            claimed = int.from_bytes(data[:_LZ4_SIZE_HEADER], "little") if len(data) >= 4 else -1
            if claimed != expected:
                raise TensorDecodeError(
                    f"{name}: lz4 payload says it holds {claimed} bytes, "
                    f"dtype x shape {shape} needs {expected}"
                )
            data = lz4.block.decompress(data)
        elif tensor.compression == tensor_pb2.COMPRESSION_ZSTD:
            data = _zstd_d.decompress(data, max_output_size=expected)
        elif tensor.compression != tensor_pb2.COMPRESSION_NONE:
            raise TensorDecodeError(f"{name}: unknown compression {tensor.compression}")
    except TensorDecodeError:
        raise
    except Exception as exc:  # corrupt compressed payloads raise library-specific errors
        raise TensorDecodeError(f"{name}: cannot decompress payload: {exc}") from None
    if len(data) != expected:
        raise TensorDecodeError(
            f"{name}: {len(data)} bytes do not match dtype {dtype.newbyteorder('=')} x shape {shape} "
            f"({expected} bytes)"
        )
    try:
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError as exc:  # a shape numpy cannot build (too many dimensions, sizes overflowing)
        raise TensorDecodeError(f"{name}: shape {shape}: {exc}") from None


def encode_fields(arrays: dict[str, np.ndarray], compression: CompressionName = "none") -> dict:
    return {k: encode(v, compression) for k, v in arrays.items()}


def decode_fields(tensors, prefix: str = "") -> dict[str, np.ndarray]:
    """Decode a proto map<string, Tensor> into a dict of arrays."""
    return {k: decode(v, name=f"{prefix}{k}") for k, v in tensors.items()}
