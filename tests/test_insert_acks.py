"""Cumulative insert acks: a shard acks a run of batches with one message, and writers count
every batch it covers (stored or resent) as if each had its own ack."""

from __future__ import annotations

from pathlib import Path

import pytest
from replay_helpers import acked, batch, shard, table_ids

from distrl.proto.v1 import replay_pb2_grpc
from distrl.replay.client import NO_INCARNATION, ReplayClient
from distrl.replay.ledger import LEDGER_ENV, read_ledger
from distrl.replay.messages import encode_transition_batch
from distrl.wire.channel import open_channel

ROOT = Path(__file__).resolve().parent.parent

# Long enough that a burst sent by one thread always lands inside one ack's wait.
SLOW_ACKS_MS = 300.0


def _request(ids, sequence: int, actor: str = "actor-0", incarnation: bytes = b"i"):
    message = encode_transition_batch(batch(ids), table="default", actor_id=actor, policy_version=0)
    message.sequence = sequence
    message.incarnation = incarnation
    return message


def _insert(address: str, requests) -> list:
    channel = open_channel(address)
    try:
        return list(replay_pb2_grpc.ReplayStub(channel).Insert(iter(requests), timeout=10))
    finally:
        channel.close()


def test_a_burst_shares_acks_and_every_batch_is_covered_once():
    with shard(capacity=10_000, ack_delay_ms=SLOW_ACKS_MS) as (s, running):
        requests = [_request(range(i * 10, i * 10 + 10), 100 + i) for i in range(20)]
        acks = _insert(running.address, requests)
        assert len(acks) < 20  # the burst arrived within one ack's wait
        assert acked(acks) == [(100 + i, True) for i in range(20)]
        assert sum(a.batches for a in acks) == 20
        assert acks[-1].table_size == 200 and sorted(table_ids(s)) == list(range(200))


def test_resends_are_named_in_the_ack_that_covers_them():
    with shard(capacity=10_000, ack_delay_ms=SLOW_ACKS_MS) as (_, running):
        _insert(running.address, [_request(range(i * 10, i * 10 + 10), i) for i in range(3)])
        acks = _insert(running.address, [_request(range(i * 10, i * 10 + 10), i) for i in range(1, 5)])
        assert acked(acks) == [(1, False), (2, False), (3, True), (4, True)]
        assert sorted(r for a in acks for r in a.resent) == [1, 2]


def test_an_ack_never_spans_two_writers_or_a_step_back_in_sequence():
    with shard(capacity=10_000, ack_delay_ms=SLOW_ACKS_MS) as (_, running):
        requests = [
            _request(range(0, 10), 5, actor="a"),
            _request(range(10, 20), 6, actor="a"),
            _request(range(20, 30), 1, actor="b"),  # another writer
            _request(range(30, 40), 2, actor="b", incarnation=b"j"),  # another incarnation
            _request(range(40, 50), 3, actor="b", incarnation=b"j"),
            _request(range(50, 60), 1, actor="b", incarnation=b"j"),  # back in sequence: new ack
        ]
        acks = _insert(running.address, requests)
        assert [(a.actor_id, a.sequence, a.batches) for a in acks] == [
            ("a", 6, 2),
            ("b", 1, 1),
            ("b", 3, 2),
            ("b", 1, 1),
        ]


def test_ack_delay_zero_acks_every_batch_by_itself():
    with shard(capacity=10_000, ack_delay_ms=0.0) as (_, running):
        acks = _insert(running.address, [_request(range(i * 10, i * 10 + 10), i + 1) for i in range(10)])
        # Without a wait an ack may still cover batches that arrived while one was being written.
        assert acked(acks) == [(i + 1, True) for i in range(10)]
        assert all(a.batches >= 1 for a in acks)


def test_a_writer_counts_and_ledgers_every_batch_a_cumulative_ack_covers(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path))
    with (
        shard(capacity=10_000, ack_delay_ms=SLOW_ACKS_MS) as (_, running),
        ReplayClient([running.address]) as client,
    ):
        # No incarnation: the second writer is the first one restarted, resending sequences 3 and 4.
        first = client.writer("actor-0", first_sequence=0, incarnation=NO_INCARNATION)
        for i in range(5):
            first.insert(batch(range(i * 10, i * 10 + 10)))
        first.flush(10)
        assert (first.stats().stored, first.stats().duplicates) == (5, 0)
        first.close()
        second = client.writer("actor-0", first_sequence=3, incarnation=NO_INCARNATION)
        for i in range(3, 8):
            second.insert(batch(range(i * 10, i * 10 + 10)))
        second.flush(10)
        assert (second.stats().stored, second.stats().duplicates) == (3, 2)
        second.close()
    acks = [(e.sequence, e.stored) for e in read_ledger(tmp_path) if e.kind == "ack"]
    assert acks == [*((i, True) for i in range(5)), (3, False), (4, False), (5, True), (6, True), (7, True)]


def test_the_ack_delay_is_a_checked_setting_that_reaches_every_placement(tmp_path: Path):
    from pydantic import ValidationError

    from distrl.config import load_config
    from distrl.experiment import replay_shard_config
    from distrl.replay.cli import shard_values_from_experiment
    from distrl.replay.config import ReplayShardConfig

    with pytest.raises(ValidationError, match="ack_delay_ms"):
        ReplayShardConfig(ack_delay_ms=-1)
    experiment = tmp_path / "experiment.yaml"
    source = (ROOT / "configs" / "sac_point.yaml").read_text()
    experiment.write_text(
        source.replace("  checkpoint_every_s: 120\n", "  checkpoint_every_s: 120\n  ack_delay_ms: 0.5\n")
    )
    # Kubernetes pods build their shard from the experiment file, the local and Ray launchers
    # through replay_shard_config.
    assert shard_values_from_experiment(experiment, checkpointing=False)["ack_delay_ms"] == 0.5
    assert replay_shard_config(load_config(experiment), tmp_path, 1).ack_delay_ms == 0.5
    assert (
        replay_shard_config(load_config(ROOT / "configs" / "sac_point.yaml"), tmp_path, 1).ack_delay_ms == 2.0
    )
