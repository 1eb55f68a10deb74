"""Prioritized replay through the real learner: SAC's TD errors go back to the shard over gRPC and
become the stored items' priorities (the table and client tests cover the shard's side alone)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from replay_helpers import shard

from distrl.config import validate_config
from distrl.experiment import env_space, experiment_fields, replay_table_config
from distrl.learners.learner import PRIORITY_EPS, Learner

ITEMS = 256
UPDATES = 20
BATCH = 32


def prioritized_config() -> dict:
    return {
        "name": "prioritized",
        "seed": 0,
        "env": {"id": "gym:InvertedPendulum-v5"},
        "algo": {"name": "sac", "hidden_sizes": [16, 16]},
        "replay": {
            "table": {"capacity": 1_000, "sampler": "prioritized", "min_size_to_sample": ITEMS},
            "prefetch": 1,
            "checkpoint_every_s": None,
        },
        "learner": {"batch_size": BATCH, "device": "cpu", "checkpoint_every": 10_000},
        "eval": {"enabled": False},
        "telemetry": {"console": False},
    }


def random_transitions(config, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n` items of every field the experiment stores, random but valid (rewards vary, so TD errors do)."""
    rng = np.random.default_rng(seed)
    out = {}
    for f in experiment_fields(config, env_space(config.env)):
        dtype = f.np_dtype
        if dtype.kind == "b":
            out[f.name] = rng.random((n, *f.shape)) < 0.05
        elif dtype.kind == "f":
            out[f.name] = rng.uniform(-1.0, 1.0, (n, *f.shape)).astype(dtype)
        else:
            out[f.name] = np.ones((n, *f.shape), dtype=dtype)
    return out


def test_the_learner_sends_td_error_priorities_to_the_shard(tmp_path: Path) -> None:
    config = validate_config(prioritized_config())
    table = replay_table_config(config)
    with shard(**table.model_dump(), seed=0) as (s, running):
        s.tables["default"].insert(random_transitions(config, ITEMS), actor_id="actor-0", sequence=1)
        inserted = s.tables["default"].snapshot().priorities.copy()
        assert np.all(inserted == inserted[0]), "items enter with one priority (the table's maximum)"

        learner = Learner(config, tmp_path, [running.address], params=None)
        learner.run(threading.Event(), max_updates=UPDATES)
        assert learner.updates == UPDATES

        after = s.tables["default"].snapshot().priorities
    changed = after != inserted
    # UPDATES x BATCH = 640 draws from 256 items: most were sampled, and each sampled one now has its
    # |TD error| (+ eps) as its priority; an item never sampled keeps the priority it entered with.
    assert changed.sum() >= ITEMS // 2, f"only {changed.sum()} of {ITEMS} priorities changed"
    assert np.isfinite(after).all() and (after[changed] >= PRIORITY_EPS).all()
    assert len(np.unique(after[changed])) > ITEMS // 4, "priorities did not follow per-item TD errors"
