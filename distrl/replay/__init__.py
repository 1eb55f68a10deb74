"""Replay: sharded tables of transitions served over gRPC.

A `Table` is ring storage x item sampler (uniform / prioritized, `item_samplers`)
x FIFO remover x rate limiter; a `ReplayShard` serves named tables
(`serve_replay_shard`, or `distrl serve replay`); a `ReplayClient` writes to and
samples from K shards, its learner side through a prefetcher (`prefetch`).

Items travel and are stored as packed rows (`rows.RowLayout`): each item's
fields, key and policy version in one row of bytes. A writer packs its batch's
columns into rows; the shard checks them (names, dtypes and shapes once per
layout, finite values every batch) and copies them into storage as a block; a
sample is the gathered storage rows, sent as one tensor that the client views
field by field without copying. Sampling is paced by credit: a shard streams
at most `sample_window` learner batches ahead of what the learner has taken,
so transport buffers cannot run the rate limiter ahead (see `prefetch`).
Actors `<name>-<i>` spread over shards by index (`writer.home_shard`); a shard
recognises resends by (actor_id, incarnation, sequence), the incarnation being random
bytes each writer draws when it starts (`sequences`).

Attributes load on first use so `distrl --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distrl.replay.client import (
        InsertRejectedError,
        LearnerBatch,
        ReplayClient,
        ReplayClientError,
        ReplayWriter,
        ShardInfo,
    )
    from distrl.replay.config import ReplayShardConfig, TableConfig
    from distrl.replay.server import ReplayServer, ReplayShard, serve_replay_shard
    from distrl.replay.spec import SpecViolation
    from distrl.replay.stats import TableCounters, TableStats
    from distrl.replay.table import RateLimiterTimeout, SampledRows, Table, TableClosed

_EXPORTS = {
    "InsertRejectedError": "distrl.replay.client",
    "LearnerBatch": "distrl.replay.client",
    "RateLimiterTimeout": "distrl.replay.table",
    "ReplayClient": "distrl.replay.client",
    "ReplayClientError": "distrl.replay.client",
    "ReplayServer": "distrl.replay.server",
    "ReplayShard": "distrl.replay.server",
    "ReplayShardConfig": "distrl.replay.config",
    "ReplayWriter": "distrl.replay.client",
    "SampledRows": "distrl.replay.table",
    "ShardInfo": "distrl.replay.client",
    "SpecViolation": "distrl.replay.spec",
    "Table": "distrl.replay.table",
    "TableClosed": "distrl.replay.table",
    "TableConfig": "distrl.replay.config",
    "TableCounters": "distrl.replay.stats",
    "TableStats": "distrl.replay.stats",
    "serve_replay_shard": "distrl.replay.server",
}

__all__ = [
    "InsertRejectedError",
    "LearnerBatch",
    "RateLimiterTimeout",
    "ReplayClient",
    "ReplayClientError",
    "ReplayServer",
    "ReplayShard",
    "ReplayShardConfig",
    "ReplayWriter",
    "SampledRows",
    "ShardInfo",
    "SpecViolation",
    "Table",
    "TableClosed",
    "TableConfig",
    "TableCounters",
    "TableStats",
    "serve_replay_shard",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distrl.replay' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
