"""Evaluation: the deterministic policy on fresh episodes, every `eval.every_updates` learner updates."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from distrl.actors.actor import ActorAddresses
from distrl.actors.param_loading import ParamLoader
from distrl.actors.rollout import Rollout
from distrl.actors.video import EvalVideoRecorder
from distrl.algos import POLICY_PARAMS, Policy, make_policy
from distrl.config import ExperimentConfig
from distrl.envs import EnvConfig, make_env
from distrl.envs.render import prefer_headless_gl
from distrl.experiment import env_space
from distrl.params import ParamsClient
from distrl.params.names import updates_of
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
    # Per-episode means of the env's signals and the policy's summed extras, e.g. {"cost": 0.4}.
    signals_mean: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {
            "return_mean": self.return_mean,
            "return_std": self.return_std,
            "length_mean": self.length_mean,
        }
        if self.success_rate is not None:
            out["success_rate"] = self.success_rate
        out.update({f"{name}_mean": value for name, value in self.signals_mean.items()})
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
    """Run `episodes` episodes with the deterministic policy, through the actors' rollout core."""
    rollout = Rollout([make_env(env_config, seed=seed)], policy, auto_reset=False)
    returns, lengths, successes = [], [], []
    signals: dict[str, list[float]] = {}
    try:
        for ep in range(episodes):
            if stop is not None and stop.is_set():
                break
            rollout.reset([seed + ep])
            finished = []
            while not finished:
                finished = rollout.step(deterministic=True).finished
            episode = finished[0]
            returns.append(episode.episode_return)
            lengths.append(episode.length)
            for name, total in episode.signals.items():
                signals.setdefault(name, []).append(total)
            if episode.success is not None:
                successes.append(episode.success)
    finally:
        rollout.close()
    if not returns:
        raise RuntimeError("evaluation stopped before any episode finished")
    return EvalResult(
        episodes=len(returns),
        return_mean=float(np.mean(returns)),
        return_std=float(np.std(returns)),
        length_mean=float(np.mean(lengths)),
        success_rate=float(np.mean(successes)) if successes else None,
        returns=returns,
        signals_mean={name: float(np.mean(values)) for name, values in signals.items()},
    )


class Evaluator:
    """Watches the parameter server; evaluates each time the learner crosses a multiple of every_updates
    (and, after behaviour-cloning pretraining, the pretrained policy first). Every
    `eval.video.every` evaluations it also records a clip into `run_dir`/videos (see
    `distrl.actors.video`)."""

    def __init__(
        self, config: ExperimentConfig, addresses: ActorAddresses, run_dir: Path | None = None
    ) -> None:
        self.config = config
        self.addresses = addresses
        torch.set_num_threads(1)
        if config.eval.video.every and run_dir is not None:
            prefer_headless_gl()  # before the env below imports mujoco, which reads MUJOCO_GL once
        self.policy = make_policy(config.algo.name, env_space(config.env), config.algo.params())
        self.videos = EvalVideoRecorder(config.eval.video, config.env, run_dir)
        self.evaluations = 0

    def run(self, stop: threading.Event) -> None:
        if self.addresses.params is None:
            raise ValueError("the evaluator needs a parameter server address")
        every = self.config.eval.every_updates
        sec = self.config.network.security
        reporter = TelemetryReporter(self.addresses.telemetry, source="eval/0", security=sec, interval_s=1.0)
        params = ParamsClient(self.addresses.params, security=sec)
        subscriptions = {name: params.subscribe(param_set=name) for name in self.policy.param_sets}
        subscription = subscriptions[POLICY_PARAMS]
        loader = ParamLoader(self.policy, "evaluator")
        # A behaviour-cloned policy is worth a look before RL changes it: evaluate the first policy
        # seen, which is the pretrained one (update 0) unless the evaluator started after RL did.
        next_at = 0 if self.config.pretrain.bc_steps else every
        try:
            while not stop.is_set():
                latest = subscription.latest()
                updates = updates_of(latest.metadata, latest.version) if latest else 0
                if latest is None or updates < next_at:
                    stop.wait(0.5)
                    continue
                if not self._load_sets(subscriptions, loader):
                    stop.wait(0.5)  # a set the policy needs has not arrived yet
                    continue
                seed = self.config.seed + EVAL_SEED_OFFSET + self.evaluations * 1_000
                result = evaluate(self.policy, self.config.env, self.config.eval.episodes, seed, stop=stop)
                reporter.report({**result.metrics(), "updates": float(updates)}, updates=None)
                if self.videos.due(self.evaluations) and not stop.is_set():
                    self.videos.record(self.policy, updates, seed, stop=stop)
                self.evaluations += 1
                next_at = (updates // every + 1) * every
        finally:
            for sub in subscriptions.values():
                sub.close()
            params.close()
            reporter.close(timeout=2.0)

    def _load_sets(self, subscriptions: dict, loader: ParamLoader) -> bool:
        """Load each set's newest version; False while a set the policy requires is still missing,
        or while the newest policy version is one the policy refused (no evaluation would be of it)."""
        for name, sub in subscriptions.items():
            latest = sub.latest()
            if loader.is_new(name, latest):
                loader.load(name, latest)
        newest_refused = loader.refused.get(POLICY_PARAMS, 0) > loader.loaded.get(POLICY_PARAMS, 0)
        required = (*self.policy.required_params, POLICY_PARAMS)
        return not newest_refused and all(name in loader.loaded for name in required)
