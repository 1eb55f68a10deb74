"""benchmarks/safe_exploration.py: each arm's overrides, the replay totals it counts violations
from, and the result rows it writes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from distrl.config import load_config
from distrl.replay.checkpoint import write_checkpoint
from distrl.replay.config import TableConfig
from distrl.replay.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import safe_exploration as bench  # noqa: E402


@pytest.mark.parametrize("task", list(bench.TASKS))
@pytest.mark.parametrize("arm", list(bench.ARMS))
def test_every_arm_is_a_valid_config_differing_only_in_its_safety_mechanism(task: str, arm: str) -> None:
    overrides = bench.arm_overrides(task, arm, 20_000, seed=1, quick=True)
    config = load_config(ROOT / bench.TASKS[task][0], overrides)
    assert config.env.id.startswith("safe:")
    assert config.algo.name == ("sac_lag" if "sac_lag" in arm else "sac")
    assert ("shield" in config.algo.params()) == ("kbse" in arm)
    if "kbse" in arm and task == "halfcheetah_vel":  # the forward velocity, what the constraint reads
        assert config.algo.params()["shield"]["state_dims"] == [8]
    assert config.replay.table.capacity >= 20_000  # replay keeps every transition of the run
    assert config.seed == 1 and config.train.total_env_steps == 20_000


def test_replay_totals_sum_cost_and_interventions_over_every_shard(tmp_path: Path) -> None:
    for shard, (n, with_shield) in enumerate([(30, True), (20, False)]):
        table = Table(TableConfig(capacity=100), seed=0)
        rows = {"obs": np.zeros((n, 2), np.float32), "cost": (np.arange(n) % 3 == 0).astype(np.float32)}
        if with_shield:
            rows["intervened"] = np.arange(n) % 2 == 0
        table.insert(rows, actor_id="a", sequence=0)
        write_checkpoint([table], tmp_path / "replay" / f"shard-{shard}")
    totals = bench.replay_totals(tmp_path)
    assert totals == {"items": 50.0, "cost": 10.0 + 7.0, "intervened": 15.0}


def test_rows_put_every_arm_against_plain_sac_with_costs_inverted() -> None:
    run = {
        "violations": 400.0,
        "interventions": 0.0,
        "items": 1e4,
        "return": 2.5,
        "cost": 4.0,
        "wall_s": 1.0,
        "return_last_quarter": 2.4,
        "cost_last_quarter": 3.0,
    }
    shielded = {**run, "violations": 40.0, "interventions": 900.0, "return": 2.4, "cost": 1.0}
    rows = {r.name: r for r in bench.summarize({"point": {"sac": [run], "sac+kbse": [shielded, shielded]}})}
    assert rows["point/sac/violations"].baseline is None
    assert rows["point/sac+kbse/violations"].ratio == pytest.approx(10.0)  # 10x fewer
    assert rows["point/sac+kbse/return"].ratio == pytest.approx(2.4 / 2.5)
    assert rows["point/sac+kbse/cost"].ratio == pytest.approx(4.0)
    assert rows["point/sac+kbse/interventions"].value == 900.0
