"""Smoke-check an env: build it, step random actions, verify what the factory promises."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from distrl.envs.config import EnvConfig
from distrl.envs.factory import make_env
from distrl.envs.spec import env_spec


@dataclass
class EnvCheck:
    """What `distrl envs check` reports."""

    id: str
    obs_dim: int
    action_dim: int
    obs_keys: list[str] | None
    max_episode_steps: int | None
    has_success: bool
    obs_dtype: str
    action_low: float
    action_high: float
    build_s: float
    steps: int
    episodes: int
    terminated: int
    truncated: int
    successes: int
    mean_return: float | None
    steps_per_s: float
    problems: list[str] = field(default_factory=list)


def check_env(config: EnvConfig, steps: int, seed: int = 0) -> EnvCheck:
    """Step uniform random actions for `steps` steps, resetting at episode ends.

    `episodes` counts finished episodes; `steps_per_s` includes the resets, as an actor sees it.
    Problems (wrong observation shape or dtype, non-finite values) are collected, not raised.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    start = time.perf_counter()
    env = make_env(config, seed=seed)
    build_s = time.perf_counter() - start
    try:
        spec = env_spec(env)
        problems: list[str] = []
        returns: list[float] = []
        terminated_count = truncated_count = successes = 0
        obs, _ = env.reset()
        problems += _check_obs(obs, spec.obs_dim, "reset")
        episode_return = 0.0
        episode_success = False
        start = time.perf_counter()
        for _ in range(steps):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            episode_return += float(reward)
            episode_success = episode_success or bool(info.get("success", False))
            if terminated or truncated:
                terminated_count += int(terminated)
                truncated_count += int(truncated and not terminated)
                successes += int(episode_success)
                returns.append(episode_return)
                if not problems:
                    problems += _check_obs(obs, spec.obs_dim, "step")
                obs, _ = env.reset()
                episode_return, episode_success = 0.0, False
        elapsed = time.perf_counter() - start
        if not problems:
            problems += _check_obs(obs, spec.obs_dim, "step")
        if spec.has_success and "success" not in info:
            problems.append('info has no "success" key although the spec says has_success')
        low, high = env.action_space.low, env.action_space.high
        return EnvCheck(
            id=spec.id,
            obs_dim=spec.obs_dim,
            action_dim=spec.action_dim,
            obs_keys=spec.obs_keys,
            max_episode_steps=spec.max_episode_steps,
            has_success=spec.has_success,
            obs_dtype=str(env.observation_space.dtype),
            action_low=float(np.min(low)),
            action_high=float(np.max(high)),
            build_s=round(build_s, 3),
            steps=steps,
            episodes=len(returns),
            terminated=terminated_count,
            truncated=truncated_count,
            successes=successes,
            mean_return=float(np.mean(returns)) if returns else None,
            steps_per_s=round(steps / elapsed, 1),
            problems=problems,
        )
    finally:
        env.close()


def _check_obs(obs: np.ndarray, dim: int, where: str) -> list[str]:
    if not isinstance(obs, np.ndarray) or obs.dtype != np.float32 or obs.shape != (dim,):
        return [
            f"{where}: expected a float32 array of shape ({dim},), got {getattr(obs, 'dtype', type(obs))} "
            f"{getattr(obs, 'shape', '')}"
        ]
    if not np.all(np.isfinite(obs)):
        return [f"{where}: observation has non-finite values"]
    return []
