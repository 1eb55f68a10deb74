"""SAC learner speed: our update beside Stable-Baselines3's SAC, same machine, same run.

    .venv/bin/python benchmarks/learner_speed.py [--quick] [--json PATH] [--threads 1,2]

Both learners use batch 256, 256x2 ReLU MLPs and HalfCheetah sizes (obs 17, action 6), and both
sample their batch from a replay buffer inside the timed loop: SB3's `model.train` samples its own
ReplayBuffer (numpy fancy-indexing, then torch), so ours samples a preallocated tensor buffer of the
same capacity with random indices before every `update`. All learners and thread counts are timed
in short interleaved rounds (order reversed every round) and each reports its median round, so
load from other processes hits them alike.

Threads: torch's intra-op thread count is set to the same value for both. Every count in
`--threads` is measured; the headline `sac/cpu/updates_per_s` uses the count at which SB3 ran
fastest (SB3's best setting, ours at the same). On a 2-core box with other jobs running, one
thread is often faster than two: OpenMP threads wait at every op's barrier for a core someone
else holds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distrl.algos import SpaceSpec, make_algorithm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, print_table, write_json

OBS_DIM, ACTION_DIM, BATCH = 17, 6, 256


@dataclass
class Settings:
    rounds: int
    updates_per_round: int
    warmup: int
    capacity: int
    rlpd_utd: int
    threads: list[int] = field(default_factory=list)


# ---- ours


class TensorReplay:
    """A preallocated tensor buffer sampled uniformly: the learner-side cost SB3's timing also pays."""

    def __init__(self, capacity: int, device: torch.device, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.capacity = capacity
        self.device = device
        self.fields = {
            "obs": torch.randn(capacity, OBS_DIM, generator=g),
            "action": torch.rand(capacity, ACTION_DIM, generator=g) * 2 - 1,
            "reward": torch.randn(capacity, generator=g),
            "next_obs": torch.randn(capacity, OBS_DIM, generator=g),
            "terminated": torch.rand(capacity, generator=g) < 0.01,
            "truncated": torch.zeros(capacity, dtype=torch.bool),
        }
        self.fields = {key: value.to(device) for key, value in self.fields.items()}

    def sample(self, size: int) -> dict[str, torch.Tensor]:
        index = torch.randint(0, self.capacity, (size,), device=self.device)
        return {key: value.index_select(0, index) for key, value in self.fields.items()}


def ours_runner(
    config: dict[str, Any], device: str, capacity: int, demo: bool = False
) -> tuple[Callable[[int], None], Any]:
    algo = make_algorithm("sac", SpaceSpec(OBS_DIM, ACTION_DIM), config, device=device)
    replay = TensorReplay(capacity, algo.device, seed=1)
    demos = TensorReplay(capacity, algo.device, seed=2) if demo else None
    utd = algo.config.utd_ratio
    online_size = BATCH // 2 if demo else BATCH

    def run(updates: int) -> None:
        for _ in range(updates):
            demo_batch = None if demos is None else demos.sample(utd * (BATCH - online_size))
            algo.update(replay.sample(utd * online_size), demo_batch)
        if algo.device.type == "cuda":
            torch.cuda.synchronize()

    return run, algo


# ---- Stable-Baselines3


def sb3_runner(capacity: int) -> Callable[[int], None]:
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    class SpacesOnly(gym.Env):
        """An env that only carries HalfCheetah's spaces: SB3 needs one to build its networks."""

        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
            return np.zeros(OBS_DIM, np.float32), {}

        def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
            return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}

    model = SAC(
        "MlpPolicy",
        SpacesOnly(),
        batch_size=BATCH,
        buffer_size=capacity,
        learning_starts=0,
        device="cpu",
        seed=0,
        verbose=0,
    )
    model.set_logger(configure(folder=None, format_strings=[]))
    buffer = model.replay_buffer
    rng = np.random.default_rng(0)
    buffer.observations[:, 0] = rng.standard_normal((capacity, OBS_DIM), dtype=np.float32)
    buffer.next_observations[:, 0] = rng.standard_normal((capacity, OBS_DIM), dtype=np.float32)
    buffer.actions[:, 0] = rng.uniform(-1, 1, (capacity, ACTION_DIM)).astype(np.float32)
    buffer.rewards[:, 0] = rng.standard_normal(capacity, dtype=np.float32)
    buffer.dones[:, 0] = (rng.random(capacity) < 0.01).astype(np.float32)
    buffer.full, buffer.pos = True, 0

    def run(updates: int) -> None:
        model.train(gradient_steps=updates, batch_size=BATCH)

    return run


# ---- timing


def rate(run: Callable[[int], None], updates: int) -> float:
    start = time.perf_counter()
    run(updates)
    return updates / (time.perf_counter() - start)


def interleaved(runners: dict[str, Callable[[int], None]], settings: Settings) -> dict[str, float]:
    """Median updates/s of each runner over alternating rounds (order flipped every round)."""
    for run in runners.values():
        run(settings.warmup)
    rates: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_index in range(settings.rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            rates[name].append(rate(runners[name], settings.updates_per_round))
    return {name: statistics.median(values) for name, values in rates.items()}


def rlpd_config(utd: int, device_flags: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "critic_layernorm": True,
        "num_critics": 10,
        "critic_subset": 2,
        "actor_q": "mean",
        "utd_ratio": utd,
        **(device_flags or {}),
    }


def with_threads(threads: int, run: Callable[[int], None]) -> Callable[[int], None]:
    def run_with_threads(updates: int) -> None:
        torch.set_num_threads(threads)
        run(updates)

    return run_with_threads


def cpu_results(settings: Settings) -> tuple[list[Result], dict[str, Any]]:
    # Every (learner, thread count) pair runs in each round, so all of them see the same load.
    runners: dict[str, Callable[[int], None]] = {}
    for threads in settings.threads:
        torch.set_num_threads(threads)
        runners[f"ours/{threads}"] = with_threads(threads, ours_runner({}, "cpu", settings.capacity)[0])
        runners[f"sb3/{threads}"] = with_threads(threads, sb3_runner(settings.capacity))
    measured = interleaved(runners, settings)
    results = [
        Result(
            f"sac/cpu/threads={threads}/updates_per_s",
            measured[f"ours/{threads}"],
            "updates/s",
            f"sb3/cpu/threads={threads}/updates_per_s",
            measured[f"sb3/{threads}"],
        )
        for threads in settings.threads
    ]
    chosen = max(settings.threads, key=lambda t: measured[f"sb3/{t}"])
    headline = Result(
        "sac/cpu/updates_per_s",
        measured[f"ours/{chosen}"],
        "updates/s",
        "sb3/cpu/updates_per_s",
        measured[f"sb3/{chosen}"],
    )

    # RLPD's settings, for information: critic steps/s at UTD, LayerNorm, E=10, 50/50 demo batches.
    torch.set_num_threads(chosen)
    rlpd, algo = ours_runner(rlpd_config(settings.rlpd_utd), "cpu", settings.capacity, demo=True)
    rlpd_settings = Settings(
        rounds=max(1, settings.rounds // 2),
        updates_per_round=max(1, settings.updates_per_round // settings.rlpd_utd),
        warmup=1,
        capacity=settings.capacity,
        rlpd_utd=settings.rlpd_utd,
    )
    calls = interleaved({"rlpd": rlpd}, rlpd_settings)["rlpd"]
    results.append(Result("rlpd/cpu/critic_updates_per_s", calls * algo.config.utd_ratio, "critic updates/s"))
    return [headline, *results], {"threads_chosen": chosen}


def cuda_results(settings: Settings) -> list[Result]:
    """Eager vs torch.compile vs CUDA graphs on the GPU (plain SAC and RLPD settings), critic steps/s."""
    variants = {
        "eager": {},
        "compile": {"compile": True},
        "cuda_graphs": {"cuda_graphs": True},
        "compile+cuda_graphs": {"compile": True, "cuda_graphs": True},
    }
    results: list[Result] = []
    for label in ("sac", "rlpd"):
        utd = settings.rlpd_utd if label == "rlpd" else 1
        # Warm-up covers compilation and the CUDA-graph capture (3 eager calls, then capture).
        timing = Settings(
            rounds=settings.rounds,
            updates_per_round=max(1, settings.updates_per_round // utd),
            warmup=max(settings.warmup // utd, 5),
            capacity=settings.capacity,
            rlpd_utd=settings.rlpd_utd,
        )
        rates: dict[str, float] = {}
        for variant, flags in variants.items():
            config = rlpd_config(utd, flags) if label == "rlpd" else flags
            run, _ = ours_runner(config, "cuda", settings.capacity, demo=label == "rlpd")
            rates[variant] = interleaved({variant: run}, timing)[variant] * utd
        results += [
            Result(
                f"{label}/cuda/{variant}/critic_updates_per_s",
                value,
                "critic updates/s",
                f"{label}/cuda/eager/critic_updates_per_s",
                rates["eager"],
            )
            for variant, value in rates.items()
        ]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run for CI smoke tests")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure, e.g. 1,2")
    args = parser.parse_args(argv)
    try:
        threads = sorted({int(t) for t in args.threads.split(",") if t.strip()})
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if not threads or min(threads) < 1:
        parser.error("--threads needs at least one positive integer")

    if args.quick:
        settings = Settings(
            rounds=2, updates_per_round=10, warmup=3, capacity=10_000, rlpd_utd=2, threads=threads
        )
    else:
        settings = Settings(
            rounds=21, updates_per_round=40, warmup=30, capacity=100_000, rlpd_utd=20, threads=threads
        )

    results, extra = cpu_results(settings)
    if torch.cuda.is_available():
        results += cuda_results(settings)
    print_table(results)
    config = {
        "obs_dim": OBS_DIM,
        "action_dim": ACTION_DIM,
        "batch_size": BATCH,
        "hidden_sizes": [256, 256],
        "rounds": settings.rounds,
        "updates_per_round": settings.updates_per_round,
        "replay_capacity": settings.capacity,
        "threads_measured": threads,
        "rlpd": rlpd_config(settings.rlpd_utd) | {"demo_fraction": 0.5},
        "quick": args.quick,
        **extra,
    }
    write_json(args.json, "learner_speed", config, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
