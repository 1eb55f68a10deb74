"""benchmarks/dsrl_lift.py: which evaluation each mark reports and the result rows it writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import dsrl_lift as bench  # noqa: E402


def test_a_mark_reports_the_last_evaluation_at_or_before_it() -> None:
    curve = [(0, 0.1), (4_000, 0.3), (9_999, 0.5), (12_000, 0.9)]
    assert bench.at(curve, 5_000) == 0.3
    assert bench.at(curve, 10_000) == 0.5
    assert bench.at([(6_000, 0.4)], 5_000) is None


def test_rows_name_every_arm_and_put_dsrl_against_its_base() -> None:
    final = {"lift/base": [0.4, 0.6], "lift/dsrl_na": [0.9, 0.7], "lift/bc": [0.5]}
    curves = {
        "lift/dsrl_na/seed=0": [(5_000, 0.5), (10_000, 0.8), (20_000, 0.9)],
        "lift/dsrl_na/seed=1": [(5_000, 0.3), (10_000, 0.6), (20_000, 0.7)],
    }
    extra = {"lift/base/pretrain_s": 12.0, "dsrl/cpu/decision_ms": 2.5}
    rows = {r.name: r for r in bench.summarize(final, curves, extra, ["lift"], list(bench.ARMS), 20_000)}
    assert rows["lift/dsrl_na/success"].value == 0.8
    assert rows["lift/dsrl_na/success"].baseline == "lift/base/success"
    assert rows["lift/dsrl_na/success"].ratio == 0.8 / 0.5
    assert rows["lift/bc/success"].baseline is None
    assert rows["lift/dsrl_na/success@10k"].value == 0.7
    assert rows["lift/dsrl_na/success@20k"].value == 0.8
    assert "lift/dsrl_sac/success" not in rows and "lift/sac+demos/success" not in rows
    assert rows["dsrl/cpu/decision_ms"].unit == "ms" and rows["lift/base/pretrain_s"].value == 12.0


def test_dsrl_evaluations_are_placed_at_the_env_steps_counted_when_reported(tmp_path: Path) -> None:
    rows = [
        {"env_steps": 900, "updates": 100},
        {"env_steps": 7_750, "eval/success_rate": 0.1, "eval/updates": 500},
        {"env_steps": 25_000, "eval/success_rate": 0.4, "eval/updates": 4_000},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    final = [(1_000, 0.1), (20_000, 0.5)]  # train_curve's placement, then the final evaluation
    assert bench.env_step_curve(tmp_path, final, 20_000) == [(7_750, 0.1), (19_999, 0.4), (20_000, 0.5)]
