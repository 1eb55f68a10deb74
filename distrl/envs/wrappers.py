"""The few pieces every env family shares: action rescaling, flat float32 observations, repeat.

Actions: every env takes actions in [-1, 1]^d. Values outside the box are clipped without a
warning (policies with Gaussian exploration overshoot all the time, and the env would clamp
the controls anyway); NaN is rejected with a ValueError, since MuJoCo would quietly reset its
state on a NaN control and the transition would be garbage.

These sit on the hot path of every actor, so they do the minimum numpy calls per step.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from distrl.envs.spec import declared_signals

try:  # the bare ufunc skips np.clip's Python-level dispatch, several times faster on small arrays
    from numpy._core.umath import clip as _clip
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as _clip


def unit_action_space(dim: int) -> gymnasium.spaces.Box:
    return gymnasium.spaces.Box(-1.0, 1.0, shape=(dim,), dtype=np.float32)


def flat_observation_space(dim: int) -> gymnasium.spaces.Box:
    return gymnasium.spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)


class ActionScaler:
    """Maps a policy action in [-1, 1]^d onto an env's own action bounds.

    `env_action = offset + scale * clip(action, -1, 1)`, returned in the env's action shape.
    `check_nan=False` skips the NaN test (about 1 us a step) for callers whose simulator
    already fails on a NaN control, as dm_control does.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, name: str, check_nan: bool = True) -> None:
        low = np.asarray(low, dtype=np.float64)
        high = np.asarray(high, dtype=np.float64)
        if low.shape != high.shape:
            raise ValueError(f"{name}: action bounds have different shapes {low.shape} and {high.shape}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(f"{name}: the action space is unbounded, so it cannot be rescaled to [-1, 1]")
        if np.any(high <= low):
            raise ValueError(f"{name}: action space has an empty dimension (high <= low)")
        self.name = name
        self.env_shape = low.shape
        self.dim = int(low.size)
        self._shape = (self.dim,)
        self._scale = ((high - low) / 2.0).reshape(-1)
        self._offset = ((high + low) / 2.0).reshape(-1)
        self._identity = bool(np.all(low == -1.0) and np.all(high == 1.0))
        # Array bounds: the clip ufunc is ~2x faster with them than with Python floats.
        self._minus_one = np.full(self.dim, -1.0)
        self._plus_one = np.full(self.dim, 1.0)
        self._reshape = low.ndim != 1
        self._check_nan = check_nan

    def __call__(self, action: Any) -> np.ndarray:
        # Any float or int ndarray goes straight into the clip, which returns float64 anyway.
        if type(action) is not np.ndarray or action.shape != self._shape:
            action = self._coerce(action)
        a = _clip(action, self._minus_one, self._plus_one)
        if self._check_nan:
            # A NaN survives the clip and makes the dot product NaN; inf was clipped to +-1 already.
            norm = a.dot(a)
            if norm != norm:
                raise self.nan_error(a)
        if not self._identity:
            a = a * self._scale + self._offset
        return a.reshape(self.env_shape) if self._reshape else a

    def nan_error(self, action: np.ndarray) -> ValueError:
        return ValueError(f"{self.name}: action contains NaN: {action}")

    def _coerce(self, action: Any) -> np.ndarray:
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.name}: action is not a numeric array: {exc}") from None
        if a.shape == self._shape:
            return a
        if a.size == self.dim and a.ndim <= 1:  # a bare scalar for a 1-d action
            return a.reshape(self._shape)
        raise ValueError(f"{self.name}: expected an action of shape {self._shape}, got shape {a.shape}")


class FlatBoxAdapter(gymnasium.Wrapper):
    """Gives a bare Gymnasium env a flat float32 Box observation, a [-1, 1] Box action and a
    time limit.

    Box observations of any shape are flattened; Dict observations are flattened with
    `gymnasium.spaces.flatten` (its documented key order, reported as `obs_keys`). A
    Gymnasium-Robotics style `info["is_success"]` is copied to `info["success"]`. The time
    limit (`truncated=True` on step `step_limit`, as Gymnasium's TimeLimit does) and the
    reset-before-step check live here rather than in TimeLimit and OrderEnforcing wrappers:
    one layer instead of three keeps the per-step overhead down.
    """

    def __init__(
        self, env: gymnasium.Env, name: str, step_limit: int | None = None, seed: int | None = None
    ) -> None:
        super().__init__(env)
        act_space = env.action_space
        if not isinstance(act_space, gymnasium.spaces.Box):
            raise ValueError(
                f"{name} has action space {act_space}; distrl needs a continuous Box action space"
            )
        self._scale_action = ActionScaler(act_space.low, act_space.high, name)
        obs_space = env.observation_space
        self.obs_keys: list[str] | None = None
        self._dict_space: gymnasium.spaces.Dict | None = None
        if isinstance(obs_space, gymnasium.spaces.Box):
            low = obs_space.low.reshape(-1).astype(np.float32)
            high = obs_space.high.reshape(-1).astype(np.float32)
        elif isinstance(obs_space, gymnasium.spaces.Dict) and all(
            isinstance(s, gymnasium.spaces.Box) for s in obs_space.spaces.values()
        ):
            self._dict_space = obs_space
            self.obs_keys = list(obs_space.spaces)
            flat = gymnasium.spaces.flatten_space(obs_space)
            low, high = flat.low.astype(np.float32), flat.high.astype(np.float32)
        else:
            raise ValueError(f"{name} has observation space {obs_space}; distrl needs Box or Dict of Box")
        # The common case (a 1-d Box) needs only a dtype cast per step.
        self._flat_box = self._dict_space is None and len(obs_space.shape) == 1
        self.observation_space = gymnasium.spaces.Box(low, high, dtype=np.float32)
        self.action_space = unit_action_space(self._scale_action.dim)
        self.step_limit = step_limit
        self._limit = math.inf if step_limit is None else step_limit
        self._t = 0
        self._needs_reset = True
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def _flat(self, obs: Any) -> np.ndarray:
        if self._dict_space is None:
            return obs.astype(np.float32).reshape(-1)
        return gymnasium.spaces.flatten(self._dict_space, obs).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        obs, info = self.env.reset(seed=seed, options=options)
        self._t = 0
        self._needs_reset = False
        return self._flat(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("step() called before reset(); call reset() first")
        obs, reward, terminated, truncated, info = self.env.step(self._scale_action(action))
        self._t += 1
        if self._t >= self._limit:
            truncated = True
        if "is_success" in info:
            info["success"] = bool(info["is_success"])
        obs = obs.astype(np.float32) if self._flat_box else self._flat(obs)
        return obs, float(reward), bool(terminated), bool(truncated), info


class ActionRepeat(gymnasium.Wrapper):
    """Repeats each action `repeat` times, summing rewards; stops early when the episode ends.

    `info` is the last inner step's, except that `info["success"]` is true if any inner step
    succeeded and each declared signal (a per-step `cost`, say) is summed over the inner steps,
    so an unsafe state passed through mid-repeat still counts.
    """

    def __init__(self, env: gymnasium.Env, repeat: int) -> None:
        if repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {repeat}")
        super().__init__(env)
        self._repeat = repeat
        self._signals = declared_signals(env)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        total = 0.0
        succeeded = False
        sums = dict.fromkeys(self._signals, 0.0)
        for _ in range(self._repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            succeeded = succeeded or bool(info.get("success", False))
            for name in self._signals:
                sums[name] += float(info.get(name, 0.0))
            if terminated or truncated:
                break
        if "success" in info:
            info["success"] = succeeded
        if sums:
            info = {**info, **sums}
        return obs, total, terminated, truncated, info


class EndOnSuccess(gymnasium.Wrapper):
    """Ends the episode as terminal (`terminated=True`) on the first step with `info["success"]`.

    For sparse-success tasks this makes success absorbing: the value of a state is the discounted
    chance of reaching success from it, rather than that plus how long the task stays solved
    until the time limit. Demonstrations collected through the same option end the same way.
    """

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("success", False):
            terminated, truncated = True, False
        return obs, reward, terminated, truncated, info
