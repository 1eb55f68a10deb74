"""Learning robosuite Lift (and PickPlaceCan), sparse reward, with and without demonstrations, side by side.

    .venv/bin/python benchmarks/lift_with_demos.py [--quick] [--light] [--json PATH] [--task lift|can|both]
                                                   [--arms xqcfd,sac+demos,bc,xqc] [--steps N] [--seeds 0,1]
                                                   [--bc-steps N] [--demo-episodes N]

The arms, run one after the other in the same invocation with the same env-step budget and seeds
(`--arms` picks a subset; the default is the first four):
  * `xqcfd`: configs/xqcfd_<task>.yaml (XQC with a stationary prior policy behaviour-cloned on the
    demos for `--bc-steps` steps, then every learner batch half demos);
  * `sac+demos`: configs/rlpd_lift.yaml (RLPD settings, every batch half demos, plus behaviour
    cloning before RL and a Q-filtered behaviour-cloning term in the actor's loss), its `env`
    section replaced by the xqcfd config's (for Can: robosuite:PickPlaceCan, horizon 400);
  * `bc`: BC alone, the sac+demos actor network cloned on the same demos for `--bc-steps` steps, no
    environment interaction;
  * `xqc`: the xqcfd config with `algo.name=xqc demos.path=null pretrain.bc_steps=0`;
  * `sac` (only when named in `--arms`): the sac+demos config with `demos.path=null
    pretrain.bc_steps=0`.
Every RL arm makes one learner update per env step once replay holds `min_size_to_sample`
transitions (each update is `algo.utd_ratio` critic steps): an arm with demos takes half of each
batch from replay and one without takes all of it from replay, so the rate limiter's
`samples_per_insert` is set per arm to utd_ratio x (online items per critic batch). The demos
(`--demo-episodes` successful episodes, ending at success) are collected first with the scripted
controller (`distrl demos collect robosuite:Lift|PickPlaceCan --policy scripted
--terminate-on-success`).

Reported, per task (`lift`, `can`): `<task>/<arm>/success` for every arm run, its final success
rate, mean over seeds: for an RL arm `distrl eval` of the final checkpoint (the deterministic
policy, `--eval-episodes` episodes), for `bc` the cloned policy's; `xqcfd` and `sac+demos` have
`<task>/bc/success` as the baseline (ratio arm / BC, higher is better). The JSON's config also holds
each arm's curve per seed (`curves["<task>/<arm>/seed=S"]`: [env steps, success rate] of every
evaluation; the periodic ones are placed by the update that triggered them, update u at env step
`min_size_to_sample + u`, an arm with demos also evaluated right after cloning at env step 0, and
the final checkpoint's at the budget), its learner updates (`updates`) and critic steps
(`critic_steps`, updates x utd_ratio), and wall times. The JSON is rewritten after every arm, so a
stopped run keeps what it measured.

Costs on a CPU: the full settings are GPU-sized (the learner picks CUDA when there is one). XQC at
its full size (4x512 critics, 4x256 actor, UTD 2) runs at about 9 critic steps/s on one core of a
2-core machine, so 200k env steps are about 12 hours per seed for each XQC arm; RLPD's 10-critic
ensemble at UTD 4 is slower still. `--light` makes every RL arm CPU-sized: SAC keeps RLPD's
LayerNorm critics and 50/50 batches but uses two critics and UTD 1 (warm-up 1000 env steps), and
XQC/XQCfD keep UTD 2 and everything else but use 2x256 critics and a 2x256 actor
(`algo.critic_hidden=[256,256] algo.actor_hidden=[256,256]`); on 2 cores both then run at about
20 learner updates (one per env step) per second, so 200k env steps take about 3 hours per arm and
seed. `--quick` is `--light` with one seed, 1,500 env steps (learning from 500), 5 demo episodes,
300 cloning steps, 3-episode evaluations every 200 updates, and actors that insert 16 transitions
at a time, one batch in flight, so the learner paces the run: a smoke test of every chosen arm, not
a measurement (`--task lift`: about 3.5 minutes on 2 cores, demo collection included).
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
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, parser, print_table, write_json

from distrl.actors.evaluator import evaluate
from distrl.algos import algorithm_config, make_algorithm
from distrl.config import load_config
from distrl.experiment import env_space, experiment_fields
from distrl.learners.demos import DemoTable, split_batch

ROOT = Path(__file__).resolve().parent.parent
SAC_CONFIG = ROOT / "configs" / "rlpd_lift.yaml"
TASKS = {"lift": "robosuite:Lift", "can": "robosuite:PickPlaceCan"}
ARMS = ("xqcfd", "sac+demos", "bc", "xqc", "sac")
DEFAULT_ARMS = ("xqcfd", "sac+demos", "bc", "xqc")
WITH_DEMOS = ("xqcfd", "sac+demos")  # reported against BC alone
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "disable")}


def distrl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "distrl.cli", *args], cwd=ROOT, env=ENV, check=True)


def xqc_config(task: str) -> Path:
    return ROOT / "configs" / f"xqcfd_{task}.yaml"


def env_override(task: str) -> str:
    """`env=...`: the xqcfd config's env section, so that the SAC arms run the very same env."""
    env = yaml.safe_load(xqc_config(task).read_text())["env"]
    return f"env={json.dumps(env)}"


def train_curve(
    config: Path, run_dir: Path, steps: int, seed: int, overrides: list[str], episodes: int
) -> tuple[list[tuple[int, float]], int]:
    """The run's (env steps, success rate) at each evaluation and its learner updates at the end.

    The periodic evaluations are placed by the update that triggered them (`eval/updates`): update 0
    (the cloned policy, before RL) at env step 0, update u at `learning_starts + u`, since the rate
    limiter holds every arm at one update per env step. Then `distrl eval` scores the final
    checkpoint, and that evaluation is placed at the budget itself."""
    distrl(
        "train", str(config), "--run-dir", str(run_dir), "--no-console",
        f"seed={seed}", f"train.total_env_steps={steps}", *overrides,
    )  # fmt: skip
    cfg = load_config(config, overrides)
    learning_starts = cfg.replay.num_shards * cfg.replay.table.min_size_to_sample
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    curve = []
    for r in rows:
        if "eval/success_rate" in r:
            u = int(r.get("eval/updates", -1))
            step = int(r["env_steps"]) if u < 0 else 0 if u == 0 else learning_starts + u
            curve.append((min(step, steps - 1), float(r["eval/success_rate"])))
    updates = max((int(r.get("updates", 0)) for r in rows), default=0)
    argv = [sys.executable, "-m", "distrl.cli", "eval", str(run_dir), "--episodes", str(episodes)]
    out = subprocess.run(
        [*argv, "--seed", str(10_000 + seed), "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines:
        final = json.loads(lines[-1])
        curve.append((steps, float(final.get("success_rate") or 0.0)))
        updates = max(updates, int(final["updates"]))
    else:
        print(f"  warning: final evaluation of {run_dir} failed: {out.stderr.strip()[-500:]}", flush=True)
    return sorted(curve), updates


def one_update_per_env_step(utd: int, online_items: int) -> list[str]:
    """Rate limiter settings for one learner update (utd critic steps) per env step when each
    critic step takes online_items from replay: an arm with demos takes half its batch from
    replay, an arm without all of it."""
    per_step = utd * online_items
    return [f"replay.table.samples_per_insert={per_step}", f"replay.table.error_buffer={100 * per_step}"]


def arm_run(
    arm: str, task: str, demos: Path, bc_steps: int, light: bool, quick: bool
) -> tuple[Path, list[str], int]:
    """(config, overrides, critic steps per update) of an RL arm."""
    xqc = arm in ("xqcfd", "xqc")
    config = xqc_config(task) if xqc else SAC_CONFIG
    overrides = [] if xqc else [env_override(task)]
    if light and xqc:  # smaller networks, UTD 2 as in the config
        overrides += ["algo.critic_hidden=[256,256]", "algo.actor_hidden=[256,256]"]
    elif light:  # two critics, one critic step per env step
        overrides += ["algo.num_critics=2", "algo.utd_ratio=1", "actors.warmup_steps=1000",
                      "replay.table.min_size_to_sample=1000"]  # fmt: skip
    if quick:  # small insert batches, one in flight: the learner, not the actors, paces the run
        overrides += [
            "replay.table.min_size_to_sample=500",
            "actors.insert_batch_size=16",
            "actors.max_in_flight=1",
        ]
        overrides += [] if xqc else ["actors.warmup_steps=500"]
    if arm in WITH_DEMOS:
        overrides += [f"demos.path={demos}", f"pretrain.bc_steps={bc_steps}"]
    else:
        overrides += (["algo.name=xqc"] if xqc else []) + ["demos.path=null", "pretrain.bc_steps=0"]
    cfg = load_config(config, overrides)
    online, _ = split_batch(cfg.learner.batch_size, cfg.demos.ratio if arm in WITH_DEMOS else 0.0)
    utd = int(algorithm_config(cfg.algo.name, cfg.algo.params()).utd_ratio)
    return config, overrides + one_update_per_env_step(utd, online), utd


def bc_alone(task: str, demos: Path, bc_steps: int, episodes: int, seed: int) -> float:
    torch.set_num_threads(1)  # a small MLP: more threads only contend with the other processes
    cfg = load_config(SAC_CONFIG, [env_override(task), f"demos.path={demos}"])
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
    p.add_argument("--task", choices=("lift", "can", "both"), default="lift")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"a subset of {','.join(ARMS)}")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--demo-episodes", type=int, default=50)
    p.add_argument("--bc-steps", type=int, default=20_000)
    p.add_argument("--eval-every", type=int, default=2_000, help="learner updates between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--light", action="store_true", help="CPU-sized networks: see the module docstring")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        p.error(f"--arms: unknown {unknown}; choose from {','.join(ARMS)}")
    arms = [a for a in ARMS if a in arms]
    tasks = ["lift", "can"] if args.task == "both" else [args.task]
    seeds = [int(s) for s in args.seeds.split(",")]
    steps, demo_episodes, bc_steps = args.steps, args.demo_episodes, args.bc_steps
    eval_every, episodes, light = args.eval_every, args.eval_episodes, args.light
    if args.quick:
        seeds, steps, demo_episodes, bc_steps, eval_every, episodes, light = (
            seeds[:1], 1_500, 5, 300, 200, 3, True
        )  # fmt: skip
    config = {
        "tasks": tasks, "arms": arms, "steps": steps, "seeds": seeds, "demo_episodes": demo_episodes,
        "bc_steps": bc_steps, "eval_every_updates": eval_every, "eval_episodes": episodes, "light": light,
    }  # fmt: skip
    curves: dict[str, list] = {}
    walls: dict[str, float] = {}
    updates: dict[str, int] = {}
    critic_steps: dict[str, int] = {}
    final: dict[str, list[float]] = {}

    def save() -> list[Result]:
        results = summarize(final, tasks, arms)
        measured = {"curves": curves, "updates": updates, "critic_steps": critic_steps, "wall_s": walls}
        write_json(args.json, "lift_with_demos", {**config, **measured}, results)
        return results

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            demos = Path(tmp) / f"{task}.zarr"
            start = time.perf_counter()
            distrl("demos", "collect", TASKS[task], "--policy", "scripted", "--episodes", str(demo_episodes),
                   "--out", str(demos), "--workers", "2", "--terminate-on-success")  # fmt: skip
            walls[f"{task}/collect_demos"] = time.perf_counter() - start
            common = [f"eval.every_updates={eval_every}", f"eval.episodes={episodes}"]
            for seed in seeds:
                for arm in arms:
                    key = f"{task}/{arm}/seed={seed}"
                    start = time.perf_counter()
                    if arm == "bc":
                        print(f"{task}, seed {seed}: BC alone, {bc_steps:,} steps ...", flush=True)
                        success = bc_alone(task, demos, bc_steps, episodes, seed)
                        final.setdefault(f"{task}/bc", []).append(success)
                        walls[key] = time.perf_counter() - start
                        print(f"  success {success:.2f} ({walls[key]:.0f} s)", flush=True)
                        results = save()
                        continue
                    print(f"{task}, seed {seed}: {arm}, {steps:,} env steps ...", flush=True)
                    cfg, overrides, utd = arm_run(arm, task, demos, bc_steps, light, args.quick)
                    run_dir = Path(tmp) / f"{task}-{arm}-{seed}"
                    curve, updates[key] = train_curve(cfg, run_dir, steps, seed, common + overrides, episodes)
                    walls[key] = time.perf_counter() - start
                    critic_steps[key] = updates[key] * utd
                    curves[key] = curve
                    final.setdefault(f"{task}/{arm}", []).append(curve[-1][1] if curve else 0.0)
                    print(f"  success by env step: {format_curve(curve)} "
                          f"({updates[key]:,} updates, {critic_steps[key]:,} critic steps, "
                          f"{walls[key]:.0f} s)", flush=True)  # fmt: skip
                    results = save()
    for key, curve in curves.items():
        print(f"{key:24s} {format_curve(curve)}  ({updates[key]:,} updates)")
    print_table(results, title=f"{' + '.join(tasks)} with demos: {len(seeds)} seed(s) x {steps:,} env steps")
    return 0


def format_curve(curve: list[tuple[int, float]]) -> str:
    return " ".join(f"{s:,}:{v:.2f}" for s, v in curve) or "(no evaluation)"


def summarize(final: dict[str, list[float]], tasks: list[str], arms: list[str]) -> list[Result]:
    """`<task>/<arm>/success` (mean over seeds) of every arm measured so far; the arms with demos
    against BC alone."""
    mean = {k: float(np.mean(v)) for k, v in final.items() if v}
    results = []
    for task in tasks:
        bc = mean.get(f"{task}/bc")
        for arm in arms:
            if f"{task}/{arm}" not in mean:
                continue
            baseline = f"{task}/bc/success" if arm in WITH_DEMOS and "bc" in arms else None
            value = mean[f"{task}/{arm}"]
            results.append(Result(f"{task}/{arm}/success", value, "rate", baseline, bc if baseline else None))
    return results


if __name__ == "__main__":
    sys.exit(main())
