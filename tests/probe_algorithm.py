"""A test-only algorithm that exercises the whole algorithm contract on a real env.

Its policy is a fixed function of the observation, so every stored value can be recomputed from
the learner's batch: a latent `tanh(W obs)` decoded into a chunk of `chunk` actions (0.9 x the
latent), an actor-side filter that clips the plan to a bound published as a second parameter
set ("filter") and stores both the proposed and the executed actions, a warm-up step that
negates the latent, a per-env count of decisions since the policy's last `reset(mask)`, and the
episode's reward so far (from `observe`).
`CostFromAction` is an env wrapper reporting `cost = action[0]^2` per step as a declared signal.
Its learner does not learn: it keeps every batch it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from distrl.algos import (
    POLICY_PARAMS,
    AlgorithmEntry,
    BasePolicy,
    ParamSetSpec,
    PolicyStep,
    SpaceSpec,
    TransitionField,
    base_fields,
    register_algorithm,
    unregister_algorithm,
)

NAME = "probe"
FILTER_PARAMS = "filter"
DECODE_SCALE = 0.9


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk: int = Field(1, ge=1)
    filter_bound: float | None = Field(None, gt=0)
    filter_every: int = Field(5, ge=1)
    seed: int = 0


def probe_fields(space: SpaceSpec, config: ProbeConfig) -> tuple[TransitionField, ...]:
    k, a = config.chunk, space.action_dim
    action_shape = (k, a) if k > 1 else (a,)
    fields = [*base_fields(space, action_shape=action_shape, chunk=k)]
    fields.append(TransitionField("warmup", "bool"))
    fields.append(TransitionField("since_reset", "int32"))
    fields.append(TransitionField("reward_so_far", "float32"))
    if k > 1:
        fields.append(TransitionField("latent", "float32", (k * a,)))
    if config.filter_bound is not None:
        fields.append(TransitionField("proposed_action", "float32", action_shape))
        fields.append(TransitionField("intervened", "bool"))
    return tuple(fields)


def probe_weights(space: SpaceSpec, config: ProbeConfig) -> np.ndarray:
    rng = np.random.default_rng(config.seed)
    return rng.normal(0.0, 3.0, (config.chunk * space.action_dim, space.obs_dim)).astype(np.float32)


class ProbePolicy(BasePolicy):
    def __init__(self, space: SpaceSpec, config: ProbeConfig) -> None:
        super().__init__(space)
        self.config = config
        self.param_sets = (
            (POLICY_PARAMS, FILTER_PARAMS) if config.filter_bound is not None else (POLICY_PARAMS,)
        )
        self.required_params = self.param_sets
        self.weights: np.ndarray | None = None
        self.bound: float | None = None
        self.since_reset: np.ndarray | None = None
        self.reward_so_far: np.ndarray | None = None
        self.reset_calls = 0

    def _decide(self, obs: np.ndarray, sign: float, warmup: bool) -> PolicyStep:
        if self.weights is None or (self.config.filter_bound is not None and self.bound is None):
            raise RuntimeError("the probe policy acted before its parameter sets arrived")
        obs, _ = self.check_obs(obs)
        n, k, a = len(obs), self.config.chunk, self.space.action_dim
        latent = sign * np.tanh(obs @ self.weights.T)
        plan = (DECODE_SCALE * latent).reshape(n, k, a).astype(np.float32)
        executed = plan if self.bound is None else np.clip(plan, -self.bound, self.bound)
        extras: dict[str, np.ndarray] = {
            "warmup": np.full(n, warmup),
            "since_reset": self.since_reset.copy(),
            "reward_so_far": self.reward_so_far.copy(),
        }
        if k > 1:
            extras["latent"] = latent.astype(np.float32)
        if self.bound is not None:
            extras["proposed_action"] = plan if k > 1 else plan[:, 0]
            extras["intervened"] = (np.abs(plan) > self.bound).any(axis=(1, 2))
        self.since_reset += 1
        return PolicyStep(executed if k > 1 else executed[:, 0], extras)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> PolicyStep:
        return self._decide(obs, 1.0, warmup=False)

    def warmup(self, obs: np.ndarray, rng: np.random.Generator) -> PolicyStep:
        return self._decide(obs, -1.0, warmup=True)

    def reset(self, mask: np.ndarray) -> None:
        self.reset_calls += 1
        if self.since_reset is None or len(self.since_reset) != len(mask):
            self.since_reset = np.zeros(len(mask), dtype=np.int32)
            self.reward_so_far = np.zeros(len(mask), dtype=np.float32)
        self.since_reset[np.asarray(mask, dtype=bool)] = 0
        self.reward_so_far[np.asarray(mask, dtype=bool)] = 0.0

    def observe(self, reward: np.ndarray, ended: np.ndarray) -> None:
        self.reward_so_far += reward.astype(np.float32)

    def load_params(self, param_set: str, tensors: Mapping[str, np.ndarray]) -> None:
        if param_set == POLICY_PARAMS:
            self.weights = np.asarray(tensors["W"], dtype=np.float32)
        elif param_set == FILTER_PARAMS:
            self.bound = float(np.asarray(tensors["bound"])[0])
        else:
            raise ValueError(f"unknown parameter set {param_set!r}")


class ProbeLearner:
    """Keeps the batches it is given (as numpy copies); publishes W and the filter's bound."""

    batches_per_update = 1
    can_pretrain = False

    def __init__(self, space: SpaceSpec, config: ProbeConfig, device: torch.device) -> None:
        self.space = space
        self.config = config
        self.device = device
        self.weights = probe_weights(space, config)
        self.batches: list[dict[str, np.ndarray]] = []
        self.updates = 0

    def update(self, batch, demo_batch=None) -> dict[str, float]:
        self.batches.append({k: v.cpu().numpy().copy() for k, v in batch.items()})
        self.updates += 1
        return {"probe_items": float(len(batch["reward"]))}

    def priorities(self) -> torch.Tensor | None:
        return None

    def pretrain_step(self, batch) -> dict[str, float]:
        raise NotImplementedError

    def param_sets(self) -> tuple[ParamSetSpec, ...]:
        sets = [ParamSetSpec(POLICY_PARAMS)]
        if self.config.filter_bound is not None:
            sets.append(ParamSetSpec(FILTER_PARAMS, every_updates=self.config.filter_every))
        return tuple(sets)

    def params(self, param_set: str) -> dict[str, np.ndarray]:
        if param_set == POLICY_PARAMS:
            return {"W": self.weights.copy()}
        if param_set == FILTER_PARAMS:
            return {"bound": np.array([self.config.filter_bound], dtype=np.float32)}
        raise KeyError(param_set)

    def make_policy(self) -> ProbePolicy:
        policy = ProbePolicy(self.space, self.config)
        for spec in self.param_sets():
            policy.load_params(spec.name, self.params(spec.name))
        return policy

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.updates = int(state["updates"])


def register() -> None:
    unregister_algorithm(NAME)
    register_algorithm(
        NAME,
        AlgorithmEntry(
            config_type=ProbeConfig,
            make_learner=ProbeLearner,
            make_policy=ProbePolicy,
            transition_fields=probe_fields,
        ),
    )


class CostFromAction(gymnasium.Wrapper):
    """Reports `info["cost"] = action[0]^2` every step and declares the signal."""

    distrl_signals = ("cost",)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = {**info, "cost": float(np.asarray(action, dtype=np.float64)[0] ** 2)}
        return obs, reward, terminated, truncated, info
