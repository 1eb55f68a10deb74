"""Hypothesis strategies for the messages the servers decode: random ones and mutated valid ones.

Every strategy draws a `Stream`: the serialized request messages of one call, as bytes
(one for UpdatePriorities, one or more for the streaming calls). Bytes, not message
objects, so a mutation can break the protobuf encoding itself.

- random: every field drawn at large (unknown dtype and codec enums, negative and huge
  dimensions, byte counts that disagree with them, compression bombs, NaN and inf,
  names that are empty, reserved or too long, counts out of range);
- mutated: a valid message with one to three changes: a field set to a drawn value, the
  payload of one tensor (compressed or not) flipped, cut or extended, or the serialized
  message itself flipped, cut, extended or spliced.

Shared by tests/test_fuzz.py (a bounded run) and benchmarks/fuzz.py (the long one).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from fuzz_servers import INSERT_TABLE, PRIO_CAPACITY, PRIO_TABLE, valid_columns
from hypothesis import strategies as st

from distrl.params.chunks import iter_chunks, prepare_tensors
from distrl.proto.v1 import params_pb2, replay_pb2, telemetry_pb2, tensor_pb2
from distrl.replay.messages import encode_transition_batch, pack_transition_batch
from distrl.telemetry.coordinator import MAX_METRICS_PER_BATCH
from distrl.wire.codec import MAX_DECOMPRESSED_BYTES, encode

INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
DTYPE_TAGS = list(range(1, 13))  # FLOAT32 .. BOOL
_DTYPE_OF_TAG = {
    1: np.float32, 2: np.float64, 3: np.float16, 4: np.int8, 5: np.int16, 6: np.int32,
    7: np.int64, 8: np.uint8, 9: np.uint16, 10: np.uint32, 11: np.uint64, 12: np.bool_,
}  # fmt: skip
CODECS = ("none", "lz4", "zstd")


@dataclass(frozen=True)
class Stream:
    """The request messages of one call, serialized; `how` says how they were made (for reports)."""

    messages: tuple[bytes, ...]
    how: str


# -- values ---------------------------------------------------------------------------------------

int64s = st.one_of(st.integers(-3, 3), st.integers(*INT64), st.sampled_from([2**31, 2**53, 2**62, -(2**63)]))
uint64s = st.one_of(st.integers(0, 5), st.integers(*UINT64))
enums = st.one_of(st.sampled_from(DTYPE_TAGS), st.integers(-5, 40), st.integers(-(2**31), 2**31 - 1))
codec_enums = st.one_of(st.sampled_from([0, 1, 2]), st.integers(-3, 9))
dims = st.one_of(
    st.integers(0, 8), st.sampled_from([-1, 2**31, 2**40, 2**62, 2**63 - 1, -(2**63)]), st.integers(*INT64)
)
shapes = st.one_of(st.lists(dims, max_size=4), st.lists(st.integers(0, 2), min_size=33, max_size=40))
floats = st.floats(allow_nan=True, allow_infinity=True)
long_text = st.one_of(st.text(min_size=257, max_size=1100), st.just("n" * 200_000))
names = st.one_of(
    st.sampled_from(["", "obs", "action", "reward", "done", "keys", "weights", "/a", "a/"]),
    st.text(max_size=12),
    long_text,
)


@functools.cache
def _bombs() -> tuple[tuple[int, bytes], ...]:
    """(compression, payload) pairs that would decompress past the codec's limit (made once)."""
    zeros = bytes(MAX_DECOMPRESSED_BYTES + 4096)
    import lz4.block
    import zstandard

    return (
        (tensor_pb2.COMPRESSION_ZSTD, zstandard.ZstdCompressor(level=1).compress(zeros)),
        (tensor_pb2.COMPRESSION_LZ4, lz4.block.compress(zeros, store_size=True)),
        (tensor_pb2.COMPRESSION_LZ4, (2**31).to_bytes(4, "little") + bytes(16)),  # a header that lies
    )


@st.composite
def tensors(draw) -> tensor_pb2.Tensor:
    """A Tensor message: at large, consistent (bytes match dtype x shape, maybe compressed), or a bomb."""
    kind = draw(st.sampled_from(["random", "consistent", "consistent", "bomb"]))
    if kind == "random":
        return tensor_pb2.Tensor(
            dtype=draw(enums),
            shape=draw(shapes),
            data=draw(st.binary(max_size=300)),
            compression=draw(codec_enums),
        )
    if kind == "bomb":
        compression, payload = draw(st.sampled_from(_bombs()))
        n = (MAX_DECOMPRESSED_BYTES + 4096) // 4
        return tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[n], data=payload, compression=compression)
    tag = draw(st.sampled_from(DTYPE_TAGS))
    shape = draw(st.lists(st.integers(0, 6), max_size=3))
    size = math.prod(shape)
    raw = draw(st.binary(min_size=size * np.dtype(_DTYPE_OF_TAG[tag]).itemsize, max_size=4096))
    array = np.frombuffer(raw[: size * np.dtype(_DTYPE_OF_TAG[tag]).itemsize], _DTYPE_OF_TAG[tag]).reshape(
        shape
    )
    return encode(array, draw(st.sampled_from(CODECS)))


# -- byte mutations -----------------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw, data: bytes) -> bytes:
    """`data` flipped, cut, extended or spliced once."""
    op = draw(st.sampled_from(["flip", "set", "truncate", "extend", "delete", "insert", "duplicate"]))
    if not data:
        return draw(st.binary(min_size=1, max_size=64))
    at = draw(st.integers(0, len(data) - 1))
    if op == "flip":
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    if op == "set":
        return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    if op == "truncate":
        return data[:at]
    if op == "extend":
        return data + draw(st.binary(min_size=1, max_size=64))
    stop = draw(st.integers(at, min(len(data), at + 64)))
    if op == "delete":
        return data[:at] + data[stop:]
    if op == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]
    return data[:stop] + data[at:stop] + data[stop:]  # duplicate a slice


def _serialize(message) -> bytes:
    return message.SerializeToString()


@st.composite
def _mutated_stream(draw, messages: list, edits, how: str) -> Stream:
    """One to three mutations of `messages` (message objects): field edits, payload or wire bytes."""
    messages = [m.__class__.FromString(m.SerializeToString()) for m in messages]
    wire: dict[int, bytes] = {}
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        level = draw(st.sampled_from(["field", "field", "payload", "wire"]))
        index = draw(st.integers(0, len(messages) - 1))
        if level == "wire":
            wire[index] = draw(mutated_bytes(wire.get(index, _serialize(messages[index]))))
            steps.append("wire bytes")
            continue
        if level == "payload":
            payloads = _payloads(messages[index])
            if payloads:
                holder, attribute = draw(st.sampled_from(payloads))
                setattr(holder, attribute, draw(mutated_bytes(getattr(holder, attribute))))
                steps.append(f"payload {attribute}")
                continue
        name, edit = draw(st.sampled_from(edits))
        edit(draw, messages, index)
        steps.append(name)
    out = tuple(wire.get(i, _serialize(m)) for i, m in enumerate(messages))
    return Stream(out, f"{how}: {', '.join(steps)}")


def _payloads(message) -> list[tuple[object, str]]:
    """(holder, attribute) of every bytes payload in a message."""
    if isinstance(message, replay_pb2.TransitionBatch):
        holders = [message.fields[name] for name in message.fields]
        if message.HasField("rows"):
            holders.append(message.rows)
        return [(h, "data") for h in holders]
    if isinstance(message, replay_pb2.UpdatePrioritiesRequest):
        return [(message.keys, "data"), (message.priorities, "data")]
    if isinstance(message, params_pb2.ParamChunk):
        return [(message, "data")]
    return []


def _set_tensor_field(draw, tensor: tensor_pb2.Tensor) -> None:
    """Change one field of a Tensor message to a drawn value."""
    which = draw(st.sampled_from(["dtype", "shape", "dim", "compression", "data", "nan"]))
    if which == "dtype":
        tensor.dtype = draw(enums)
    elif which == "shape":
        tensor.ClearField("shape")
        tensor.shape.extend(draw(shapes))
    elif which == "dim" and tensor.shape:
        tensor.shape[draw(st.integers(0, len(tensor.shape) - 1))] = draw(dims)
    elif which == "compression":
        tensor.compression = draw(codec_enums)
    elif which == "nan" and tensor.dtype in (tensor_pb2.FLOAT32, tensor_pb2.FLOAT64) and tensor.data:
        if tensor.compression == tensor_pb2.COMPRESSION_NONE:
            bad = np.array([draw(st.sampled_from([np.nan, np.inf, -np.inf]))], _DTYPE_OF_TAG[tensor.dtype])
            at = draw(st.integers(0, len(tensor.data) // bad.itemsize - 1)) * bad.itemsize
            tensor.data = tensor.data[:at] + bad.tobytes() + tensor.data[at + bad.itemsize :]
    else:
        tensor.data = draw(st.binary(max_size=300))


# -- replay Insert --------------------------------------------------------------------------------


@st.composite
def row_layouts(draw) -> replay_pb2.RowLayout:
    columns = draw(
        st.lists(
            st.builds(
                replay_pb2.RowColumn,
                name=names,
                dtype=enums,
                shape=st.lists(dims, max_size=3),
                offset=st.one_of(st.integers(-2, 64), int64s),
            ),
            max_size=6,
        )
    )
    return replay_pb2.RowLayout(row_bytes=draw(st.one_of(st.integers(-2, 64), int64s)), columns=columns)


@st.composite
def consistent_row_layouts(draw) -> replay_pb2.RowLayout:
    """Columns back to back in a row as long as they are (shapes may be huge, or empty and huge)."""
    columns, offset = [], 0
    for name in draw(st.lists(names, min_size=1, max_size=4)):
        tag = draw(st.sampled_from(DTYPE_TAGS))
        shape = draw(
            st.lists(st.one_of(st.integers(0, 4), st.sampled_from([0, 2**31, 2**40, 2**62])), max_size=3)
        )
        nbytes = np.dtype(_DTYPE_OF_TAG[tag]).itemsize * math.prod(shape)
        if offset + nbytes > INT64[1]:
            break
        columns.append(replay_pb2.RowColumn(name=name, dtype=tag, shape=shape, offset=offset))
        offset += nbytes
    return replay_pb2.RowLayout(row_bytes=offset, columns=columns)


@st.composite
def rows_for(draw, layout: replay_pb2.RowLayout) -> tensor_pb2.Tensor:
    """A uint8 [n, row_bytes] block for `layout`: as many rows as fit in 4 KiB (none for a huge row)."""
    row_bytes = max(layout.row_bytes, 0)
    n = draw(st.integers(0, 4096 // row_bytes)) if 0 < row_bytes <= 4096 else draw(st.integers(0, 3))
    data = bytes(n * row_bytes) if n * row_bytes <= 4096 else b""
    return tensor_pb2.Tensor(dtype=tensor_pb2.UINT8, shape=[n, row_bytes], data=data)


table_names = st.one_of(st.sampled_from([INSERT_TABLE, "", PRIO_TABLE, "nope"]), st.text(max_size=8))


@st.composite
def random_inserts(draw) -> Stream:
    msg = replay_pb2.TransitionBatch(
        table=draw(table_names),
        actor_id=draw(st.one_of(st.just("fuzz"), st.text(max_size=10))),
        sequence=draw(uint64s),
        policy_version=draw(int64s),
        incarnation=draw(st.binary(max_size=40)),
    )
    form = draw(st.sampled_from(["fields", "rows", "laid-out rows", "both", "none"]))
    if form in ("fields", "both"):
        for name in draw(st.lists(names, max_size=5, unique=True)):
            msg.fields[name].CopyFrom(draw(tensors()))
    if form in ("rows", "both"):
        msg.rows.CopyFrom(draw(tensors()))
        if draw(st.booleans()):
            msg.layout.CopyFrom(draw(row_layouts()))
    if form == "laid-out rows":  # rows that match their layout, so the layout itself is what is judged
        msg.layout.CopyFrom(draw(consistent_row_layouts()))
        msg.rows.CopyFrom(draw(rows_for(msg.layout)))
    return Stream((_serialize(msg),), f"random insert ({form})")


@st.composite
def valid_inserts(draw) -> replay_pb2.TransitionBatch:
    """A batch the `default` table stores: packed or per-field, maybe compressed, from a fresh writer."""
    n = draw(st.integers(1, 64))
    columns = valid_columns(n, np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    encoder = draw(st.sampled_from([pack_transition_batch, encode_transition_batch]))
    msg = encoder(
        columns,
        table=INSERT_TABLE,
        actor_id=f"writer-{draw(st.integers(0, 9))}",
        policy_version=draw(st.integers(0, 1000)),
        compression=draw(st.sampled_from(CODECS)),
    )
    msg.incarnation = draw(st.binary(min_size=16, max_size=16))
    msg.sequence = draw(st.integers(1, 2**40))
    return msg


def _insert_edits():
    def scalar(name, strategy):
        return name, lambda draw, msgs, i: setattr(msgs[i], name, draw(strategy))

    def tensor(draw, msgs, i):
        msg = msgs[i]
        holders = [msg.fields[n] for n in msg.fields] + ([msg.rows] if msg.HasField("rows") else [])
        _set_tensor_field(draw, draw(st.sampled_from(holders)))

    def column(draw, msgs, i):
        layout = msgs[i].layout
        if not layout.columns:
            return
        c = layout.columns[draw(st.integers(0, len(layout.columns) - 1))]
        which = draw(st.sampled_from(["name", "dtype", "shape", "offset", "remove", "duplicate"]))
        if which == "name":
            c.name = draw(names)
        elif which == "dtype":
            c.dtype = draw(enums)
        elif which == "shape":
            c.ClearField("shape")
            c.shape.extend(draw(st.lists(dims, max_size=3)))
        elif which == "offset":
            c.offset = draw(st.one_of(st.integers(-2, 40), int64s))
        elif which == "remove":
            layout.columns.remove(c)
        else:
            layout.columns.append(c)

    def field_set(draw, msgs, i):
        msg = msgs[i]
        if msg.fields and draw(st.booleans()):
            del msg.fields[draw(st.sampled_from(sorted(msg.fields)))]
        else:
            msg.fields[draw(names)].CopyFrom(draw(tensors()))

    return [
        scalar("table", table_names),
        scalar("actor_id", st.text(max_size=10)),
        scalar("sequence", uint64s),
        scalar("policy_version", int64s),
        scalar("incarnation", st.binary(max_size=40)),
        ("tensor", tensor),
        ("tensor", tensor),
        ("layout column", column),
        ("layout row_bytes", lambda draw, msgs, i: setattr(msgs[i].layout, "row_bytes", draw(int64s))),
        ("fields", field_set),
    ]


@st.composite
def mutated_inserts(draw) -> Stream:
    base = draw(valid_inserts())
    return draw(_mutated_stream([base], _insert_edits(), "mutated insert"))


# -- replay UpdatePriorities ---------------------------------------------------------------------------


@st.composite
def random_priority_updates(draw) -> Stream:
    msg = replay_pb2.UpdatePrioritiesRequest(table=draw(table_names))
    if draw(st.booleans()):
        msg.keys.CopyFrom(draw(tensors()))
    if draw(st.booleans()):
        msg.priorities.CopyFrom(draw(tensors()))
    return Stream((_serialize(msg),), "random priorities")


@st.composite
def valid_priority_updates(draw) -> replay_pb2.UpdatePrioritiesRequest:
    """Keys of stored and evicted items (or every key so far) with finite, non-negative priorities."""
    if draw(st.booleans()):
        n = draw(st.integers(0, 40))
        keys = np.array(draw(st.lists(st.integers(0, 2 * PRIO_CAPACITY), min_size=n, max_size=n)), np.int64)
    else:
        keys = np.arange(draw(st.sampled_from([PRIO_CAPACITY, 4 * PRIO_CAPACITY])))
    value = st.one_of(st.just(0.0), st.floats(0, 1e6))
    priorities = np.array(
        draw(st.lists(value, min_size=len(keys), max_size=len(keys))),
        draw(st.sampled_from([np.float32, np.float64])),
    )
    codec = draw(st.sampled_from(CODECS))
    return replay_pb2.UpdatePrioritiesRequest(
        table=PRIO_TABLE, keys=encode(keys, codec), priorities=encode(priorities, codec)
    )


def _priority_edits():
    return [
        ("table", lambda draw, msgs, i: setattr(msgs[i], "table", draw(table_names))),
        ("keys", lambda draw, msgs, i: _set_tensor_field(draw, msgs[i].keys)),
        ("priorities", lambda draw, msgs, i: _set_tensor_field(draw, msgs[i].priorities)),
        ("drop keys", lambda draw, msgs, i: msgs[i].ClearField("keys")),
        ("drop priorities", lambda draw, msgs, i: msgs[i].ClearField("priorities")),
    ]


@st.composite
def mutated_priority_updates(draw) -> Stream:
    base = draw(valid_priority_updates())
    return draw(_mutated_stream([base], _priority_edits(), "mutated priorities"))


# -- params Publish -----------------------------------------------------------------------------------

param_sets = st.one_of(
    st.sampled_from(["", "policy", "base", "fuzz-1", "fuzz.2", "bad name", "x" * 65]), st.text(max_size=8)
)
metadata = st.dictionaries(
    st.one_of(st.just("updates"), st.text(max_size=8)),
    st.one_of(st.sampled_from(["7", "-1", "1" * 19, "²", "١٢", "0x10", ""]), st.text(max_size=20)),
    max_size=3,
)


@st.composite
def random_chunks(draw) -> params_pb2.ParamChunk:
    return params_pb2.ParamChunk(
        version=draw(st.one_of(st.just(0), int64s)),
        name=draw(names),
        dtype=draw(enums),
        shape=draw(shapes),
        offset=draw(st.one_of(st.integers(-2, 64), int64s)),
        data=draw(st.binary(max_size=300)),
        end_of_version=draw(st.booleans()),
        metadata=draw(metadata),
        param_set=draw(param_sets),
    )


@st.composite
def random_publishes(draw) -> Stream:
    chunks = draw(st.lists(random_chunks(), min_size=1, max_size=4))
    return Stream(tuple(_serialize(c) for c in chunks), f"random publish ({len(chunks)} chunks)")


@st.composite
def valid_publishes(draw) -> list[params_pb2.ParamChunk]:
    """One version of a few small tensors of any wire dtype, in chunks of a few bytes."""
    tensors_ = {}
    for i in range(draw(st.integers(1, 3))):
        dtype = _DTYPE_OF_TAG[draw(st.sampled_from(DTYPE_TAGS))]
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        count = math.prod(shape)
        nbytes = np.dtype(dtype).itemsize * count
        raw = draw(st.binary(min_size=nbytes, max_size=nbytes + 64))
        tensors_[f"w{i}"] = np.frombuffer(raw, dtype, count=count).reshape(shape)
    version = draw(st.one_of(st.just(0), st.integers(1, 2**53)))
    return list(
        iter_chunks(
            version,
            prepare_tensors(tensors_),
            {"updates": str(draw(st.integers(0, 10**9)))},
            chunk_bytes=draw(st.integers(1, 64)),
            param_set=draw(st.sampled_from(["", "policy", "base"])),
        )
    )


def _publish_edits():
    def scalar(name, strategy):
        return name, lambda draw, msgs, i: setattr(msgs[i], name, draw(strategy))

    def shape(draw, msgs, i):
        msgs[i].ClearField("shape")
        msgs[i].shape.extend(draw(shapes))

    def meta(draw, msgs, i):
        msgs[i].metadata.clear()
        msgs[i].metadata.update(draw(metadata))

    def drop(draw, msgs, i):
        if len(msgs) > 1:
            del msgs[i]

    def duplicate(draw, msgs, i):
        msgs.insert(i, msgs[i].__class__.FromString(msgs[i].SerializeToString()))

    def swap(draw, msgs, i):
        j = draw(st.integers(0, len(msgs) - 1))
        msgs[i], msgs[j] = msgs[j], msgs[i]

    return [
        scalar("version", st.one_of(st.just(0), int64s)),
        scalar("name", names),
        scalar("dtype", enums),
        ("shape", shape),
        scalar("offset", st.one_of(st.integers(-2, 64), int64s)),
        scalar("data", st.binary(max_size=300)),
        scalar("end_of_version", st.booleans()),
        ("metadata", meta),
        scalar("param_set", param_sets),
        ("drop chunk", drop),
        ("duplicate chunk", duplicate),
        ("swap chunks", swap),
    ]


@st.composite
def mutated_publishes(draw) -> Stream:
    return draw(_mutated_stream(draw(valid_publishes()), _publish_edits(), "mutated publish"))


# -- telemetry Report ----------------------------------------------------------------------------------


@functools.cache
def _too_many_metrics() -> bytes:
    metrics = [telemetry_pb2.Metric(name="m", value=1.0)] * (MAX_METRICS_PER_BATCH + 1)
    return telemetry_pb2.MetricBatch(source="actor/0", metrics=metrics).SerializeToString()


@st.composite
def random_reports(draw) -> Stream:
    if draw(st.integers(0, 49)) == 0:
        return Stream((_too_many_metrics(),), "random report (too many metrics)")
    batch = telemetry_pb2.MetricBatch(
        source=draw(
            st.one_of(st.sampled_from(["actor/1", "learner/0", ""]), st.text(max_size=12), long_text)
        ),
        wall_time=draw(floats),
        env_steps=draw(int64s),
        updates=draw(int64s),
        metrics=[
            telemetry_pb2.Metric(name=name, value=value)
            for name, value in draw(st.lists(st.tuples(names, floats), max_size=6))
        ],
    )
    return Stream((_serialize(batch),), "random report")


@st.composite
def valid_reports(draw) -> telemetry_pb2.MetricBatch:
    kind = draw(st.sampled_from(["actor", "learner", "replay"]))
    metric = st.tuples(
        st.sampled_from(["episode_return", "loss", "env_steps_per_s", "q_max", "q_min"]),
        st.floats(-1e6, 1e6),
    )
    return telemetry_pb2.MetricBatch(
        source=f"{kind}/{draw(st.integers(0, 3))}",
        wall_time=draw(st.floats(0, 1e6)),
        env_steps=draw(st.integers(0, 10**6)),
        updates=draw(st.integers(0, 10**6)),
        metrics=[telemetry_pb2.Metric(name=n, value=v) for n, v in draw(st.lists(metric, max_size=5))],
    )


def _report_edits():
    def scalar(name, strategy):
        return name, lambda draw, msgs, i: setattr(msgs[i], name, draw(strategy))

    def metric(draw, msgs, i):
        msgs[i].metrics.append(telemetry_pb2.Metric(name=draw(names), value=draw(floats)))

    return [
        scalar("source", st.one_of(st.text(max_size=12), long_text)),
        scalar("wall_time", floats),
        scalar("env_steps", int64s),
        scalar("updates", int64s),
        ("metric", metric),
    ]


@st.composite
def mutated_reports(draw) -> Stream:
    return draw(_mutated_stream([draw(valid_reports())], _report_edits(), "mutated report"))


RANDOM = {
    "insert": random_inserts,
    "priorities": random_priority_updates,
    "publish": random_publishes,
    "report": random_reports,
}
MUTATED = {
    "insert": mutated_inserts,
    "priorities": mutated_priority_updates,
    "publish": mutated_publishes,
    "report": mutated_reports,
}
