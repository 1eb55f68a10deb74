"""Shared pieces of the replay service/client tests: real shards on loopback and small batches."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from distrl.replay.config import ReplayShardConfig, TableConfig
from distrl.replay.server import ReplayServer, ReplayShard, serve_replay_shard

OBS = 3


def batch(ids: np.ndarray | range, policy_version: int = 0) -> dict[str, np.ndarray]:
    """A columnar batch whose every field encodes the item id, so any sampled row can be checked."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    obs = np.repeat(ids[:, None].astype(np.float32), OBS, axis=1) + np.arange(OBS, dtype=np.float32)
    return {
        "obs": obs,
        "action": (ids[:, None] * 2).astype(np.float32),
        "reward": ids.astype(np.float32),
        "next_obs": obs + 1,
        "terminated": (ids % 2 == 0),
        "truncated": np.zeros(n, dtype=bool),
        "id": ids,
    }


def check_rows(fields: dict[str, np.ndarray]) -> np.ndarray:
    """Assert every sampled row is one that `batch` produced; returns the ids."""
    ids = fields["id"]
    expected = batch(ids)
    for name, arr in expected.items():
        np.testing.assert_array_equal(fields[name], arr, err_msg=f"field {name} does not match its id")
    return ids


def acked(acks) -> list[tuple[int, bool]]:
    """(sequence, stored) of every batch a stream's cumulative acks cover (consecutive sequences)."""
    out = []
    for ack in acks:
        n = ack.batches or 1
        resent = set(ack.resent)
        for sequence in range(ack.sequence - n + 1, ack.sequence + 1):
            out.append((sequence, sequence not in resent if ack.batches else ack.stored))
    return out


@contextlib.contextmanager
def shard(**table_kwargs) -> Iterator[tuple[ReplayShard, ReplayServer]]:
    """An in-process shard with one table, stopped afterwards."""
    shard_kwargs = {
        k: table_kwargs.pop(k)
        for k in ("checkpoint_dir", "checkpoint_every_s", "seed", "ack_delay_ms")
        if k in table_kwargs
    }
    config = ReplayShardConfig(tables=[TableConfig(**table_kwargs)], **shard_kwargs)
    s, running = serve_replay_shard(config)
    try:
        yield s, running
    finally:
        running.stop(0)
        s.close(final_checkpoint=False)


def table_ids(s: ReplayShard, table: str = "default") -> np.ndarray:
    """Every id a shard's table holds (read through a snapshot, oldest first)."""
    snap = s.tables[table].snapshot()
    return snap.fields["id"] if "id" in snap.fields else np.zeros(0, dtype=np.int64)


def start_cli_shard(*args: str, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`distrl serve replay --port 0 ARGS` in a subprocess; returns it and its address."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "distrl.cli", "serve", "replay", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MUJOCO_GL": "disable", **(env or {})},
        cwd=Path(__file__).resolve().parent.parent,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"shard did not start: first line {line!r}, stderr:\n{err}")
    return proc, line.removeprefix("listening on ")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)
