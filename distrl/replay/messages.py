"""Replay messages <-> numpy, on the hot paths of Insert and Sample.

These produce and accept exactly what `distrl.wire.codec` does (same Tensor
messages, same checks); they exist because per-tensor Python overhead is most
of the cost of a 256-item SampleBatch, so they fill messages in place, cache
dtype tags and skip work the generic codec must do for arbitrary input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distrl.proto.v1 import replay_pb2, tensor_pb2
from distrl.wire.codec import (
    CompressionName,
    TensorDecodeError,
    decode,
    dtype_from_proto,
    dtype_to_proto,
    encode,
)

# Sent in SampleBatch.fields beside the table's own fields; the spec reserves the name.
WEIGHTS_FIELD = "weights"

_DTYPE_BY_TAG: dict[int, np.dtype] = {}
_TAG_BY_DTYPE: dict[np.dtype, int] = {}


def _tag(dtype: np.dtype) -> int:
    tag = _TAG_BY_DTYPE.get(dtype)
    if tag is None:
        tag = _TAG_BY_DTYPE[dtype] = dtype_to_proto(dtype)
    return tag


def fill_tensor(tensor: tensor_pb2.Tensor, array: np.ndarray) -> None:
    """Write `array` into an (empty) Tensor message, uncompressed, little-endian, C order."""
    if array.dtype.byteorder == ">" or not array.flags.c_contiguous:
        # Copying a strided view first is ~5x faster than tobytes() walking it.
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    tensor.dtype = _tag(array.dtype)
    tensor.shape.extend(array.shape)
    tensor.data = array.tobytes()


def fast_decode(tensor: tensor_pb2.Tensor, name: str) -> np.ndarray:
    """`codec.decode` for uncompressed tensors without its per-call overhead (same checks)."""
    if tensor.compression != tensor_pb2.COMPRESSION_NONE:
        return decode(tensor, name=name)
    dtype = _DTYPE_BY_TAG.get(tensor.dtype)
    if dtype is None:
        try:
            dtype = _DTYPE_BY_TAG[tensor.dtype] = dtype_from_proto(tensor.dtype)
        except TensorDecodeError as exc:
            raise TensorDecodeError(f"{name}: {exc}") from None
    shape = tuple(tensor.shape)
    data = tensor.data
    try:
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    except ValueError:
        # Let the codec produce its precise message (negative dims, byte-count mismatch).
        return decode(tensor, name=name)


def encode_sample_batch(
    table: str,
    keys: np.ndarray,
    probabilities: np.ndarray,
    weights: np.ndarray | None,
    policy_version: np.ndarray,
    fields: dict[str, np.ndarray],
    table_size: int,
) -> replay_pb2.SampleBatch:
    """A SampleBatch message; importance weights travel as the reserved `weights` field.

    `weights=None` (uniform sampling: all ones) sends none; the reader fills in ones.
    """
    msg = replay_pb2.SampleBatch(table=table, table_size=table_size)
    fill_tensor(msg.keys, keys)
    fill_tensor(msg.probabilities, probabilities)
    fill_tensor(msg.policy_version, policy_version)
    out = msg.fields
    for name, array in fields.items():
        fill_tensor(out[name], array)
    if weights is not None:
        fill_tensor(out[WEIGHTS_FIELD], weights)
    return msg


@dataclass
class DecodedSample:
    """One SampleBatch message as arrays; `columns` holds the fields plus per-item metadata."""

    columns: dict[str, np.ndarray]
    table_size: int

    @property
    def size(self) -> int:
        return len(self.columns["keys"])


_ONES: dict[int, np.ndarray] = {}


def uniform_weights(n: int) -> np.ndarray:
    """A read-only vector of n ones, shared by every uniform batch of that size."""
    ones = _ONES.get(n)
    if ones is None:
        ones = np.ones(n)
        ones.flags.writeable = False
        _ONES[n] = ones
    return ones


# Names of the per-item metadata columns kept beside the fields (all reserved by the spec).
META_COLUMNS = ("keys", "probabilities", "policy_version", WEIGHTS_FIELD)


def decode_sample_batch(msg: replay_pb2.SampleBatch) -> DecodedSample:
    """Arrays of a SampleBatch; TensorDecodeError names a malformed tensor."""
    columns = {name: fast_decode(t, name) for name, t in msg.fields.items()}
    columns["keys"] = fast_decode(msg.keys, "keys")
    columns["probabilities"] = fast_decode(msg.probabilities, "probabilities")
    columns["policy_version"] = fast_decode(msg.policy_version, "policy_version")
    n = len(columns["keys"])
    if WEIGHTS_FIELD not in columns:  # uniform sampling: the server sends no weights
        columns[WEIGHTS_FIELD] = uniform_weights(n)
    for name, array in columns.items():
        if array.ndim == 0 or array.shape[0] != n:
            raise TensorDecodeError(f"{name}: {array.shape} does not have the batch's {n} items")
    return DecodedSample(columns, int(msg.table_size))


def encode_transition_batch(
    fields: dict[str, np.ndarray],
    *,
    table: str,
    actor_id: str,
    policy_version: int,
    compression: CompressionName = "none",
) -> replay_pb2.TransitionBatch:
    """A TransitionBatch message without its sequence number (the writer assigns it when sending)."""
    msg = replay_pb2.TransitionBatch(table=table, actor_id=actor_id, policy_version=policy_version)
    out = msg.fields
    if compression == "none":
        for name, array in fields.items():
            fill_tensor(out[name], np.asarray(array))
    else:
        for name, array in fields.items():
            out[name].CopyFrom(encode(array, compression))
    return msg


def decode_transition_fields(msg: replay_pb2.TransitionBatch) -> dict[str, np.ndarray]:
    """The fields of a TransitionBatch; TensorDecodeError carries the field name first in its message."""
    return {name: fast_decode(t, name) for name, t in msg.fields.items()}
