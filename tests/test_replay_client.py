"""ReplayClient against real shards on loopback: writers, failover, sampling across shards, priorities."""

from __future__ import annotations

import itertools
import threading
import time
import zlib

import numpy as np
import pytest
from replay_helpers import batch, check_rows, shard, table_ids, wait_for

from distrl.replay.client import (
    InsertRejectedError,
    ReplayClient,
    ReplayClientError,
    home_shard,
    proportional_counts,
)
from distrl.replay.config import ReplayShardConfig, TableConfig
from distrl.replay.server import serve_replay_shard


def actor_with_home(home: int, num_shards: int, prefix: str = "actor") -> str:
    return next(f"{prefix}-{i}" for i in itertools.count() if home_shard(f"{prefix}-{i}", num_shards) == home)


# -- pure helpers --------------------------------------------------------------------------------


def test_home_shard_is_a_stable_crc32_that_spreads_numbered_actors():
    # Numbered ids: crc32 of the prefix, plus the index.
    assert home_shard("actor-7", 5) == (zlib.crc32(b"actor") + 7) % 5
    assert home_shard("host-a-12", 4) == (zlib.crc32(b"host-a") + 12) % 4
    # Other ids: crc32 of the whole id.
    assert home_shard("learner", 5) == zlib.crc32(b"learner") % 5
    assert home_shard("actor-x", 3) == zlib.crc32(b"actor-x") % 3
    assert home_shard("actor-", 3) == zlib.crc32(b"actor-") % 3
    assert {home_shard(f"a{i}", 3) for i in range(50)} == {0, 1, 2}


def test_consecutive_actors_spread_evenly_over_shards():
    homes = [home_shard(f"actor-{i}", 2) for i in range(4)]
    assert sorted(homes) == [0, 0, 1, 1]
    assert homes[0] != homes[1]  # neighbours never share a shard
    # Any K: K consecutive actors cover every shard once.
    for k in (3, 5, 8):
        assert sorted(home_shard(f"actor-{i}", k) for i in range(10, 10 + k)) == list(range(k))


@pytest.mark.parametrize(
    ("sizes", "total", "expected"),
    [
        ([3000, 1000], 256, [192, 64]),
        ([1, 1, 1], 256, [86, 85, 85]),
        ([0, 5], 10, [0, 10]),
        ([2, 0, 1], 4, [3, 0, 1]),
        ([1, 1], 1, [1, 0]),
    ],
)
def test_proportional_counts_largest_remainder(sizes, total, expected):
    counts = proportional_counts(sizes, total)
    assert counts == expected and sum(counts) == total


def test_proportional_counts_all_empty_is_none():
    assert proportional_counts([0, 0], 8) is None


def test_client_rejects_bad_arguments():
    with pytest.raises(ValueError, match="addresses"):
        ReplayClient([])
    with pytest.raises(ValueError, match="prefetch"):
        ReplayClient(["127.0.0.1:1"], prefetch=0)


# -- writing and sampling through one shard -------------------------------------------------------


def test_writer_and_sampler_round_trip():
    with (
        shard(capacity=10_000, seed=0) as (s, running),
        ReplayClient([running.address], prefetch=2) as client,
    ):
        w = client.writer("actor-0", max_in_flight=3)
        sequences = [w.insert(batch(range(i * 32, i * 32 + 32)), policy_version=i) for i in range(20)]
        assert sequences == list(range(sequences[0], sequences[0] + 20))
        w.flush(10)
        stats = w.stats()
        assert (stats.stored, stats.duplicates, stats.current_shard) == (20, 0, 0)
        assert sorted(table_ids(s)) == list(range(640))

        seen = set()
        for _ in range(10):
            b = client.sample(128, timeout=10)
            assert len(b) == 128
            ids = check_rows(b.fields)
            np.testing.assert_array_equal(b.keys, ids)
            np.testing.assert_array_equal(b.policy_version, ids // 32)
            np.testing.assert_array_equal(b.shard, 0)
            np.testing.assert_array_equal(b.weights, 1.0)
            np.testing.assert_allclose(b.probabilities, 1 / 640)
            seen.update(ids.tolist())
        assert len(seen) > 500  # uniform over all 640 items
        w.close()


def test_rejected_batch_raises_for_that_batch_only_and_later_batches_are_resent():
    with shard(capacity=10_000) as (s, running), ReplayClient([running.address]) as client:
        w = client.writer("actor-0", max_in_flight=8)
        w.insert(batch(range(0, 10)))
        bad = batch(range(10, 20))
        bad["reward"] = bad["reward"].astype(np.float64)
        bad_seq = w.insert(bad)
        for i in range(2, 6):  # pipelined behind the bad one
            w.insert(batch(range(i * 10, i * 10 + 10)))
        with pytest.raises(InsertRejectedError) as err:
            w.flush(10)
        assert err.value.field == "reward" and err.value.sequence == bad_seq
        assert "reward" in str(err.value) and "float64" in str(err.value)
        w.flush(10)  # raised once; nothing else pending
        assert sorted(table_ids(s)) == [*range(0, 10), *range(20, 60)]
        assert w.stats().rejected == 1
        w.insert(batch(range(60, 70)))
        w.flush(10)
        assert len(table_ids(s)) == 60
        w.close()


def test_rejection_surfaces_on_the_next_insert():
    with shard(capacity=100) as (_, running), ReplayClient([running.address]) as client:
        w = client.writer("actor-0")
        w.insert(batch(range(5)))
        nan = batch(range(5, 10))
        nan["obs"][0, 0] = np.nan
        w.insert(nan)
        wait_for(lambda: w.stats().rejected == 1, message="the rejection")
        with pytest.raises(InsertRejectedError, match="obs"):
            w.insert(batch(range(10, 15)))
        w.insert(batch(range(10, 15)))
        w.close()


def test_new_writer_for_the_same_actor_is_not_taken_for_a_resend():
    with shard(capacity=1000) as (s, running), ReplayClient([running.address]) as client:
        with client.writer("actor-0") as w:
            for i in range(5):
                w.insert(batch(range(i * 10, i * 10 + 10)))
        with client.writer("actor-0") as w:  # a restarted actor: a new incarnation, a new writer
            w.insert(batch(range(50, 60)))
            w.flush(5)
            assert w.stats().stored == 1
        assert len(table_ids(s)) == 60


def test_unknown_table_is_an_error_for_writer_and_sampler():
    with shard(capacity=100) as (_, running), ReplayClient([running.address], table="missing") as client:
        w = client.writer("actor-0")
        w.insert(batch(range(3)))
        with pytest.raises(ReplayClientError, match="NOT_FOUND"):
            w.flush(5)
        with pytest.raises(ReplayClientError, match="missing"):
            client.sample(4, timeout=5)


def test_writer_window_gives_backpressure_from_the_rate_limiter():
    with (
        shard(capacity=1000, samples_per_insert=1.0, min_size_to_sample=10, error_buffer=20.0) as (
            _,
            running,
        ),
        ReplayClient([running.address]) as client,
    ):
        w = client.writer("actor-0", max_in_flight=2)
        for i in range(5):  # 3 batches fit under the limit, 2 more fill the window
            w.insert(batch(range(i * 10, i * 10 + 10)), timeout=5)
        with pytest.raises(TimeoutError, match="unacked"):
            w.insert(batch(range(50, 60)), timeout=0.3)
        # Sampling lets the held batches through, which opens the window again.
        client.sample(20, timeout=5)
        w.insert(batch(range(50, 60)), timeout=5)
        w.close(timeout=0)


def test_sampler_keeps_waiting_through_rate_limiter_timeouts():
    with (
        shard(capacity=1000, min_size_to_sample=50) as (_, running),
        ReplayClient([running.address], rate_limiter_timeout_s=0.1) as client,
    ):
        with pytest.raises(TimeoutError):
            client.sample(16, timeout=0.5)
        stats = client.prefetch_stats()
        assert stats.rate_limited_wait_s >= 0.2 and stats.batches == 0
        with client.writer("actor-0") as w:
            w.insert(batch(range(60)))
        check_rows(client.sample(16, timeout=5).fields)


def _settled(read, quiet_s: float = 0.4, timeout: float = 10.0) -> int:
    """`read()` once it has stopped changing for `quiet_s`."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        again = read()
        if again == value:
            return value
        value = again
    raise AssertionError(f"still changing after {timeout}s (last {value})")


def test_sampling_runs_at_most_the_credit_window_ahead_of_the_learner():
    # The rate limiter alone would let sampling run ~25,000 batches ahead (an error buffer of 800k
    # samples): only the client's credit window stops the shard once the learner stops taking.
    with (
        shard(capacity=10_000, samples_per_insert=16.0, min_size_to_sample=10, error_buffer=800_000.0) as (
            _,
            running,
        ),
        ReplayClient([running.address], prefetch=2) as client,
    ):
        with client.writer("actor-0") as w:
            w.insert(batch(range(1000)))
        table = lambda: client.info()[0].table("default")  # noqa: E731
        consumed = sum(len(client.sample(32, timeout=5)) for _ in range(20))
        # The learner stops taking batches; the shard stops within the window.
        window = client.sample_window * 32
        samples = _settled(lambda: table().samples)
        assert consumed < samples <= consumed + window, (consumed, samples, window)
        # Taking batches again grants more: the learner never starves.
        consumed += sum(len(client.sample(32, timeout=5)) for _ in range(3 * client.sample_window))
        samples = _settled(lambda: table().samples)
        assert consumed < samples <= consumed + window, (consumed, samples, window)
        assert client.prefetch_stats().grants > 2


def test_sample_window_is_checked():
    with pytest.raises(ValueError, match="sample_window"):
        ReplayClient(["127.0.0.1:1"], sample_window=1)


# -- several shards -------------------------------------------------------------------------------


def _fill(client: ReplayClient, home: int, ids: range, prefix: str) -> None:
    with client.writer(actor_with_home(home, client.num_shards, prefix)) as w:
        for start in range(ids.start, ids.stop, 100):
            w.insert(batch(range(start, min(start + 100, ids.stop))))


def test_two_shards_are_sampled_in_proportion_to_their_size():
    with (
        shard(capacity=10_000, seed=1) as (_, a),
        shard(capacity=10_000, seed=2) as (_, b),
        ReplayClient([a.address, b.address], prefetch=2) as client,
    ):
        _fill(client, 0, range(0, 3000), "big")
        _fill(client, 1, range(3000, 4000), "small")
        counts = np.zeros(2, dtype=int)
        exact = 0
        for _ in range(20):
            s = client.sample(256, timeout=10)
            ids = check_rows(s.fields)
            per_shard = np.bincount(s.shard, minlength=2)
            counts += per_shard
            exact += tuple(per_shard) == (192, 64)
            # Items are labelled with the shard that holds them.
            assert (ids[s.shard == 0] < 3000).all() and (ids[s.shard == 1] >= 3000).all()
        # Sizes are known from the first batch on (seeded from Info), so every batch splits 192:64.
        assert exact == 20, counts
        assert counts[0] / counts[1] == 3


def test_a_shard_without_new_data_is_left_out_once_its_rate_limiter_holds_it_back():
    # One sample per insert. Shard 1's error buffer lets it take its first 200 items unsampled and then
    # serve about 390 samples before it needs more inserts; shard 0's buffer is ample.
    table = dict(capacity=10_000, samples_per_insert=1.0, min_size_to_sample=10)
    with (
        shard(seed=1, error_buffer=100_000.0, **table) as (_, a),
        shard(seed=2, error_buffer=200.0, **table) as (_, b),
        ReplayClient([a.address, b.address], prefetch=1, rate_limiter_timeout_s=0.2) as client,
    ):
        _fill(client, 0, range(0, 200), "a")
        _fill(client, 1, range(1000, 1200), "b")
        assert set(client.sample(64, timeout=10).shard) == {0, 1}
        # From now on only shard 0 gets data (as after scaling down to fewer actors than shards).
        from_b, next_id = 0, 2000
        with client.writer(actor_with_home(0, 2, "a2")) as w:
            for _ in range(40):
                w.insert(batch(range(next_id, next_id + 64)))
                next_id += 64
                s = client.sample(64, timeout=10)  # never stalls on shard 1
                check_rows(s.fields)
                from_b += int((s.shard == 1).sum())
        assert from_b <= 390 + client.sample_window * 64  # shard 1's limiter held: its budget, prefetch
        stats = client.prefetch_stats()
        assert stats.shards_held_back == [False, True], stats
        assert (client.sample(64, timeout=10).shard == 0).all()
        # Shard 1 gets data again: it delivers and is back in the batches.
        _fill(client, 1, range(5000, 5400), "b2")
        wait_for(lambda: (client.sample(64, timeout=10).shard == 1).any(), message="shard 1 sampled again")
        assert client.prefetch_stats().shards_held_back == [False, False]


def test_dead_shard_is_skipped_by_the_sampler_and_retried():
    with shard(capacity=1000) as (_, a), ReplayClient([a.address], retry_interval_s=0.1) as fill:
        _fill(fill, 0, range(0, 100), "x")
    cfg = ReplayShardConfig(tables=[TableConfig(capacity=1000)])
    s_a, a = serve_replay_shard(cfg)
    s_b, b = serve_replay_shard(cfg)
    try:
        with ReplayClient([a.address, b.address], prefetch=1, retry_interval_s=0.1) as client:
            _fill(client, 0, range(0, 200), "a")
            _fill(client, 1, range(1000, 1200), "b")
            wait_for(
                lambda: (
                    client.sample(64, timeout=5) is not None
                    and client.prefetch_stats().shards_up == [True, True]
                )
            )
            a.stop(0)
            # Items shard 0 delivered before it died are still served; then it counts as down.
            wait_for(
                lambda: (
                    check_rows(client.sample(64, timeout=5).fields) is not None
                    and client.prefetch_stats().shards_up == [False, True]
                ),
                message="shard 0 marked down",
            )
            client.sample(64, timeout=5)  # the one prefetched batch may predate that
            for _ in range(5):
                s = client.sample(64, timeout=5)
                ids = check_rows(s.fields)
                assert (s.shard == 1).all() and (ids >= 1000).all()
            assert client.prefetch_stats().reconnects >= 1
    finally:
        a.stop(0)
        b.stop(0)
        s_a.close(final_checkpoint=False)
        s_b.close(final_checkpoint=False)


def test_writer_fails_over_without_loss_or_duplicates_and_returns_home():
    cfg = ReplayShardConfig(tables=[TableConfig(capacity=100_000)])
    s_a, a = serve_replay_shard(cfg)
    s_b, b = serve_replay_shard(cfg)
    port_a = a.port
    s_a2 = a2 = None
    try:
        client = ReplayClient([a.address, b.address], retry_interval_s=0.05, probe_interval_s=0.1)
        w = client.writer(actor_with_home(0, 2), max_in_flight=4)
        next_id = 0

        def send(n: int) -> None:
            nonlocal next_id
            for _ in range(n):
                w.insert(batch(range(next_id, next_id + 8)))
                next_id += 8

        send(30)
        w.flush(10)
        assert w.stats().current_shard == 0
        # Stop the home shard with batches in flight.
        stopper = threading.Thread(target=lambda: a.stop(0.5))
        send(5)
        stopper.start()
        send(30)
        stopper.join()
        w.flush(20)
        assert w.stats().current_shard == 1 and w.stats().failovers >= 1

        # The home shard comes back on its port: the writer drains and goes home.
        s_a2, a2 = serve_replay_shard(cfg, port=port_a)
        deadline = time.monotonic() + 15
        while w.stats().current_shard != 0 and time.monotonic() < deadline:
            send(1)
            time.sleep(0.05)
        assert w.stats().current_shard == 0, "writer did not return to its home shard"
        send(10)
        w.flush(10)
        w.close()
        client.close()

        held = np.concatenate([table_ids(s_a), table_ids(s_b), table_ids(s_a2)])
        assert len(held) == next_id, f"{len(held)} items held for {next_id} sent"
        np.testing.assert_array_equal(np.sort(held), np.arange(next_id))  # each id exactly once
        assert len(table_ids(s_b)) > 0 and len(table_ids(s_a2)) > 0
    finally:
        for r in (a, b, a2):
            if r is not None:
                r.stop(0)
        for s in (s_a, s_b, s_a2):
            if s is not None:
                s.close(final_checkpoint=False)


def test_writer_waits_while_every_shard_is_down_and_delivers_later():
    cfg = ReplayShardConfig(tables=[TableConfig(capacity=1000)])
    s_a, a = serve_replay_shard(cfg)
    port = a.port
    a.stop(0)
    s_a.close(final_checkpoint=False)
    client = ReplayClient([f"127.0.0.1:{port}"], retry_interval_s=0.05)
    s_b = b = None
    try:
        w = client.writer("actor-0", max_in_flight=2)
        w.insert(batch(range(10)))
        with pytest.raises(TimeoutError):
            w.flush(0.5)
        s_b, b = serve_replay_shard(cfg, port=port)
        w.flush(15)
        assert sorted(table_ids(s_b)) == list(range(10))
        w.close()
    finally:
        client.close()
        if b is not None:
            b.stop(0)
            s_b.close(final_checkpoint=False)


def test_priority_updates_go_to_the_owning_shard():
    cfg = ReplayShardConfig(tables=[TableConfig(capacity=1000, sampler="prioritized")], seed=0)
    s_a, a = serve_replay_shard(cfg)
    s_b, b = serve_replay_shard(cfg)
    try:
        with ReplayClient([a.address, b.address], prefetch=1) as client:
            _fill(client, 0, range(0, 100), "a")
            _fill(client, 1, range(100, 200), "b")
            # Keys are per-shard insertion counters (0..99 on both): only the shard index tells them apart.
            shard_idx = np.repeat([0, 1], 100)
            keys = np.concatenate([np.arange(100), np.arange(100)])
            priorities = np.full(200, 1e-6)
            priorities[5] = 1.0  # shard 0, key 5 -> id 5
            priorities[100 + 70] = 1.0  # shard 1, key 70 -> id 170
            assert client.update_priorities(shard_idx, keys, priorities) == 200
            client.sample(128, timeout=5)  # drain batches drawn before the update
            client.sample(128, timeout=5)
            ids = np.concatenate([check_rows(client.sample(128, timeout=5).fields) for _ in range(3)])
            on_a, on_b = ids[ids < 100], ids[ids >= 100]
            assert (on_a == 5).mean() > 0.9 and (on_b == 170).mean() > 0.9
            b_ = client.sample(128, timeout=5)
            assert b_.weights.max() == pytest.approx(1.0) and (b_.weights > 0).all()
            # Bad input is refused before anything is sent.
            with pytest.raises(ValueError, match="shard"):
                client.update_priorities(np.array([2]), np.array([0]), np.array([1.0]))
    finally:
        for r, s in ((a, s_a), (b, s_b)):
            r.stop(0)
            s.close(final_checkpoint=False)


def test_info_reports_every_shard_and_down_ones():
    with shard(capacity=100, name="online") as (_, a):
        client = ReplayClient([a.address, "127.0.0.1:1"], rpc_timeout_s=2, table="online")
        try:
            with client.writer(actor_with_home(0, 2)) as w:
                w.insert(batch(range(7)))
            up, down = client.info(timeout=2)
            assert up.up and up.table("online").size == 7 and up.table("online").spec["obs"].shape == [3]
            assert not down.up and down.error
        finally:
            client.close()
