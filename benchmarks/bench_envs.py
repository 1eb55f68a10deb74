"""Stepping speed of `make_env` envs against the raw library envs they wrap.

The target: the factory's adapters (flat float32 observation, [-1, 1] action with clipping,
truncation bookkeeping) cost < 5% of stepping speed. Raw and wrapped envs run the same
pre-drawn random actions in short interleaved rounds and each side reports its best round, so
machine noise hits both alike; the ratio is wrapped / raw steps per second (higher is better,
1.0 = no overhead). The raw baselines are `gymnasium.make(id)` (TimeLimit, OrderEnforcing and
the passive checker, as users get it), `dm_control.suite.load`, and `robosuite.make`.

    MUJOCO_GL=disable .venv/bin/python benchmarks/bench_envs.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

os.environ.setdefault("MUJOCO_GL", "disable")

import gymnasium
import numpy as np

from distrl.envs import make_env

StepLoop = Callable[[np.ndarray], None]


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float


def _machine() -> dict[str, object]:
    try:
        import torch

        torch_version = torch.__version__
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        torch_version, gpu = None, None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch_version,
        "python": platform.python_version(),
    }


def _gym_loop(env: gymnasium.Env) -> StepLoop:
    env.reset(seed=0)

    def run(actions: np.ndarray) -> None:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()

    return run


def _raw_gym(env_id: str) -> StepLoop:
    # What a user gets from gymnasium.make: TimeLimit, OrderEnforcing and the passive checker.
    return _gym_loop(gymnasium.make(env_id))


def _raw_dmc(domain: str, task: str) -> StepLoop:
    from dm_control import suite

    env = suite.load(domain, task, task_kwargs={"random": 0})
    env.reset()

    def run(actions: np.ndarray) -> None:
        for action in actions:
            if env.step(action).last():
                env.reset()

    return run


def _raw_robosuite(name: str) -> StepLoop:
    from distrl.envs.robosuite_envs import _robosuite, controller_config

    suite = _robosuite()
    env = suite.make(
        name,
        robots="Panda",
        controller_configs=controller_config("OSC_POSE", "Panda"),
        has_renderer=False,
        has_offscreen_renderer=False,
        use_camera_obs=False,
        horizon=500,
        ignore_done=True,
        seed=0,
    )
    env.reset()

    def run(actions: np.ndarray) -> None:
        for action in actions:
            env.step(action)

    return run


def _measure(raw: StepLoop, ours: StepLoop, action_dim: int, steps: int, rounds: int) -> tuple[float, float]:
    """Best-of-`rounds` steps/s for each side, in short interleaved rounds.

    On a shared machine other processes only ever slow a round down, so the fastest round is
    the closest to the true cost, and interleaving gives both sides the same chances.
    """
    rng = np.random.default_rng(0)
    raw_rates, our_rates = [], []
    for i in range(rounds):
        actions = rng.uniform(-1.0, 1.0, size=(steps, action_dim))
        order = [(raw, raw_rates), (ours, our_rates)]
        for loop, rates in order if i % 2 == 0 else reversed(order):
            start = time.perf_counter()
            loop(actions)
            rates.append(steps / (time.perf_counter() - start))
    return max(our_rates), max(raw_rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run for CI smoke tests (no robosuite)")
    parser.add_argument("--json", type=str, default=None, help="write results to this JSON file")
    args = parser.parse_args()
    steps, rounds = (500, 6) if args.quick else (500, 60)

    cases: list[tuple[str, Callable[[], StepLoop], int, int, int]] = [
        ("gym:HalfCheetah-v5", lambda: _raw_gym("HalfCheetah-v5"), 6, steps, rounds),
        ("dmc:cheetah-run", lambda: _raw_dmc("cheetah", "run"), 6, steps, rounds),
    ]
    if not args.quick:
        cases.append(("robosuite:Lift", lambda: _raw_robosuite("Lift"), 7, 100, 6))

    results: list[Result] = []
    print(f"{'env':<22}{'ours steps/s':>14}{'raw steps/s':>14}{'ratio':>8}{'overhead':>10}")
    for env_id, make_raw, action_dim, n, r in cases:
        env = make_env(env_id, seed=0)
        ours_rate, raw_rate = _measure(make_raw(), _gym_loop(env), action_dim, n, r)
        env.close()
        ratio = ours_rate / raw_rate
        print(f"{env_id:<22}{ours_rate:>14.0f}{raw_rate:>14.0f}{ratio:>8.3f}{(1 - ratio) * 100:>9.1f}%")
        results.append(
            Result(
                name=f"{env_id} steps/s",
                value=round(ours_rate, 1),
                unit="steps/s",
                baseline=f"raw {env_id.split(':')[0]} env",
                baseline_value=round(raw_rate, 1),
                ratio=round(ratio, 4),
            )
        )
    if args.json:
        payload = {
            "benchmark": "envs",
            "machine": _machine(),
            "config": {"steps_per_round": steps, "rounds": rounds, "quick": args.quick},
            "results": [asdict(r) for r in results],
        }
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
