"""The replay table core: storage, samplers, rate limiter, validation, checkpoints."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from distrl.proto.v1 import replay_pb2
from distrl.replay.checkpoint import (
    CheckpointError,
    list_checkpoints,
    read_checkpoint,
    restore_tables,
    write_checkpoint,
)
from distrl.replay.config import FieldSpecConfig, TableConfig
from distrl.replay.item_samplers import SumTree
from distrl.replay.messages import decode_table_stats, encode_table_stats
from distrl.replay.rate_limiter import RateLimiter
from distrl.replay.spec import SpecViolation
from distrl.replay.stats import FieldSpecInfo, TableCounters, TableStats
from distrl.replay.table import RateLimiterTimeout, Table, TableClosed


def batch(n: int, start: int = 0, obs_dim: int = 3) -> dict[str, np.ndarray]:
    ids = np.arange(start, start + n)
    return {
        "obs": np.repeat(ids[:, None], obs_dim, axis=1).astype(np.float32),
        "action": (ids[:, None] * np.ones((1, 2))).astype(np.float32),
        "reward": ids.astype(np.float32),
        "terminated": ids % 7 == 0,
    }


def fill(table: Table, n_batches: int, size: int = 4, actor: str = "a") -> None:
    for s in range(n_batches):
        table.insert(batch(size, s * size), actor_id=actor, sequence=s)


def test_insert_and_sample_return_stored_items():
    table = Table(TableConfig(capacity=100), seed=0)
    fill(table, 5)
    assert len(table) == 20
    out = table.sample(64)
    ids = out.fields["reward"].astype(int)
    assert set(ids) <= set(range(20))
    # every field of a sampled item belongs to the same transition
    np.testing.assert_array_equal(out.fields["obs"][:, 0], out.fields["reward"])
    np.testing.assert_array_equal(out.fields["terminated"], ids % 7 == 0)
    np.testing.assert_array_equal(out.keys, ids)  # keys are insertion counters
    np.testing.assert_allclose(out.probabilities, 1 / 20)
    np.testing.assert_array_equal(out.weights, 1.0)


def test_fifo_eviction_keeps_newest():
    table = Table(TableConfig(capacity=10), seed=0)
    fill(table, 5)  # 20 items into 10 slots
    assert len(table) == 10
    snap = table.snapshot()
    np.testing.assert_array_equal(snap.fields["reward"], np.arange(10, 20))
    np.testing.assert_array_equal(snap.keys, np.arange(10, 20))
    sampled = table.sample(500).fields["reward"]
    assert sampled.min() >= 10


def test_batch_larger_than_capacity_keeps_its_tail():
    table = Table(TableConfig(capacity=5), seed=0)
    table.insert(batch(12), actor_id="a", sequence=0)
    np.testing.assert_array_equal(table.snapshot().fields["reward"], np.arange(7, 12))


def test_uniform_frequencies():
    table = Table(TableConfig(capacity=50), seed=1)
    fill(table, 10, size=5)
    counts = np.bincount(table.sample(50_000).fields["reward"].astype(int), minlength=50)
    assert counts.min() > 800 and counts.max() < 1200


def test_sum_tree_find_and_total():
    tree = SumTree(5)
    tree.set(np.arange(5), np.array([1.0, 0.0, 2.0, 3.0, 4.0]))
    assert tree.total == pytest.approx(10.0)
    leaves = tree.find(np.array([0.0, 0.99, 1.0, 2.5, 3.0, 5.99, 6.0, 9.99]))
    np.testing.assert_array_equal(leaves, [0, 0, 2, 2, 3, 3, 4, 4])


def test_prioritized_frequencies_match_priorities():
    alpha = 0.7
    table = Table(TableConfig(capacity=8, sampler="prioritized", priority_exponent=alpha), seed=123)
    table.insert(batch(8), actor_id="a", sequence=0)
    priorities = np.array([1.0, 2.0, 4.0, 0.5, 8.0, 1.0, 3.0, 0.0])
    assert table.update_priorities(np.arange(8), priorities) == 8
    n = 200_000
    out = table.sample(n)
    counts = np.bincount(out.fields["reward"].astype(int), minlength=8)
    expected = priorities**alpha / (priorities**alpha).sum()
    assert counts[7] == 0  # priority 0 is never drawn
    # chi-square goodness of fit over the non-zero cells (7 - 1 = 6 dof; 99.9% quantile 22.46)
    nz = expected > 0
    chi2 = (((counts[nz] - n * expected[nz]) ** 2) / (n * expected[nz])).sum()
    assert chi2 < 22.46, (counts, n * expected)
    np.testing.assert_allclose(out.probabilities, expected[out.fields["reward"].astype(int)])


def test_importance_weights():
    beta = 0.5
    table = Table(
        TableConfig(capacity=4, sampler="prioritized", priority_exponent=1.0, importance_exponent=beta),
        seed=0,
    )
    table.insert(batch(4), actor_id="a", sequence=0)
    table.update_priorities(np.arange(4), np.array([1.0, 1.0, 2.0, 4.0]))
    out = table.sample(64)
    p = np.array([1.0, 1.0, 2.0, 4.0]) / 8.0
    idx = out.fields["reward"].astype(int)
    np.testing.assert_allclose(out.weights, (4 * p[idx]) ** -beta)


def test_new_items_get_max_priority():
    table = Table(TableConfig(capacity=10, sampler="prioritized", priority_exponent=1.0), seed=0)
    table.insert(batch(2), actor_id="a", sequence=0)
    table.update_priorities(np.array([0, 1]), np.array([5.0, 1.0]))
    table.insert(batch(1, start=2), actor_id="a", sequence=1)
    assert table.snapshot().priorities.tolist() == [5.0, 1.0, 5.0]


def test_stale_priority_updates_are_ignored():
    table = Table(TableConfig(capacity=4, sampler="prioritized"), seed=0)
    fill(table, 2)  # keys 0..7, only 4..7 remain
    assert table.update_priorities(np.arange(8), np.ones(8)) == 4


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda b: b.pop("reward"), "reward"),
        (lambda b: b.update(extra=np.zeros(4, np.float32)), "extra"),
        (lambda b: b.update(obs=b["obs"].astype(np.float64)), "obs"),
        (lambda b: b.update(obs=np.zeros((4, 5), np.float32)), "obs"),
        (lambda b: b.update(action=np.zeros((3, 2), np.float32)), "action"),
        (lambda b: b["reward"].__setitem__(2, np.nan), "reward"),
        (lambda b: b["obs"].__setitem__((1, 1), np.inf), "obs"),
    ],
)
def test_bad_batches_rejected_and_table_unchanged(mutate, field):
    table = Table(TableConfig(capacity=100), seed=0)
    fill(table, 2)
    before = table.snapshot()
    bad = batch(4, 100)
    mutate(bad)
    with pytest.raises(SpecViolation) as info:
        table.insert(bad, actor_id="a", sequence=10)
    assert info.value.field == field
    assert field in str(info.value)
    after = table.snapshot()
    np.testing.assert_array_equal(before.keys, after.keys)
    assert table.stats().rejected_batches == 1
    # still accepts good data, and the rejected sequence number was not consumed
    assert table.insert(batch(4, 200), actor_id="a", sequence=10).stored


def test_configured_spec_rejects_first_batch_mismatch():
    spec = {"obs": FieldSpecConfig(dtype="float32", shape=[3]), "reward": FieldSpecConfig(dtype="float32")}
    table = Table(TableConfig(capacity=10, spec=spec))
    with pytest.raises(SpecViolation, match="action"):
        table.insert(batch(2), actor_id="a", sequence=0)
    ok = {"obs": np.zeros((2, 3), np.float32), "reward": np.zeros(2, np.float32)}
    assert table.insert(ok, actor_id="a", sequence=0).stored


def test_reserved_field_name_rejected():
    table = Table(TableConfig(capacity=10))
    with pytest.raises(SpecViolation, match="policy_version"):
        table.insert({"policy_version": np.zeros(2, np.int64)}, actor_id="a", sequence=0)


def test_resend_is_not_stored_twice():
    table = Table(TableConfig(capacity=100))
    assert table.insert(batch(4), actor_id="a", sequence=0).stored
    assert table.insert(batch(4, 4), actor_id="a", sequence=1).stored
    assert not table.insert(batch(4, 4), actor_id="a", sequence=1).stored
    assert not table.insert(batch(4), actor_id="a", sequence=0).stored
    assert table.insert(batch(4), actor_id="b", sequence=0).stored  # sequences are per actor
    assert len(table) == 12
    assert table.stats().duplicate_batches == 2


def test_policy_version_is_stored_per_item():
    table = Table(TableConfig(capacity=100), seed=0)
    table.insert(batch(4), actor_id="a", sequence=0, policy_version=3)
    table.insert(batch(4, 4), actor_id="a", sequence=1, policy_version=9)
    out = table.sample(100)
    np.testing.assert_array_equal(out.policy_version, np.where(out.fields["reward"] < 4, 3, 9))


def test_min_size_to_sample_blocks_then_times_out():
    table = Table(TableConfig(capacity=100, min_size_to_sample=10), seed=0)
    fill(table, 2)
    with pytest.raises(RateLimiterTimeout, match="sample waited"):
        table.sample(4, timeout=0.2)
    fill(table, 3, actor="b")
    assert table.sample(4, timeout=0.2).table_size == 20


def test_rate_limiter_arithmetic():
    lim = RateLimiter(samples_per_insert=2.0, min_size_to_sample=4, error_buffer=4.0)
    assert not lim.can_sample(size=3)
    assert lim.can_insert(size=3)
    lim.record_insert(4)  # diff = 8, bounds [4, 12]
    assert lim.can_sample(4) and lim.can_insert(4)
    lim.record_insert(2)  # diff = 12: one more insert would reach 14 > 12
    assert not lim.can_insert(6)
    lim.record_sample(7)  # diff = 5
    assert lim.can_sample(6)
    lim.record_sample(1)  # diff = 4: one more sample would reach 3 < 4
    assert not lim.can_sample(6)
    assert lim.can_insert(6)


def test_rate_limiter_blocks_and_releases_both_directions():
    cfg = TableConfig(capacity=1000, samples_per_insert=4.0, min_size_to_sample=8, error_buffer=8.0)
    table = Table(cfg, seed=0)
    fill(table, 2)  # 8 items: diff = 32 at the centre
    fill_more = batch(4, 100)
    table.insert(fill_more, actor_id="b", sequence=0)  # diff 48 > 40: next insert must wait
    with pytest.raises(RateLimiterTimeout, match="insert waited"):
        table.insert(batch(4, 200), actor_id="b", sequence=1, timeout=0.2)

    # a blocked insert is released by samples
    released = threading.Event()

    def insert_later():
        table.insert(batch(4, 200), actor_id="b", sequence=1, timeout=5.0)
        released.set()

    t = threading.Thread(target=insert_later)
    t.start()
    time.sleep(0.2)
    assert not released.is_set()
    table.sample(16)  # diff 48 -> 32: room for inserts again
    assert released.wait(2.0)
    t.join()

    # now samples run ahead until they must wait for inserts
    drawn = 0
    with pytest.raises(RateLimiterTimeout, match="sample waited"):
        while True:
            table.sample(8, timeout=0.2)
            drawn += 8
    assert drawn > 0
    done = threading.Event()

    def sample_later():
        table.sample(8, timeout=5.0)
        done.set()

    t = threading.Thread(target=sample_later)
    t.start()
    time.sleep(0.2)
    assert not done.is_set()
    table.insert(batch(4, 300), actor_id="b", sequence=2)
    assert done.wait(2.0)
    t.join()
    stats = table.stats()
    assert stats.insert_wait_s > 0.1 and stats.sample_wait_s > 0.1


def test_unlimited_table_never_waits():
    table = Table(TableConfig(capacity=100), seed=0)
    fill(table, 1)
    for _ in range(100):
        table.sample(256, timeout=0.01)
    for s in range(1, 100):
        table.insert(batch(4), actor_id="a", sequence=s, timeout=0.01)


def test_close_wakes_waiters():
    table = Table(TableConfig(capacity=100, min_size_to_sample=50))
    errors = []

    def waiter():
        try:
            table.sample(4, timeout=10)
        except TableClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    table.close()
    t.join(2.0)
    assert len(errors) == 1


def test_caller_gone_stops_waiting():
    table = Table(TableConfig(capacity=100, min_size_to_sample=50))
    with pytest.raises(TableClosed, match="went away"):
        table.sample(4, timeout=10, is_active=lambda: False)


def test_bad_table_config():
    with pytest.raises(ValueError, match="min_size_to_sample"):
        TableConfig(capacity=10, min_size_to_sample=20)
    with pytest.raises(ValueError, match="error_buffer"):
        TableConfig(samples_per_insert=8.0, error_buffer=2.0)
    with pytest.raises(ValueError, match="capacty"):
        TableConfig.model_validate({"capacty": 10})


def test_checkpoint_round_trip(tmp_path):
    cfg = TableConfig(
        name="main", capacity=16, sampler="prioritized", samples_per_insert=2.0, error_buffer=100
    )
    table = Table(cfg, seed=0)
    fill(table, 6)  # wraps the ring
    table.update_priorities(np.arange(24), np.linspace(0.1, 3, 24))
    table.sample(10)
    empty = Table(TableConfig(name="empty", capacity=4))
    path = write_checkpoint([table, empty], tmp_path)
    assert path.name == "replay-00000001.zarr"
    restored, found = restore_tables([cfg, TableConfig(name="empty", capacity=4)], tmp_path)
    assert found == path
    a, b = table.snapshot(), restored["main"].snapshot()
    for name in a.fields:
        np.testing.assert_array_equal(a.fields[name], b.fields[name])
        assert a.fields[name].dtype == b.fields[name].dtype
    np.testing.assert_array_equal(a.keys, b.keys)
    np.testing.assert_array_equal(a.priorities, b.priorities)
    assert a.counters == b.counters and a.last_sequence == b.last_sequence and a.next_key == b.next_key
    # the restored table continues where the old one stopped: keys, dedup, priorities
    assert not restored["main"].insert(batch(4), actor_id="a", sequence=5).stored
    restored["main"].insert(batch(4, 500), actor_id="a", sequence=6)
    assert restored["main"].snapshot().keys[-1] == 27
    assert len(restored["empty"]) == 0


def test_stats_are_kept_once_for_info_and_checkpoints(tmp_path):
    import zarr

    cfg = TableConfig(capacity=16, samples_per_insert=2.0, error_buffer=100)
    table = Table(cfg, seed=0)
    fill(table, 3)
    assert not table.insert(batch(4), actor_id="a", sequence=0).stored  # a resend
    with pytest.raises(SpecViolation):
        table.insert({"obs": batch(4)["obs"]}, actor_id="a", sequence=9)
    table.sample(8)
    stats = table.stats()
    counts = (stats.inserts, stats.samples, stats.inserted_batches, stats.duplicate_batches)
    assert counts == (12, 8, 3, 1) and stats.rejected_batches == 1
    assert stats.samples_per_insert == pytest.approx(8 / 12) and stats.target_samples_per_insert == 2.0
    assert stats.spec["obs"] == FieldSpecInfo("float32", [3])
    # Info sends it as a TableInfo, whose fields are the dataclass's; the client reads back the same.
    assert {f.name for f in dataclasses.fields(TableStats)} == set(
        replay_pb2.TableInfo.DESCRIPTOR.fields_by_name
    )
    assert decode_table_stats(encode_table_stats(stats)) == stats
    # A checkpoint stores the counters by name, as it always has, and a restored table goes on from them.
    group = zarr.open_group(str(write_checkpoint([table], tmp_path)), mode="r")["default"]
    assert group.attrs["counters"] == {
        "inserts": 12,
        "samples": 8,
        "inserted_batches": 3,
        "duplicate_batches": 1,
        "rejected_batches": 1,
        "insert_wait_s": 0.0,
        "sample_wait_s": 0.0,
    }
    restored = restore_tables([cfg], tmp_path)[0]["default"]
    assert restored.stats() == stats
    restored.sample(4)
    assert restored.stats().samples == 12  # the rate limiter counts into the restored counters
    # An older checkpoint without some counter starts it at 0.
    assert TableCounters.from_dict({"inserts": 5}) == TableCounters(inserts=5)


def test_checkpoints_rotate_and_partial_writes_are_ignored(tmp_path):
    table = Table(TableConfig(capacity=10))
    fill(table, 1)
    for _ in range(4):
        write_checkpoint([table], tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["replay-00000003.zarr", "replay-00000004.zarr"]
    (tmp_path / ".tmp-replay-00000005.zarr-123").mkdir()  # a crash mid-write leaves only this
    assert list_checkpoints(tmp_path)[-1].name == "replay-00000004.zarr"


def test_checkpoint_layout_is_a_dataset(tmp_path):
    import zarr

    table = Table(TableConfig(capacity=10))
    fill(table, 2)
    path = write_checkpoint([table], tmp_path)
    group = zarr.open_group(str(path), mode="r")["default"]
    assert group["meta/episode_ends"][:].tolist() == [8]
    np.testing.assert_array_equal(group["data/reward"][:], np.arange(8, dtype=np.float32))


def test_corrupt_checkpoint_is_named(tmp_path):
    table = Table(TableConfig(capacity=10))
    fill(table, 2)
    path = write_checkpoint([table], tmp_path)
    import shutil

    shutil.rmtree(path / "default" / "meta" / "keys")
    with pytest.raises(CheckpointError, match="default"):
        read_checkpoint(path)
