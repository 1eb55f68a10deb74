"""Replay messages <-> numpy, on the hot paths of Insert and Sample.

Batches travel packed: one `uint8 [n, row_bytes]` Tensor of rows plus a
`RowLayout` (`distrl.replay.rows`). A sampled batch is the table's gathered
storage rows, sent as they are; the reader turns the layout into a numpy
structured dtype, so decoding is `np.frombuffer` and every field (and the keys,
policy and learner versions) is a zero-copy view. Per-tensor Python overhead used to be
most of the cost of a 256-item batch; one tensor per message removes it.
TransitionBatch also keeps its one-Tensor-per-field form (`encode_transition_batch`)
for clients that do not pack.

Layouts are converted once and cached: per table on the sending side, per
distinct layout message on the receiving side (a bounded cache, since the
server reads layouts from untrusted actors).

Info's TableInfo converts to and from `stats.TableStats` here too (off the hot paths).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from distrl.proto.v1 import replay_pb2, tensor_pb2
from distrl.replay.rows import (
    KEYS,
    LEARNER_VERSION,
    META_COLUMNS,
    POLICY_VERSION,
    LayoutError,
    PackedBatch,
    RowColumn,
    RowLayout,
)
from distrl.replay.stats import FieldSpecInfo, TableStats
from distrl.wire.codec import (
    CompressionName,
    TensorDecodeError,
    decode,
    dtype_from_proto,
    dtype_to_proto,
    encode,
)

_DTYPE_BY_TAG: dict[int, np.dtype] = {}
_TAG_BY_DTYPE: dict[np.dtype, int] = {}
_UINT8 = tensor_pb2.UINT8
_MAX_CACHED_LAYOUTS = 64


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


# -- row layouts ------------------------------------------------------------------------------------

_LAYOUT_MSGS: dict[int, tuple[RowLayout, replay_pb2.RowLayout]] = {}
_LAYOUTS: dict[bytes, RowLayout] = {}


def layout_to_proto(layout: RowLayout) -> replay_pb2.RowLayout:
    """The (cached, shared: do not modify) message of a layout."""
    cached = _LAYOUT_MSGS.get(id(layout))
    if cached is None or cached[0] is not layout:
        msg = replay_pb2.RowLayout(
            row_bytes=layout.row_bytes,
            columns=[
                replay_pb2.RowColumn(name=c.name, dtype=_tag(c.dtype), shape=c.shape, offset=c.offset)
                for c in layout.columns
            ],
        )
        if len(_LAYOUT_MSGS) >= _MAX_CACHED_LAYOUTS:
            _LAYOUT_MSGS.clear()
        cached = _LAYOUT_MSGS[id(layout)] = (layout, msg)
    return cached[1]


def layout_from_proto(msg: replay_pb2.RowLayout) -> RowLayout:
    """A checked RowLayout (cached by the message's bytes); LayoutError names a bad column."""
    key = msg.SerializeToString()
    layout = _LAYOUTS.get(key)
    if layout is None:
        columns = []
        for c in msg.columns:
            try:
                dtype = dtype_from_proto(c.dtype)
            except TensorDecodeError as exc:
                raise LayoutError(c.name, str(exc)) from None
            columns.append(RowColumn(c.name, dtype, tuple(int(s) for s in c.shape), int(c.offset)))
        layout = RowLayout(tuple(columns), int(msg.row_bytes))
        layout.check()
        if len(_LAYOUTS) >= _MAX_CACHED_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


def _decode_rows(tensor: tensor_pb2.Tensor, layout: RowLayout) -> np.ndarray:
    """The (n, row_bytes) uint8 rows of a message (a view of its bytes when uncompressed)."""
    if tensor.dtype != _UINT8 or len(tensor.shape) != 2 or tensor.shape[1] != layout.row_bytes:
        raise LayoutError(
            "rows",
            f"rows must be uint8 [n, {layout.row_bytes}] as the layout says, got dtype enum "
            f"{tensor.dtype} shape {list(tensor.shape)}",
        )
    return fast_decode(tensor, "rows")


# -- Sample -----------------------------------------------------------------------------------------


def encode_sample_batch(
    table: str,
    rows: np.ndarray,
    layout: RowLayout,
    table_size: int,
    probabilities: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> bytes:
    """A serialized SampleBatch of gathered storage rows ((n, row_bytes) uint8, C order).

    `probabilities`/`weights` None (uniform sampling) send none: the reader fills
    in 1 / table_size and ones. Written by hand rather than through a message
    object: the rows are copied once, into the result, instead of four times
    (tobytes, the Tensor, the SampleBatch, serializing), and everything but the
    rows and the table size is the same for every batch of a table, so it is
    cached. Fields are in no particular order, which protobuf allows;
    `SampleBatch.FromString` reads it.
    """
    data = memoryview(np.ascontiguousarray(rows).reshape(-1))
    parts = [_sample_prefix(table, layout, rows.shape), data, b"\x20", _varint(table_size)]  # + field 4
    if probabilities is not None:
        parts.append(_tensor_field(3, probabilities))
    if weights is not None:
        parts.append(_tensor_field(9, weights))
    return b"".join(parts)


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes([i]) for i in range(0x80)]
_PREFIXES: dict[tuple[str, int, tuple[int, int]], tuple[RowLayout, bytes]] = {}


def _sample_prefix(table: str, layout: RowLayout, shape: tuple[int, int]) -> bytes:
    """SampleBatch fields 1 (table) and 8 (layout), and field 7 (rows) up to its data."""
    key = (table, id(layout), shape)
    cached = _PREFIXES.get(key)
    if cached is None or cached[0] is not layout:
        name = table.encode()
        layout_bytes = layout_to_proto(layout).SerializeToString()
        n, row_bytes = shape
        dims = _varint(n) + _varint(row_bytes)
        # Tensor{dtype: UINT8, shape: [n, row_bytes] (packed), data: <n * row_bytes bytes>}
        tensor_head = (
            b"\x08" + _varint(_UINT8) + b"\x12" + _varint(len(dims)) + dims + b"\x1a" + _varint(n * row_bytes)
        )
        prefix = b"".join(
            (
                b"\x0a" + _varint(len(name)) + name,
                b"\x42" + _varint(len(layout_bytes)) + layout_bytes,
                b"\x3a" + _varint(len(tensor_head) + n * row_bytes) + tensor_head,
            )
        )
        if len(_PREFIXES) >= _MAX_CACHED_LAYOUTS:
            _PREFIXES.clear()
        cached = _PREFIXES[key] = (layout, prefix)
    return cached[1]


def _tensor_field(number: int, array: np.ndarray) -> bytes:
    tensor = tensor_pb2.Tensor()
    fill_tensor(tensor, array)
    body = tensor.SerializeToString()
    return _varint(number << 3 | 2) + _varint(len(body)) + body


@dataclass
class DecodedSample:
    """One SampleBatch message: its rows as a structured array (fields, keys, policy and learner version)."""

    rows: np.ndarray  # 1-D structured, dtype layout.numpy_dtype
    layout: RowLayout
    table_size: int
    # None for uniform sampling (1 / table_size each, weight 1).
    probabilities: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.rows)

    @cached_property
    def columns(self) -> dict[str, np.ndarray]:
        """Fields plus the META_COLUMNS, `probabilities` and `weights` (filled in when uniform)."""
        n = self.size
        columns = {name: self.rows[name] for name in self.layout.field_names}
        for name in (KEYS, POLICY_VERSION, LEARNER_VERSION):
            columns[name] = self.rows[name]
        columns["probabilities"] = (
            np.full(n, 1.0 / self.table_size) if self.probabilities is None else self.probabilities
        )
        columns["weights"] = np.ones(n) if self.weights is None else self.weights
        return columns


def decode_sample_batch(msg: replay_pb2.SampleBatch) -> DecodedSample:
    """Arrays of a SampleBatch; TensorDecodeError names what is malformed."""
    try:
        layout = layout_from_proto(msg.layout)
        missing = [name for name in META_COLUMNS if name not in layout.by_name]
        if missing:
            raise LayoutError(missing[0], "missing from the sample's row layout")
        rows = layout.structured(_decode_rows(msg.rows, layout))
    except LayoutError as exc:
        raise TensorDecodeError(str(exc)) from None
    n = len(rows)
    out = DecodedSample(rows, layout, int(msg.table_size))
    if msg.HasField("probabilities"):
        out.probabilities = fast_decode(msg.probabilities, "probabilities")
    if msg.HasField("weights"):
        out.weights = fast_decode(msg.weights, "weights")
    for name in ("probabilities", "weights"):
        array = getattr(out, name)
        if array is not None and array.shape != (n,):
            raise TensorDecodeError(f"{name}: {array.shape} does not have the batch's {n} items")
    if out.probabilities is None and n and out.table_size <= 0:
        raise TensorDecodeError(f"table_size {out.table_size} with {n} uniformly sampled items")
    return out


# -- Insert -----------------------------------------------------------------------------------------

_BATCH_LAYOUTS: dict[tuple, RowLayout] = {}


def pack_transition_batch(
    fields: dict[str, np.ndarray],
    *,
    table: str,
    actor_id: str,
    policy_version: int,
    compression: CompressionName = "none",
) -> replay_pb2.TransitionBatch:
    """A packed TransitionBatch without its sequence number (the writer assigns it when sending).

    Raises ValueError naming a field that is not an array with the batch's leading dimension
    or whose dtype cannot travel.
    """
    arrays = {name: np.asarray(array) for name, array in fields.items()}
    if not arrays:
        raise ValueError("a batch needs at least one field")
    # A scalar's signature (None for its shape) never matches a cached layout, so it is always checked.
    signature = tuple((name, a.dtype, a.shape[1:] if a.ndim else None) for name, a in arrays.items())
    layout = _BATCH_LAYOUTS.get(signature)
    if layout is None:
        for name, a in arrays.items():
            if a.ndim == 0:
                raise ValueError(f"field {name!r}: needs a leading batch dimension, got a scalar")
            try:
                dtype_to_proto(a.dtype)
            except TypeError as exc:
                raise ValueError(f"field {name!r}: {exc}") from None
        layout = RowLayout.of_batch(arrays)
        if len(_BATCH_LAYOUTS) >= _MAX_CACHED_LAYOUTS:
            _BATCH_LAYOUTS.clear()
        _BATCH_LAYOUTS[signature] = layout
    n = len(next(iter(arrays.values())))
    try:
        rows = layout.pack_batch(arrays, n)
    except LayoutError as exc:
        raise ValueError(f"{exc} (the batch's first field has {n} items)") from None
    msg = replay_pb2.TransitionBatch(
        table=table, actor_id=actor_id, policy_version=policy_version, layout=layout_to_proto(layout)
    )
    if compression == "none":
        msg.rows.dtype = _UINT8
        msg.rows.shape.extend(rows.shape)
        msg.rows.data = rows.tobytes()
    else:
        msg.rows.CopyFrom(encode(rows, compression))
    return msg


def encode_transition_batch(
    fields: dict[str, np.ndarray],
    *,
    table: str,
    actor_id: str,
    policy_version: int,
    compression: CompressionName = "none",
) -> replay_pb2.TransitionBatch:
    """A TransitionBatch in its one-Tensor-per-field form, without its sequence number."""
    msg = replay_pb2.TransitionBatch(table=table, actor_id=actor_id, policy_version=policy_version)
    out = msg.fields
    if compression == "none":
        for name, array in fields.items():
            fill_tensor(out[name], np.asarray(array))
    else:
        for name, array in fields.items():
            out[name].CopyFrom(encode(array, compression))
    return msg


def decode_transition_batch(msg: replay_pb2.TransitionBatch) -> dict[str, np.ndarray] | PackedBatch:
    """The batch of a TransitionBatch: packed rows when `rows` is set, else the per-field tensors.

    Raises LayoutError naming the malformed field (`rows` for the packed block itself).
    """
    if msg.HasField("rows"):
        layout = layout_from_proto(msg.layout)
        try:
            return PackedBatch(_decode_rows(msg.rows, layout), layout)
        except TensorDecodeError as exc:
            raise LayoutError("rows", str(exc)) from None
    fields = {}
    for name, tensor in msg.fields.items():
        try:
            fields[name] = fast_decode(tensor, name)
        except TensorDecodeError as exc:
            raise LayoutError(name, str(exc)) from None
    return fields


# -- Info -------------------------------------------------------------------------------------------

# TableStats and the TableInfo message have the same fields; only the spec needs converting.
_PLAIN_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(TableStats) if f.name != "spec")


def encode_table_stats(stats: TableStats) -> replay_pb2.TableInfo:
    msg = replay_pb2.TableInfo(**{name: getattr(stats, name) for name in _PLAIN_STATS_FIELDS})
    for name, f in stats.spec.items():
        msg.spec.add(name=name, dtype=dtype_to_proto(np.dtype(f.dtype)), shape=f.shape)
    return msg


def decode_table_stats(msg: replay_pb2.TableInfo) -> TableStats:
    return TableStats(
        **{name: getattr(msg, name) for name in _PLAIN_STATS_FIELDS},
        spec={
            f.name: FieldSpecInfo(str(dtype_from_proto(f.dtype).newbyteorder("=")), list(f.shape))
            for f in msg.spec
        },
    )
