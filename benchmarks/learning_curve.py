"""SAC learning curves: distrl's distributed run vs Stable-Baselines3's SAC, same hyperparameters.

    .venv/bin/python benchmarks/learning_curve.py [--quick] [--json PATH] [--seeds 0,1,2] [--steps 100000]
                                                  [--side-by-side]

Both learn HalfCheetah-v5 with batch 256, lr 3e-4, gamma 0.99, tau 0.005, 256x256 networks,
5,000 random warm-up steps and one update per env step (for distrl: 2 actors, 1 replay shard,
samples_per_insert 256, i.e. the rate limiter holds the run at one update per env step).
Reported per seed and on average: the mean return of the last 10 training episodes when each
system passes 25%, 50% and 100% of the step budget, and the wall time to finish. Ratios: ours /
SB3 for returns (higher is better) and SB3 / ours for wall time.

The wall-time ratio gives both sides the same CPUs. By default each seed's two runs go one after
the other, each with every CPU of the machine to itself. With `--side-by-side` they run at once,
each pinned to its own half of the CPUs (every process of the distrl run included), so neither
takes cores from the other; that needs at least 2 CPUs. Either way both learners use one torch
thread (distrl's actors, shard and servers are separate processes: that is the design measured).
The curves (the mean of the last 10 episode returns every 5% of the budget) are saved in the JSON,
and each finished seed is written to the JSON at once, so a long run that is stopped keeps what it
measured.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, TrainRun, parser, print_table, read_metrics, start_train, write_json

ROOT = Path(__file__).resolve().parent.parent
ENV_ID = "HalfCheetah-v5"


def marks_for(steps: int) -> list[int]:
    return [steps // 4, steps // 2, steps]


def marks_curve(steps: int) -> list[int]:
    """Every mark a run records: the reported ones and the curve's (every 5% of the budget)."""
    return sorted({*marks_for(steps), *(steps * k // 20 for k in range(1, 21))})


def run_sb3(seed: int, steps: int, warmup: int) -> tuple[dict[int, float], float]:
    import gymnasium as gym
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    marks = marks_curve(steps)
    returns: dict[int, float] = {}

    class Marks(BaseCallback):
        def _on_step(self) -> bool:
            t = self.num_timesteps
            for m in marks:
                if t >= m and m not in returns:
                    eps = list(self.model.ep_info_buffer)[-10:]
                    returns[m] = float(np.mean([e["r"] for e in eps])) if eps else float("nan")
            return True

    env = gym.make(ENV_ID)
    model = SAC(
        "MlpPolicy",
        env,
        learning_rate=3e-4,
        buffer_size=1_000_000,
        learning_starts=warmup,
        batch_size=256,
        tau=0.005,
        gamma=0.99,
        train_freq=1,
        gradient_steps=1,
        policy_kwargs={"net_arch": [256, 256]},
        seed=seed,
        verbose=0,
    )
    start = time.perf_counter()
    model.learn(steps, callback=Marks())
    return returns, time.perf_counter() - start


def start_ours(seed: int, steps: int, warmup: int, workdir: Path, cpus: set[int] | None = None) -> TrainRun:
    overrides = [
        f"seed={seed}", f"train.total_env_steps={steps}", f"actors.warmup_steps={warmup}",
        f"replay.table.min_size_to_sample={warmup}", "eval.enabled=false", "learner.threads=1",
    ]  # fmt: skip
    config = ROOT / "configs" / "sac_halfcheetah.yaml"
    return start_train(config, workdir / f"distrl-seed{seed}", overrides, cpus=cpus)


def split_cpus(cpus: set[int]) -> tuple[set[int], set[int]]:
    """Two disjoint halves of the same size (an odd CPU out stays unused)."""
    ordered = sorted(cpus)
    half = len(ordered) // 2
    if half == 0:
        raise SystemExit(f"--side-by-side needs at least 2 CPUs, this process may use {ordered}")
    return set(ordered[:half]), set(ordered[half : 2 * half])


@contextmanager
def pinned(cpus: set[int]) -> Iterator[None]:
    """Every thread of this process (SB3's run) on `cpus` only, restored afterwards. Each thread
    has its own mask (numpy's BLAS threads exist from the import on); new ones inherit it."""
    before = {}
    for tid in (int(t) for t in os.listdir("/proc/self/task")):
        try:
            before[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    try:
        yield
    finally:
        for tid, mask in before.items():
            try:
                os.sched_setaffinity(tid, mask)
            except ProcessLookupError:
                pass


def finish_ours(run: TrainRun, steps: int) -> tuple[dict[int, float], float]:
    wall = run.wait()
    rows = read_metrics(run.run_dir)
    episodes: list[tuple[int, float]] = [
        (r["env_steps"], r["actor/episode_return"]) for r in rows if "actor/episode_return" in r
    ]
    returns = {}
    for m in marks_curve(steps):
        before = [ret for s, ret in episodes if s <= m][-10:]
        returns[m] = float(np.mean(before)) if before else float("nan")
    return returns, wall


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=100_000)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--side-by-side",
        action="store_true",
        help="run both at once, each pinned to its own half of the CPUs",
    )
    mode.add_argument("--sequential", action="store_true", help="run ours, then SB3 (the default)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    steps, warmup = args.steps, 5_000
    if args.quick:
        seeds, steps, warmup = seeds[:1], 4_000, 1_000
    per_system: dict[str, list[tuple[dict[int, float], float]]] = {"ours": [], "sb3": []}
    machine_cpus = os.sched_getaffinity(0)
    ours_cpus, sb3_cpus = split_cpus(machine_cpus) if args.side_by_side else (machine_cpus, machine_cpus)
    config = {
        "env": ENV_ID,
        "seeds": seeds,
        "steps": steps,
        "warmup": warmup,
        "side_by_side": args.side_by_side,
        "cpus": {"ours": sorted(ours_cpus), "sb3": sorted(sb3_cpus)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            how = (
                f"side by side on CPUs {sorted(ours_cpus)} | {sorted(sb3_cpus)}"
                if args.side_by_side
                else "in turn"
            )
            print(f"seed {seed}: running distrl and SB3 {how} for {steps:,} env steps ...", flush=True)
            if not args.side_by_side:
                per_system["ours"].append(finish_ours(start_ours(seed, steps, warmup, Path(tmp)), steps))
                per_system["sb3"].append(run_sb3(seed, steps, warmup))
            else:
                ours = start_ours(seed, steps, warmup, Path(tmp), cpus=ours_cpus)
                try:
                    with pinned(sb3_cpus):
                        sb3 = run_sb3(seed, steps, warmup)
                except BaseException:
                    ours.proc.terminate()
                    raise
                per_system["ours"].append(finish_ours(ours, steps))
                per_system["sb3"].append(sb3)
            for name, runs in per_system.items():
                returns, wall = runs[-1]
                marks = ", ".join(f"{m:,}: {returns[m]:.1f}" for m in marks_for(steps))
                print(f"  {name:5s} wall {wall:7.1f} s | return at {marks}", flush=True)
            done = len(per_system["ours"])
            write_json(args.json, "learning_curve", {**config, "seeds": seeds[:done], **curves(per_system)},
                       summarize(per_system, steps))  # fmt: skip
    results = summarize(per_system, steps)
    print_table(results, title=f"learning curve: {len(seeds)} seed(s) x {steps} env steps")
    write_json(args.json, "learning_curve", {**config, **curves(per_system)}, results)
    return 0


def curves(per_system: dict[str, list[tuple[dict[int, float], float]]]) -> dict:
    return {
        "curves": {
            name: [{str(k): v for k, v in sorted(r.items())} for r, _ in runs]
            for name, runs in per_system.items()
        },
        "wall_times": {name: [w for _, w in runs] for name, runs in per_system.items()},
    }


def summarize(per_system: dict[str, list[tuple[dict[int, float], float]]], steps: int) -> list[Result]:
    results: list[Result] = []
    for m in marks_for(steps):
        ours = float(np.mean([r[m] for r, _ in per_system["ours"]]))
        sb3 = float(np.mean([r[m] for r, _ in per_system["sb3"]]))
        results.append(Result(f"sac/{ENV_ID}/return@{m}", ours, "return", f"sb3/return@{m}", sb3))
    ours_wall = float(np.mean([w for _, w in per_system["ours"]]))
    sb3_wall = float(np.mean([w for _, w in per_system["sb3"]]))
    results.append(
        Result(f"sac/{ENV_ID}/wall_time", ours_wall, "s", "sb3/wall_time", sb3_wall, lower_is_better=True)
    )
    return results


if __name__ == "__main__":
    sys.exit(main())
