"""The Replay gRPC service on real loopback servers: raw stubs, no ReplayClient."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import zstandard
from replay_helpers import (
    OBS,
    acked,
    batch,
    check_rows,
    shard,
    start_cli_shard,
    stop_process,
    table_ids,
    wait_for,
)

from distrl.proto.v1 import replay_pb2, replay_pb2_grpc, tensor_pb2
from distrl.replay.checkpoint import list_checkpoints, read_checkpoint
from distrl.replay.messages import decode_sample_batch, encode_transition_batch
from distrl.replay.protocol import REJECTED_FIELD_KEY
from distrl.wire.channel import check_health, open_channel
from distrl.wire.codec import decode, encode


def _request(ids, sequence: int, actor: str = "actor-0", policy_version: int = 0, table: str = "default"):
    msg = encode_transition_batch(batch(ids), table=table, actor_id=actor, policy_version=policy_version)
    msg.sequence = sequence
    return msg


@pytest.fixture
def stub_for():
    channels = []

    def make(address: str) -> replay_pb2_grpc.ReplayStub:
        channel = open_channel(address)
        channels.append(channel)
        return replay_pb2_grpc.ReplayStub(channel)

    yield make
    for c in channels:
        c.close()


def _info(stub, table: str = "default") -> replay_pb2.TableInfo:
    return next(t for t in stub.Info(replay_pb2.InfoRequest(), timeout=5).tables if t.name == table)


def _sample(stub, batch_size: int, num_batches: int = 1, timeout_ms: int = 0, table: str = "default"):
    request = replay_pb2.SampleRequest(
        table=table, batch_size=batch_size, num_batches=num_batches, rate_limiter_timeout_ms=timeout_ms
    )
    return [decode_sample_batch(m) for m in stub.Sample(request, timeout=10)]


# -- insert and sample ---------------------------------------------------------------------------


def test_insert_then_sample_returns_stored_rows(stub_for):
    with shard(capacity=1000, seed=1) as (_, running):
        stub = stub_for(running.address)
        requests = [
            _request(range(i * 10, i * 10 + 10), sequence=i + 1, policy_version=100 + i) for i in range(5)
        ]
        acks = list(stub.Insert(iter(requests), timeout=10))
        # Acks are cumulative: together they cover every batch, the last one at table size 50.
        assert acked(acks) == [(i + 1, True) for i in range(5)]
        assert {a.actor_id for a in acks} == {"actor-0"} and acks[-1].table_size == 50

        chunks = _sample(stub, batch_size=64, num_batches=3)
        assert len(chunks) == 3
        for chunk in chunks:
            cols = chunk.columns
            assert chunk.size == 64 and chunk.table_size == 50
            ids = check_rows(cols)
            assert set(ids) <= set(range(50))
            # Keys are insertion counters, and every row carries the version of its batch.
            np.testing.assert_array_equal(cols["keys"], ids)
            np.testing.assert_array_equal(cols["policy_version"], 100 + ids // 10)
            np.testing.assert_allclose(cols["probabilities"], 1 / 50)
            np.testing.assert_array_equal(cols["weights"], 1.0)
        info = _info(stub)
        assert (info.size, info.inserts, info.samples, info.inserted_batches) == (50, 50, 192, 5)
        assert {f.name for f in info.spec} == set(batch([0]))


def test_fixed_spec_from_config_and_info(stub_for):
    spec = {"obs": {"dtype": "float32", "shape": [3]}, "reward": {"dtype": "float32"}}
    with shard(capacity=10, spec=spec) as (_, running):
        stub = stub_for(running.address)
        info = _info(stub)
        assert [(f.name, list(f.shape)) for f in info.spec] == [("obs", [3]), ("reward", [])]
        assert info.capacity == 10 and info.sampler == "uniform"


def test_unknown_table_is_not_found(stub_for):
    with shard(capacity=10) as (_, running):
        stub = stub_for(running.address)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Insert(iter([_request(range(3), 1, table="nope")]), timeout=5))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _sample(stub, 4, table="nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


# -- bad batches ---------------------------------------------------------------------------------


def _corrupt(msg, field: str, **changes):
    t = msg.fields[field]
    for k, v in changes.items():
        if k == "shape":
            del t.shape[:]
            t.shape.extend(v)
        else:
            setattr(t, k, v)
    return msg


def _missing_field(msg):
    del msg.fields["reward"]
    return msg, "reward"


def _extra_field(msg):
    msg.fields["bonus"].CopyFrom(encode(np.zeros(10, np.float32)))
    return msg, "bonus"


def _wrong_dtype(msg):
    msg.fields["obs"].CopyFrom(encode(np.zeros((10, 3), np.float64)))
    return msg, "obs"


def _wrong_shape(msg):
    msg.fields["obs"].CopyFrom(encode(np.zeros((10, 4), np.float32)))
    return msg, "obs"


def _nan(msg):
    obs = batch(range(10))["next_obs"]
    obs[3, 1] = np.nan
    msg.fields["next_obs"].CopyFrom(encode(obs))
    return msg, "next_obs"


def _corrupt_bytes(msg):
    msg.fields["action"].data = msg.fields["action"].data[:-3]
    return msg, "action"


def _corrupt_lz4(msg):
    _corrupt(msg, "obs", compression=tensor_pb2.COMPRESSION_LZ4, data=b"\x00\x01garbage")
    return msg, "obs"


def _zstd_bomb(msg):
    # 77 KiB of zstd that would decompress to 96 MiB of zeros: refused before anything is allocated.
    rows = 96 * 1024 * 1024 // (4 * OBS)
    payload = zstandard.ZstdCompressor().compress(bytes(rows * 4 * OBS))
    _corrupt(msg, "obs", compression=tensor_pb2.COMPRESSION_ZSTD, data=payload, shape=[rows, OBS])
    return msg, "obs"


def _lz4_bomb(msg):
    # A size header claiming 2 GiB in front of a few bytes.
    header = (2**31).to_bytes(4, "little")
    _corrupt(msg, "obs", compression=tensor_pb2.COMPRESSION_LZ4, data=header + b"\x00" * 16)
    return msg, "obs"


def _unknown_dtype(msg):
    _corrupt(msg, "reward", dtype=99)
    return msg, "reward"


def _ragged(msg):
    msg.fields["reward"].CopyFrom(encode(np.zeros(9, np.float32)))
    # Map order is not fixed, so the validator may name reward or whichever field it compared with it.
    return msg, None


def _no_actor(msg):
    msg.actor_id = ""
    return msg, "actor_id"


@pytest.mark.parametrize(
    "spoil",
    [
        _missing_field,
        _extra_field,
        _wrong_dtype,
        _wrong_shape,
        _nan,
        _corrupt_bytes,
        _corrupt_lz4,
        _zstd_bomb,
        _lz4_bomb,
        _unknown_dtype,
        _ragged,
        _no_actor,
    ],
)
def test_bad_batch_is_rejected_naming_the_field_and_the_shard_keeps_serving(stub_for, spoil):
    with shard(capacity=1000) as (_, running):
        stub = stub_for(running.address)
        good = [_request(range(i * 10, i * 10 + 10), sequence=i + 1) for i in range(2)]
        bad, field = spoil(_request(range(20, 30), sequence=3))
        after = _request(range(30, 40), sequence=4)
        acks = []
        with pytest.raises(grpc.RpcError) as err:
            for ack in stub.Insert(iter([*good, bad, after]), timeout=10):
                acks.append(ack)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details()
        named = dict(err.value.trailing_metadata())[REJECTED_FIELD_KEY]
        assert "batch 3" in details and f"field {named!r}" in details
        if spoil in (_zstd_bomb, _lz4_bomb):  # named as a bomb, not by what it would have decoded to
            assert "more than the" in details or "lz4 payload says it holds" in details
        if field is None:
            assert named in batch([0]) and "items while other fields have" in details
        else:
            assert named == field
        # Everything before the bad batch is acked and stays; nothing of it or after it was stored.
        assert acked(acks) == [(1, True), (2, True)]
        info = _info(stub)
        assert info.size == 20
        assert info.rejected_batches == 1
        # Still serving: a new stream carries on from the batch after the bad one.
        acks = list(stub.Insert(iter([_request(range(30, 40), sequence=4)]), timeout=10))
        assert [(a.sequence, a.stored, a.table_size) for a in acks] == [(4, True, 30)]
        assert sorted(check_rows(_sample(stub, 200)[0].columns)) and _info(stub).size == 30


def test_bad_priority_update_is_invalid_argument(stub_for):
    with shard(capacity=100, sampler="prioritized") as (_, running):
        stub = stub_for(running.address)
        list(stub.Insert(iter([_request(range(10), 1)]), timeout=5))
        request = replay_pb2.UpdatePrioritiesRequest(
            table="default", keys=encode(np.arange(3)), priorities=encode(np.array([1.0, np.nan, 2.0]))
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.UpdatePriorities(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "priorities" in err.value.details()
        request.priorities.CopyFrom(encode(np.array([5.0, 1.0, 2.0])))
        assert stub.UpdatePriorities(request, timeout=5).updated == 3


def test_priority_update_bomb_and_a_huge_sample_are_refused_before_allocating(stub_for):
    with shard(capacity=100, sampler="prioritized") as (_, running):
        stub = stub_for(running.address)
        list(stub.Insert(iter([_request(range(10), 1)]), timeout=5))
        claimed = 2**27  # 1 GiB of int64 keys, from a few hundred bytes of zstd
        bomb = tensor_pb2.Tensor(
            dtype=tensor_pb2.INT64,
            shape=[claimed],
            compression=tensor_pb2.COMPRESSION_ZSTD,
            data=zstandard.ZstdCompressor().compress(bytes(1024)),
        )
        request = replay_pb2.UpdatePrioritiesRequest(
            table="default", keys=bomb, priorities=encode(np.ones(3))
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.UpdatePriorities(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "keys" in err.value.details() and "more than the" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            _sample(stub, 10**9)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most" in err.value.details()
        assert len(check_rows(_sample(stub, 8)[0].columns)) == 8  # still serving


# -- resends -------------------------------------------------------------------------------------


def test_resend_after_reconnect_is_acked_but_not_stored_twice(stub_for):
    with shard(capacity=1000) as (s, running):
        stub = stub_for(running.address)
        first = list(
            stub.Insert(iter([_request(range(i * 10, i * 10 + 10), i + 1) for i in range(3)]), timeout=5)
        )
        assert all(a.stored for a in first)
        # The actor lost the connection before reading acks 2 and 3: it resends 2..5 on a new stream.
        second = list(
            stub.Insert(iter([_request(range(i * 10, i * 10 + 10), i + 1) for i in range(1, 5)]), timeout=5)
        )
        assert acked(second) == [(2, False), (3, False), (4, True), (5, True)]
        assert sorted(table_ids(s)) == list(range(50))
        info = _info(stub)
        assert (info.inserted_batches, info.duplicate_batches) == (5, 2)
        # Another actor's sequence numbers are its own.
        other = list(stub.Insert(iter([_request(range(50, 60), 1, actor="actor-1")]), timeout=5))
        assert other[0].stored


# -- rate limiter --------------------------------------------------------------------------------


def test_sample_waits_for_inserts_and_times_out_with_deadline_exceeded(stub_for):
    with shard(capacity=1000, min_size_to_sample=20) as (_, running):
        stub = stub_for(running.address)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            _sample(stub, 8, timeout_ms=300)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start >= 0.25
        assert "sample waited" in err.value.details() and "size=0" in err.value.details()

        got: queue.Queue = queue.Queue()
        waiter = threading.Thread(target=lambda: got.put(_sample(stub, 8, timeout_ms=5000)))
        waiter.start()
        list(stub.Insert(iter([_request(range(10), 1)]), timeout=5))
        time.sleep(0.3)
        assert got.empty(), "sampled below min_size_to_sample"
        list(stub.Insert(iter([_request(range(10, 20), 2)]), timeout=5))
        chunks = got.get(timeout=5)  # released by the insert
        waiter.join()
        assert chunks[0].size == 8
        assert _info(stub).sample_wait_s > 0.2


def test_insert_waits_for_samples_and_is_released_by_sampling(stub_for):
    # SPI 1, min size 10, buffer 20: inserts may run at most 30 items ahead of samples.
    with shard(capacity=1000, samples_per_insert=1.0, min_size_to_sample=10, error_buffer=20.0) as (
        _,
        running,
    ):
        stub = stub_for(running.address)
        requests: queue.Queue = queue.Queue()
        acks: queue.Queue = queue.Queue()

        def feed():
            while (r := requests.get()) is not None:
                yield r

        call = stub.Insert(feed(), timeout=30)
        reader = threading.Thread(target=lambda: [acks.put(a) for a in call], daemon=True)
        reader.start()
        for i in range(4):
            requests.put(_request(range(i * 10, i * 10 + 10), i + 1))
        first = [acks.get(timeout=5)]
        while first[-1].sequence < 3:
            first.append(acks.get(timeout=5))
        assert acked(first) == [(1, True), (2, True), (3, True)]
        with pytest.raises(queue.Empty):
            acks.get(timeout=0.4)  # the 4th batch is held back: inserts are ahead of samples
        assert _info(stub).size == 30
        _sample(stub, 20)
        assert acked([acks.get(timeout=5)]) == [(4, True)]  # released by the samples
        requests.put(None)
        reader.join(5)
        info = _info(stub)
        assert info.size == 40 and info.insert_wait_s > 0.3


def test_insert_rate_limiter_timeout_is_deadline_exceeded(stub_for):
    with shard(
        capacity=1000, samples_per_insert=1.0, min_size_to_sample=10, error_buffer=20.0, max_wait_s=0.3
    ) as (_, running):
        stub = stub_for(running.address)
        with pytest.raises(grpc.RpcError) as err:
            list(
                stub.Insert(iter([_request(range(i * 10, i * 10 + 10), i + 1) for i in range(4)]), timeout=10)
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "insert waited" in err.value.details() and "inserts=30" in err.value.details()
        assert _info(stub).size == 30


def test_shutdown_ends_waiting_calls_with_unavailable(stub_for):
    with shard(capacity=100, min_size_to_sample=5) as (_, running):
        stub = stub_for(running.address)
        errors: queue.Queue = queue.Queue()

        def wait_for_sample():
            try:
                _sample(stub, 4, timeout_ms=10_000)
            except grpc.RpcError as exc:
                errors.put(exc)

        t = threading.Thread(target=wait_for_sample)
        t.start()
        time.sleep(0.3)
        start = time.monotonic()
        running.stop(5.0)
        t.join(5)
        err = errors.get(timeout=1)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - start < 3.0  # the wait ended at once, not after the grace period


# -- checkpoints and the command line ------------------------------------------------------------


def _insert_through(address: str, n_batches: int, actor: str = "actor-0", first_seq: int = 1) -> None:
    channel = open_channel(address)
    try:
        stub = replay_pb2_grpc.ReplayStub(channel)
        reqs = [
            _request(range(i * 10, i * 10 + 10), first_seq + i, actor=actor, policy_version=i)
            for i in range(n_batches)
        ]
        acks = list(stub.Insert(iter(reqs), timeout=10))
        assert all(a.stored for a in acks)
    finally:
        channel.close()


def _checkpoint_through(address: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "distrl.cli", "replay", "checkpoint", address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("checkpoint ")
    return out.stdout.split()[1]


def test_kill9_and_restart_restores_every_field(tmp_path, stub_for):
    ckpt = tmp_path / "ckpt"
    args = ["--checkpoint-dir", str(ckpt), "--capacity", "500", "--sampler", "prioritized", "--seed", "3"]
    proc, address = start_cli_shard(*args)
    try:
        _insert_through(address, 6)
        stub = stub_for(address)
        stub.UpdatePriorities(
            replay_pb2.UpdatePrioritiesRequest(
                table="default", keys=encode(np.arange(5)), priorities=encode(np.arange(1.0, 6.0))
            ),
            timeout=5,
        )
        before = read_checkpoint(_checkpoint_through(address))["default"]
        _insert_through(address, 1, actor="late", first_seq=1)  # after the checkpoint: lost with kill -9
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc)

    proc, address = start_cli_shard(*args)
    try:
        stub = stub_for(address)
        info = _info(stub)
        assert info.size == 60 and info.inserted_batches == 6
        after = read_checkpoint(stub.Checkpoint(replay_pb2.CheckpointRequest(), timeout=30).path)["default"]
        assert set(after.fields) == set(before.fields) == set(batch([0]))
        for name in before.fields:
            np.testing.assert_array_equal(after.fields[name], before.fields[name], err_msg=name)
        np.testing.assert_array_equal(after.keys, before.keys)
        np.testing.assert_array_equal(after.policy_version, before.policy_version)
        np.testing.assert_array_equal(after.priorities, before.priorities)
        assert after.last_sequence == before.last_sequence
        assert after.next_key == before.next_key
        # The restored shard still de-duplicates the actor's old batches and samples real rows.
        acks = list(stub.Insert(iter([_request(range(50, 60), 6)]), timeout=5))
        assert not acks[0].stored
        check_rows(_sample(stub, 32)[0].columns)
    finally:
        stop_process(proc)


def test_sigterm_writes_a_final_checkpoint_and_exits_0(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc, address = start_cli_shard("--checkpoint-dir", str(ckpt), "--capacity", "100")
    try:
        _insert_through(address, 3)
        assert list_checkpoints(ckpt) == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        stop_process(proc)
    checkpoints = list_checkpoints(ckpt)
    assert len(checkpoints) == 1
    snap = read_checkpoint(checkpoints[-1])["default"]
    assert sorted(snap.fields["id"]) == list(range(30))


def test_cli_prints_address_serves_health_and_info_json(tmp_path):
    config = tmp_path / "shard.yaml"
    config.write_text(
        "tables:\n"
        "  - name: online\n"
        "    capacity: 64\n"
        "    sampler: prioritized\n"
        "  - name: demos\n"
        "    capacity: 32\n"
    )
    proc, address = start_cli_shard("--config", str(config), "--table", "online", "--min-size", "7")
    try:
        channel = open_channel(address)
        assert check_health(channel, "distrl.v1.Replay") == "SERVING"
        assert check_health(channel) == "SERVING"
        channel.close()
        out = subprocess.run(
            [sys.executable, "-m", "distrl.cli", "replay", "info", address, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        tables = {t["name"]: t for t in info["tables"]}
        assert tables["online"]["capacity"] == 64 and tables["online"]["sampler"] == "prioritized"
        assert tables["online"]["min_size_to_sample"] == 7
        assert tables["demos"]["capacity"] == 32 and tables["demos"]["min_size_to_sample"] == 1
        text = subprocess.run(
            [sys.executable, "-m", "distrl.cli", "replay", "info", address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "table 'online' (prioritized)" in text.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        stop_process(proc)


def test_cli_bad_config_key_names_the_key(tmp_path):
    config = tmp_path / "shard.yaml"
    config.write_text("tables:\n  - name: a\n    capcity: 10\n")
    out = subprocess.run(
        [sys.executable, "-m", "distrl.cli", "serve", "replay", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MUJOCO_GL": "disable"},
    )
    assert out.returncode == 2
    assert "tables.0.capcity" in out.stderr and "listening" not in out.stdout


def test_checkpoint_without_directory_is_failed_precondition(stub_for):
    with shard(capacity=10) as (_, running):
        stub = stub_for(running.address)
        with pytest.raises(grpc.RpcError) as err:
            stub.Checkpoint(replay_pb2.CheckpointRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_periodic_checkpoints(tmp_path):
    with shard(capacity=100, checkpoint_dir=tmp_path, checkpoint_every_s=0.2) as (s, running):
        _insert_through(running.address, 1)
        wait_for(lambda: s.last_checkpoint is not None, message="a periodic checkpoint")
        assert list_checkpoints(tmp_path)[-1] == s.last_checkpoint


def test_token_is_required_when_configured(tmp_path):
    from distrl.replay.config import ReplayShardConfig, TableConfig
    from distrl.replay.server import serve_replay_shard
    from distrl.wire.security import SecurityConfig

    s, running = serve_replay_shard(
        ReplayShardConfig(tables=[TableConfig(capacity=10)]), security=SecurityConfig(token="t0k")
    )
    try:
        bare = open_channel(running.address)
        with pytest.raises(grpc.RpcError) as err:
            replay_pb2_grpc.ReplayStub(bare).Info(replay_pb2.InfoRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bare.close()
        good = open_channel(running.address, SecurityConfig(token="t0k"))
        assert (
            replay_pb2_grpc.ReplayStub(good).Info(replay_pb2.InfoRequest(), timeout=5).tables[0].capacity
            == 10
        )
        good.close()
    finally:
        running.stop(0)
        s.close(final_checkpoint=False)


def test_decode_helpers_match_the_codec():
    arr = np.arange(12, dtype=np.float32).reshape(4, 3)[:, ::2]  # a strided view
    msg = encode_transition_batch({"x": arr}, table="t", actor_id="a", policy_version=2)
    np.testing.assert_array_equal(decode(msg.fields["x"]), arr)
