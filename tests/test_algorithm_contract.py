"""The algorithm contract end to end: a test-only algorithm registered here runs a real actor on
real MuJoCo, through a real replay shard and parameter server on loopback, into a real learner.

Every stored value is checked against what the policy, the env wrapper and the rollout core
must have produced: (a) chunks of k actions with a latent extra, (b) a per-step cost signal,
(c) an actor-side filter fed by a second parameter set, storing proposed and executed actions,
(d) the policy's own warm-up step, plus resets at episode ends.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_helpers import run_pipeline
from probe_algorithm import DECODE_SCALE, FILTER_PARAMS, NAME, ProbeConfig, probe_weights, register

from distrl.actors.actor import Actor, ActorAddresses
from distrl.algos import SpaceSpec, transition_fields
from distrl.config import validate_config
from distrl.experiment import env_space, experiment_fields, replay_table_config
from distrl.replay.config import ReplayShardConfig
from distrl.replay.server import serve_replay_shard

BOUND = 0.5
INITIAL_OBS_BOUND = 0.01  # InvertedPendulum resets qpos and qvel uniformly in +-0.01


@pytest.fixture(autouse=True)
def _probe_registered():
    register()


def probe_config(chunk: int, updates: int = 120) -> dict:
    return {
        "name": "contract",
        "seed": 3,
        "env": {"id": "gym:InvertedPendulum-v5", "wrappers": ["probe_algorithm:CostFromAction"]},
        "algo": {"name": NAME, "chunk": chunk, "filter_bound": BOUND, "filter_every": 5},
        "actors": {"num_actors": 1, "envs_per_actor": 2, "warmup_steps": 150, "insert_batch_size": 8},
        "replay": {
            "table": {
                "capacity": 100_000,
                "samples_per_insert": 2.0,
                "min_size_to_sample": 64,
                "error_buffer": 64,
            },
            "checkpoint_every_s": None,
        },
        "learner": {"batch_size": 32, "device": "cpu", "publish_every": 5, "checkpoint_every": 10_000},
        "train": {"max_updates": updates},
        "eval": {"enabled": False},
        "telemetry": {"console": False},
    }


@pytest.mark.parametrize("chunk", [4, 1])
def test_chunks_costs_filter_and_warmup_reach_the_learner_batch(chunk: int, tmp_path: Path) -> None:
    updates = 120
    learner, actor, sets = run_pipeline(probe_config(chunk, updates), tmp_path, updates)
    assert learner.updates == updates
    assert sorted(sets) == sorted(["policy", FILTER_PARAMS])
    assert actor.param_versions[FILTER_PARAMS] >= 2, "the filter set was published only once"

    batch = {k: np.concatenate([b[k] for b in learner.algo.batches]) for k in learner.algo.batches[0]}
    space = env_space(learner.config.env)
    assert space.signals == ("cost",)
    declared = {
        f.name: f for f in transition_fields(NAME, space, ProbeConfig(chunk=chunk, filter_bound=BOUND))
    }
    # The declared fields, plus the importance weights the learner adds to every batch.
    assert set(batch) == {*declared, "weights"}, "the learner's batch must hold the declared fields"
    for name, field in declared.items():
        assert batch[name].shape[1:] == field.shape, name
        assert batch[name].dtype == field.np_dtype, name

    n, a = len(batch["reward"]), space.action_dim
    weights = probe_weights(space, ProbeConfig(chunk=chunk, seed=0))
    sign = np.where(batch["warmup"], -1.0, 1.0)[:, None]
    latent = sign * np.tanh(batch["obs"] @ weights.T)
    plan = (DECODE_SCALE * latent).reshape(n, chunk, a)
    executed = batch["action"].reshape(n, chunk, a)

    # (d) the policy's warm-up step and its own decisions both reached replay.
    assert batch["warmup"].any() and (~batch["warmup"]).any()
    # (c) the filter: proposed = the policy's plan, executed = the plan clipped to the published bound.
    np.testing.assert_allclose(batch["proposed_action"].reshape(n, chunk, a), plan, atol=1e-5)
    np.testing.assert_allclose(executed, np.clip(plan, -BOUND, BOUND), atol=1e-5)
    np.testing.assert_array_equal(batch["intervened"], (np.abs(plan) > BOUND + 1e-6).any(axis=(1, 2)))
    assert batch["intervened"].any() and (~batch["intervened"]).any()

    steps = batch["env_steps"] if chunk > 1 else np.ones(n, dtype=np.int32)
    ended = batch["terminated"] | batch["truncated"]
    if chunk > 1:
        # (a) the latent extra; k steps unless the episode ended inside the chunk.
        np.testing.assert_allclose(batch["latent"], latent, atol=1e-5)
        assert steps.min() >= 1 and steps.max() == chunk
        assert (steps[~ended] == chunk).all()
        assert (steps[ended] < chunk).any(), "no episode ended inside a chunk; the test lost its point"
    # Rewards summed over the executed steps: InvertedPendulum-v5 pays 1 for every non-terminal step.
    np.testing.assert_allclose(batch["reward"], steps - batch["terminated"], atol=1e-6)
    # (b) cost = sum over executed steps of action[0]^2, from the env wrapper's declared signal.
    mask = np.arange(chunk)[None, :] < steps[:, None]
    np.testing.assert_allclose(batch["cost"], (executed[:, :, 0] ** 2 * mask).sum(1), rtol=1e-5, atol=1e-6)
    # Resets reach the policy: a decision right after a reset starts from InvertedPendulum's initial state.
    first = batch["since_reset"] == 0
    assert first.any() and (~first).any()
    assert np.abs(batch["obs"][first]).max() <= INITIAL_OBS_BOUND + 1e-6
    # `observe` sees every decision's summed reward: the episode's reward before this decision.
    assert (batch["reward_so_far"][first] == 0).all()
    later = ~first & (batch["reward_so_far"] > 0)
    assert later.any()
    assert (batch["reward_so_far"] <= batch["since_reset"] * chunk + 1e-4).all()
    assert actor.policy.reset_calls > 1


def test_demo_flag_joins_the_fields_only_when_demos_live_in_replay(tmp_path: Path) -> None:
    raw = probe_config(1)
    config = validate_config(raw)
    space = SpaceSpec(4, 1, ("cost",))
    assert "is_demo" not in {f.name for f in experiment_fields(config, space)}
    raw["demos"] = {"path": str(tmp_path / "demos.zarr"), "placement": "replay"}
    config = validate_config(raw)
    fields = {f.name: f for f in experiment_fields(config, space)}
    assert fields["is_demo"].fill == 0
    spec = replay_table_config(config, space).spec
    assert spec is not None and spec["is_demo"].dtype == "bool" and spec["obs"].shape == [4]


def test_a_policy_producing_an_undeclared_or_misshapen_field_is_refused_by_name() -> None:
    from distrl.actors.rollout import Rollout, RolloutError
    from distrl.algos import PolicyStep, base_fields
    from distrl.envs import make_env

    class Bad:
        param_sets, required_params, episode_sums = (), (), ()

        def __init__(self, extras, action_dim=1):
            self.extras, self.action_dim = extras, action_dim

        def act(self, obs, deterministic=False):
            return PolicyStep(np.zeros((len(obs), self.action_dim), np.float32), self.extras)

        def warmup(self, obs, rng):
            return self.act(obs)

        def reset(self, mask):
            pass

        def observe(self, reward, ended):
            pass

        def load_params(self, name, tensors):
            pass

    space = SpaceSpec(4, 1)
    env = make_env("gym:InvertedPendulum-v5", seed=0)
    with pytest.raises(RolloutError, match="'latent'"):
        Rollout([env], Bad({"latent": np.zeros((1, 3))}), base_fields(space)).step()
    env = make_env("gym:InvertedPendulum-v5", seed=0)
    with pytest.raises(RolloutError, match="env_actions have shape"):
        Rollout([env], Bad({}, action_dim=3), base_fields(space)).step()


def write_pendulum_demos(path: Path, episodes: int = 4, steps: int = 50) -> None:
    from distrl.data import DemoWriter

    rng = np.random.default_rng(0)
    with DemoWriter(path) as writer:
        for _ in range(episodes):
            obs = rng.normal(0, 0.1, (steps + 1, 4)).astype(np.float32)
            terminated = np.zeros(steps, dtype=bool)
            truncated = np.zeros(steps, dtype=bool)
            truncated[-1] = True
            writer.append_episode(
                {
                    "obs": obs[:-1],
                    "next_obs": obs[1:],
                    "action": rng.uniform(-0.5, 0.5, (steps, 1)).astype(np.float32),
                    "reward": np.ones(steps, dtype=np.float32),
                    "terminated": terminated,
                    "truncated": truncated,
                }
            )


def test_demos_placed_in_replay_reach_sacs_behaviour_cloning(tmp_path: Path) -> None:
    """Demo items inserted into replay carry `is_demo`, and the learner keeps it on the way to the
    algorithm: SAC's BC term then clones them (`bc_kept` > 0; it read 0 when the flag was lost)."""
    demos = tmp_path / "demos.zarr"
    write_pendulum_demos(demos)
    raw = probe_config(1)
    raw["env"] = {"id": "gym:InvertedPendulum-v5"}
    raw["algo"] = {"name": "sac", "hidden_sizes": [32, 32], "bc_weight": 1.0, "bc_q_filter": False}
    raw["demos"] = {"path": str(demos), "placement": "replay"}
    raw["telemetry"]["report_every_s"] = 0.2
    # Room for the demo inserts at once: with the probe's tight error buffer the rate limiter held
    # them back until the learner had sampled enough, and on a loaded machine the last report
    # window could still see no demo item.
    raw["replay"]["table"]["error_buffer"] = 10_000
    learner, _, _ = run_pipeline(raw, tmp_path / "run", updates=80)
    assert "is_demo" in {f.name for f in learner.fields}
    assert learner.last_metrics["bc_kept"] > 0.0


def test_a_demo_store_without_a_declared_field_is_refused_by_name(tmp_path: Path) -> None:
    from distrl.data import DatasetError
    from distrl.learners.demos import DemoTable

    demos = tmp_path / "demos.zarr"
    write_pendulum_demos(demos, episodes=1)
    fields = transition_fields(NAME, SpaceSpec(4, 1, ("cost",)), ProbeConfig(chunk=1))
    with pytest.raises(DatasetError, match="no 'cost' field"):
        DemoTable(demos, fields, torch.device("cpu"))


def test_actors_compression_reaches_the_replay_writer(tmp_path: Path) -> None:
    """`actors.compression` shrinks what an actor sends (it used to be dropped on the way)."""
    sent = {}
    for compression in ("none", "zstd"):
        raw = probe_config(1)
        raw["env"] = {"id": "gym:InvertedPendulum-v5"}
        raw["algo"] = {"name": "sac", "hidden_sizes": [16]}
        raw["actors"].update(compression=compression, warmup_steps=10_000, insert_batch_size=64)
        raw["replay"]["table"] = {"capacity": 10_000}
        config = validate_config(raw)
        shard, running = serve_replay_shard(ReplayShardConfig(tables=[replay_table_config(config)]))
        try:
            actor = Actor(config, 0, ActorAddresses([running.address], None))
            actor.run(threading.Event(), max_steps=2_048)
            assert len(shard.tables[config.replay.table.name]) == 2_048
        finally:
            running.stop(0)
            shard.close(final_checkpoint=False)
        sent[compression] = actor.writer_stats
    assert sent["zstd"].batches_sent == sent["none"].batches_sent == 32
    assert sent["zstd"].bytes_sent < 0.9 * sent["none"].bytes_sent


PRE_CONTRACT = Path(__file__).parent / "data" / "pre_contract"


def sac_pendulum(**demos) -> dict:
    raw = probe_config(1)
    raw["env"] = {"id": "gym:InvertedPendulum-v5"}
    raw["algo"] = {"name": "sac"}
    raw["replay"]["table"] = {"capacity": 1_000}
    if demos:
        raw["demos"] = demos
    return raw


def test_a_replay_checkpoint_from_before_the_contract_restores_under_the_declared_spec() -> None:
    from distrl.replay.checkpoint import restore_tables

    config = validate_config(sac_pendulum())
    tables, path = restore_tables([replay_table_config(config)], PRE_CONTRACT / "replay")
    assert path is not None and len(tables["default"]) == 40
    fields = tables["default"].sample(8).fields
    assert set(fields) == {f.name for f in experiment_fields(config)}
    assert fields["obs"].shape == (8, 4) and fields["terminated"].dtype == np.bool_

    # A spec that needs a field the old checkpoint lacks fails naming the field.
    config = validate_config(sac_pendulum(path=str(PRE_CONTRACT / "demos.zarr"), placement="replay"))
    with pytest.raises(ValueError, match="no field 'is_demo'"):
        restore_tables([replay_table_config(config)], PRE_CONTRACT / "replay")


def test_a_demo_store_from_before_the_contract_loads_into_the_demo_table() -> None:
    from distrl.learners.demos import DemoTable

    path = PRE_CONTRACT / "demos.zarr"
    for placement in ("learner", "replay"):
        config = validate_config(sac_pendulum(path=str(path), placement=placement))
        table = DemoTable(path, experiment_fields(config), torch.device("cpu"))
        assert table.size == 40
        columns = table.transitions()
        assert set(columns) == {f.name for f in experiment_fields(config)}
        if placement == "replay":
            assert columns["is_demo"].all()
        assert columns["terminated"].sum() == 4


def test_the_readmes_minimal_algorithm_runs_as_a_plugin(tmp_path: Path, monkeypatch) -> None:
    """The README's example, saved as a module and named in `algo.plugin`, trains and acts."""
    from distrl.algos import make_algorithm, make_policy, unregister_algorithm

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Writing an algorithm", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "zero_plugin.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    unregister_algorithm("zero")
    try:
        raw = sac_pendulum()
        raw["algo"] = {"name": "zero", "plugin": "zero_plugin", "scale": 0.25}
        config = validate_config(raw)
        space = env_space(config.env)
        algo = make_algorithm("zero", space, config.algo.params(), "cpu")
        assert algo.update({"reward": torch.ones(3)}) == {"reward_mean": 1.0}
        policy = make_policy("zero", space, config.algo.params())
        policy.load_params("policy", algo.params("policy"))
        step = policy.act(np.zeros((2, space.obs_dim), np.float32))
        np.testing.assert_array_equal(step.env_actions, np.full((2, 1), 0.25, np.float32))
        raw["algo"]["plugin"] = "no_such_plugin_module"
        with pytest.raises(ValueError, match="plugin 'no_such_plugin_module' cannot be imported"):
            validate_config(raw)
    finally:
        unregister_algorithm("zero")
