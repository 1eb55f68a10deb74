"""What an experiment's components agree on, derived once from its config: the env's space, the
algorithm's transition fields and the replay table that stores them.

Actors, replay launchers, learners, the evaluator and demo collection all call these, so no list
of fields is written anywhere but in the algorithm that declares it.
"""

from __future__ import annotations

import gymnasium

from distrl.algos import SpaceSpec, TransitionField, demo_flag_field, transition_fields
from distrl.config import ExperimentConfig
from distrl.envs import EnvConfig, env_spec, make_env
from distrl.replay.config import FieldSpecConfig, TableConfig


def space_of(env: gymnasium.Env) -> SpaceSpec:
    """The algorithm-facing description of a built env (sizes, signals, time limit)."""
    spec = env_spec(env)
    return SpaceSpec(spec.obs_dim, spec.action_dim, spec.signals, spec.max_episode_steps)


def env_space(env_config: EnvConfig) -> SpaceSpec:
    """Build the env once to read its space."""
    env = make_env(env_config)
    try:
        return space_of(env)
    finally:
        env.close()


def experiment_fields(
    config: ExperimentConfig, space: SpaceSpec | None = None
) -> tuple[TransitionField, ...]:
    """The algorithm's fields, plus the demo flag when demos are stored in the replay table."""
    space = space if space is not None else env_space(config.env)
    fields = transition_fields(config.algo.name, space, config.algo.params())
    if config.demos.path is not None and config.demos.placement == "replay":
        fields = (*fields, demo_flag_field())
    return fields


def replay_table_config(config: ExperimentConfig, space: SpaceSpec | None = None) -> TableConfig:
    """`replay.table` with its spec taken from the experiment's fields (unless the config fixes one)."""
    table = config.replay.table
    if table.spec is not None:
        return table
    spec = {
        f.name: FieldSpecConfig(dtype=f.dtype, shape=list(f.shape)) for f in experiment_fields(config, space)
    }
    return table.model_copy(update={"spec": spec})
