"""benchmarks/xqc_vs_sac.py: its evaluation schedule, which evaluation each mark reports, its result
rows, and (slow) a --quick run with SAC's config in both arms."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from distrl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import xqc_vs_sac as bench  # noqa: E402

SAC = ROOT / "configs" / "sac_halfcheetah.yaml"


def test_eval_every_updates_follows_each_algorithms_updates_per_env_step():
    sac = bench.schedule_for(load_config(SAC), eval_every=5_000)
    assert (sac.updates_per_env_step, sac.learning_starts, sac.every_updates) == (1.0, 5_000, 5_000)
    # Two critic minibatches per update call at the same samples_per_insert: half the calls.
    utd2 = bench.schedule_for(load_config(SAC, ["algo.utd_ratio=2"]), eval_every=5_000)
    assert (utd2.updates_per_env_step, utd2.every_updates) == (0.5, 2_500)
    # UTD 2 with the rate limiter letting twice the samples through: one call per env step again.
    utd2_spi = load_config(SAC, ["algo.utd_ratio=2", "replay.table.samples_per_insert=512"])
    assert bench.schedule_for(utd2_spi, eval_every=5_000).every_updates == 5_000
    shards = bench.schedule_for(load_config(SAC, ["replay.num_shards=2"]), eval_every=5_000)
    assert shards.learning_starts == 10_000
    # Both land their k-th evaluation on the same env step, however late the evaluator looked.
    for k in (1, 4, 19):
        assert sac.env_step(k * 5_000 + 37) == utd2.env_step(k * 2_500 + 11) == 5_000 + k * 5_000


def test_each_mark_reports_the_last_evaluation_at_or_before_it(tmp_path: Path):
    schedule = bench.Schedule(
        updates_per_env_step=0.5, learning_starts=5_000, eval_every=5_000, every_updates=2_500
    )
    rows = [{"env_steps": 4_000, "updates": 0, "wall_time": 10.0, "actor/episode_return": -3.0}]
    for k, ret in enumerate([10.0, 20.0, 30.0, 40.0, 50.0], start=1):
        # The row arrives after the evaluation: env steps and updates have moved on.
        rows.append({"env_steps": 5_000 + 5_000 * k + 180, "updates": 2_500 * k + 90, "wall_time": 20.0 * k})
        rows.append(
            {"env_steps": 5_000 + 5_000 * k + 300, "updates": 2_500 * k + 150, "eval/return_mean": ret,
             "eval/return_std": 1.0, "eval/updates": 2_500 * k + 20.0}
        )  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curve = bench.evaluations(bench.read_metrics(tmp_path), schedule)
    assert curve == {10_000: 10.0, 15_000: 20.0, 20_000: 30.0, 25_000: 40.0, 30_000: 50.0}
    assert bench.return_at(curve, 25_000) == 40.0
    assert bench.return_at(curve, 24_999) == 30.0
    assert bench.return_at(curve, 100_000) == 50.0
    assert math.isnan(bench.return_at(curve, 9_999))
    # Without eval/updates (an older row) the row's own env steps place it.
    assert bench.evaluations([{"env_steps": 7_123, "eval/return_mean": 1.5}], schedule) == {7_123: 1.5}


def test_result_rows_names_baselines_and_ratios():
    def run(returns: tuple[float, float, float], wall: float) -> tuple[dict[int, float], float]:
        return dict(zip((25_000, 50_000, 100_000), returns, strict=True)), wall

    per_env = {
        "HalfCheetah-v5": {
            "xqc": [run((1_000.0, 3_000.0, 6_000.0), 300.0), run((2_000.0, 5_000.0, 8_000.0), 500.0)],
            "sac": [run((500.0, 1_000.0, 3_000.0), 100.0), run((500.0, 2_000.0, 4_000.0), 100.0)],
        },
        "cheetah-run": {
            "xqc": [run((-50.0, 100.0, 600.0), 200.0)],
            "sac": [run((-100.0, 50.0, 300.0), 100.0)],
        },
    }
    results = {r.name: r for r in bench.summarize(per_env, steps=100_000)}
    assert list(results)[:9] == [
        "HalfCheetah-v5/xqc/return@25k", "HalfCheetah-v5/sac/return@25k",
        "HalfCheetah-v5/xqc/return@50k", "HalfCheetah-v5/sac/return@50k",
        "HalfCheetah-v5/xqc/return@100k", "HalfCheetah-v5/sac/return@100k",
        "HalfCheetah-v5/xqc_published/return@100k", "HalfCheetah-v5/xqc/wall_s", "HalfCheetah-v5/sac/wall_s",
    ]  # fmt: skip
    xqc = results["HalfCheetah-v5/xqc/return@100k"]
    assert (xqc.value, xqc.baseline, xqc.baseline_value) == (
        7_000.0,
        "HalfCheetah-v5/sac/return@100k",
        3_500.0,
    )
    assert xqc.ratio == pytest.approx(2.0)
    assert results["HalfCheetah-v5/sac/return@100k"].baseline is None
    assert results["HalfCheetah-v5/xqc_published/return@100k"].value == 8597.0
    assert results["cheetah-run/xqc_published/return@100k"].value == 722.0
    # Both negative: the less negative is better.
    assert results["cheetah-run/xqc/return@25k"].ratio == pytest.approx(2.0)
    wall = results["HalfCheetah-v5/xqc/wall_s"]
    assert (wall.value, wall.baseline, wall.baseline_value) == (400.0, "HalfCheetah-v5/sac/wall_s", 100.0)
    assert wall.ratio == pytest.approx(0.25)  # 4x slower
    assert results["cheetah-run/xqc/wall_s"].ratio == pytest.approx(0.5)


@pytest.mark.slow
def test_quick_run_evaluates_both_arms_at_the_same_env_steps(tmp_path: Path):
    """SAC's config in both arms, the 'xqc' one at UTD 2 (half the learner updates per env step)."""
    out = tmp_path / "xqc.json"
    argv = ["--quick", "--json", str(out), "--run-root", str(tmp_path / "runs"),
            "--xqc-config", "configs/sac_{slug}.yaml", "--override", "xqc:algo.utd_ratio=2"]  # fmt: skip
    assert bench.main(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "xqc_vs_sac"
    names = [r["name"] for r in doc["results"]]
    assert names == [
        "HalfCheetah-v5/xqc/return@0.16k", "HalfCheetah-v5/sac/return@0.16k",
        "HalfCheetah-v5/xqc/return@0.32k", "HalfCheetah-v5/sac/return@0.32k",
        "HalfCheetah-v5/xqc/return@0.64k", "HalfCheetah-v5/sac/return@0.64k",
        "HalfCheetah-v5/xqc_published/return@100k", "HalfCheetah-v5/xqc/wall_s", "HalfCheetah-v5/sac/wall_s",
    ]  # fmt: skip
    arms = doc["config"]["arms"]["HalfCheetah-v5"]
    assert (arms["xqc"]["eval_every_updates"], arms["sac"]["eval_every_updates"]) == (40, 80)
    for arm in ("xqc", "sac"):
        run_dir = tmp_path / "runs" / f"{arm}-halfcheetah-seed0"
        saved = load_config(run_dir / "config.yaml")
        assert (saved.seed, saved.train.total_env_steps) == (0, 640)
        assert saved.eval.every_updates == arms[arm]["eval_every_updates"]
        [curve] = doc["config"]["curves"]["HalfCheetah-v5"][arm]
        steps = [int(s) for s in curve]
        assert steps[-1] == 640, curve  # the final checkpoint's evaluation
        assert steps[:-1], f"no periodic evaluation: {curve}"
        assert all(s % 80 == 0 and 160 <= s < 640 for s in steps[:-1]), curve
        assert all(math.isfinite(v) for v in curve.values())
    assert all(math.isfinite(r["value"]) for r in doc["results"])
    assert all(w > 0 for walls in doc["config"]["wall_times"]["HalfCheetah-v5"].values() for w in walls)
