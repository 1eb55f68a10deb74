"""Packed rows on the wire: layouts, packing, validation of packed batches, credit-paced Sample calls."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import numpy as np
import pytest
from certs import make_tls_files
from replay_helpers import batch, check_rows, shard, table_ids, wait_for

from distrl.proto.v1 import replay_pb2, replay_pb2_grpc, tensor_pb2
from distrl.replay.client import ReplayClient
from distrl.replay.config import ReplayShardConfig, TableConfig
from distrl.replay.messages import (
    decode_sample_batch,
    encode_sample_batch,
    layout_to_proto,
    pack_transition_batch,
)
from distrl.replay.protocol import REJECTED_FIELD_KEY
from distrl.replay.rows import LayoutError, PackedBatch, RowColumn, RowLayout
from distrl.replay.server import serve_replay_shard
from distrl.replay.table import Table
from distrl.wire.channel import open_channel
from distrl.wire.codec import TensorDecodeError
from distrl.wire.security import SecurityConfig

# -- layouts ---------------------------------------------------------------------------------------


def test_layout_puts_widest_first_aligned_and_batch_rows_are_a_table_rows_head():
    fields = [
        ("flag", np.bool_, ()),
        ("obs", np.float32, (3,)),
        ("id", np.int64, ()),
        ("act", np.float32, (2,)),
    ]
    layout = RowLayout.pack(fields)
    assert [(c.name, c.offset) for c in layout.columns] == [("id", 0), ("act", 8), ("obs", 16), ("flag", 28)]
    assert layout.row_bytes == 32  # padded to 8
    table = RowLayout.pack(reversed(fields), with_meta=True)  # dict order does not matter
    names = ["id", "act", "obs", "flag", "keys", "policy_version", "learner_version"]
    assert [c.name for c in table.columns] == names
    assert table.by_name["keys"].offset == 32 and table.row_bytes == 56
    assert layout.is_prefix_of(table) and not table.is_prefix_of(layout)
    assert not RowLayout.pack(fields[:3]).is_prefix_of(table)


def test_pack_and_views_round_trip():
    b = batch(range(5, 12))
    layout = RowLayout.of_batch(b)
    rows = layout.pack_batch(b, 7)
    assert rows.dtype == np.uint8 and rows.shape == (7, layout.row_bytes)
    views = layout.views(rows)
    for name, arr in b.items():
        np.testing.assert_array_equal(views[name], arr, err_msg=name)
        assert views[name].dtype == arr.dtype and views[name].shape == arr.shape


@pytest.mark.parametrize(
    ("columns", "row_bytes", "named"),
    [
        ([RowColumn("a", np.dtype("<f4"), (2,), 0), RowColumn("b", np.dtype("<f4"), (), 4)], 16, "b"),
        ([RowColumn("a", np.dtype("<f4"), (5,), 0)], 16, "a"),
        ([RowColumn("a", np.dtype("<f4"), (-1,), 0)], 16, "a"),
        ([RowColumn("a", np.dtype("<f4"), (), 0), RowColumn("a", np.dtype("<f4"), (), 4)], 8, "a"),
        ([RowColumn("a", np.dtype("<f4"), (), -4)], 8, "a"),
    ],
)
def test_layout_check_names_the_bad_column(columns, row_bytes, named):
    with pytest.raises(LayoutError) as err:
        RowLayout(tuple(columns), row_bytes).check()
    assert err.value.column == named


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        (lambda b: b.update(reward=b["reward"][:-1]), "reward"),
        (lambda b: b.update(obs=np.float32(1.0)), "obs"),
        (lambda b: b.update(action=np.zeros((7, 1), dtype=np.complex64)), "action"),
    ],
)
def test_packing_a_malformed_batch_names_the_field(spoil, named):
    b = batch(range(7))
    spoil(b)
    with pytest.raises(ValueError, match=f"field '{named}'"):
        pack_transition_batch(b, table="default", actor_id="a", policy_version=0)


# -- SampleBatch -----------------------------------------------------------------------------------


def _table_rows(n: int) -> tuple[np.ndarray, RowLayout]:
    b = batch(range(n))
    layout = RowLayout.pack(((k, v.dtype, v.shape[1:]) for k, v in b.items()), with_meta=True)
    rows = np.zeros(n, dtype=layout.numpy_dtype)
    for k, v in b.items():
        rows[k] = v
    rows["keys"] = np.arange(100, 100 + n)
    rows["policy_version"] = 7
    rows["learner_version"] = 9
    return rows.view(np.uint8).reshape(n, layout.row_bytes), layout


def test_sample_batch_round_trip_uniform_and_prioritized():
    rows, layout = _table_rows(6)
    msg = encode_sample_batch("t", rows, layout, 50)
    uniform = decode_sample_batch(replay_pb2.SampleBatch.FromString(msg))
    cols = uniform.columns
    assert uniform.size == 6 and uniform.table_size == 50
    check_rows(cols)
    np.testing.assert_array_equal(cols["keys"], np.arange(100, 106))
    np.testing.assert_array_equal(cols["policy_version"], 7)
    np.testing.assert_array_equal(cols["learner_version"], 9)
    np.testing.assert_allclose(cols["probabilities"], 1 / 50)
    np.testing.assert_array_equal(cols["weights"], 1.0)
    probs, weights = np.linspace(0.1, 0.6, 6), np.linspace(1, 2, 6)
    msg = encode_sample_batch("t", rows, layout, 50, probabilities=probs, weights=weights)
    prioritized = decode_sample_batch(replay_pb2.SampleBatch.FromString(msg)).columns
    np.testing.assert_array_equal(prioritized["probabilities"], probs)
    np.testing.assert_array_equal(prioritized["weights"], weights)


def _spoil_rows_dtype(msg):
    msg.rows.dtype = tensor_pb2.FLOAT32


def _spoil_rows_width(msg):
    del msg.rows.shape[:]
    msg.rows.shape.extend([3, 9])


def _spoil_no_keys(msg):
    msg.layout.CopyFrom(layout_to_proto(RowLayout.pack([("x", np.float32, ())])))


def _spoil_weights(msg):
    msg.weights.CopyFrom(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT64, shape=[2], data=bytes(16)))


@pytest.mark.parametrize("spoil", [_spoil_rows_dtype, _spoil_rows_width, _spoil_no_keys, _spoil_weights])
def test_malformed_sample_batch_is_a_decode_error(spoil):
    rows, layout = _table_rows(3)
    msg = replay_pb2.SampleBatch.FromString(encode_sample_batch("t", rows, layout, 50))
    spoil(msg)
    with pytest.raises(TensorDecodeError):
        decode_sample_batch(msg)


# -- packed inserts --------------------------------------------------------------------------------


def test_table_stores_packed_rows_in_any_layout():
    table = Table(TableConfig(capacity=100), seed=0)
    b = batch(range(10))
    packed = RowLayout.of_batch(b)
    table.insert(PackedBatch(packed.pack_batch(b, 10), packed), actor_id="a", sequence=1)
    # Columns reversed and spaced out: not the storage's layout, so stored column by column.
    odd = RowLayout(tuple(RowColumn(c.name, c.dtype, c.shape, 200 - c.end) for c in packed.columns), 200)
    rows = np.zeros((10, 200), dtype=np.uint8)
    for name, view in odd.views(rows).items():
        view[...] = batch(range(10, 20))[name]
    table.insert(PackedBatch(rows, odd), actor_id="a", sequence=2)
    snap = table.snapshot()
    np.testing.assert_array_equal(snap.fields["id"], np.arange(20))
    check_rows(snap.fields)
    check_rows(table.sample(50).fields)


def _request(ids, sequence: int, **spoil) -> replay_pb2.TransitionBatch:
    b = batch(ids)
    b.update(spoil)
    msg = pack_transition_batch(b, table="default", actor_id="actor-0", policy_version=0)
    msg.sequence = sequence
    return msg


def _nan_in(field: str, ids=range(20, 30)):
    b = batch(ids)
    b[field] = b[field].copy()
    b[field].reshape(len(b[field]), -1)[-1, 0] = np.inf
    return {field: b[field]}


def _bad_layout(msg):
    # Move the last column out of the row.
    last = msg.layout.columns[-1]
    last.offset = msg.layout.row_bytes
    return last.name


def _short_rows(msg):
    msg.rows.data = msg.rows.data[:-1]
    return "rows"


@pytest.mark.parametrize(
    ("spoil", "named"),
    [
        ({"obs": np.zeros((10, 3), np.float64)}, "obs"),
        ({"obs": np.zeros((10, 4), np.float32)}, "obs"),
        ({"bonus": np.zeros(10, np.float32)}, "bonus"),
        ({"keys": np.zeros(10, np.int64)}, "keys"),
        (_nan_in("next_obs"), "next_obs"),
        (_nan_in("reward"), "reward"),
        (_bad_layout, None),
        (_short_rows, None),
    ],
)
def test_bad_packed_batch_is_rejected_naming_the_field_and_nothing_is_stored(spoil, named):
    with shard(capacity=1000) as (s, running):
        channel = open_channel(running.address)
        stub = replay_pb2_grpc.ReplayStub(channel)
        good = [_request(range(i * 10, i * 10 + 10), i + 1) for i in range(2)]
        if callable(spoil):
            bad = _request(range(20, 30), 3)
            named = spoil(bad)
        else:
            bad = _request(range(20, 30), 3, **spoil)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Insert(iter([*good, bad]), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(err.value.trailing_metadata())[REJECTED_FIELD_KEY] == named
        assert f"field {named!r}" in err.value.details()
        np.testing.assert_array_equal(np.sort(table_ids(s)), np.arange(20))
        info = stub.Info(replay_pb2.InfoRequest(), timeout=5).tables[0]
        assert info.rejected_batches == 1
        channel.close()


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_writer_compresses_the_packed_rows(compression):
    with shard(capacity=1000) as (s, running), ReplayClient([running.address]) as client:
        with client.writer("actor-0", compression=compression) as w:
            for i in range(3):
                w.insert(batch(range(i * 100, i * 100 + 100)))
        np.testing.assert_array_equal(np.sort(table_ids(s)), np.arange(300))
        check_rows(s.tables["default"].snapshot().fields)
    msg = pack_transition_batch(
        batch(range(100)), table="t", actor_id="a", policy_version=0, compression=compression
    )
    assert msg.rows.compression != tensor_pb2.COMPRESSION_NONE and len(msg.rows.data) < 100 * 48


# -- credit-paced sampling -------------------------------------------------------------------------


def _samples(stub) -> int:
    return stub.Info(replay_pb2.InfoRequest(), timeout=5).tables[0].samples


def test_paced_sample_call_sends_only_what_is_granted():
    with shard(capacity=1000) as (_, running):
        channel = open_channel(running.address)
        stub = replay_pb2_grpc.ReplayStub(channel)
        list(stub.Insert(iter([_request(range(50), 1)]), timeout=5))
        request = replay_pb2.SampleRequest(table="default", batch_size=8, num_batches=2, credit_id="c1")
        call = stub.Sample(request, timeout=20)
        got: queue.Queue = queue.Queue()

        def read():
            try:
                for m in call:
                    got.put(m)
            except grpc.RpcError:
                pass  # cancelled below

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for _ in range(2):
            check_rows(decode_sample_batch(got.get(timeout=5)).columns)
        time.sleep(0.3)
        assert got.empty() and _samples(stub) == 16  # out of credit: nothing more sampled
        # A second call may not share the id.
        with pytest.raises(grpc.RpcError) as err:
            next(stub.Sample(request, timeout=5))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # Grants for ids with no open call are ignored.
        grants = [
            replay_pb2.SampleGrant(credit_id="c1", num_batches=3),
            replay_pb2.SampleGrant(credit_id="gone", num_batches=5),
        ]
        stub.GrantSamples(iter(grants), timeout=5)
        for _ in range(3):
            got.get(timeout=5)
        time.sleep(0.3)
        assert got.empty() and _samples(stub) == 40
        call.cancel()
        reader.join(5)

        def reopened():  # once the server has seen the cancel (it checks while out of credit)
            try:
                return decode_sample_batch(next(stub.Sample(request, timeout=5))).size == 8
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
                return False

        wait_for(reopened, timeout=5, interval=0.05, message="the credit id to be released")
        channel.close()


def test_client_writes_and_samples_over_tls_with_a_token(tmp_path):
    tls = make_tls_files(tmp_path)
    cfg = ReplayShardConfig(tables=[TableConfig(capacity=1000)])
    s, running = serve_replay_shard(
        cfg, security=SecurityConfig(tls_cert=tls.server_cert, tls_key=tls.server_key, token="s3cret")
    )
    try:
        security = SecurityConfig(tls_ca=tls.ca_cert, token="s3cret")
        with ReplayClient([f"localhost:{running.port}"], security=security, prefetch=1) as client:
            with client.writer("actor-0") as w:
                w.insert(batch(range(40)))
            for _ in range(5):
                check_rows(client.sample(16, timeout=5).fields)
            assert client.prefetch_stats().grants >= 2
    finally:
        running.stop(0)
        s.close(final_checkpoint=False)
