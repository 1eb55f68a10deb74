"""Chaos: the writers' ack ledger, the replay checkpoint's snapshot time, how benchmarks/chaos.py counts
lost transitions and checks the counters, and (slow) real runs with a shard and the learner killed at
once, and with every process drained by SIGTERM."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import zarr
from replay_helpers import batch, shard

from distrl.replay.checkpoint import SNAPSHOT_TIME, list_checkpoints, snapshot_time, write_checkpoint
from distrl.replay.client import ReplayClient
from distrl.replay.config import TableConfig
from distrl.replay.ledger import LEDGER_ENV, AckLedger, read_ledger
from distrl.replay.table import Table
from distrl.runtime.process import START_MARK

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import chaos as bench  # noqa: E402


def test_a_writer_keeps_a_ledger_only_when_asked(tmp_path: Path, monkeypatch):
    ledger = tmp_path / "ledger"
    with shard(capacity=1000) as (_, running), ReplayClient([running.address]) as client:
        monkeypatch.delenv(LEDGER_ENV, raising=False)
        client.writer("actor-9").close()
        assert not ledger.exists()  # off by default
        monkeypatch.setenv(LEDGER_ENV, str(ledger))
        w = client.writer("actor-0")
        seqs = [w.insert(batch(range(i * 10, i * 10 + 10 + i))) for i in range(3)]
        w.flush(10)
        w.close()
    entries = read_ledger(ledger)
    sent = [(e.sequence, e.transitions) for e in entries if e.kind == "sent"]
    acks = [(e.shard, e.sequence, e.transitions, e.stored) for e in entries if e.kind == "ack"]
    assert sent == [(seqs[0], 10), (seqs[1], 11), (seqs[2], 12)]
    assert acks == [(0, seqs[0], 10, True), (0, seqs[1], 11, True), (0, seqs[2], 12, True)]
    assert {e.incarnation for e in entries} == {w.incarnation.hex()}
    assert all(e.actor_id == "actor-0" and e.time > 0 for e in entries)


def test_the_ledger_skips_a_line_cut_short_by_a_kill(tmp_path: Path):
    ledger = AckLedger(tmp_path, "actor/1", b"\x01\x02")
    ledger.sent(7, 32)
    ledger.acked(1, 7, stored=False)
    ledger.close()
    with open(ledger.path, "a") as f:
        f.write("ack\tactor/1\t0102\t1\t8\t3")  # a partial line: no newline, too few fields
    entries = read_ledger(tmp_path)
    assert [(e.kind, e.shard, e.sequence, e.transitions, e.stored) for e in entries] == [
        ("sent", -1, 7, 32, False),
        ("ack", 1, 7, 32, False),
    ]
    assert ledger.path.name.startswith("actor_1-0102-")


def test_a_replay_checkpoint_records_when_its_tables_were_copied(tmp_path: Path):
    table = Table(TableConfig(capacity=100), seed=0)
    table.insert(batch(range(5)), actor_id="a", sequence=1)
    before = time.time()
    path = write_checkpoint([table], tmp_path)
    assert before <= snapshot_time(path) <= time.time()
    # A checkpoint written before the attribute existed still reads, with no time.
    del zarr.open_group(str(path), mode="r+").attrs[SNAPSHOT_TIME]
    assert snapshot_time(path) is None


def _write_ledger(directory: Path, lines: list[tuple]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join("\t".join(str(v) for v in line) + "\n" for line in lines)
    (directory / "x.ledger").write_text(text)


def test_lost_is_what_was_acked_and_is_gone_and_the_bound_what_a_killed_shard_acked_after_its_snapshot(
    tmp_path: Path,
):
    x, y = b"\x0a" * 16, b"\x0b" * 16
    # Shard 0: writer x's batches 1-3 are in its checkpoint; batch 4 was acked after the snapshot and
    # lost with the shard (it restored that checkpoint).
    shard0 = Table(TableConfig(capacity=100), seed=0)
    for seq in (1, 2, 3):
        shard0.insert(batch(range(seq * 10, seq * 10 + 10)), actor_id="actor-0", sequence=seq, incarnation=x)
    ckpt0 = write_checkpoint([shard0], tmp_path / "replay" / "shard-0")
    snap = snapshot_time(ckpt0)
    # Shard 1: writer y's actor died with batch 2 stored but unacked and batch 3 never sent.
    shard1 = Table(TableConfig(capacity=100), seed=0)
    for seq in (1, 2):
        shard1.insert(batch(range(seq * 10, seq * 10 + 10)), actor_id="actor-1", sequence=seq, incarnation=y)
    write_checkpoint([shard1], tmp_path / "replay" / "shard-1")
    ledger = tmp_path / "ledger"
    sent = [("sent", "actor-0", x.hex(), -1, s, 10, 0, snap - 1) for s in (1, 2, 3, 4)]
    sent += [("sent", "actor-1", y.hex(), -1, s, 10, 0, snap - 1) for s in (1, 2, 3)]
    acks = [("ack", "actor-0", x.hex(), 0, s, 10, 1, snap - 0.5) for s in (1, 2, 3)]
    acks += [
        ("ack", "actor-0", x.hex(), 0, 4, 10, 1, snap + 0.5),
        ("ack", "actor-1", y.hex(), 1, 1, 10, 1, snap),
    ]
    _write_ledger(ledger, sent + acks)
    kill = bench.ShardKill(
        0, killed_at=snap + 1, checkpoint=str(ckpt0), snapshot_time=snap, restarted_at=snap + 3
    )
    losses = bench.count_losses(tmp_path, ledger, [kill])
    assert (losses.acked, losses.stored, losses.stored_unacked) == (50, 50, 10)
    assert (losses.lost, losses.lost_bound) == (10, 10)
    # Without the kill nothing may be lost: the same loss is then over its bound of 0.
    assert bench.count_losses(tmp_path, ledger, []).lost_bound == 0


def _metrics(run_dir: Path, rows: list[tuple[float, int, int]]) -> None:
    lines = [json.dumps({"time": t, "env_steps": e, "updates": u}) for t, e, u in rows]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"time": 9')  # a partial last line


def _learner_log(run_dir: Path, starts: list[tuple[float, int | None]]) -> None:
    parts = []
    for started, updates in starts:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        where = "fresh" if not updates else f"resumed from /r/checkpoints/learner-{updates:010d}.pt"
        banner = f"learner: sac on cpu, {where}, {updates or 0} updates"
        parts.append(f"{START_MARK}{stamp}: distrl serve learner\n{banner}\n")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs" / "learner.log").write_text("".join(parts))


def test_counters_may_drop_only_to_a_restarted_learners_checkpoint(tmp_path: Path):
    t = 1_800_000_000.0
    _learner_log(tmp_path, [(t, None), (t + 10, 500)])
    _metrics(tmp_path, [(t + 5, 100, 600), (t + 9, 200, 700), (t + 12, 300, 520), (t + 13, 400, 560)])
    assert bench.check_counters(tmp_path) == []
    _metrics(tmp_path, [(t + 5, 100, 600), (t + 12, 300, 480)])  # below the restored 500
    assert "below the restarted learner's checkpoint" in bench.check_counters(tmp_path)[0]
    _metrics(tmp_path, [(t + 5, 100, 600), (t + 12, 300, 520), (t + 13, 300, 510)])  # dropped twice
    assert "with no learner restart" in bench.check_counters(tmp_path)[0]
    _metrics(tmp_path, [(t + 5, 100, 600), (t + 6, 90, 610)])
    assert bench.check_counters(tmp_path) == ["row 1: env steps went back from 100 to 90"]


def _assert_recovered(outcome: bench.FaultOutcome) -> None:
    assert outcome.completed, outcome.problems
    assert outcome.problems == []  # the counters, the restored checkpoints, lost <= lost_bound
    assert outcome.losses.acked > 0 and outcome.losses.lost <= outcome.losses.lost_bound


@pytest.mark.slow
def test_a_run_recovers_from_a_shard_and_the_learner_killed_at_once(tmp_path: Path):
    outcome = bench.run_fault("shard+learner", tmp_path, quick=True)
    _assert_recovered(outcome)
    [kill] = outcome.shard_kills
    assert kill.restored_from == kill.checkpoint and kill.snapshot_time is not None
    assert outcome.learner_resumed_at[1] == outcome.learner_checkpoint_at_kill > 0
    assert len(list_checkpoints(tmp_path / "shard-learner" / "replay" / "shard-0")) >= 1


@pytest.mark.slow
def test_a_drain_loses_no_acknowledged_transition(tmp_path: Path):
    outcome = bench.run_fault("drain", tmp_path, quick=True)
    _assert_recovered(outcome)
    assert outcome.losses.lost == 0 and outcome.losses.lost_bound == 0
    assert outcome.losses_at_stop is not None and outcome.losses_at_stop.lost == 0
    # The resumed learner continued from the final checkpoint of the drained one.
    assert len(outcome.learner_resumed_at) == 2 and outcome.learner_resumed_at[1] > 0
