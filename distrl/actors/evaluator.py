"""Evaluation: the deterministic policy on fresh episodes, every `eval.every_updates` learner updates."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

import numpy as np
import torch

from distrl.actors.actor import UPDATES_KEY, ActorAddresses
from distrl.algos import Policy, SpaceSpec, make_policy
from distrl.config import ExperimentConfig
from distrl.envs import EnvConfig, env_spec, make_env
from distrl.params import ParamsClient
from distrl.telemetry import TelemetryReporter

EVAL_SEED_OFFSET = 1_000_000


@dataclass
class EvalResult:
    episodes: int
    return_mean: float
    return_std: float
    length_mean: float
    success_rate: float | None
    returns: list[float]

    def metrics(self) -> dict[str, float]:
        out = {
            "return_mean": self.return_mean,
            "return_std": self.return_std,
            "length_mean": self.length_mean,
        }
        if self.success_rate is not None:
            out["success_rate"] = self.success_rate
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    policy: Policy,
    env_config: EnvConfig,
    episodes: int,
    seed: int,
    stop: threading.Event | None = None,
) -> EvalResult:
    """Run `episodes` episodes with the deterministic policy."""
    env = make_env(env_config, seed=seed)
    returns, lengths, successes = [], [], []
    try:
        for ep in range(episodes):
            if stop is not None and stop.is_set():
                break
            obs, _ = env.reset(seed=seed + ep)
            total, length, success, has_success, done = 0.0, 0, False, False, False
            while not done:
                action = policy.act(obs[None].astype(np.float32), deterministic=True)[0]
                obs, reward, terminated, truncated, info = env.step(action)
                total += float(reward)
                length += 1
                if "success" in info:
                    has_success = True
                    success |= bool(info["success"])
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
            if has_success:
                successes.append(success)
    finally:
        env.close()
    if not returns:
        raise RuntimeError("evaluation stopped before any episode finished")
    return EvalResult(
        episodes=len(returns),
        return_mean=float(np.mean(returns)),
        return_std=float(np.std(returns)),
        length_mean=float(np.mean(lengths)),
        success_rate=float(np.mean(successes)) if successes else None,
        returns=returns,
    )


class Evaluator:
    """Watches the parameter server; evaluates each time the learner crosses a multiple of every_updates
    (and, after behaviour-cloning pretraining, the pretrained policy first)."""

    def __init__(self, config: ExperimentConfig, addresses: ActorAddresses) -> None:
        self.config = config
        self.addresses = addresses
        torch.set_num_threads(1)
        probe = make_env(config.env)
        spec = env_spec(probe)
        probe.close()
        self.policy = make_policy(
            config.algo.name, SpaceSpec(spec.obs_dim, spec.action_dim), config.algo.params()
        )
        self.evaluations = 0

    def run(self, stop: threading.Event) -> None:
        if self.addresses.params is None:
            raise ValueError("the evaluator needs a parameter server address")
        every = self.config.eval.every_updates
        sec = self.config.network.security
        reporter = TelemetryReporter(self.addresses.telemetry, source="eval/0", security=sec, interval_s=1.0)
        params = ParamsClient(self.addresses.params, security=sec)
        subscription = params.subscribe()
        # A behaviour-cloned policy is worth a look before RL changes it: evaluate the first policy
        # seen, which is the pretrained one (update 0) unless the evaluator started after RL did.
        next_at = 0 if self.config.pretrain.bc_steps else every
        try:
            while not stop.is_set():
                latest = subscription.latest()
                updates = int(latest.metadata.get(UPDATES_KEY, latest.version)) if latest else 0
                if latest is None or updates < next_at:
                    stop.wait(0.5)
                    continue
                self.policy.load_policy_state(latest.tensors)
                result = evaluate(
                    self.policy,
                    self.config.env,
                    self.config.eval.episodes,
                    seed=self.config.seed + EVAL_SEED_OFFSET + self.evaluations * 1_000,
                    stop=stop,
                )
                self.evaluations += 1
                reporter.report({**result.metrics(), "updates": float(updates)}, updates=None)
                next_at = (updates // every + 1) * every
        finally:
            subscription.close()
            params.close()
            reporter.close(timeout=2.0)
