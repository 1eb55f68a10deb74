"""The learner's metrics: the report window (each metric averaged over the updates that reported it)
and the replay metrics per shard."""

from __future__ import annotations

import numpy as np
import pytest
from replay_helpers import batch, shard

from distrl.learners.learner import MAX_SHARD_METRICS, _Window, replay_metrics
from distrl.replay.client import ReplayClient, ShardInfo, TableStats
from distrl.telemetry.aggregate import RunAggregate


def test_a_metric_reported_every_third_update_is_not_diluted_by_the_others() -> None:
    window = _Window()
    for i in range(9):
        metrics = {"critic_loss": float(i)}
        if i % 3 == 2:  # an actor step every 3rd update (XQC), a shield fit every Nth
            metrics["actor_loss"] = 6.0
        window.add(metrics, wait_s=0.0, step_s=0.0, actor_lag=np.zeros(1, np.int64), sample_age=np.zeros(1))
    out = window.flush({})
    assert out["critic_loss"] == pytest.approx(4.0)
    assert out["actor_loss"] == pytest.approx(6.0)  # was 2.0: divided by all 9 updates


# -- replay metrics per shard ------------------------------------------------------------------


def test_replay_metrics_per_shard_read_well_once_the_coordinator_qualifies_them() -> None:
    with (
        shard(capacity=100, samples_per_insert=2.0, seed=0) as (s0, r0),
        shard(capacity=50, seed=1) as (s1, r1),
        ReplayClient([r0.address, r1.address]) as client,
    ):
        s0.tables["default"].insert(batch(range(40)), actor_id="a", sequence=0)
        s0.tables["default"].sample(60)
        s1.tables["default"].insert(batch(range(10)), actor_id="b", sequence=0)
        metrics = replay_metrics(client.info(), "default")
    assert metrics == {
        # the totals, as before
        "replay_size": 50.0,
        "replay_capacity": 150.0,
        "samples_per_insert": 60 / 50,
        "replay_live_shards": 2.0,
        # per shard: achieved and (with a rate limit only) target samples per insert
        "replay/0/size": 40.0,
        "replay/0/capacity": 100.0,
        "replay/0/samples_per_insert": 1.5,
        "replay/0/target_samples_per_insert": 2.0,
        "replay/1/size": 10.0,
        "replay/1/capacity": 50.0,
        "replay/1/samples_per_insert": 0.0,
    }
    # Through the coordinator's aggregate, as metrics.jsonl has them.
    agg = RunAggregate(window_s=1.0, now=0.0)
    agg.ingest("learner/0", None, 10, metrics.items(), now=0.5)
    row = agg.close_window(now=1.0, unix_time=0.0)
    assert row is not None
    assert row.metrics["learner/replay/0/size"] == 40.0
    assert row.metrics["learner/replay/0/target_samples_per_insert"] == 2.0
    assert row.metrics["learner/replay/1/samples_per_insert"] == 0.0
    assert row.metrics["learner/replay_size"] == 50.0
    assert "learner/replay/1/target_samples_per_insert" not in row.metrics


def test_replay_metrics_name_at_most_64_shards_and_skip_shards_that_are_down() -> None:
    def info(i: int, up: bool = True) -> ShardInfo:
        stats = TableStats(name="default", size=i, capacity=100, samples_per_insert=1.0, sampler="uniform")
        return ShardInfo(i, f"host:{i}", up=up, tables=[stats] if up else [])

    metrics = replay_metrics([info(i, up=i != 3) for i in range(MAX_SHARD_METRICS + 6)], "default")
    shards = {int(name.split("/")[1]) for name in metrics if name.startswith("replay/")}
    assert shards == set(range(MAX_SHARD_METRICS)) - {3}
    assert metrics["replay_live_shards"] == MAX_SHARD_METRICS + 5  # the totals count every live shard
    assert metrics["replay_size"] == sum(range(MAX_SHARD_METRICS + 6)) - 3
