"""`dmc:<domain>-<task>`: DeepMind Control Suite tasks as Gymnasium envs.

Names are the suite's (domain, task) pairs joined by the first '-': `cheetah-run`,
`ball_in_cup-catch`, `point_mass-easy`, `finger-turn_hard`. Every task in `suite.ALL_TASKS`
(the BENCHMARKING set plus the extra ones) is accepted.

Observations are the suite's observation dict flattened in the dict's own order (the order
the task defines, e.g. cheetah: `position, velocity`), reported as `obs_keys`. Episodes that
reach the time limit end with `truncated=True`; an episode the task ends with discount 0 ends
with `terminated=True` (the suite's standard tasks never do, so their episodes always end
truncated).
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from distrl.envs.spec import FamilyEnv
from distrl.envs.wrappers import ActionScaler, flat_observation_space, unit_action_space


def _suite() -> Any:
    # dm_control picks its GL backend at import; actors never render.
    os.environ.setdefault("MUJOCO_GL", "disable")
    from dm_control import suite

    return suite


def dmc_ids() -> list[str]:
    """All suite tasks as `domain-task` names (BENCHMARKING first, then the extra tasks)."""
    suite = _suite()
    extra = [t for t in suite.ALL_TASKS if t not in set(suite.BENCHMARKING)]
    return [f"{d}-{t}" for d, t in (*suite.BENCHMARKING, *extra)]


def parse_dmc_name(name: str) -> tuple[str, str]:
    """`"ball_in_cup-catch"` -> `("ball_in_cup", "catch")`, or a ValueError listing valid names."""
    suite = _suite()
    domain, sep, task = name.partition("-")
    if sep and (domain, task) in set(suite.ALL_TASKS):
        return domain, task
    known = dmc_ids()
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join('dmc:' + c for c in close)}?" if close else ""
    raise ValueError(
        f"unknown dm_control task dmc:{name} (format dmc:<domain>-<task>).{hint} Valid: {', '.join(known)}"
    )


class DmControlEnv(gymnasium.Env):
    """One dm_control task behind the Gymnasium API, with our own step counter for truncation."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, domain: str, task: str, step_limit: int | None, seed: int | None) -> None:
        suite = _suite()
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        suite_limit = self._env._step_limit
        # dm_control's own limit ends episodes with discount 1; counting here instead makes the
        # limit configurable and keeps dm_control from auto-resetting on the step after.
        self._env._step_limit = float("inf")
        default = None if math.isinf(suite_limit) else math.ceil(suite_limit - 1e-6)
        self.step_limit: int | None = step_limit if step_limit is not None else default
        self._limit = self.step_limit if self.step_limit is not None else math.inf

        self.obs_keys: list[str] = []
        self._layout: list[tuple[str, slice, bool]] = []
        start = 0
        for key, spec in self._env.observation_spec().items():
            size = int(np.prod(spec.shape))
            self.obs_keys.append(key)
            self._layout.append((key, slice(start, start + size), len(spec.shape) != 1))
            start += size
        self._obs_dim = start
        action_spec = self._env.action_spec()
        low = np.broadcast_to(action_spec.minimum, action_spec.shape)
        high = np.broadcast_to(action_spec.maximum, action_spec.shape)
        # dm_control raises PhysicsError on a NaN control (MuJoCo's BADCTRL warning); step()
        # turns that into our ValueError, so the per-step NaN test is not needed here.
        self._scale_action = ActionScaler(low, high, f"dmc:{domain}-{task}", check_nan=False)
        from dm_control.rl.control import PhysicsError

        self._physics_error = PhysicsError
        self.observation_space = flat_observation_space(self._obs_dim)
        self.action_space = unit_action_space(self._scale_action.dim)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)
        self._t = 0
        self._needs_reset = True

    def _flat(self, observation: dict[str, Any]) -> np.ndarray:
        # Filling one preallocated float32 array beats np.concatenate + astype on these sizes.
        out = np.empty(self._obs_dim, dtype=np.float32)
        for key, where, needs_ravel in self._layout:
            out[where] = np.ravel(observation[key]) if needs_ravel else observation[key]
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        if seed is not None:
            # Reseed the task's RandomState in place: the task samples initial states from it.
            self._env.task.random.seed(seed)
        timestep = self._env.reset()
        self._t = 0
        self._needs_reset = False
        return self._flat(timestep.observation), {}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("step() called before reset() or after the episode ended; call reset()")
        env_action = self._scale_action(action)
        try:
            timestep = self._env.step(env_action)
        except self._physics_error:
            self._needs_reset = True  # the physics state is invalid after the error
            if np.isnan(env_action).any():
                raise self._scale_action.nan_error(env_action) from None
            raise
        self._t += 1
        terminated = truncated = False
        if timestep.last() or self._t >= self._limit:
            terminated = timestep.last() and timestep.discount == 0.0
            truncated = not terminated
            self._needs_reset = True
        reward = timestep.reward
        return (
            self._flat(timestep.observation),
            0.0 if reward is None else float(reward),
            terminated,
            truncated,
            {},
        )

    def close(self) -> None:
        self._env.close()


def make_dmc_env(name: str, step_limit: int | None, seed: int | None) -> FamilyEnv:
    domain, task = parse_dmc_name(name)
    env = DmControlEnv(domain, task, step_limit, seed)
    return FamilyEnv(env=env, obs_keys=env.obs_keys, has_success=False, step_limit=env.step_limit)
