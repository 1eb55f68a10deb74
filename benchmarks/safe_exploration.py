"""Safe exploration: SAC vs SAC-Lagrangian vs SAC + KBSE (and SAC-Lag + KBSE), same seeds and budget.

    python benchmarks/safe_exploration.py --json benchmarks/results/safe_exploration.json
    python benchmarks/safe_exploration.py --quick            # smoke test, a few minutes

Each arm is a real `distrl train` run (actors, replay shards, parameter server, learner as
processes) of the task's SAC config with the arm's overrides: `algo.name=sac_lag` (and the
task's cost limit) for the Lagrangian, `algo.shield={}` for the shield. Per arm and seed:

- violations: unsafe steps taken while training, i.e. the sum of the per-step cost over every
  transition the actors produced, read from the replay shards' final checkpoints (the replay
  holds every transition of the run: its capacity is set above the budget);
- interventions: actions the shield replaced while training (same source);
- return and cost: the final checkpoint's deterministic policy (shielded where the arm is)
  over fresh episodes, `distrl eval --json`.

Ratios are against plain SAC of the same run: violations and cost inverted (higher = fewer),
return as is. The issue's target: the shield cuts training violations >= 5x against SAC while
keeping >= 90% of its final return. Also the per-step check latency on the actor for dictionary
sizes m = 1000 and 5000 at HalfCheetah's sizes (17-d obs, 6-d action), against the SAC policy's
own forward pass for one observation (ratio = policy time / check time).
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

from distrl.algos import SpaceSpec, make_algorithm
from distrl.algos.safety import Shield
from distrl.algos.safety.kernels import Standardizer
from distrl.replay.checkpoint import list_checkpoints, read_checkpoint

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "MUJOCO_GL": "disable"}
TASKS = {
    # name: (config, env steps, overrides of the Lagrangian arms, of the shielded arms, eval episodes, seeds)
    "point": ("configs/sac_point.yaml", 20_000, ["algo.cost_limit=1.0"], [], 20, 2),
    # The shield's state is the forward velocity (obs[8]), the one dim the constraint reads.
    "halfcheetah_vel": (
        "configs/sac_halfcheetah_velocity.yaml",
        50_000,
        [],
        ["algo.shield.state_dims=[8]"],
        5,
        1,
    ),
}
ARMS = {
    "sac": [],
    "sac_lag": ["algo.name=sac_lag"],
    "sac+kbse": ["algo.shield={}"],
    "sac_lag+kbse": ["algo.name=sac_lag", "algo.shield={}"],
}
QUICK = [
    "actors.warmup_steps=500",
    "replay.table.min_size_to_sample=500",
    "algo.shield.fit_every=300",
    "algo.shield.min_transitions=300",
    "eval.every_updates=1000000",
]


def arm_overrides(task: str, arm: str, steps: int, seed: int, quick: bool) -> list[str]:
    _, _, lag, shield, _, _ = TASKS[task]
    out = [f"seed={seed}", f"train.total_env_steps={steps}", f"replay.table.capacity={2 * steps + 10_000}"]
    out += ARMS[arm] + (lag if "sac_lag" in arm else []) + (shield if "kbse" in arm else [])
    if quick:
        out += [o for o in QUICK if "kbse" in arm or not o.startswith("algo.shield")]
    return out


def replay_totals(run_dir: Path) -> dict[str, float]:
    """Sums of cost and intervened, and the item count, over every shard's newest checkpoint."""
    totals = {"items": 0.0, "cost": 0.0, "intervened": 0.0}
    for shard in sorted((run_dir / "replay").glob("shard-*")):
        if not shard.is_dir():
            continue
        checkpoints = list_checkpoints(shard)
        if not checkpoints:
            continue
        for snap in read_checkpoint(checkpoints[-1]).values():
            totals["items"] += len(snap.keys)
            totals["cost"] += float(np.sum(snap.fields["cost"]))
            if "intervened" in snap.fields:
                totals["intervened"] += float(np.sum(snap.fields["intervened"]))
    return totals


def run_arm(task: str, arm: str, seed: int, steps: int, quick: bool, work: Path) -> dict[str, float]:
    config, _, _, _, episodes, _ = TASKS[task]
    run_dir = work / f"{task}-{arm}-{seed}"
    argv = [sys.executable, "-m", "distrl.cli", "train", str(ROOT / config), "--run-dir", str(run_dir),
            "--no-console", *arm_overrides(task, arm, steps, seed, quick)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    totals = replay_totals(run_dir)
    out = subprocess.run(
        [sys.executable, "-m", "distrl.cli", "eval", str(run_dir),
         "--episodes", str(3 if quick else episodes), "--seed", str(10_000 + seed), "--json"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, check=True,
    )  # fmt: skip
    final = json.loads(out.stdout.strip().splitlines()[-1])
    late = last_quarter(run_dir, steps)
    return {
        "violations": totals["cost"],
        "interventions": totals["intervened"],
        "items": totals["items"],
        "return": float(final["return_mean"]),
        "cost": float(final["signals_mean"].get("cost", 0.0)),
        "return_last_quarter": float(np.mean([*late["return"], final["return_mean"]])),
        "cost_last_quarter": float(np.mean([*late["cost"], final["signals_mean"].get("cost", 0.0)])),
        "wall_s": wall,
    }


def last_quarter(run_dir: Path, steps: int) -> dict[str, list[float]]:
    """The periodic evaluations of the last quarter of the budget (eval/return_mean, eval/cost_mean):
    one checkpoint's evaluation is a noisy snapshot of a policy still learning; their mean with the
    final one is the steadier figure."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    late = [r for r in rows if "eval/return_mean" in r and r["env_steps"] >= 0.75 * steps]
    return {
        "return": [r["eval/return_mean"] for r in late],
        "cost": [r.get("eval/cost_mean", 0.0) for r in late],
    }


def check_latency(m: int, repeats: int = 2000) -> tuple[float, float]:
    """(one check, one failing check with 16 candidates) in microseconds, for a shield of dictionary
    size m at 17-d obs and 6-d action (HalfCheetah)."""
    rng = np.random.default_rng(0)
    dx, da, p = 17, 6, 150
    shield = Shield(
        dx, da, fitted=True, standardizer=Standardizer(np.zeros(dx + da), np.ones(dx + da)),
        dictionary=rng.normal(size=(m, dx + da)), g=rng.normal(size=m), centers=rng.normal(size=(p, dx)),
        alpha=rng.normal(size=p), z_lengthscale=3.0, x_lengthscale=3.0, c=0.02, gamma=0.1, horizon=1000,
    )  # fmt: skip
    shield = Shield.from_tensors(shield.tensors(), dx, da)  # what an actor holds
    obs, action = rng.normal(size=(1, dx)).astype(np.float32), rng.uniform(-1, 1, (1, da)).astype(np.float32)
    candidates = rng.uniform(-1, 1, (1, 16, da)).astype(np.float32)

    def timed(fn) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return 1e6 * (time.perf_counter() - start) / repeats

    check = timed(lambda: shield.passes(obs, action))
    # A failing proposal costs the check plus one batched check of the 16 candidates.
    many = np.repeat(obs, 16, axis=0)
    extra = timed(lambda: shield.expected_next(many, candidates[0]))
    return check, check + extra


def policy_latency(repeats: int = 2000) -> float:
    torch.set_num_threads(1)
    algo = make_algorithm("sac", SpaceSpec(17, 6), {}, "cpu")
    policy = algo.make_policy()
    obs = np.zeros((1, 17), np.float32)
    policy.act(obs)
    start = time.perf_counter()
    for _ in range(repeats):
        policy.act(obs)
    return 1e6 * (time.perf_counter() - start) / repeats


def summarize(runs: dict[str, dict[str, list[dict[str, float]]]]) -> list[Result]:
    results = []
    for task, arms in runs.items():
        keys = ("violations", "return", "cost", "return_last_quarter", "cost_last_quarter")
        base = {k: float(np.mean([r[k] for r in arms["sac"]])) for k in keys}
        for arm, per_seed in arms.items():
            mean = {k: float(np.mean([r[k] for r in per_seed])) for k in per_seed[0]}
            vs = None if arm == "sac" else "sac"
            for key, unit, lower in (
                ("violations", "unsafe steps in training", True),
                ("return", "final eval return", False),
                ("cost", "final eval episode cost", True),
                ("return_last_quarter", "eval return, last quarter of the budget", False),
                ("cost_last_quarter", "eval episode cost, last quarter", True),
            ):
                results.append(
                    Result(f"{task}/{arm}/{key}", mean[key], unit, vs, base[key] if vs else None, lower)
                )
            results.append(
                Result(f"{task}/{arm}/interventions", mean["interventions"], "actions replaced in training")
            )
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {list(TASKS)}")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {list(ARMS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds per task (default: the task's)")
    p.add_argument("--steps", type=int, default=None, help="env steps per run (default: the task's)")
    args = p.parse_args(argv)
    tasks, arms = args.tasks.split(","), args.arms.split(",")
    if "sac" not in arms:
        print("no sac arm: the runs are recorded, but no ratio is computed (every ratio is against sac)")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    config = {"tasks": {}, "arms": {a: ARMS[a] for a in arms}, "quick": args.quick}
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="safe-exploration-") as tmp:
        for task in tasks:
            steps = args.steps or (3_000 if args.quick else TASKS[task][1])
            config["tasks"][task] = {"config": TASKS[task][0], "env_steps": steps}
            seeds = 1 if args.quick else args.seeds or TASKS[task][5]
            config["tasks"][task]["seeds"] = seeds
            for seed in range(seeds):
                for arm in arms:
                    print(f"{task} {arm} seed {seed}: {steps} env steps ...", flush=True)
                    r = run_arm(task, arm, seed, steps, args.quick, Path(tmp))
                    runs.setdefault(task, {}).setdefault(arm, []).append(r)
                    print("  " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)
                    results = summarize({t: a for t, a in runs.items() if "sac" in a})
                    write_json(args.json, "safe_exploration", {**config, "runs": runs}, results)
    sac_us = policy_latency()
    for m in (1000, 5000):
        check, fail = check_latency(m)
        results.append(Result(f"kbse/check_us/m={m}", check, "us per check", "sac_act_us", sac_us, True))
        results.append(
            Result(
                f"kbse/filter_us/m={m}", fail, "us, failing check + 16 candidates", "sac_act_us", sac_us, True
            )
        )
    print_table(
        results, "safe exploration (ratios vs plain SAC of the same run; violations and cost inverted)"
    )
    for task, arms_run in runs.items():
        if "sac+kbse" not in arms_run or "sac" not in arms_run:
            continue
        base = np.mean([r["violations"] for r in arms_run["sac"]])
        shielded = np.mean([r["violations"] for r in arms_run["sac+kbse"]])
        cut = base / max(shielded, 1.0)  # 0 violations count as 1: a finite, conservative ratio
        for key in ("return", "return_last_quarter"):
            kept = np.mean([r[key] for r in arms_run["sac+kbse"]]) / np.mean(
                [r[key] for r in arms_run["sac"]]
            )
            verdict = "met" if cut >= 5 and kept >= 0.9 else "NOT met"
            print(
                f"{task}: the shield cuts training violations {cut:.1f}x ({base:.0f} -> {shielded:.0f}), "
                f"keeps "
                f"{kept:.2f} of SAC's {key.replace('_', ' ')}: target (>= 5x, >= 0.90) {verdict}"
            )
    write_json(args.json, "safe_exploration", {**config, "runs": runs}, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
