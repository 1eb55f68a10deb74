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


def decode(tensor: tensor_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a Tensor message into a numpy array (read-only view when uncompressed).

    Raises TensorDecodeError naming `name` when the message is malformed.
    """
    dtype = dtype_from_proto(tensor.dtype)
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise TensorDecodeError(f"{name}: negative dimension in shape {shape}")
    expected = dtype.itemsize * math.prod(shape)
    data = tensor.data
    try:
        if tensor.compression == tensor_pb2.COMPRESSION_LZ4:
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
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode_fields(arrays: dict[str, np.ndarray], compression: CompressionName = "none") -> dict:
    return {k: encode(v, compression) for k, v in arrays.items()}


def decode_fields(tensors, prefix: str = "") -> dict[str, np.ndarray]:
    """Decode a proto map<string, Tensor> into a dict of arrays."""
    return {k: decode(v, name=f"{prefix}{k}") for k, v in tensors.items()}
