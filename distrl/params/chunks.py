"""A version of weights as a stream of `ParamChunk` messages, and back.

A tensor's raw little-endian C-order bytes are split over consecutive chunks of
the same name (offset increasing from 0, each message under 4 MiB); the version
ends at the chunk with `end_of_version`. Every chunk names the parameter set the
version belongs to. The server and the client check a
stream with the same `VersionAssembler`, so both reject the same malformed input.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from distrl.params.names import MAX_VERSION, UPDATES_KEY, is_update_count, resolve_param_set
from distrl.proto.v1 import params_pb2, tensor_pb2
from distrl.wire.codec import TensorDecodeError, decode, dtype_from_proto, dtype_to_proto
from distrl.wire.requests import MalformedRequest

# Every ParamChunk on the wire must be smaller than this (gRPC's default limit).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Tensor payload per chunk; the rest of the message (name, shape, metadata) fits in what is left.
DEFAULT_CHUNK_BYTES = 1024 * 1024
# Room reserved in every message for everything but the payload.
_HEADER_ROOM = 64 * 1024
MAX_NAME_CHARS = 1024
# A publisher cannot make the server allocate more than this for one version.
DEFAULT_MAX_VERSION_BYTES = 16 * 1024**3
# numpy's own limit on dimensions; and tensors per version (every name is listed by Info).
MAX_DIMS = 32
MAX_TENSORS = 16384


class ChunkStreamError(ValueError):
    """A chunk stream that does not describe one complete, well-formed version."""


def prepare_tensors(tensors: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Check names and dtypes and return C-contiguous little-endian arrays, ready to chunk.

    Raises ValueError/TypeError naming the offending tensor.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a dict of name -> array, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError("nothing to publish: tensors is empty")
    prepared: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if len(name) > MAX_NAME_CHARS:
            raise ValueError(f"tensor name {name[:40]!r}... is longer than {MAX_NAME_CHARS} characters")
        arr = np.asarray(value)
        try:
            dtype_to_proto(arr.dtype)
        except TypeError as exc:
            raise TypeError(f"tensor {name!r}: {exc}") from None
        # astype, not ascontiguousarray: the latter turns a 0-d array into shape (1,).
        prepared[name] = arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)
    return prepared


def check_metadata(
    metadata: Mapping[str, str] | None, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> dict[str, str]:
    """Metadata as a plain str -> str dict that fits in the first chunk beside its payload."""
    if not 0 < chunk_bytes <= MAX_MESSAGE_BYTES - _HEADER_ROOM:
        raise ValueError(f"chunk_bytes must be in (0, {MAX_MESSAGE_BYTES - _HEADER_ROOM}], got {chunk_bytes}")
    meta = dict(metadata or {})
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata must map str -> str, got {key!r}: {value!r}")
    size = sum(len(k.encode()) + len(v.encode()) + 8 for k, v in meta.items())
    if size + chunk_bytes + _HEADER_ROOM > MAX_MESSAGE_BYTES:
        raise ValueError(
            f"metadata of {size} bytes does not fit in one {MAX_MESSAGE_BYTES}-byte message "
            f"beside a {chunk_bytes}-byte chunk"
        )
    return meta


def iter_chunks(
    version: int,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    param_set: str = "",
) -> Iterator[params_pb2.ParamChunk]:
    """The chunks of one version of `param_set`; `tensors` must come from `prepare_tensors`.

    Lazy, so a large model is never held twice in memory. Metadata rides on the
    first chunk, `end_of_version` on the last, the set name on every chunk.
    """
    names = list(tensors)
    for index, name in enumerate(names):
        arr = tensors[name]
        raw = arr.reshape(-1).view(np.uint8)
        dtype = dtype_to_proto(arr.dtype)
        # A zero-size tensor still needs one chunk to announce its name, dtype and shape.
        starts = range(0, raw.size, chunk_bytes) if raw.size else range(1)
        for start in starts:
            end = min(start + chunk_bytes, raw.size)
            yield params_pb2.ParamChunk(
                version=version,
                name=name,
                dtype=dtype,
                shape=arr.shape,
                offset=start,
                data=raw[start:end].tobytes(),
                end_of_version=index == len(names) - 1 and end == raw.size,
                metadata=metadata if index == 0 and start == 0 else None,
                param_set=param_set,
            )


@dataclass
class _TensorParts:
    name: str
    dtype: int
    shape: tuple[int, ...]
    expected: int
    received: int = 0
    first_chunk: int = 0
    num_chunks: int = 0


@dataclass(frozen=True)
class _JoinedTensor:
    """The fields of a Tensor message that `codec.decode` reads.

    Handing decode a bytearray (instead of copying it into a proto) gives a
    writable array with a single copy of the payload, and keeps the codec's
    dtype x shape length check.
    """

    dtype: int
    shape: tuple[int, ...]
    data: bytearray
    compression: int = tensor_pb2.COMPRESSION_NONE


@dataclass
class VersionAssembler:
    """Checks the chunks of one version as they arrive and collects them.

    `add` raises ChunkStreamError on the first chunk that breaks the protocol:
    a message over the size limit, a bad or changed parameter set name (the
    empty name means the default set), a changed version number, a tensor whose
    chunks are out of order or overrun dtype x shape, a tensor left incomplete,
    a repeated name, or anything after `end_of_version`.
    """

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_version_bytes: int = DEFAULT_MAX_VERSION_BYTES
    chunks: list[params_pb2.ParamChunk] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    version: int | None = None
    param_set: str | None = None
    complete: bool = False
    num_bytes: int = 0  # tensor data
    _held_bytes: int = 0  # tensor data, names and metadata: what max_version_bytes bounds
    _tensors: dict[str, _TensorParts] = field(default_factory=dict)
    _current: _TensorParts | None = None

    @property
    def names(self) -> list[str]:
        return list(self._tensors)

    def add(self, chunk: params_pb2.ParamChunk | MalformedRequest) -> bool:
        """Take the next chunk; True once the version is complete."""
        where = f"chunk {len(self.chunks)}"
        if isinstance(chunk, MalformedRequest):
            raise ChunkStreamError(f"{where}: {chunk.describe()}")
        if self.complete:
            raise ChunkStreamError(f"{where} arrived after end_of_version")
        size = chunk.ByteSize()
        if size >= self.max_message_bytes:
            raise ChunkStreamError(
                f"{where} is {size} bytes; every message must be < {self.max_message_bytes}"
            )
        self._check_param_set(chunk.param_set, where)
        if chunk.version < 0:
            raise ChunkStreamError(f"{where} has negative version {chunk.version}")
        if chunk.version > MAX_VERSION:
            raise ChunkStreamError(f"{where} has version {chunk.version}; versions go up to {MAX_VERSION}")
        if self.version is None:
            self.version = chunk.version
        elif chunk.version != self.version:
            raise ChunkStreamError(f"{where} has version {chunk.version} inside version {self.version}")
        if not chunk.name:
            raise ChunkStreamError(f"{where} has no tensor name")
        if len(chunk.name) > MAX_NAME_CHARS:
            raise ChunkStreamError(
                f"{where}: tensor name {chunk.name[:40]!r}... is longer than {MAX_NAME_CHARS} characters"
            )
        parts = self._current
        if parts is None or chunk.name != parts.name:
            parts = self._start_tensor(chunk, where)
        self._continue_tensor(parts, chunk)
        if chunk.metadata:
            self._add_metadata(chunk, where)
        self.chunks.append(chunk)
        if chunk.end_of_version:
            self._check_finished(parts)
            self.complete = True
        return self.complete

    def finish(self) -> None:
        """Raise unless the stream ended with a complete version."""
        if not self.chunks:
            raise ChunkStreamError("empty stream: no chunks")
        if not self.complete:
            raise ChunkStreamError("stream ended before a chunk with end_of_version")

    def tensors(self) -> dict[str, np.ndarray]:
        """The complete version's arrays (writable), checked against dtype x shape by the codec."""
        self.finish()
        out: dict[str, np.ndarray] = {}
        for name, parts in self._tensors.items():
            pieces = self.chunks[parts.first_chunk : parts.first_chunk + parts.num_chunks]
            joined = bytearray().join(c.data for c in pieces)
            try:
                out[name] = decode(_JoinedTensor(parts.dtype, parts.shape, joined), name=name)  # type: ignore[arg-type]
            except TensorDecodeError as exc:
                raise ChunkStreamError(str(exc)) from None
        return out

    def _add_metadata(self, chunk: params_pb2.ParamChunk, where: str) -> None:
        """Metadata counts toward the version's size; the update count must be an integer."""
        updates = chunk.metadata.get(UPDATES_KEY)
        if updates is not None and not is_update_count(updates):
            raise ChunkStreamError(
                f"{where}: metadata {UPDATES_KEY!r} must be a non-negative integer, got {updates[:40]!r}"
            )
        size = sum(len(k.encode()) + len(v.encode()) for k, v in chunk.metadata.items())
        self._count_bytes(size, f"{where}: metadata")
        self.metadata.update(chunk.metadata)

    def _count_bytes(self, n: int, what: str) -> None:
        """Count `n` bytes (tensor data, names, metadata) against `max_version_bytes`."""
        if self._held_bytes + n > self.max_version_bytes:
            raise ChunkStreamError(f"{what} takes the version past {self.max_version_bytes} bytes")
        self._held_bytes += n

    def _check_param_set(self, name: str, where: str) -> None:
        try:
            param_set = resolve_param_set(name)
        except ValueError as exc:
            raise ChunkStreamError(f"{where}: {exc}") from None
        if self.param_set is None:
            self.param_set = param_set
        elif param_set != self.param_set:
            raise ChunkStreamError(
                f"{where} names parameter set {param_set!r} inside a version of set {self.param_set!r} "
                "(one publish carries one set)"
            )

    def _start_tensor(self, chunk: params_pb2.ParamChunk, where: str) -> _TensorParts:
        name = chunk.name
        if self._current is not None:
            self._check_finished(self._current)
        if name in self._tensors:
            raise ChunkStreamError(f"{where}: tensor {name!r} appears twice (its chunks must be consecutive)")
        if chunk.offset != 0:
            raise ChunkStreamError(f"{where}: tensor {name!r} starts at offset {chunk.offset}, not 0")
        try:
            dtype = dtype_from_proto(chunk.dtype)
        except TensorDecodeError as exc:
            raise ChunkStreamError(f"{where}: tensor {name!r}: {exc}") from None
        if len(self._tensors) >= MAX_TENSORS:
            raise ChunkStreamError(f"{where}: more than {MAX_TENSORS} tensors in one version")
        if len(chunk.shape) > MAX_DIMS:
            raise ChunkStreamError(
                f"{where}: tensor {name!r} has {len(chunk.shape)} dimensions, at most {MAX_DIMS}"
            )
        shape = tuple(int(s) for s in chunk.shape)
        if any(s < 0 for s in shape):
            raise ChunkStreamError(f"{where}: tensor {name!r} has a negative dimension in shape {shape}")
        # Judged by its nonzero dimensions too: an empty tensor of shape [2^62, 2^62, 0] is 0 bytes,
        # but no subscriber could build it.
        if dtype.itemsize * math.prod(s for s in shape if s) > self.max_version_bytes:
            raise ChunkStreamError(
                f"{where}: tensor {name!r} of shape {shape} takes the version past "
                f"{self.max_version_bytes} bytes"
            )
        expected = dtype.itemsize * math.prod(shape)
        # Its name counts as well: a version of 250k empty tensors is not free.
        self._count_bytes(expected + len(name.encode()), f"{where}: tensor {name!r}")
        self.num_bytes += expected
        parts = _TensorParts(name, chunk.dtype, shape, expected, first_chunk=len(self.chunks))
        self._tensors[name] = parts
        self._current = parts
        return parts

    def _continue_tensor(self, parts: _TensorParts, chunk: params_pb2.ParamChunk) -> None:
        name = parts.name
        if chunk.dtype != parts.dtype or tuple(chunk.shape) != parts.shape:
            raise ChunkStreamError(f"tensor {name!r} changes dtype or shape between chunks")
        if chunk.offset != parts.received:
            raise ChunkStreamError(
                f"tensor {name!r}: chunk at offset {chunk.offset}, expected {parts.received} (out of order)"
            )
        end = parts.received + len(chunk.data)
        if end > parts.expected:
            raise ChunkStreamError(
                f"tensor {name!r}: {end} bytes do not match dtype {dtype_from_proto(parts.dtype)} x shape "
                f"{parts.shape} ({parts.expected} bytes)"
            )
        parts.received = end
        parts.num_chunks += 1

    @staticmethod
    def _check_finished(parts: _TensorParts) -> None:
        if parts.received != parts.expected:
            raise ChunkStreamError(
                f"tensor {parts.name!r} ended at {parts.received} bytes; "
                f"dtype {dtype_from_proto(parts.dtype)} x shape {parts.shape} needs {parts.expected}"
            )
