"""The env factory on real MuJoCo: Gymnasium, dm_control and robosuite envs, and `distrl envs`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("MUJOCO_GL", "disable")

import gymnasium
import numpy as np
import pydantic
import pytest

from distrl.envs import EnvConfig, EnvSpec, env_spec, list_envs, make_env
from distrl.envs.wrappers import ActionScaler

CLI = [sys.executable, "-m", "distrl.cli", "envs"]


def assert_flat_box_env(env: gymnasium.Env, obs_dim: int, action_dim: int) -> None:
    assert env.observation_space.shape == (obs_dim,)
    assert env.observation_space.dtype == np.float32
    assert env.action_space.shape == (action_dim,)
    assert env.action_space.dtype == np.float32
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    obs, info = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (obs_dim,)
    assert isinstance(info, dict)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert obs.dtype == np.float32 and obs.shape == (obs_dim,)
        assert np.all(np.isfinite(obs))
        assert isinstance(reward, float)
        assert isinstance(terminated, bool) and isinstance(truncated, bool)


# --- Gymnasium ---------------------------------------------------------------------------


def test_gym_halfcheetah_builds_with_flat_float32_obs_and_unit_actions() -> None:
    env = make_env("gym:HalfCheetah-v5", seed=0)
    assert_flat_box_env(env, obs_dim=17, action_dim=6)
    spec = env_spec(env)
    assert spec == EnvSpec(
        id="gym:HalfCheetah-v5",
        obs_dim=17,
        action_dim=6,
        obs_keys=None,
        max_episode_steps=1000,
        has_success=False,
    )
    env.close()


def test_actions_are_rescaled_to_the_env_bounds_and_clipped() -> None:
    # InvertedPendulum's motor takes [-3, 3]; Humanoid's [-0.4, 0.4].
    env = make_env("gym:InvertedPendulum-v5", seed=0)
    env.reset()
    ctrl = env.unwrapped.data.ctrl
    env.step(np.array([0.5]))
    assert ctrl[0] == pytest.approx(1.5)
    env.step(np.array([1.0]))
    assert ctrl[0] == pytest.approx(3.0)
    env.step(np.array([7.0]))  # outside [-1, 1]: clipped, no error
    assert ctrl[0] == pytest.approx(3.0)
    env.step(np.array([-np.inf]))
    assert ctrl[0] == pytest.approx(-3.0)
    env.close()

    humanoid = make_env("gym:Humanoid-v5", seed=0)
    humanoid.reset()
    action = np.linspace(-2.0, 2.0, 17)
    humanoid.step(action)
    np.testing.assert_allclose(humanoid.unwrapped.data.ctrl, 0.4 * np.clip(action, -1, 1), atol=1e-6)
    humanoid.close()


def test_nan_and_misshaped_actions_are_rejected() -> None:
    env = make_env("gym:HalfCheetah-v5", seed=0)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros(6))
    env.reset()
    env.step([0.1] * 6)  # lists and float32 arrays are fine
    env.step(np.full(6, 0.1, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0.0, 0.0, np.nan, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        env.step(np.zeros(5))
    with pytest.raises(ValueError, match="not a numeric array"):
        env.step(["a"] * 6)
    env.close()


def test_action_scaler_maps_unit_box_onto_asymmetric_bounds() -> None:
    scale = ActionScaler(np.array([0.0, -2.0]), np.array([1.0, 6.0]), "test")
    np.testing.assert_allclose(scale(np.array([-1.0, -1.0])), [0.0, -2.0])
    np.testing.assert_allclose(scale(np.array([1.0, 1.0])), [1.0, 6.0])
    np.testing.assert_allclose(scale(np.array([0.0, 0.5])), [0.5, 4.0])
    np.testing.assert_allclose(scale([3.0, -3.0]), [1.0, -2.0])
    with pytest.raises(ValueError, match="unbounded"):
        ActionScaler(np.array([-np.inf]), np.array([1.0]), "test")


def test_time_limit_truncates_and_never_terminates() -> None:
    env = make_env(EnvConfig(id="gym:InvertedPendulum-v5", max_episode_steps=5), seed=0)
    assert env_spec(env).max_episode_steps == 5
    env.reset()
    for step in range(1, 6):
        _, _, terminated, truncated, _ = env.step(np.zeros(1))
        assert not terminated
        assert truncated == (step == 5)
    env.close()


def test_falling_hopper_terminates_without_truncation() -> None:
    env = make_env("gym:Hopper-v5", seed=0)
    env.reset()
    for _ in range(1000):
        _, _, terminated, truncated, _ = env.step(np.array([1.0, -1.0, 1.0]))
        if terminated or truncated:
            break
    assert terminated and not truncated
    env.close()


def test_action_repeat_sums_rewards_and_counts_the_limit_in_agent_steps() -> None:
    env = make_env(EnvConfig(id="gym:InvertedPendulum-v5", max_episode_steps=3, action_repeat=2), seed=0)
    assert env_spec(env).max_episode_steps == 3
    env.reset()
    results = [env.step(np.zeros(1)) for _ in range(3)]
    assert [r[1] for r in results] == [2.0, 2.0, 2.0]  # +1 per upright env step, two per agent step
    assert [r[3] for r in results] == [False, False, True]
    assert env.unwrapped.data.time == pytest.approx(6 * env.unwrapped.dt)
    env.close()


def test_seed_makes_the_first_observation_reproducible() -> None:
    first = [make_env("gym:HalfCheetah-v5", seed=s).reset()[0] for s in (3, 3, 4)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])
    from_config = make_env(EnvConfig(id="gym:HalfCheetah-v5", seed=3)).reset()[0]
    np.testing.assert_array_equal(from_config, first[0])
    # An explicit reset seed wins, and the random action stream is seeded too.
    a, b = make_env("gym:HalfCheetah-v5", seed=1), make_env("gym:HalfCheetah-v5", seed=1)
    np.testing.assert_array_equal(a.reset(seed=9)[0], b.reset(seed=9)[0])
    np.testing.assert_array_equal(a.action_space.sample(), b.action_space.sample())


def test_env_spec_of_a_plain_gymnasium_env_is_inferred() -> None:
    spec = env_spec(gymnasium.make("Pendulum-v1"))
    assert (spec.id, spec.obs_dim, spec.action_dim, spec.max_episode_steps) == ("Pendulum-v1", 3, 1, 200)
    assert spec.obs_keys is None and not spec.has_success


def test_config_from_a_mapping_and_other_gymnasium_ids() -> None:
    env = make_env({"id": "gym:Pendulum-v1", "max_episode_steps": 7})
    assert_flat_box_env(env, obs_dim=3, action_dim=1)
    assert env_spec(env).max_episode_steps == 7


# --- dm_control --------------------------------------------------------------------------


def test_dmc_cheetah_run_builds_and_ends_episodes_truncated() -> None:
    env = make_env("dmc:cheetah-run", seed=0)
    assert_flat_box_env(env, obs_dim=17, action_dim=6)
    spec = env_spec(env)
    assert spec.obs_keys == ["position", "velocity"]
    assert spec.max_episode_steps == 1000
    env.reset()
    steps = 0
    while True:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        steps += 1
        if terminated or truncated:
            break
    assert steps == 1000 and truncated and not terminated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(6))
    env.close()


def test_dmc_custom_time_limit_and_underscore_names() -> None:
    env = make_env(EnvConfig(id="dmc:ball_in_cup-catch", max_episode_steps=4), seed=0)
    assert_flat_box_env(env, obs_dim=8, action_dim=2)
    env.reset()
    flags = [env.step(np.zeros(2))[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(False, True)]
    point_mass = make_env("dmc:point_mass-easy", seed=0)
    assert_flat_box_env(point_mass, obs_dim=4, action_dim=2)


def test_dmc_nan_action_is_rejected() -> None:
    env = make_env("dmc:cheetah-run", seed=0)
    env.reset()
    env.step(np.full(6, 3.0))  # out of range: clipped
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0, 0, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(6))
    env.reset()
    env.step(np.zeros(6))


def test_dmc_seeding_is_reproducible() -> None:
    first = [make_env("dmc:walker-walk", seed=s).reset()[0] for s in (5, 5, 6)]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2])


# --- errors ------------------------------------------------------------------------------


def test_unknown_id_lists_prefixes_and_ids() -> None:
    with pytest.raises(ValueError) as err:
        make_env("atari:Pong-v5")
    message = str(err.value)
    for expected in ("gym:", "dmc:", "robosuite:", "gym:HalfCheetah-v5", "dmc:cheetah-run", "robosuite:Lift"):
        assert expected in message
    with pytest.raises(ValueError, match="Did you mean gym:HalfCheetah-v5"):
        make_env("HalfCheetah-v5")


def test_bad_family_names_list_that_familys_names() -> None:
    with pytest.raises(ValueError, match=r"HalfCheetah-v5.*Walker2d-v5"):
        make_env("gym:NoSuchThing-v5")
    with pytest.raises(ValueError, match=r"Did you mean dmc:cheetah-run.*ball_in_cup-catch"):
        make_env("dmc:cheetah-runn")
    with pytest.raises(ValueError, match="Discrete"):
        make_env("gym:CartPole-v1")


def test_bad_options_name_the_option() -> None:
    with pytest.raises(pydantic.ValidationError, match="max_episode_step"):
        EnvConfig(id="gym:Hopper-v5", max_episode_step=10)
    with pytest.raises(pydantic.ValidationError, match="action_repeat"):
        EnvConfig(id="gym:Hopper-v5", action_repeat=0)
    with pytest.raises(pydantic.ValidationError, match=r"robosuite\.horizon"):
        EnvConfig(id="robosuite:Lift", robosuite={"horizon": -1})
    with pytest.raises(pydantic.ValidationError, match="robosuite: options only apply"):
        EnvConfig(id="gym:Hopper-v5", robosuite={"horizon": 10})


def test_list_envs_covers_every_family() -> None:
    ids = list_envs()
    assert set(ids) == {"gym", "dmc", "robosuite", "safe"}
    assert "gym:HalfCheetah-v5" in ids["gym"] and "gym:Humanoid-v5" in ids["gym"]
    assert not any(i.endswith(("-v2", "-v3")) for i in ids["gym"])  # need mujoco-py
    assert {"dmc:cheetah-run", "dmc:ball_in_cup-catch", "dmc:point_mass-easy"} <= set(ids["dmc"])
    assert {"robosuite:Lift", "robosuite:PickPlaceCan", "robosuite:NutAssemblySquare"} <= set(
        ids["robosuite"]
    )


# --- robosuite ---------------------------------------------------------------------------

LIFT_KEYS = [
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_gripper_qpos",
    "cube_pos",
    "cube_quat",
    "gripper_to_cube_pos",
]


@pytest.fixture(scope="module")
def lift() -> gymnasium.Env:
    env = make_env(EnvConfig(id="robosuite:Lift", seed=0))
    yield env
    env.close()


def test_robosuite_lift_builds_with_documented_obs_order(lift: gymnasium.Env) -> None:
    spec = env_spec(lift)
    assert spec.obs_keys == LIFT_KEYS
    assert (spec.obs_dim, spec.action_dim, spec.max_episode_steps, spec.has_success) == (19, 7, 500, True)
    obs, info = lift.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (19,)
    assert info["success"] is False
    # The flat vector is the documented keys concatenated; the object part is robosuite's object-state.
    raw = lift.unwrapped._env._get_observations()
    expected = np.concatenate([np.ravel(raw[k]) for k in LIFT_KEYS]).astype(np.float32)
    np.testing.assert_array_equal(obs, expected)
    np.testing.assert_array_equal(obs[9:], raw["object-state"].astype(np.float32))
    obs, reward, terminated, truncated, info = lift.step(np.zeros(7))
    assert obs.shape == (19,) and isinstance(reward, float)
    assert info["success"] is False and not terminated and not truncated


def test_robosuite_success_comes_from_the_task(lift: gymnasium.Env) -> None:
    lift.reset(seed=0)
    task = lift.unwrapped._env
    cube_joint = task.cube.joints[0]
    qpos = task.sim.data.get_joint_qpos(cube_joint).copy()
    qpos[2] += 0.2  # hold the cube well above the table: Lift's success condition
    task.sim.data.set_joint_qpos(cube_joint, qpos)
    task.sim.forward()
    _, _, terminated, _, info = lift.step(np.zeros(7))
    assert info["success"] is True and not terminated
    lift.reset()
    assert lift.step(np.zeros(7))[4]["success"] is False


def test_terminate_on_success_ends_the_episode_terminal_at_the_first_success() -> None:
    env = make_env(EnvConfig(id="robosuite:Lift", seed=0, terminate_on_success=True))
    env.reset(seed=0)
    assert env.step(np.zeros(7))[2:4] == (False, False)  # no success yet: the episode goes on
    task = env.unwrapped._env
    cube_joint = task.cube.joints[0]
    qpos = task.sim.data.get_joint_qpos(cube_joint).copy()
    qpos[2] += 0.2
    task.sim.data.set_joint_qpos(cube_joint, qpos)
    task.sim.forward()
    _, reward, terminated, truncated, info = env.step(np.zeros(7))
    assert info["success"] is True and terminated and not truncated
    assert reward == 1.0  # the sparse reward of the success step is kept
    env.close()
    with pytest.raises(ValueError, match=r"terminate_on_success: gym:Hopper-v5 reports no success signal"):
        make_env(EnvConfig(id="gym:Hopper-v5", terminate_on_success=True))


def test_robosuite_seeding_and_horizon_truncation(lift: gymnasium.Env) -> None:
    first = lift.reset(seed=0)[0]
    again = lift.reset(seed=0)[0]
    other = lift.reset(seed=1)[0]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first[9:12], other[9:12])  # the cube is placed elsewhere

    short = make_env(EnvConfig(id="robosuite:Lift", robosuite={"horizon": 3, "reward_shaping": True}), seed=0)
    assert env_spec(short).max_episode_steps == 3
    short.reset()
    flags = [short.step(np.zeros(7))[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    short.close()


def test_robosuite_bad_names_and_options(lift: gymnasium.Env) -> None:
    with pytest.raises(ValueError, match=r"Did you mean robosuite:Lift.*PickPlaceCan"):
        make_env("robosuite:Lifts")
    with pytest.raises(ValueError, match=r"robosuite\.robot: unknown robot 'Pandaa'"):
        make_env(EnvConfig(id="robosuite:Lift", robosuite={"robot": "Pandaa"}))
    with pytest.raises(ValueError, match=r"robosuite\.controller: unknown controller 'OSC'.*OSC_POSE"):
        make_env(EnvConfig(id="robosuite:Lift", robosuite={"controller": "OSC"}))
    with pytest.raises(ValueError, match=r"robosuite\.obs_keys: \['nope'\]"):
        make_env(EnvConfig(id="robosuite:Lift", robosuite={"obs_keys": ["nope"]}))


# --- CLI ---------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MUJOCO_GL": "disable"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env)


def test_cli_check_prints_json() -> None:
    done = run_cli("check", "gym:InvertedPendulum-v5", "--steps", "200", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["id"] == "gym:InvertedPendulum-v5"
    assert (report["obs_dim"], report["action_dim"], report["obs_dtype"]) == (4, 1, "float32")
    assert (report["action_low"], report["action_high"]) == (-1.0, 1.0)
    assert report["steps"] == 200
    # Random actions topple the pendulum within a few dozen steps: episodes end terminated.
    assert report["episodes"] >= 2 and report["terminated"] == report["episodes"]
    assert report["steps_per_s"] > 0 and report["problems"] == []


def test_cli_check_unknown_id_fails_clearly() -> None:
    done = run_cli("check", "dmc:nope-nope", "--steps", "5")
    assert done.returncode == 2
    assert "unknown dm_control task dmc:nope-nope" in done.stderr


def test_cli_list_names_every_family() -> None:
    done = run_cli("list", "--json")
    assert done.returncode == 0, done.stderr
    ids = json.loads(done.stdout)
    assert "gym:HalfCheetah-v5" in ids["gym"] and "dmc:cheetah-run" in ids["dmc"]
    assert "robosuite:Lift" in ids["robosuite"]
