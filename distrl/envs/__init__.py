"""Environments: one factory for Gymnasium MuJoCo, DeepMind Control, robosuite and cost-aware tasks.

    env = make_env("gym:HalfCheetah-v5", seed=0)
    env = make_env(EnvConfig(id="robosuite:Lift", robosuite={"reward_shaping": True}))
    spec = env_spec(env)  # obs_dim, action_dim, obs_keys, max_episode_steps, has_success

Every env has a flat float32 Box observation, a Box action in [-1, 1] (values outside are
clipped, NaN is rejected), reports time limits as `truncated`, and sets `info["success"]` where
the task defines success. `safe:` tasks also report `info["cost"]` (1.0 in an unsafe state) and
declare the predicate, `unsafe_states(env, obs)`. The family modules are imported only when used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distrl.envs.config import EnvConfig, RobosuiteOptions
    from distrl.envs.factory import list_envs, make_env
    from distrl.envs.safety import unsafe_states
    from distrl.envs.spec import EnvSpec, env_spec

__all__ = ["EnvConfig", "EnvSpec", "RobosuiteOptions", "env_spec", "list_envs", "make_env", "unsafe_states"]

# Resolved on first use (PEP 562) so that `distrl --help`, which imports distrl.envs.cli, does
# not pay for gymnasium and pydantic.
_HOME = {
    "EnvConfig": "distrl.envs.config",
    "RobosuiteOptions": "distrl.envs.config",
    "list_envs": "distrl.envs.factory",
    "make_env": "distrl.envs.factory",
    "EnvSpec": "distrl.envs.spec",
    "env_spec": "distrl.envs.spec",
    "unsafe_states": "distrl.envs.safety",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'distrl.envs' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value
