"""`make_env`: one factory for every env family, all returning the same kind of Gymnasium env."""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Mapping
from typing import Any

import gymnasium

from distrl.envs.config import FAMILY_PREFIXES, EnvConfig
from distrl.envs.spec import SPEC_ATTR, EnvSpec, FamilyEnv, declared_signals
from distrl.envs.wrappers import ActionRepeat, EndOnSuccess

EXAMPLE_IDS: dict[str, list[str]] = {
    "gym": ["gym:HalfCheetah-v5", "gym:Hopper-v5", "gym:Walker2d-v5", "gym:Ant-v5", "gym:Humanoid-v5"],
    "dmc": ["dmc:cheetah-run", "dmc:walker-walk", "dmc:ball_in_cup-catch", "dmc:point_mass-easy"],
    "robosuite": [
        "robosuite:Lift",
        "robosuite:PickPlaceCan",
        "robosuite:NutAssemblySquare",
        "robosuite:Door",
    ],
    "safe": ["safe:point-goal", "safe:HalfCheetah-velocity", "safe:Lift-keepout"],
}


def _family_ids(family: str) -> list[str]:
    # Imports stay inside: listing robosuite imports it, which takes a second.
    if family == "gym":
        from distrl.envs.gym_envs import mujoco_ids

        return [f"gym:{i}" for i in mujoco_ids()]
    if family == "dmc":
        from distrl.envs.dmc import dmc_ids

        return [f"dmc:{i}" for i in dmc_ids()]
    if family == "safe":
        from distrl.envs.safety import safe_ids

        return safe_ids()
    from distrl.envs.robosuite_envs import robosuite_ids

    return [f"robosuite:{i}" for i in robosuite_ids()]


def list_envs() -> dict[str, list[str]]:
    """Known ids per prefix: Gymnasium's MuJoCo ids, every dm_control suite task, robosuite's envs,
    the cost-aware `safe:` tasks."""
    return {family: _family_ids(family) for family in FAMILY_PREFIXES}


def _unknown_id(env_id: str) -> ValueError:
    known: dict[str, list[str]] = {}
    for family in FAMILY_PREFIXES:
        try:
            known[family] = _family_ids(family)
        except Exception:  # a broken optional install must not hide the real error
            known[family] = EXAMPLE_IDS[family]
    everything = [i for ids in known.values() for i in ids]
    close = difflib.get_close_matches(env_id, everything, n=3, cutoff=0.5)
    close += [i for i in everything if i.partition(":")[2] == env_id and i not in close]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    listing = "; ".join(f"{family}: {', '.join(ids)}" for family, ids in known.items())
    return ValueError(
        f"unknown env id {env_id!r}.{hint} Ids are <prefix>:<name> with prefix "
        f"{', '.join(p + ':' for p in FAMILY_PREFIXES)} (gym:<Gymnasium id>, dmc:<domain>-<task>, "
        f"robosuite:<Env>, safe:<task>). Known ids: {listing}"
    )


def _as_config(config: EnvConfig | str | Mapping[str, Any]) -> EnvConfig:
    if isinstance(config, EnvConfig):
        return config
    if isinstance(config, str):
        return EnvConfig(id=config)
    if isinstance(config, Mapping):
        return EnvConfig.model_validate(dict(config))
    raise TypeError(f"make_env needs an EnvConfig, an id string or a mapping, got {type(config).__name__}")


def _build_family(config: EnvConfig, step_limit: int | None, seed: int | None) -> FamilyEnv:
    family, name = config.family, config.name
    if family == "gym":
        from distrl.envs.gym_envs import make_gym_env

        return make_gym_env(name, step_limit, seed)
    if family == "dmc":
        from distrl.envs.dmc import make_dmc_env

        return make_dmc_env(name, step_limit, seed)
    if family == "safe":
        from distrl.envs.safety import make_safe_env

        return make_safe_env(name, config.robosuite, step_limit, seed)
    from distrl.envs.robosuite_envs import make_robosuite_env

    return make_robosuite_env(name, config.robosuite, step_limit, seed)


def make_env(config: EnvConfig | str | Mapping[str, Any], seed: int | None = None) -> gymnasium.Env:
    """Build an env from an id (`gym:HalfCheetah-v5`, `dmc:cheetah-run`, `robosuite:Lift`,
    `safe:point-goal`) or config.

    The env has a flat float32 Box observation and a Box action in [-1, 1] (outside values are
    clipped), reports time limits as `truncated`, and sets `info["success"]` where the task
    defines success (and `info["cost"]` on `safe:` tasks, see `distrl.envs.safety`). `seed`
    (else `config.seed`) seeds the first `reset()` and the action space. `env_spec(env)`
    describes it.
    """
    config = _as_config(config)
    if config.family not in FAMILY_PREFIXES or not config.name:
        raise _unknown_id(config.id)
    if seed is None:
        seed = config.seed
    repeat = config.action_repeat
    # Family envs count their own steps; with action repeat the limit is in repeated steps.
    step_limit = None if config.max_episode_steps is None else config.max_episode_steps * repeat
    built = _build_family(config, step_limit, seed)
    env = built.env if repeat == 1 else ActionRepeat(built.env, repeat)
    if config.terminate_on_success:
        if not built.has_success:
            env.close()
            raise ValueError(f"env.terminate_on_success: {config.id} reports no success signal")
        env = EndOnSuccess(env)
    for path in config.wrappers:
        env = _apply_wrapper(env, path)
    spec = EnvSpec(
        id=config.id,
        obs_dim=int(env.observation_space.shape[0]),
        action_dim=int(env.action_space.shape[0]),
        obs_keys=built.obs_keys,
        max_episode_steps=None if built.step_limit is None else math.ceil(built.step_limit / repeat),
        has_success=built.has_success,
        signals=declared_signals(env),
    )
    setattr(env, SPEC_ATTR, spec)
    return env


def _apply_wrapper(env: gymnasium.Env, path: str) -> gymnasium.Env:
    """`env` wrapped by the callable at 'package.module:callable'; errors name the wrapper."""
    module_name, _, attr = path.partition(":")
    try:
        wrapper = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        env.close()
        raise ValueError(f"env.wrappers: cannot load {path!r}: {exc}") from None
    wrapped = wrapper(env)
    if not isinstance(wrapped, gymnasium.Env):
        env.close()
        raise ValueError(f"env.wrappers: {path!r} returned {type(wrapped).__name__}, not a gymnasium env")
    return wrapped
