"""`gym:<id>`: any registered Gymnasium env with a Box action space (MuJoCo ones listed)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os

import gymnasium

from distrl.envs.spec import FamilyEnv
from distrl.envs.wrappers import FlatBoxAdapter

_MUJOCO_ENTRY = "gymnasium.envs.mujoco."


def mujoco_ids() -> list[str]:
    """Registered Gymnasium MuJoCo ids that run on the `mujoco` bindings (v4 and later)."""
    # v2/v3 ids are still registered but need the long-dead mujoco-py, so they are left out.
    return sorted(
        env_id
        for env_id, spec in gymnasium.registry.items()
        if isinstance(spec.entry_point, str) and spec.entry_point.startswith(_MUJOCO_ENTRY)
    )


def _find_spec(name: str) -> gymnasium.envs.registration.EnvSpec:
    module, sep, _ = name.partition(":")
    if sep:  # "package.module:Env-v0" registers its envs on import, as gymnasium.make does
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"gym:{name}: cannot import {module!r} to register it: {exc}") from None
    try:
        return gymnasium.spec(name)
    except gymnasium.error.Error:
        known = mujoco_ids()
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join('gym:' + c for c in close)}?" if close else ""
        raise ValueError(
            f"unknown Gymnasium id gym:{name}.{hint} Any registered Gymnasium id with a Box action "
            f"space works; the MuJoCo ones are: {', '.join(known)}"
        ) from None


def make_gym_env(name: str, step_limit: int | None, seed: int | None) -> FamilyEnv:
    """Build `gym:<name>` with a flat float32 observation and a [-1, 1] action.

    `step_limit` None keeps the id's registered `max_episode_steps`. The limit is reported as
    `truncated`; only the task itself sets `terminated`.
    """
    os.environ.setdefault("MUJOCO_GL", "disable")
    spec = _find_spec(name)
    limit = step_limit if step_limit is not None else spec.max_episode_steps
    try:
        # The bare env: FlatBoxAdapter does the time limit and order check itself, and the
        # passive checker would only re-validate what the adapter enforces.
        bare = dataclasses.replace(spec, order_enforce=False)
        env = gymnasium.make(bare, max_episode_steps=-1, disable_env_checker=True)
    except (gymnasium.error.DependencyNotInstalled, ImportError) as exc:
        raise ValueError(f"gym:{name} cannot be built here: {exc}") from None
    try:
        adapter = FlatBoxAdapter(env, f"gym:{name}", step_limit=limit, seed=seed)
    except ValueError:
        env.close()
        raise
    return FamilyEnv(env=adapter, obs_keys=adapter.obs_keys, has_success=False, step_limit=limit)
