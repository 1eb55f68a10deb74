"""What the rest of the system needs to know about an env: sizes, observation layout, limits."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium

# The factory stores the spec on the env it returns under this attribute; further wrappers
# (safety, recording) keep it reachable through `get_wrapper_attr`.
SPEC_ATTR = "distrl_spec"


@dataclass(frozen=True)
class EnvSpec:
    """Shape of an env as built by `make_env`.

    `obs_keys` names the pieces concatenated into the flat observation, in order (None when
    the underlying observation was already a single array). `max_episode_steps` counts steps of
    the returned env, after action repeat. `signals` names the per-step scalars the env reports in
    `info` besides the reward (e.g. "cost"); they are stored with every transition.
    """

    id: str
    obs_dim: int
    action_dim: int
    obs_keys: list[str] | None
    max_episode_steps: int | None
    has_success: bool
    signals: tuple[str, ...] = ()


# A wrapper that reports per-step scalars in `info` names them in this attribute (a tuple of
# names); `make_env` adds them to the spec's `signals`.
SIGNALS_ATTR = "distrl_signals"


def env_spec(env: gymnasium.Env) -> EnvSpec:
    """The spec of an env from `make_env`, or one inferred from the spaces of any flat Box env."""
    try:
        spec = env.get_wrapper_attr(SPEC_ATTR)
    except AttributeError:
        spec = None
    if isinstance(spec, EnvSpec):
        return spec
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gymnasium.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"env_spec needs a flat Box observation space, got {obs_space}")
    if not isinstance(act_space, gymnasium.spaces.Box) or len(act_space.shape) != 1:
        raise ValueError(f"env_spec needs a flat Box action space, got {act_space}")
    gym_spec = env.spec
    return EnvSpec(
        id=gym_spec.id if gym_spec is not None else type(env.unwrapped).__name__,
        obs_dim=int(obs_space.shape[0]),
        action_dim=int(act_space.shape[0]),
        obs_keys=None,
        max_episode_steps=gym_spec.max_episode_steps if gym_spec is not None else None,
        has_success=False,
        signals=declared_signals(env),
    )


def declared_signals(env: gymnasium.Env) -> tuple[str, ...]:
    """The signal names the wrappers of `env` declare (outermost last), without duplicates."""
    names: list[str] = []
    layer: gymnasium.Env | None = env
    chain = []
    while layer is not None:
        chain.append(layer)
        layer = getattr(layer, "env", None) if isinstance(layer, gymnasium.Wrapper) else None
    for layer in reversed(chain):
        for name in getattr(layer, SIGNALS_ATTR, ()) or ():
            if name not in names:
                names.append(name)
    return tuple(names)


@dataclass
class FamilyEnv:
    """What a family builder hands the factory (internal to `distrl.envs`).

    `step_limit` is in the family env's own steps (before action repeat); None = no limit.
    """

    env: gymnasium.Env
    obs_keys: list[str] | None
    has_success: bool
    step_limit: int | None
