"""Learning robosuite Lift (sparse reward) with and without demonstrations, side by side.

    .venv/bin/python benchmarks/lift_with_demos.py [--quick] [--json PATH] [--steps N] [--seeds 0,1]

Three learners, the same env-step budget and seeds:
  * SAC + demos: configs/rlpd_lift.yaml (RLPD settings, every batch half scripted demos);
  * SAC without demos: the same config with `demos.path=null`;
  * BC alone: the same policy network cloned on the same demos, no environment interaction.
The demos are collected first with the scripted Lift controller. Reported: the success rate of the
deterministic policy at each evaluation (for SAC: the evaluator's `eval/success_rate` against env
steps), the final success rates, and the ratio SAC+demos / SAC without demos. A CPU-only machine
runs the RLPD settings (a 10-critic ensemble, UTD 4) at a few updates per second, so only
`--quick` budgets fit in minutes there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, parser, print_table, write_json

from distrl.actors.evaluator import evaluate
from distrl.algos import SpaceSpec, make_algorithm
from distrl.config import load_config
from distrl.envs import env_spec, make_env
from distrl.learners.demos import DemoTable

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "rlpd_lift.yaml"
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "disable")}


def distrl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "distrl.cli", *args], cwd=ROOT, env=ENV, check=True)


def sac_curve(run_dir: Path, steps: int, seed: int, overrides: list[str]) -> list[tuple[int, float]]:
    distrl(
        "train", str(CONFIG), "--run-dir", str(run_dir), "--no-console",
        f"seed={seed}", f"train.total_env_steps={steps}", *overrides,
    )  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [(r["env_steps"], r["eval/success_rate"]) for r in rows if "eval/success_rate" in r]


def bc_alone(demos: Path, bc_steps: int, episodes: int, seed: int) -> float:
    cfg = load_config(CONFIG, [f"demos.path={demos}"])
    probe = make_env(cfg.env)
    spec = env_spec(probe)
    probe.close()
    space = SpaceSpec(spec.obs_dim, spec.action_dim)
    torch.manual_seed(seed)
    algo = make_algorithm(cfg.algo.name, space, cfg.algo.params(), "cpu")
    table = DemoTable(demos, space, algo.device, seed=seed)
    for _ in range(bc_steps):
        algo.pretrain_bc(table.sample(256))
    result = evaluate(algo.make_policy(), cfg.env, episodes, seed=10_000 + seed)
    return float(result.success_rate or 0.0)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--demo-episodes", type=int, default=50)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    steps, demo_episodes, bc_steps, eval_every, episodes = args.steps, args.demo_episodes, 20_000, 2_000, 10
    if args.quick:
        seeds, steps, demo_episodes, bc_steps, eval_every, episodes = seeds[:1], 1_500, 5, 300, 200, 3
    results: list[Result] = []
    curves: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        demos = Path(tmp) / "lift.zarr"
        distrl("demos", "collect", "robosuite:Lift", "--policy", "scripted", "--episodes", str(demo_episodes),
               "--out", str(demos))  # fmt: skip
        common = [f"eval.every_updates={eval_every}", f"eval.episodes={episodes}"]
        if args.quick:  # a budget of minutes on a CPU: fewer critics, one update per env step
            common += ["algo.num_critics=2", "algo.utd_ratio=1", "replay.table.samples_per_insert=128",
                       "replay.table.error_buffer=12800", "actors.warmup_steps=500",
                       "replay.table.min_size_to_sample=500"]  # fmt: skip
        final = {"demos": [], "no_demos": [], "bc": []}
        for seed in seeds:
            for name, extra in (("demos", [f"demos.path={demos}"]), ("no_demos", ["demos.path=null"])):
                curve = sac_curve(Path(tmp) / f"{name}-{seed}", steps, seed, common + extra)
                curves[f"{name}/seed={seed}"] = curve
                final[name].append(curve[-1][1] if curve else 0.0)
            final["bc"].append(bc_alone(demos, bc_steps, episodes, seed))
    with_demos, without = float(np.mean(final["demos"])), float(np.mean(final["no_demos"]))
    bc = float(np.mean(final["bc"]))
    results.append(Result("lift/sac+demos/success", with_demos, "rate", "lift/sac/success", without))
    results.append(Result("lift/sac+demos/success_vs_bc", with_demos, "rate", "lift/bc/success", bc))
    for key, curve in curves.items():
        print(key, " ".join(f"{s}:{v:.2f}" for s, v in curve))
    print_table(results, title=f"Lift with demos: {len(seeds)} seed(s) x {steps} env steps")
    config = {"steps": steps, "seeds": seeds, "demo_episodes": demo_episodes, "bc_steps": bc_steps}
    write_json(args.json, "lift_with_demos", {**config, "curves": curves}, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
