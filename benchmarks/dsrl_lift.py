"""DSRL on robosuite Lift (and PickPlaceCan), sparse reward: steering a weak diffusion policy.

    .venv/bin/python benchmarks/dsrl_lift.py [--quick] [--json PATH] [--task lift|can|both]
                                             [--arms base,dsrl_na,dsrl_sac,bc,sac+demos]
                                             [--steps N] [--seeds 0,1] [--demo-episodes N]

Per task, one invocation, the same demos, env-step budget and seeds for every arm:
  * demos: `--demo-episodes` successful scripted episodes (few on purpose, ending at success);
  * `base`: a diffusion policy (residual MLP, chunk 4, 8 DDIM steps) pretrained on them for
    `--pretrain-steps` steps, evaluated as is (w ~ N(0, I)) on the config's env: weak on purpose;
  * `dsrl_na`, `dsrl_sac`: configs/dsrl_<task>.yaml steering that base (`algo.variant=na|sac`),
    CPU-sized as the config says (3 x 256 networks, UTD 4, 2 distillation steps, one update per
    decision; the reference's 3 x 2048, UTD 20 and 10 steps belong on a GPU);
  * `bc`: BC alone (the SAC actor cloned on the demos, as in lift_with_demos.py);
  * `sac+demos`: lift_with_demos.py's `--light` SAC + demos arm (RLPD settings, half-demo batches).

Reported: `<task>/<arm>/success` (final, mean over seeds; the DSRL arms against `<task>/base`),
`<task>/<arm>/success@Nk` from each curve (the last evaluation at or before N thousand env steps;
a DSRL arm's evaluations are placed at the env steps counted when each was reported),
`<task>/base/pretrain_s`, and `dsrl/cpu/decision_ms` (one DSRL decision for one env on the CPU:
the latent actor plus `inference_steps` denoiser calls) beside `dsrl/cpu/denoiser_ms`. `--quick`:
1 seed, 1,500 env steps, 3-episode evaluations: a smoke test, not a measurement.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, parser, print_table, write_json
from lift_with_demos import TASKS, arm_run, bc_alone, distrl, format_curve, train_curve

from distrl.actors.evaluator import evaluate
from distrl.algos.diffusion import DiffusionPolicy, load_model
from distrl.config import load_config
from distrl.experiment import env_space
from distrl.learners.diffusion_pretrain import pretrain_diffusion

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("base", "dsrl_na", "dsrl_sac", "bc", "sac+demos")
DSRL_ARMS = ("dsrl_na", "dsrl_sac")
MARKS = (5_000, 10_000, 20_000)


def dsrl_config(task: str) -> Path:
    return ROOT / "configs" / f"dsrl_{task}.yaml"


def dsrl_decision_ms(base_dir: Path, task: str, repeats: int = 200) -> float:
    """One DSRL decision (latent actor + denoising) for one observation, on the CPU."""
    from distrl.algos import make_algorithm

    cfg = load_config(dsrl_config(task), [f"algo.base_policy={base_dir}"])
    algo = make_algorithm("dsrl", env_space(cfg.env), cfg.algo.params(), "cpu")
    policy = algo.make_policy()
    obs = np.zeros((1, algo.spec.obs_dim), dtype=np.float32)
    for _ in range(5):
        policy.act(obs)
    start = time.perf_counter()
    for _ in range(repeats):
        policy.act(obs)
    return (time.perf_counter() - start) / repeats * 1e3


def env_step_curve(run_dir: Path, curve: list[tuple[int, float]], steps: int) -> list[tuple[int, float]]:
    """A DSRL run's evaluations placed at the env steps the coordinator had counted when each was
    reported (a decision is `chunk` env steps, so `train_curve`'s one-update-per-env-step placement
    does not hold), plus the final checkpoint's evaluation at the budget."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    periodic = [(min(int(r["env_steps"]), steps - 1), float(r["eval/success_rate"])) for r in rows
                if "eval/success_rate" in r]  # fmt: skip
    final = [(s, v) for s, v in curve if s == steps]
    return sorted(periodic) + final


def at(curve: list[tuple[int, float]], step: int) -> float | None:
    earlier = [v for s, v in curve if s <= step]
    return earlier[-1] if earlier else None


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--task", choices=("lift", "can", "both"), default="lift")
    p.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {','.join(ARMS)}")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--seeds", default="0")
    p.add_argument("--demo-episodes", type=int, default=4)
    p.add_argument("--pretrain-steps", type=int, default=1_000)
    p.add_argument("--bc-steps", type=int, default=5_000)
    p.add_argument("--eval-every", type=int, default=500, help="learner updates between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    args = p.parse_args(argv)
    arms = [a for a in ARMS if a in {x.strip() for x in args.arms.split(",")}]
    tasks = ["lift", "can"] if args.task == "both" else [args.task]
    seeds = [int(s) for s in args.seeds.split(",")]
    steps, episodes, eval_every = args.steps, args.eval_episodes, args.eval_every
    pretrain_steps, bc_steps = args.pretrain_steps, args.bc_steps
    if args.quick:
        seeds, steps, episodes, eval_every, pretrain_steps, bc_steps = seeds[:1], 1_500, 3, 100, 200, 200
    torch.set_num_threads(1)
    config = {
        "tasks": tasks, "arms": arms, "steps": steps, "seeds": seeds, "demo_episodes": args.demo_episodes,
        "pretrain_steps": pretrain_steps, "bc_steps": bc_steps, "eval_every_updates": eval_every,
        "eval_episodes": episodes,
        "dsrl": "configs/dsrl_<task>.yaml: hidden 3x256, utd_ratio 4, noise_critic_steps 2, chunk 4, "
        "one update per decision (reference: 3x2048, UTD 20, 10 distillation steps)",
    }  # fmt: skip
    curves: dict[str, list] = {}
    walls: dict[str, float] = {}
    final: dict[str, list[float]] = {}
    extra: dict[str, float] = {}

    def save() -> list[Result]:
        results = summarize(final, curves, extra, tasks, arms, steps)
        write_json(args.json, "dsrl_lift", {**config, "curves": curves, "wall_s": walls}, results)
        return results

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            demos, base_dir = Path(tmp) / f"{task}.zarr", Path(tmp) / f"{task}-base"
            distrl("demos", "collect", TASKS[task], "--policy", "scripted",
                   "--episodes", str(args.demo_episodes), "--out", str(demos), "--terminate-on-success",
                   "-q")  # fmt: skip
            env = load_config(dsrl_config(task)).env
            for seed in seeds:
                start = time.perf_counter()
                pretrained = pretrain_diffusion(
                    demos, base_dir, {"chunk": 4}, {"steps": pretrain_steps, "seed": seed},
                    eval_episodes=0, progress=False, seed=seed,
                )  # fmt: skip
                extra.setdefault(f"{task}/base/pretrain_s", pretrained.seconds)
                extra.setdefault("dsrl/cpu/denoiser_ms", pretrained.denoiser_ms)
                extra.setdefault("dsrl/cpu/base_decision_ms", pretrained.decision_ms)
                extra.setdefault("dsrl/cpu/decision_ms", dsrl_decision_ms(base_dir, task))
                if "base" in arms:
                    base = DiffusionPolicy(load_model(base_dir), seed=seed)
                    success = float(evaluate(base, env, episodes, seed=10_000 + seed).success_rate or 0.0)
                    final.setdefault(f"{task}/base", []).append(success)
                    walls[f"{task}/base/seed={seed}"] = time.perf_counter() - start
                    print(f"{task}, seed {seed}: base diffusion policy success {success:.2f}", flush=True)
                    results = save()
                for arm in arms:
                    if arm == "base":
                        continue
                    key, start = f"{task}/{arm}/seed={seed}", time.perf_counter()
                    if arm == "bc":
                        success = bc_alone(task, demos, bc_steps, episodes, seed)
                        final.setdefault(f"{task}/bc", []).append(success)
                        print(f"{task}, seed {seed}: BC alone success {success:.2f}", flush=True)
                    else:
                        print(f"{task}, seed {seed}: {arm}, {steps:,} env steps ...", flush=True)
                        common = [f"eval.every_updates={eval_every}", f"eval.episodes={episodes}"]
                        if arm in DSRL_ARMS:
                            cfg = dsrl_config(task)
                            overrides = [f"algo.base_policy={base_dir}", f"algo.variant={arm.split('_')[1]}"]
                        else:
                            cfg, overrides, _ = arm_run(arm, task, demos, bc_steps, True, args.quick)
                        if args.quick:
                            overrides += ["replay.table.min_size_to_sample=100", "actors.warmup_steps=400"]
                        run_dir = Path(tmp) / f"{task}-{arm}-{seed}"
                        curve, updates = train_curve(cfg, run_dir, steps, seed, common + overrides, episodes)
                        if arm in DSRL_ARMS:
                            curve = env_step_curve(run_dir, curve, steps)
                        curves[key] = curve
                        final.setdefault(f"{task}/{arm}", []).append(curve[-1][1] if curve else 0.0)
                        print(
                            f"  success by env step: {format_curve(curve)} ({updates:,} updates)", flush=True
                        )
                    walls[key] = time.perf_counter() - start
                    results = save()
    print_table(results, title=f"DSRL: {' + '.join(tasks)}, {len(seeds)} seed(s) x {steps:,} env steps")
    return 0


def summarize(
    final: dict[str, list[float]],
    curves: dict[str, list],
    extra: dict[str, float],
    tasks: list[str],
    arms: list[str],
    steps: int,
) -> list[Result]:
    mean = {k: float(np.mean(v)) for k, v in final.items() if v}
    results = []
    for task in tasks:
        base = mean.get(f"{task}/base")
        for arm in arms:
            if f"{task}/{arm}" not in mean:
                continue
            against = arm in DSRL_ARMS and base is not None
            results.append(
                Result(f"{task}/{arm}/success", mean[f"{task}/{arm}"], "rate",
                       f"{task}/base/success" if against else None, base if against else None)
            )  # fmt: skip
            for mark in MARKS:
                if mark > steps:
                    continue
                values = [at(c, mark) for k, c in curves.items() if k.startswith(f"{task}/{arm}/")]
                values = [v for v in values if v is not None]
                if values:
                    results.append(
                        Result(f"{task}/{arm}/success@{mark // 1000}k", float(np.mean(values)), "rate")
                    )
        if f"{task}/base/pretrain_s" in extra:
            results.append(Result(f"{task}/base/pretrain_s", extra[f"{task}/base/pretrain_s"], "s"))
    for name in ("dsrl/cpu/decision_ms", "dsrl/cpu/base_decision_ms", "dsrl/cpu/denoiser_ms"):
        if name in extra:
            results.append(Result(name, extra[name], "ms"))
    return results


if __name__ == "__main__":
    sys.exit(main())
