"""The `safe:` family: cost-aware tasks built by `make_env` (real envs, no mocks)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import gymnasium
import numpy as np
import pydantic
import pytest

from distrl.envs import EnvConfig, env_spec, list_envs, make_env, safety, unsafe_states
from distrl.envs.safety import SAFE_IDS

os.environ.setdefault("MUJOCO_GL", "disable")

VELOCITY_IDS = [f"safe:{robot}-velocity" for robot in safety.VELOCITY_THRESHOLDS]
CHEAP_IDS = ["safe:point-goal", *VELOCITY_IDS]  # everything but robosuite


def rollout_costs(
    env: gymnasium.Env, steps: int, seed: int, kick: Callable[[gymnasium.Env], None] | None = None
) -> tuple[list[float], list[np.ndarray]]:
    """Random actions for `steps` steps (resetting at episode ends); every step's cost and next obs.

    `kick(env)`, called every 10 steps, may push the state somewhere unsafe now and then.
    """
    env.reset(seed=seed)
    env.action_space.seed(seed)
    costs, next_obs = [], []
    for t in range(steps):
        if kick is not None and t % 10 == 0:
            kick(env)
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        costs.append(info["cost"])
        next_obs.append(obs)
        if terminated or truncated:
            env.reset()
    return costs, next_obs


def kick_point(env: gymnasium.Env) -> None:
    """Put the point somewhere in [-0.5, 0.5]^2, often inside the hazard."""
    point = env.unwrapped
    point._pos = point.np_random.uniform(-0.5, 0.5, size=2)


def kick_robot(env: gymnasium.Env) -> None:
    """Set the forward (and for Ant sideways) velocity to 0.5 .. 1.5 times the threshold."""
    robot = env.unwrapped
    name = env_spec(env).id.removeprefix("safe:").removesuffix("-velocity")
    qvel = robot.data.qvel.copy()
    qvel[: len(safety.VELOCITY_OBS_INDEX[name])] = safety.VELOCITY_THRESHOLDS[name] * robot.np_random.uniform(
        0.5, 1.5
    )
    robot.set_state(robot.data.qpos.copy(), qvel)


# --- ids, spaces, the signal ----------------------------------------------------------------


def test_safe_ids_are_listed_and_in_the_unknown_id_error() -> None:
    assert list_envs()["safe"] == list(SAFE_IDS)
    assert set(SAFE_IDS) == {
        "safe:point-goal",
        "safe:HalfCheetah-velocity",
        "safe:Hopper-velocity",
        "safe:Walker2d-velocity",
        "safe:Ant-velocity",
        "safe:Lift-keepout",
    }
    with pytest.raises(ValueError, match=r"safe:.*safe:point-goal"):
        make_env("atari:Pong-v5")


@pytest.mark.parametrize("env_id", CHEAP_IDS)
def test_spaces_and_declared_cost_signal(env_id: str) -> None:
    env = make_env(env_id, seed=0)
    spec = env_spec(env)
    assert spec.signals == ("cost",)
    assert isinstance(env.observation_space, gymnasium.spaces.Box)
    assert env.observation_space.shape == (spec.obs_dim,)
    assert env.observation_space.dtype == np.float32
    assert isinstance(env.action_space, gymnasium.spaces.Box)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (spec.obs_dim,)
    obs, reward, _, _, info = env.step(np.zeros(spec.action_dim))
    assert obs.dtype == np.float32 and isinstance(reward, float)
    assert isinstance(info["cost"], float) and info["cost"] in (0.0, 1.0)
    env.close()


def test_point_goal_spec_and_time_limit() -> None:
    env = make_env("safe:point-goal", seed=0)
    spec = env_spec(env)
    assert (spec.obs_dim, spec.action_dim, spec.max_episode_steps, spec.has_success) == (2, 2, 100, True)
    env.reset()
    for t in range(1, 101):  # standing still never reaches the goal: truncated at step 100
        _, _, terminated, truncated, info = env.step(np.zeros(2))
        assert not terminated and info["success"] is False
        assert truncated == (t == 100)
    short = make_env(EnvConfig(id="safe:point-goal", max_episode_steps=5), seed=0)
    assert env_spec(short).max_episode_steps == 5


@pytest.mark.parametrize("env_id", CHEAP_IDS)
def test_cost_is_the_predicate_of_the_next_observation(env_id: str) -> None:
    env = make_env(env_id, seed=1)
    costs, next_obs = rollout_costs(
        env, steps=300, seed=1, kick=kick_point if "point" in env_id else kick_robot
    )
    expected = unsafe_states(env, np.stack(next_obs)).astype(float)
    assert expected.shape == (300,)
    assert 0 < sum(costs) < 300  # both safe and unsafe states were visited
    np.testing.assert_array_equal(np.array(costs), expected)
    for cost, obs in zip(costs, next_obs, strict=True):  # one observation at a time, too
        assert cost == float(unsafe_states(env, obs)[0])
    env.close()


def test_unsafe_states_needs_a_declared_predicate_and_the_right_shape() -> None:
    with pytest.raises(ValueError, match="gym:Hopper-v5 declares no unsafe states"):
        unsafe_states(make_env("gym:Hopper-v5"), np.zeros(11))
    env = make_env("safe:point-goal")
    assert unsafe_states(env, np.zeros((0, 2))).shape == (0,)
    with pytest.raises(ValueError, match=r"shape \[N, 2\] or \[2\], got \(3,\)"):
        unsafe_states(env, np.zeros(3))


# --- safe:point-goal --------------------------------------------------------------------------


def test_point_goal_predicate_is_the_hazard_disc() -> None:
    env = make_env("safe:point-goal")
    r = safety.HAZARD_RADIUS
    cx, cy = safety.HAZARD_CENTRE
    points = np.array([[cx, cy], [cx + 0.99 * r, cy], [cx, cy - 1.01 * r], [0.7, 0.7], [-0.7, -0.7]])
    np.testing.assert_array_equal(unsafe_states(env, points), [True, True, False, False, False])


def test_point_goal_step_follows_the_documented_dynamics() -> None:
    env = make_env("safe:point-goal", seed=3)
    obs, _ = env.reset()
    start = np.asarray(safety.POINT_START)
    assert np.all(np.abs(obs - start) <= safety.POINT_START_JITTER + 1e-6)
    goal = np.asarray(safety.POINT_GOAL)
    moves = []
    for _ in range(20):
        new, reward, *_ = env.step(np.array([1.0, 0.0]))
        move = new.astype(np.float64) - obs
        moves.append(move)
        expected = np.linalg.norm(obs - goal) - np.linalg.norm(new - goal) - safety.POINT_STEP_PENALTY
        assert reward == pytest.approx(expected, abs=1e-5)
        obs = new
        if obs[0] >= 0.85:
            break
    moves = np.array(moves)
    # Full action along x moves POINT_STEP in x; only the small noise moves y.
    np.testing.assert_allclose(moves[:, 0], safety.POINT_STEP, atol=5 * safety.POINT_NOISE)
    assert np.all(np.abs(moves[:, 1]) < 5 * safety.POINT_NOISE)
    assert 0.3 * safety.POINT_NOISE < moves[:, 1].std() < 3 * safety.POINT_NOISE
    # Positions stay in [-1, 1]^2.
    for _ in range(5):
        obs, *_ = env.step(np.array([1.0, -1.0]))
    assert np.all(np.abs(obs) <= 1.0)


def steer_to(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Full speed towards `target`, slowing down within one step of it."""
    return np.clip((target - position) / safety.POINT_STEP, -1.0, 1.0)


def drive(env: gymnasium.Env, seed: int, waypoints: list[np.ndarray]) -> tuple[float, float, bool, int]:
    """One episode steering through `waypoints` in order (each passed within 0.1): return, cost,
    success, length."""
    obs, _ = env.reset(seed=seed)
    total = cost = 0.0
    success = False
    pending = list(waypoints)
    for t in range(1, 101):
        while len(pending) > 1 and np.linalg.norm(pending[0] - obs) < 0.1:
            pending.pop(0)
        obs, reward, terminated, truncated, info = env.step(steer_to(obs, pending[0]))
        total += reward
        cost += info["cost"]
        success = success or info["success"]
        if terminated or truncated:
            return total, cost, success, t
    raise AssertionError("the episode did not end within its limit")


def test_point_goal_greedy_crosses_the_hazard_and_a_detour_avoids_it_cheaply() -> None:
    env = make_env("safe:point-goal")
    goal = np.asarray(safety.POINT_GOAL)
    # Around the hazard on the (-x, +y) side: both legs pass more than HAZARD_RADIUS + 0.1 from it.
    corner = np.array([-0.45, 0.45])
    greedy = [drive(env, seed, [goal]) for seed in range(5)]
    detour = [drive(env, seed, [corner, goal]) for seed in range(5)]
    for total, cost, success, length in greedy:
        assert success and length < 25
        assert cost >= 3  # crosses the disc diagonally: several steps inside it
        assert total > 2.0  # ~2 of distance covered, +1 at the goal, -0.01 per step
    for _, cost, success, _ in detour:
        assert success and cost == 0
    greedy_return = np.mean([g[0] for g in greedy])
    detour_return = np.mean([d[0] for d in detour])
    assert detour_return < greedy_return  # the detour takes more steps...
    assert detour_return > 0.9 * greedy_return  # ...but costs little return


def test_point_goal_is_pure_numpy() -> None:
    # No MuJoCo model behind it: thousands of steps/s (`distrl envs check safe:point-goal`).
    env = make_env("safe:point-goal", seed=0)
    assert type(env.unwrapped) is safety.PointGoalEnv


# --- velocity-constrained locomotion ---------------------------------------------------------


@pytest.mark.parametrize("robot", list(safety.VELOCITY_THRESHOLDS))
def test_velocity_index_reads_qvel(robot: str) -> None:
    env = make_env(f"safe:{robot}-velocity", seed=0)
    env.reset()
    index = safety.VELOCITY_OBS_INDEX[robot]
    data = env.unwrapped.data
    for _ in range(30):
        obs, *_ = env.step(env.action_space.sample())
        for k, i in enumerate(index):  # qvel[0] = vx, qvel[1] = vy (Ant)
            assert obs[i] == np.float32(data.qvel[k])
    env.close()


@pytest.mark.parametrize("robot", list(safety.VELOCITY_THRESHOLDS))
def test_velocity_predicate_uses_the_threshold(robot: str) -> None:
    env = make_env(f"safe:{robot}-velocity")
    threshold = safety.VELOCITY_THRESHOLDS[robot]
    index = safety.VELOCITY_OBS_INDEX[robot]
    obs = np.zeros((3, env_spec(env).obs_dim), dtype=np.float32)
    obs[0, index[0]] = threshold + 0.01
    obs[1, index[0]] = threshold - 0.01
    obs[2, index[0]] = -(threshold + 1.0)  # fast backwards: unsafe only where speed counts (Ant)
    expected = [True, False, len(index) == 2]
    np.testing.assert_array_equal(unsafe_states(env, obs), expected)
    if len(index) == 2:  # Ant: the planar speed, each component below the threshold
        diagonal = np.zeros((1, obs.shape[1]), dtype=np.float32)
        diagonal[0, index[0]] = diagonal[0, index[1]] = 0.75 * threshold
        assert unsafe_states(env, diagonal)[0]
    env.close()


def test_fast_forward_motion_costs() -> None:
    # Start HalfCheetah running faster than the threshold: the next state is unsafe.
    env = make_env("safe:HalfCheetah-velocity", seed=0)
    env.reset()
    model = env.unwrapped
    qvel = model.data.qvel.copy()
    qvel[0] = safety.VELOCITY_THRESHOLDS["HalfCheetah"] + 2.0
    model.set_state(model.data.qpos.copy(), qvel)
    obs, _, _, _, info = env.step(np.zeros(6))
    assert info["cost"] == 1.0 and unsafe_states(env, obs)[0]
    env.close()


# --- seeding and errors ------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["safe:point-goal", "safe:Hopper-velocity"])
def test_seeding_is_reproducible(env_id: str) -> None:
    def trajectory(seed: int) -> np.ndarray:
        env = make_env(env_id, seed=seed)
        obs = [env.reset()[0]]
        actions = np.random.default_rng(0).uniform(-1, 1, (20, env_spec(env).action_dim))
        for action in actions:
            obs.append(env.step(action)[0])
        env.close()
        return np.stack(obs)

    np.testing.assert_array_equal(trajectory(5), trajectory(5))
    assert not np.array_equal(trajectory(5)[0], trajectory(6)[0])
    env = make_env(env_id)  # reset(seed=...) reseeds, as in the other families
    first = env.reset(seed=9)[0]
    env.step(np.zeros(env_spec(env).action_dim))
    np.testing.assert_array_equal(env.reset(seed=9)[0], first)


def test_bad_safe_ids_suggest_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown safe task safe:point-gaol\. Did you mean safe:point-goal"):
        make_env("safe:point-gaol")
    with pytest.raises(ValueError, match=r"Did you mean safe:Hopper-velocity"):
        make_env("safe:Hoper-velocity")
    with pytest.raises(ValueError, match=r"Valid: safe:point-goal, .*safe:Lift-keepout"):
        make_env("safe:Humanoid-velocity")
    with pytest.raises(ValueError, match=r"Did you mean .*safe:point-goal"):
        make_env("point-goal")


def test_robosuite_options_only_for_the_robosuite_safe_task() -> None:
    EnvConfig(id="safe:Lift-keepout", robosuite={"horizon": 50, "reward_shaping": True})
    with pytest.raises(pydantic.ValidationError, match="robosuite: options only apply"):
        EnvConfig(id="safe:point-goal", robosuite={"horizon": 50})


# --- safe:Lift-keepout ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keepout() -> gymnasium.Env:
    env = make_env(EnvConfig(id="safe:Lift-keepout", max_episode_steps=60), seed=0)
    yield env
    env.close()


def test_lift_keepout_reads_the_eef_position(keepout: gymnasium.Env) -> None:
    spec = env_spec(keepout)
    assert (spec.obs_dim, spec.action_dim, spec.signals, spec.has_success) == (19, 7, ("cost",), True)
    assert spec.obs_keys[0] == safety.LIFT_EEF_KEY
    obs, _ = keepout.reset(seed=0)
    suite = keepout.unwrapped._env
    np.testing.assert_array_equal(obs[:3], suite._get_observations()[safety.LIFT_EEF_KEY].astype(np.float32))
    low, high = np.asarray(safety.LIFT_KEEPOUT_LOW), np.asarray(safety.LIFT_KEEPOUT_HIGH)
    inside, outside = obs.copy(), obs.copy()
    inside[:3] = (low + high) / 2
    outside[:3] = [(low[0] + high[0]) / 2, low[1] - 0.01, (low[2] + high[2]) / 2]
    np.testing.assert_array_equal(
        unsafe_states(keepout, np.stack([inside, outside, obs])), [True, False, False]
    )


def test_lift_keepout_moving_into_the_box_costs(keepout: gymnasium.Env) -> None:
    obs, _ = keepout.reset(seed=1)
    costs = []
    for _ in range(15):  # +y at full speed: robosuite's OSC moves up to 5 cm a step
        obs, _, _, _, info = keepout.step(np.array([0.0, 1.0, 0, 0, 0, 0, -1.0]))
        costs.append(info["cost"])
        assert info["cost"] == float(unsafe_states(keepout, obs)[0])
    assert costs[0] == 0.0 and costs[-1] == 1.0
    assert obs[1] > safety.LIFT_KEEPOUT_LOW[1]


def test_lift_keepout_random_actions_cost_equals_predicate(keepout: gymnasium.Env) -> None:
    costs, next_obs = rollout_costs(keepout, steps=60, seed=2)
    np.testing.assert_array_equal(np.array(costs), unsafe_states(keepout, np.stack(next_obs)).astype(float))


def test_lift_keepout_scripted_pick_has_no_cost(keepout: gymnasium.Env) -> None:
    from distrl.data.scripted import LIFT, ScriptedPolicy

    policy = ScriptedPolicy(keepout, LIFT)
    for seed in (0, 1):
        obs, _ = keepout.reset(seed=seed)
        policy.reset()
        cost, success = 0.0, False
        while True:
            obs, _, terminated, truncated, info = keepout.step(policy.act(obs))
            cost += info["cost"]
            success = success or info["success"]
            if terminated or truncated:
                break
        assert success and cost == 0.0


def test_lift_keepout_needs_the_eef_in_the_observation() -> None:
    with pytest.raises(ValueError, match="reads robot0_eef_pos"):
        make_env(EnvConfig(id="safe:Lift-keepout", robosuite={"obs_keys": ["cube_pos"]}))
    env = make_env(EnvConfig(id="safe:Lift-keepout", robosuite={"obs_keys": ["cube_pos", "robot0_eef_pos"]}))
    obs = np.zeros((1, 6), dtype=np.float32)
    obs[0, 3:] = (np.asarray(safety.LIFT_KEEPOUT_LOW) + np.asarray(safety.LIFT_KEEPOUT_HIGH)) / 2
    assert unsafe_states(env, obs)[0] and not unsafe_states(env, obs[:, [3, 4, 5, 0, 1, 2]])[0]
    env.close()


def test_point_goal_constants_are_consistent() -> None:
    # The hazard lies on the straight line from start to goal, away from both ends.
    start, goal, centre = (
        np.asarray(p) for p in (safety.POINT_START, safety.POINT_GOAL, safety.HAZARD_CENTRE)
    )
    direction = (goal - start) / np.linalg.norm(goal - start)
    offset = centre - start
    assert math.isclose(abs(offset[0] * direction[1] - offset[1] * direction[0]), 0.0, abs_tol=1e-9)
    assert np.linalg.norm(start - centre) > safety.HAZARD_RADIUS + 0.2
    assert np.linalg.norm(goal - centre) > safety.HAZARD_RADIUS + safety.POINT_GOAL_RADIUS


def test_action_repeat_sums_the_cost_of_every_inner_step() -> None:
    """An unsafe state passed through in the middle of a repeat still counts."""
    plain = make_env("safe:point-goal", seed=3)
    repeated = make_env({"id": "safe:point-goal", "action_repeat": 3}, seed=3)
    plain.reset()
    repeated.reset()
    toward = np.array([1.0, 1.0], dtype=np.float32)
    cost_plain = cost_repeated = 0.0
    for _ in range(5):
        for _ in range(3):
            cost_plain += plain.step(toward)[4]["cost"]
        cost_repeated += repeated.step(toward)[4]["cost"]
    assert cost_plain > 1  # the straight path crosses the hazard for several steps
    assert cost_repeated == cost_plain
