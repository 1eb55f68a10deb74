"""XQC vs SAC learning curves in distrl: evaluation return at 25%, 50% and 100% of an env-step budget.

    .venv/bin/python benchmarks/xqc_vs_sac.py [--quick] [--json PATH] [--envs HalfCheetah-v5,cheetah-run]
                                              [--seeds 0,1,2] [--steps 100000] [--eval-every 5000]
                                              [--sequential] [--run-root DIR] [--override ARM:KEY=VALUE ...]

For each env and seed, `distrl train` runs configs/xqc_{env}.yaml and configs/sac_{env}.yaml
(`halfcheetah` for HalfCheetah-v5, `cheetah_run` for cheetah-run) with the same seed and the same
`train.total_env_steps`; everything else is each config's own. Both are evaluated (the deterministic
policy, `eval.episodes` episodes) at the same env steps. The evaluator triggers on learner updates
(every `eval.every_updates`), and one learner update samples `learner.batch_size * algo.utd_ratio`
items, so the rate limiter holds a run at `samples_per_insert / (batch_size * utd_ratio)` updates per
env step once `learning_starts = num_shards * min_size_to_sample` transitions are in replay (XQC's
configs: UTD 2 at samples_per_insert 512, i.e. one update call of two critic steps per env step,
like SAC's one); `eval.every_updates` is `--eval-every` times that rate, per algorithm. The k-th
evaluation (the k-th multiple of `every_updates` crossed, read from the row's `eval/updates`) is
placed at env step `learning_starts + k * eval_every`: the transitions in replay when its policy was
published, within the rate limiter's `error_buffer / samples_per_insert`. (The run's own env-step
count runs ahead of replay by what the actors have in flight, up to num_actors x (max_in_flight + 1)
x insert_batch_size, ~1,000 steps with these configs.) After a run ends, `distrl eval` scores its
final checkpoint with the same number of episodes; that evaluation is placed at the budget itself
(the periodic evaluator is cut short there).

Reported, as the mean over seeds: `{env}/xqc/return@{k}k` (baseline: SAC's at the same mark, ratio
XQC / SAC, the less negative better when both are negative) and `{env}/sac/return@{k}k`, where the
return at a mark is that of the last evaluation placed at or before it (NaN if none is); XQC's
published return at 100k env steps as a reference line, `{env}/xqc_published/return@100k` (the
paper's results/xqc.csv, mean of 10 seeds, on HalfCheetah-v4 and DMC cheetah-run); and the wall time
of each run, `{env}/xqc/wall_s` (baseline SAC, ratio SAC / XQC so faster is higher). The curves
(every evaluation of every seed) and wall times are saved in the JSON's config, written after each
seed so a stopped run keeps what it measured.

By default each seed's two runs start together and run side by side (learner.threads=1 each);
`--sequential` runs XQC, then SAC. Cost: an XQC update call at its default size (two critic steps
of batch 256 through 4x512 critics, about 14 GFLOP) runs about 5/s on one core of the 2-core dev VM
when nothing else runs (learner_speed.py) and about 2.7/s beside SAC's run and the actors, so 100k
env steps (100k update calls) take 6-10 hours per seed on a CPU. Run the full version (2 envs x 3
seeds) on a GPU machine: the learner picks CUDA when it is there. `--quick` is a smoke test of
the whole path, not a measurement: the first env, one seed, 640 env steps, 80 warm-up steps,
one-episode evaluations every 80 env steps, and actors that keep little in flight (insert batches
of 16, one in flight) so the slow CPU learner gates the run; about 3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, TrainRun, parser, print_table, read_metrics, start_train, write_json
from learning_curve import marks_for

if TYPE_CHECKING:
    from distrl.config import ExperimentConfig

ROOT = Path(__file__).resolve().parent.parent
ARMS = ("xqc", "sac")
# env id as reported -> the slug in configs/{algo}_{slug}.yaml
ENVS = {"HalfCheetah-v5": "halfcheetah", "cheetah-run": "cheetah_run"}
# XQC paper, results/xqc.csv: mean return of 10 seeds at 100k env steps (HalfCheetah-v4 there).
PUBLISHED_XQC_100K = {"HalfCheetah-v5": 8597.0, "cheetah-run": 722.0}
# Per env, per arm, per seed: (env step -> eval return, wall time in s).
Runs = dict[str, dict[str, list[tuple[dict[int, float], float]]]]
QUICK = {"steps": 640, "warmup": 80, "eval_every": 80, "eval_episodes": 1}
QUICK_OVERRIDES = [
    f"actors.warmup_steps={QUICK['warmup']}", f"replay.table.min_size_to_sample={QUICK['warmup']}",
    f"eval.episodes={QUICK['eval_episodes']}", "actors.insert_batch_size=16", "actors.max_in_flight=1",
]  # fmt: skip


@dataclass(frozen=True)
class Schedule:
    """When one algorithm's run is evaluated, in learner updates and in env steps."""

    updates_per_env_step: float  # learner updates (algo.update calls) per env step
    learning_starts: int  # env steps in replay before the first update
    eval_every: int  # env steps between evaluations
    every_updates: int  # eval.every_updates

    def env_step(self, updates: float) -> int:
        """Where the evaluation triggered by crossing `updates // every_updates` multiples lies."""
        k = int(updates // self.every_updates)
        return self.learning_starts + round(k * self.every_updates / self.updates_per_env_step)


def schedule_for(config: ExperimentConfig, eval_every: int) -> Schedule:
    """The evaluation schedule of a loaded ExperimentConfig (distrl.config.load_config)."""
    from distrl.algos import algorithm_config

    utd = int(getattr(algorithm_config(config.algo.name, config.algo.params()), "utd_ratio", 1))
    table = config.replay.table
    if table.samples_per_insert is None:
        raise SystemExit(
            f"{config.name}: replay.table.samples_per_insert is unset: updates do not follow env steps"
        )
    rate = table.samples_per_insert / (config.learner.batch_size * utd)
    if eval_every * rate != round(eval_every * rate):
        print(f"warning: {config.name}: {eval_every} env steps are {eval_every * rate:g} updates; "
              f"evaluating every {max(1, round(eval_every * rate))} updates instead", flush=True)  # fmt: skip
    return Schedule(
        updates_per_env_step=rate,
        learning_starts=config.replay.num_shards * table.min_size_to_sample,
        eval_every=eval_every,
        every_updates=max(1, round(eval_every * rate)),
    )


def evaluations(rows: list[dict], schedule: Schedule) -> dict[int, float]:
    """env step -> eval return of every periodic evaluation in metrics.jsonl rows."""
    curve = {}
    for r in rows:
        if "eval/return_mean" in r:
            step = schedule.env_step(r["eval/updates"]) if "eval/updates" in r else int(r["env_steps"])
            curve[step] = float(r["eval/return_mean"])
    return curve


def return_at(curve: dict[int, float], mark: int) -> float:
    """The return of the last evaluation at or before `mark`; NaN if none is."""
    before = [step for step in curve if step <= mark]
    return curve[max(before)] if before else float("nan")


def final_eval(run_dir: Path, episodes: int, seed: int) -> float | None:
    """`distrl eval` on the run's final checkpoint: the mean return, or None if it failed."""
    argv = [sys.executable, "-m", "distrl.cli", "eval", str(run_dir), "--episodes", str(episodes)]
    out = subprocess.run(
        [*argv, "--seed", str(seed), "--json"],
        env={**os.environ, "MUJOCO_GL": "disable"},
        capture_output=True,
        text=True,
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        print(f"  warning: final evaluation of {run_dir} failed: {out.stderr.strip()[-500:]}", flush=True)
        return None
    return float(json.loads(lines[-1])["return_mean"])


@dataclass
class Arm:
    """One algorithm on one env: its config, the overrides it runs with and its evaluation schedule."""

    config: Path
    overrides: list[str]
    schedule: Schedule
    eval_episodes: int

    def start(self, seed: int, steps: int, run_dir: Path) -> TrainRun:
        overrides = [
            f"seed={seed}", f"train.total_env_steps={steps}", "eval.enabled=true",
            f"eval.every_updates={self.schedule.every_updates}", *self.overrides,
        ]  # fmt: skip
        return start_train(self.config, run_dir, overrides)

    def finish(self, run: TrainRun, seed: int, steps: int) -> tuple[dict[int, float], float]:
        """(env step -> eval return, wall time); the final checkpoint's evaluation sits at `steps`."""
        wall = run.wait()
        curve = evaluations(read_metrics(run.run_dir), self.schedule)
        final = final_eval(run.run_dir, self.eval_episodes, seed=10_000 + seed)
        if final is not None:
            curve = {s: r for s, r in curve.items() if s < steps} | {steps: final}
        return dict(sorted(curve.items())), wall

    def describe(self) -> dict:
        """What the JSON's config records of this arm."""
        return {
            "config": str(self.config.relative_to(ROOT) if self.config.is_relative_to(ROOT) else self.config),
            "overrides": self.overrides,
            "updates_per_env_step": self.schedule.updates_per_env_step,
            "learning_starts": self.schedule.learning_starts,
            "eval_every_updates": self.schedule.every_updates,
            "eval_episodes": self.eval_episodes,
        }

    def __str__(self) -> str:
        s = self.schedule
        return (
            f"{self.config.name}, {s.updates_per_env_step:g} learner updates per env step after "
            f"{s.learning_starts:,} env steps, {self.eval_episodes}-episode evaluations every "
            f"{s.every_updates:,} updates"
        )


def make_arm(template: str, slug: str, overrides: list[str], eval_every: int) -> Arm:
    from distrl.config import load_config

    path = Path(template.format(slug=slug))
    path = path if path.is_absolute() else ROOT / path
    if not path.is_file():
        raise SystemExit(f"{path}: no such config")
    cfg = load_config(path, overrides)
    return Arm(path, overrides, schedule_for(cfg, eval_every), cfg.eval.episodes)


def env_steps_so_far(run: TrainRun) -> int:
    try:
        return int(json.loads((run.run_dir / "progress.json").read_text())["env_steps"])
    except (OSError, ValueError, KeyError):
        return 0


def watch(label: str, runs: dict[str, TrainRun], steps: int, every_s: float) -> None:
    """Print each run's env steps every `every_s` seconds until all have exited."""
    due = time.monotonic() + every_s
    while any(r.waiter is not None and r.waiter.is_alive() for r in runs.values()):
        time.sleep(1.0)
        if time.monotonic() >= due:
            due += every_s
            done = ", ".join(
                f"{arm} {env_steps_so_far(r):,}"
                if r.end is None
                else f"{arm} done in {r.end - r.start:.0f} s"
                for arm, r in runs.items()
            )
            print(f"  {label}: {done} (of {steps:,} env steps)", flush=True)


def run_seed(
    env: str, arms: dict[str, Arm], seed: int, steps: int, workdir: Path, sequential: bool, every_s: float
) -> dict[str, tuple[dict[int, float], float]]:
    slug = ENVS[env]
    label = f"{env} seed {seed}"
    started: list[TrainRun] = []
    out = {}
    try:
        if sequential:
            for name, arm in arms.items():
                run = arm.start(seed, steps, workdir / f"{name}-{slug}-seed{seed}")
                started.append(run)
                watch(label, {name: run}, steps, every_s)
                out[name] = arm.finish(run, seed, steps)
        else:
            runs = {
                name: arm.start(seed, steps, workdir / f"{name}-{slug}-seed{seed}")
                for name, arm in arms.items()
            }
            started.extend(runs.values())
            watch(label, runs, steps, every_s)
            out = {name: arms[name].finish(run, seed, steps) for name, run in runs.items()}
    except BaseException:
        for run in started:
            if run.proc.poll() is None:
                run.proc.terminate()
        raise
    return out


def mark_name(mark: int) -> str:
    return f"{mark / 1000:g}k"


def summarize(per_env: Runs, steps: int) -> list[Result]:
    results: list[Result] = []
    for env, per_arm in per_env.items():
        if not all(per_arm[arm] for arm in ARMS):
            continue
        for m in marks_for(steps):
            xqc, sac = (float(np.mean([return_at(c, m) for c, _ in per_arm[arm]])) for arm in ARMS)
            name = f"{env}/{{}}/return@{mark_name(m)}"
            results.append(Result(name.format("xqc"), xqc, "return", name.format("sac"), sac))
            results.append(Result(name.format("sac"), sac, "return"))
        if env in PUBLISHED_XQC_100K:
            results.append(Result(f"{env}/xqc_published/return@100k", PUBLISHED_XQC_100K[env], "return"))
        xqc_wall, sac_wall = (float(np.mean([w for _, w in per_arm[arm]])) for arm in ARMS)
        results.append(
            Result(f"{env}/xqc/wall_s", xqc_wall, "s", f"{env}/sac/wall_s", sac_wall, lower_is_better=True)
        )
        results.append(Result(f"{env}/sac/wall_s", sac_wall, "s"))
    return results


def curves(per_env: Runs) -> dict:
    return {
        "curves": {
            env: {arm: [{str(k): v for k, v in c.items()} for c, _ in runs] for arm, runs in per_arm.items()}
            for env, per_arm in per_env.items()
        },
        "wall_times": {
            env: {arm: [w for _, w in runs] for arm, runs in per_arm.items()}
            for env, per_arm in per_env.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument(
        "--envs", help="comma-separated, of " + ", ".join(ENVS) + " (default: all; --quick: the first)"
    )
    p.add_argument("--seeds", help="comma-separated (default 0,1,2; --quick: 0)")
    p.add_argument("--steps", type=int, help="env steps per run (default 100000; --quick: 640)")
    p.add_argument("--eval-every", type=int, help="env steps between evaluations (default 5000; --quick: 80)")
    p.add_argument("--sequential", action="store_true", help="run XQC, then SAC, instead of side by side")
    p.add_argument(
        "--run-root", type=Path, help="keep the run directories here (default: a temporary directory)"
    )
    p.add_argument(
        "--xqc-config",
        default="configs/xqc_{slug}.yaml",
        help="config template ({slug}: halfcheetah, cheetah_run)",
    )
    p.add_argument("--sac-config", default="configs/sac_{slug}.yaml", help="config template, as --xqc-config")
    p.add_argument(
        "--override", action="append", default=[], metavar="ARM:KEY=VALUE",
        help="a config override for one arm (xqc or sac), e.g. xqc:learner.device=cuda; repeatable",
    )  # fmt: skip
    args = p.parse_args(argv)
    envs = args.envs.split(",") if args.envs else list(ENVS)[: 1 if args.quick and not args.envs else None]
    unknown = [e for e in envs if e not in ENVS]
    if unknown:
        p.error(f"unknown env(s) {unknown}; known: {', '.join(ENVS)}")
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    steps = args.steps or (QUICK["steps"] if args.quick else 100_000)
    eval_every = args.eval_every or (QUICK["eval_every"] if args.quick else 5_000)
    overrides: dict[str, list[str]] = {arm: [] for arm in ARMS}
    if args.quick:
        for arm in ARMS:
            overrides[arm] += QUICK_OVERRIDES
    for item in args.override:
        arm, sep, kv = item.partition(":")
        if not sep or arm not in ARMS or "=" not in kv:
            p.error(f"--override {item!r}: expected ARM:KEY=VALUE with ARM one of {', '.join(ARMS)}")
        overrides[arm].append(kv)
    templates = {"xqc": args.xqc_config, "sac": args.sac_config}
    arms = {
        env: {arm: make_arm(templates[arm], ENVS[env], overrides[arm], eval_every) for arm in ARMS}
        for env in envs
    }

    config = {
        "envs": envs,
        "seeds": seeds,
        "steps": steps,
        "eval_every": eval_every,
        "side_by_side": not args.sequential,
        "arms": {
            env: {name: arm.describe() for name, arm in per_env.items()} for env, per_env in arms.items()
        },
        "published_xqc_return@100k": {e: PUBLISHED_XQC_100K[e] for e in envs if e in PUBLISHED_XQC_100K},
    }
    per_env: Runs = {env: {arm: [] for arm in ARMS} for env in envs}
    every_s = 30.0 if args.quick else 300.0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.run_root or Path(tmp)
        for env in envs:
            for name, arm in arms[env].items():
                print(f"{env} {name}: {arm}", flush=True)
            for seed in seeds:
                how = "in turn" if args.sequential else "side by side"
                print(f"{env} seed {seed}: running XQC and SAC {how} for {steps:,} env steps ...", flush=True)
                for arm, run in run_seed(
                    env, arms[env], seed, steps, workdir, args.sequential, every_s
                ).items():
                    per_env[env][arm].append(run)
                    curve, wall = run
                    marks = ", ".join(f"{mark_name(m)}: {return_at(curve, m):.1f}" for m in marks_for(steps))
                    print(f"  {arm:4s} wall {wall:7.1f} s | eval return at {marks}", flush=True)
                write_json(args.json, "xqc_vs_sac", {**config, **curves(per_env)}, summarize(per_env, steps))
    results = summarize(per_env, steps)
    print_table(results, title=f"XQC vs SAC: {len(seeds)} seed(s) x {steps:,} env steps on {', '.join(envs)}")
    write_json(args.json, "xqc_vs_sac", {**config, **curves(per_env)}, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
