"""Learning robosuite Lift (sparse reward) with and without demonstrations, side by side.

    .venv/bin/python benchmarks/lift_with_demos.py [--quick] [--light] [--json PATH] [--steps N]
                                                   [--seeds 0,1] [--bc-steps N] [--demo-episodes N]

Three learners, the same env-step budget and seeds:
  * SAC + demos: configs/rlpd_lift.yaml (RLPD settings, every batch half scripted demos, plus
    behaviour cloning before RL and a Q-filtered behaviour-cloning term in the actor's loss);
  * SAC without demos: the same config with `demos.path=null` (and so no cloning);
  * BC alone: the same policy network cloned on the same demos, no environment interaction.
The demos are collected first with the scripted Lift controller. Reported: the success rate of the
deterministic policy at each evaluation (for SAC: the evaluator's `eval/success_rate` against env
steps), the final success rates, and the ratio SAC+demos / SAC without demos.

A CPU-only machine runs the full RLPD settings (a 10-critic ensemble, UTD 4) at a few updates per
second. `--light` keeps RLPD's LayerNorm critics and 50/50 batches but uses two critics and one
update per env step, which a 2-core CPU runs at tens of updates per second; `--quick` is `--light`
with a budget of minutes. The JSON is rewritten after every arm, so a stopped run keeps what it
measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, parser, print_table, write_json

from distrl.actors.evaluator import evaluate
from distrl.algos import make_algorithm
from distrl.config import load_config
from distrl.experiment import env_space, experiment_fields
from distrl.learners.demos import DemoTable, split_batch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "rlpd_lift.yaml"
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "disable")}


def distrl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "distrl.cli", *args], cwd=ROOT, env=ENV, check=True)


def sac_curve(
    run_dir: Path, steps: int, seed: int, overrides: list[str]
) -> tuple[list[tuple[int, float]], int]:
    """The run's (env steps, success rate) at each evaluation, and its learner updates at the end."""
    distrl(
        "train", str(CONFIG), "--run-dir", str(run_dir), "--no-console",
        f"seed={seed}", f"train.total_env_steps={steps}", *overrides,
    )  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    curve = [(r["env_steps"], r["eval/success_rate"]) for r in rows if "eval/success_rate" in r]
    return curve, max((int(r.get("updates", 0)) for r in rows), default=0)


def one_update_per_env_step(utd: int, online_items: int) -> list[str]:
    """Rate limiter settings for utd critic steps per env step when each takes online_items from
    replay: the arm with demos takes half its batch from replay, the arm without all of it."""
    per_step = utd * online_items
    return [f"replay.table.samples_per_insert={per_step}", f"replay.table.error_buffer={100 * per_step}"]


def bc_alone(demos: Path, bc_steps: int, episodes: int, seed: int) -> float:
    cfg = load_config(CONFIG, [f"demos.path={demos}"])
    space = env_space(cfg.env)
    torch.manual_seed(seed)
    algo = make_algorithm(cfg.algo.name, space, cfg.algo.params(), "cpu")
    table = DemoTable(demos, experiment_fields(cfg, space), algo.device, seed=seed)
    for _ in range(bc_steps):
        algo.pretrain_step(table.sample(256))
    result = evaluate(algo.make_policy(), cfg.env, episodes, seed=10_000 + seed)
    return float(result.success_rate or 0.0)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--demo-episodes", type=int, default=50)
    p.add_argument("--bc-steps", type=int, default=20_000)
    p.add_argument("--eval-every", type=int, default=2_000, help="learner updates between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--light", action="store_true", help="two critics and UTD 1 (for a CPU)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    steps, demo_episodes, bc_steps = args.steps, args.demo_episodes, args.bc_steps
    eval_every, episodes, light = args.eval_every, args.eval_episodes, args.light
    if args.quick:
        seeds, steps, demo_episodes, bc_steps, eval_every, episodes, light = (
            seeds[:1],
            1_500,
            5,
            300,
            200,
            3,
            True,
        )
    config = {
        "steps": steps, "seeds": seeds, "demo_episodes": demo_episodes, "bc_steps": bc_steps,
        "eval_every_updates": eval_every, "eval_episodes": episodes, "light": light,
    }  # fmt: skip
    curves: dict[str, list] = {}
    walls: dict[str, float] = {}
    updates: dict[str, int] = {}
    final: dict[str, list[float]] = {"demos": [], "no_demos": [], "bc": []}

    def save() -> list[Result]:
        results = summarize(final)
        measured = {"curves": curves, "updates": updates, "wall_s": walls}
        write_json(args.json, "lift_with_demos", {**config, **measured}, results)
        return results

    with tempfile.TemporaryDirectory() as tmp:
        demos = Path(tmp) / "lift.zarr"
        start = time.perf_counter()
        distrl("demos", "collect", "robosuite:Lift", "--policy", "scripted", "--episodes", str(demo_episodes),
               "--out", str(demos), "--workers", "2", "--terminate-on-success")  # fmt: skip
        walls["collect_demos"] = time.perf_counter() - start
        common = [f"eval.every_updates={eval_every}", f"eval.episodes={episodes}"]
        if light:  # fewer critics, one update per env step: a budget a CPU runs in minutes
            common += ["algo.num_critics=2", "algo.utd_ratio=1", "actors.warmup_steps=1000",
                       "replay.table.min_size_to_sample=1000"]  # fmt: skip
        cfg = load_config(CONFIG)
        utd = 1 if light else int(cfg.algo.params()["utd_ratio"])
        with_demos, _ = split_batch(cfg.learner.batch_size, cfg.demos.ratio)
        if args.quick:
            common += ["actors.warmup_steps=500", "replay.table.min_size_to_sample=500"]
        for seed in seeds:
            # Both arms make the same number of updates per env step.
            arms = (("demos", [f"demos.path={demos}", f"pretrain.bc_steps={bc_steps}",
                               *one_update_per_env_step(utd, with_demos)]),
                    ("no_demos", ["demos.path=null", "pretrain.bc_steps=0",
                                  *one_update_per_env_step(utd, cfg.learner.batch_size)]))  # fmt: skip
            for name, extra in arms:
                print(f"seed {seed}: SAC {'+ demos' if name == 'demos' else 'without demos'}, "
                      f"{steps:,} env steps ...", flush=True)  # fmt: skip
                start = time.perf_counter()
                curve, updates[f"{name}/seed={seed}"] = sac_curve(
                    Path(tmp) / f"{name}-{seed}", steps, seed, common + extra
                )
                walls[f"{name}/seed={seed}"] = time.perf_counter() - start
                curves[f"{name}/seed={seed}"] = curve
                final[name].append(curve[-1][1] if curve else 0.0)
                print(f"  success by env step: {format_curve(curve)} "
                      f"({updates[f'{name}/seed={seed}']:,} updates, {walls[f'{name}/seed={seed}']:.0f} s)",
                      flush=True)  # fmt: skip
                save()
            print(f"seed {seed}: BC alone, {bc_steps:,} steps ...", flush=True)
            start = time.perf_counter()
            final["bc"].append(bc_alone(demos, bc_steps, episodes, seed))
            walls[f"bc/seed={seed}"] = time.perf_counter() - start
            print(f"  success {final['bc'][-1]:.2f} ({walls[f'bc/seed={seed}']:.0f} s)", flush=True)
            results = save()
    for key, curve in curves.items():
        print(f"{key:18s} {format_curve(curve)}")
    print_table(results, title=f"Lift with demos: {len(seeds)} seed(s) x {steps} env steps")
    return 0


def format_curve(curve: list[tuple[int, float]]) -> str:
    return " ".join(f"{s:,}:{v:.2f}" for s, v in curve) or "(no evaluation)"


def summarize(final: dict[str, list[float]]) -> list[Result]:
    mean = {k: float(np.mean(v)) if v else float("nan") for k, v in final.items()}
    return [
        Result("lift/sac+demos/success", mean["demos"], "rate", "lift/sac/success", mean["no_demos"]),
        Result("lift/sac+demos/success_vs_bc", mean["demos"], "rate", "lift/bc/success", mean["bc"]),
    ]


if __name__ == "__main__":
    sys.exit(main())
