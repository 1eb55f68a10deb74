"""What an experiment's components agree on, derived once from its config: the env's space, the
algorithm's transition fields and the replay table that stores them.

Actors, replay launchers, learners, the evaluator and demo collection all call these, so no list
of fields is written anywhere but in the algorithm that declares it.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium

from distrl.algos import SpaceSpec, TransitionField, demo_flag_field, transition_fields
from distrl.config import ExperimentConfig
from distrl.envs import EnvConfig, env_spec, make_env
from distrl.replay.config import FieldSpecConfig, ReplayShardConfig, TableConfig


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


def check_experiment(config: ExperimentConfig, demos_here: bool = True) -> SpaceSpec:
    """Build the env and check the demo store against the run, in the launcher before any
    component starts: a config that cannot run fails once, with its error on the console, not in
    every component's log as they restart. Raises `ConfigError` naming the section at fault.

    `demos_here=False` (a cluster, where the learner's node may see files this machine does not)
    checks the demo store only when this machine has it."""
    from distrl.config import ConfigError
    from distrl.learners.demos import check_demo_store

    if config.network.security.role_tokens_dir is not None:
        raise ConfigError(
            "network.security.role_tokens_dir: `distrl train` gives every component one credential "
            "(token or token_file); per-role tokens are for servers started by hand "
            "(`distrl serve ... --role-tokens-dir`) and for Kubernetes (`distrl k8s render` makes them)"
        )
    try:
        space = env_space(config.env)
    except ValueError as exc:  # an unknown id, bad options or wrappers: the message says which
        raise ConfigError(f"env: {exc}") from None
    except Exception as exc:  # e.g. a family whose package is not installed
        raise ConfigError(f"env: cannot build {config.env.id!r}: {type(exc).__name__}: {exc}") from None
    demos = config.demos
    if demos.path is not None and (demos_here or Path(demos.path).exists()):
        try:
            check_demo_store(
                demos.path, experiment_fields(config, space), config.env.id, demos.allow_env_mismatch
            )
        except (ValueError, OSError) as exc:
            raise ConfigError(f"demos.path: {exc}") from None
    return space


def replay_table_config(config: ExperimentConfig, space: SpaceSpec | None = None) -> TableConfig:
    """`replay.table` with its spec taken from the experiment's fields (unless the config fixes one)."""
    table = config.replay.table
    if table.spec is not None:
        return table
    spec = {
        f.name: FieldSpecConfig(dtype=f.dtype, shape=list(f.shape)) for f in experiment_fields(config, space)
    }
    return table.model_copy(update={"spec": spec})


def replay_shard_config(config: ExperimentConfig, run_dir: Path, index: int) -> ReplayShardConfig:
    """Shard `index` of a run as the local and Ray launchers start it (checkpoints under the run)."""
    return ReplayShardConfig(
        tables=[replay_table_config(config)],
        checkpoint_dir=run_dir / "replay" / f"shard-{index}",
        checkpoint_every_s=config.replay.checkpoint_every_s,
        seed=config.seed * 1000 + index,
        ack_delay_ms=config.replay.ack_delay_ms,
    )
