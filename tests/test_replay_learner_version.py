"""Policy lag vs sample age: shards stamp each item with the learner version they know of at insert."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
import zarr
from replay_helpers import batch, check_rows, shard, wait_for

from distrl.learners.learner import _Window, policy_lag
from distrl.proto.v1 import replay_pb2, replay_pb2_grpc
from distrl.replay.checkpoint import read_checkpoint, restore_tables, write_checkpoint
from distrl.replay.client import ReplayClient
from distrl.replay.config import TableConfig
from distrl.replay.table import Table
from distrl.wire.channel import open_channel


def _lag_metrics(b, learner_version: int) -> dict[str, float]:
    """What the learner reports for one batch sampled at `learner_version`."""
    window = _Window()
    actor_lag, sample_age = policy_lag(b, learner_version)
    window.add({}, wait_s=0.0, step_s=0.0, actor_lag=actor_lag, sample_age=sample_age)
    out = window.flush({})
    return {k: v for k, v in out.items() if k.startswith(("actor_lag", "sample_age"))}


def test_actor_lag_and_sample_age_through_a_real_shard():
    with (
        shard(capacity=1000, seed=0) as (s, running),
        ReplayClient([running.address], prefetch=1, sample_window=2) as client,
    ):
        table = s.tables["default"]
        channel = open_channel(running.address)
        stub = replay_pb2_grpc.ReplayStub(channel)
        # The learner, at version 5, asks for data before there is any: the shard notes its version.
        request = replay_pb2.SampleRequest(
            table="default", batch_size=4, num_batches=1, rate_limiter_timeout_ms=50, learner_version=5
        )
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Sample(request, timeout=5))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert table.learner_version == 5
        channel.close()

        # An actor still on version 3 inserts; the learner samples at version 9.
        writer = client.writer("actor-0")
        writer.insert(batch(range(32)), policy_version=3)
        writer.flush(10)
        b = client.sample(16, timeout=10, learner_version=9)
        check_rows(b.fields)
        np.testing.assert_array_equal(b.policy_version, 3)
        np.testing.assert_array_equal(b.learner_version, 5)
        assert _lag_metrics(b, 9) == {
            "actor_lag_mean": 2.0,
            "actor_lag_max": 2.0,
            "sample_age_mean": 4.0,
            "sample_age_max": 4.0,
        }

        # The paced call lives on: newer versions reach the shard with the credit grants.
        for version in range(10, 16):
            client.sample(16, timeout=10, learner_version=version)
        wait_for(lambda: table.learner_version == 15, message="version 15 to reach the shard")
        writer.insert(batch(range(32, 64)), policy_version=12)
        writer.flush(10)
        for _ in range(20):
            b = client.sample(16, timeout=10, learner_version=16)
            new = b.fields["id"] >= 32
            if new.any():
                break
        assert new.any(), "the second batch was never sampled"
        np.testing.assert_array_equal(b.learner_version[new], 15)
        np.testing.assert_array_equal(b.policy_version[new], 12)
        lag, age = policy_lag(b, 16)
        np.testing.assert_array_equal(lag[new], 3)
        np.testing.assert_array_equal(age[new], 1)
        writer.close()


def test_a_batch_from_a_newer_policy_than_the_shard_heard_of_is_not_stamped_below_it():
    # The actor got version 7 from the params server before the learner's next grant reached the shard.
    table = Table(TableConfig(capacity=100), seed=0)
    table.note_learner_version(5)
    table.insert(batch(range(4)), actor_id="a", sequence=0, policy_version=7)
    table.note_learner_version(6)  # a grant overtaken by what the batch implied: ignored
    table.insert(batch(range(4, 8)), actor_id="a", sequence=1, policy_version=2)
    out = table.sample(100)
    old = out.fields["id"] < 4
    np.testing.assert_array_equal(out.learner_version, 7)
    np.testing.assert_array_equal(out.policy_version, np.where(old, 7, 2))
    assert table.learner_version == 7


def _versioned_table() -> Table:
    table = Table(TableConfig(capacity=16), seed=0)
    for i in range(6):  # wraps the ring: 24 items into 16 slots
        table.note_learner_version(2 * i + 1)
        table.insert(batch(range(4 * i, 4 * i + 4)), actor_id="a", sequence=i, policy_version=i)
    table.note_learner_version(20)
    return table


def test_checkpoint_round_trip_keeps_the_learner_version(tmp_path):
    table = _versioned_table()
    before = table.snapshot()
    np.testing.assert_array_equal(before.learner_version, np.repeat([5, 7, 9, 11], 4))
    write_checkpoint([table], tmp_path)
    restored = restore_tables([table.config], tmp_path)[0]["default"]
    after = restored.snapshot()
    np.testing.assert_array_equal(after.keys, before.keys)
    np.testing.assert_array_equal(after.policy_version, before.policy_version)
    np.testing.assert_array_equal(after.learner_version, before.learner_version)
    assert restored.learner_version == 20  # new items go on being stamped with what it had heard
    restored.insert(batch(range(100, 104)), actor_id="a", sequence=6, policy_version=6)
    np.testing.assert_array_equal(restored.snapshot().learner_version[-4:], 20)
    check_rows(restored.sample(64).fields)


def test_checkpoint_without_the_learner_version_column_loads(tmp_path):
    table = _versioned_table()
    path = write_checkpoint([table], tmp_path)
    # What a checkpoint written before the column existed looks like.
    shutil.rmtree(path / "default" / "meta" / "learner_version")
    group = zarr.open_group(str(path / "default"), mode="r+")
    del group.attrs["latest_learner_version"]
    snap = read_checkpoint(path)["default"]
    np.testing.assert_array_equal(snap.learner_version, snap.policy_version)
    assert snap.latest_learner_version == int(snap.policy_version.max())
    restored = restore_tables([table.config], tmp_path)[0]["default"]
    out = restored.sample(64)
    np.testing.assert_array_equal(out.learner_version, out.policy_version)  # no actor lag is made up
    assert restored.learner_version == 5
