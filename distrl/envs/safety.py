"""`safe:<task>`: cost-aware tasks, each reporting `info["cost"]` (1.0 in an unsafe state, else 0.0).

Every safe env is an ordinary `make_env` env with one more wrapper, `CostSignal`, which names the
signal (`distrl_signals = ("cost",)`, so rollouts store a float32 `cost` field and report
`episode_cost`) and declares the unsafe-state predicate `unsafe_states(obs) -> bool [N]`, a
pure function of the flat observation. The cost of a step is the predicate of the state it
reaches: `info["cost"] == float(unsafe_states(env, next_obs)[0])` on every step, by
construction.

Tasks (`SAFE_IDS`):

- `safe:point-goal`: a 2-D point mass in pure numpy (no MuJoCo). Observation = position (x, y)
  in [-1, 1]^2; the action in [-1, 1]^2 is a velocity command,
  `pos' = clip(pos + POINT_STEP * action + N(0, POINT_NOISE^2), -1, 1)`. Episodes start at
  `POINT_START` + uniform(-POINT_START_JITTER, POINT_START_JITTER) per axis. Reward per step =
  (previous distance to `POINT_GOAL`) - (new distance) - `POINT_STEP_PENALTY`, plus
  `POINT_GOAL_BONUS` with `terminated=True` (and `info["success"]`) once within
  `POINT_GOAL_RADIUS` of the goal. Unsafe = inside the hazard disc of radius `HAZARD_RADIUS`
  around `HAZARD_CENTRE`, which sits on the straight line from start to goal: a reward-greedy
  policy crosses it, a detour around it costs a few steps of `POINT_STEP_PENALTY`. Limit
  `POINT_GOAL_STEPS` steps (truncated).
- `safe:<Robot>-velocity` for HalfCheetah, Hopper, Walker2d, Ant: our `gym:<Robot>-v5` (default
  observations, `exclude_current_positions_from_observation=True`) with Safety-Gymnasium's
  velocity thresholds `VELOCITY_THRESHOLDS`. Unsafe = the forward x-velocity (Ant: the planar
  speed sqrt(vx^2 + vy^2)) exceeds the threshold. It is read from the observation at
  `VELOCITY_OBS_INDEX` (qvel follows qpos[1:], qpos[2:] for Ant). Safety-Gymnasium computes the
  velocity as the x (xy) displacement over `dt` instead; the two agree closely, but ours must
  be a function of the observation.
- `safe:Lift-keepout`: robosuite Lift (the `robosuite:` options apply) where the end effector
  (`robot0_eef_pos` in the flat observation) must stay out of the box `LIFT_KEEPOUT_LOW` ..
  `LIFT_KEEPOUT_HIGH` (world frame, metres): a region beside the cube, on the table's +y side,
  that the scripted pick (`distrl.data.scripted`) never enters and random actions often do.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium
import numpy as np

from distrl.envs.spec import FamilyEnv
from distrl.envs.wrappers import ActionScaler, unit_action_space

if TYPE_CHECKING:
    from distrl.envs.config import RobosuiteOptions

# --- safe:point-goal ------------------------------------------------------------------------

POINT_START = (-0.7, -0.7)
POINT_START_JITTER = 0.05  # uniform, per axis
POINT_GOAL = (0.7, 0.7)
POINT_GOAL_RADIUS = 0.1
POINT_GOAL_BONUS = 1.0
POINT_STEP = 0.1  # position change per step at full action
POINT_NOISE = 0.01  # std of the Gaussian position noise per axis and step
POINT_STEP_PENALTY = 0.01
POINT_GOAL_STEPS = 100
HAZARD_CENTRE = (0.0, 0.0)
HAZARD_RADIUS = 0.3

# --- safe:<Robot>-velocity ------------------------------------------------------------------

# Safety-Gymnasium's SafetyVelocity thresholds (m/s).
VELOCITY_THRESHOLDS: dict[str, float] = {
    "HalfCheetah": 3.2096,
    "Hopper": 0.7402,
    "Walker2d": 2.3415,
    "Ant": 2.6222,
}
# Where qvel[0] (and for Ant qvel[1]) sits in the v5 default observation.
VELOCITY_OBS_INDEX: dict[str, tuple[int, ...]] = {
    "HalfCheetah": (8,),
    "Hopper": (5,),
    "Walker2d": (8,),
    "Ant": (13, 14),
}

# --- safe:Lift-keepout ----------------------------------------------------------------------

# Beside the cube on the +y side, from the table top up to above the scripted lift height.
# The cube starts within 3 cm of the table centre and the scripted pick stays within 1-2 cm
# of it in y, so the 8 cm gap leaves a margin; random OSC actions wander +-0.2 m in y.
LIFT_KEEPOUT_LOW = (-0.40, 0.08, 0.75)
LIFT_KEEPOUT_HIGH = (0.15, 0.35, 1.10)
LIFT_EEF_KEY = "robot0_eef_pos"

SAFE_IDS: tuple[str, ...] = (
    "safe:point-goal",
    *(f"safe:{robot}-velocity" for robot in VELOCITY_THRESHOLDS),
    "safe:Lift-keepout",
)
# Safe tasks built on robosuite: the `robosuite:` options section applies to them.
ROBOSUITE_SAFE_IDS: tuple[str, ...] = ("safe:Lift-keepout",)

UnsafePredicate = Callable[[np.ndarray], np.ndarray]


def safe_ids() -> list[str]:
    """The `safe:` ids, in `SAFE_IDS` order."""
    return list(SAFE_IDS)


def _rows(obs: np.ndarray, obs_dim: int, name: str) -> np.ndarray:
    """`obs` as a [N, obs_dim] array (a single observation becomes one row)."""
    given = np.asarray(obs)
    rows = given[None] if given.ndim == 1 else given
    if rows.ndim != 2 or rows.shape[1] != obs_dim:
        raise ValueError(
            f"{name}: unsafe_states needs observations of shape [N, {obs_dim}] or [{obs_dim}], "
            f"got {given.shape}"
        )
    return rows


class CostSignal(gymnasium.Wrapper):
    """Reports `info["cost"]` = 1.0 when the observation a step returns is unsafe, else 0.0.

    `unsafe_states(obs)` is the task's predicate on flat observations ([N, obs_dim] or
    [obs_dim] -> bool [N]); the cost is computed from the very observation returned, so the two
    always agree.
    """

    distrl_signals = ("cost",)

    def __init__(self, env: gymnasium.Env, predicate: UnsafePredicate) -> None:
        super().__init__(env)
        self._predicate = predicate

    def unsafe_states(self, obs: np.ndarray) -> np.ndarray:
        return self._predicate(obs)

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["cost"] = 1.0 if self._predicate(obs)[0] else 0.0
        return obs, reward, terminated, truncated, info


def unsafe_states(env: gymnasium.Env, obs: np.ndarray) -> np.ndarray:
    """Which of `obs` ([N, obs_dim] or [obs_dim]) are unsafe states of `env` (bool [N]).

    Raises ValueError for an env that declares no unsafe-state predicate.
    """
    try:
        predicate = env.get_wrapper_attr("unsafe_states")
    except AttributeError:
        raise ValueError(
            f"{_env_name(env)} declares no unsafe states (only safe: envs from make_env, or a wrapper "
            "with an unsafe_states(obs) method, do)"
        ) from None
    return np.asarray(predicate(obs), dtype=bool)


def _env_name(env: gymnasium.Env) -> str:
    try:
        return str(env.get_wrapper_attr("distrl_spec").id)
    except AttributeError:
        return type(env.unwrapped).__name__


# --- the point mass -------------------------------------------------------------------------


def point_goal_unsafe(obs: np.ndarray) -> np.ndarray:
    """Positions inside the hazard disc (bool [N])."""
    rows = _rows(obs, 2, "safe:point-goal")
    dx = rows[:, 0] - HAZARD_CENTRE[0]
    dy = rows[:, 1] - HAZARD_CENTRE[1]
    return dx * dx + dy * dy < HAZARD_RADIUS * HAZARD_RADIUS


class PointGoalEnv(gymnasium.Env):
    """The `safe:point-goal` point mass (see the module docstring); the cost is added outside."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, step_limit: int | None = POINT_GOAL_STEPS, seed: int | None = None) -> None:
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = unit_action_space(2)
        self._scale_action = ActionScaler(-np.ones(2), np.ones(2), "safe:point-goal")
        self.step_limit = step_limit
        self._limit = math.inf if step_limit is None else step_limit
        self._goal = np.asarray(POINT_GOAL, dtype=np.float64)
        self._pos: np.ndarray | None = None
        self._t = 0
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        super().reset(seed=seed)
        jitter = self.np_random.uniform(-POINT_START_JITTER, POINT_START_JITTER, size=2)
        self._pos = np.asarray(POINT_START, dtype=np.float64) + jitter
        self._t = 0
        return self._pos.astype(np.float32), {"success": False}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._pos is None:
            raise RuntimeError("step() called before reset(); call reset() first")
        velocity = self._scale_action(action)
        before = math.dist(self._pos, self._goal)
        noise = self.np_random.normal(0.0, POINT_NOISE, size=2)
        self._pos = np.clip(self._pos + POINT_STEP * velocity + noise, -1.0, 1.0)
        after = math.dist(self._pos, self._goal)
        reached = after < POINT_GOAL_RADIUS
        reward = before - after - POINT_STEP_PENALTY + (POINT_GOAL_BONUS if reached else 0.0)
        self._t += 1
        return self._pos.astype(np.float32), reward, reached, self._t >= self._limit, {"success": reached}


# --- velocity-constrained locomotion --------------------------------------------------------


def velocity_unsafe(robot: str, obs_dim: int) -> UnsafePredicate:
    """The predicate of `safe:<robot>-velocity`: the speed read from the observation > threshold."""
    threshold = VELOCITY_THRESHOLDS[robot]
    index = VELOCITY_OBS_INDEX[robot]
    name = f"safe:{robot}-velocity"

    def unsafe(obs: np.ndarray) -> np.ndarray:
        rows = _rows(obs, obs_dim, name)
        if len(index) == 1:
            return rows[:, index[0]] > threshold
        return np.hypot(rows[:, index[0]], rows[:, index[1]]) > threshold

    return unsafe


# --- robosuite Lift with a keep-out box -----------------------------------------------------


def box_unsafe(
    eef: slice, obs_dim: int, low: tuple[float, ...], high: tuple[float, ...], name: str
) -> UnsafePredicate:
    """End effector positions (`obs[:, eef]`) strictly inside the box [low, high]."""
    lo, hi = np.asarray(low), np.asarray(high)

    def unsafe(obs: np.ndarray) -> np.ndarray:
        position = _rows(obs, obs_dim, name)[:, eef]
        return np.all((position > lo) & (position < hi), axis=1)

    return unsafe


def _eef_slice(obs_keys: list[str], env: gymnasium.Env) -> slice:
    layout = dict(env.unwrapped._layout)  # RobosuiteEnv: key -> slice of the flat observation
    if LIFT_EEF_KEY not in layout:
        raise ValueError(
            f"safe:Lift-keepout reads {LIFT_EEF_KEY} from the observation; robosuite.obs_keys "
            f"{obs_keys} leaves it out"
        )
    return layout[LIFT_EEF_KEY]


# --- the family builder ---------------------------------------------------------------------


def _check_name(name: str) -> None:
    if f"safe:{name}" in SAFE_IDS:
        return
    close = difflib.get_close_matches(f"safe:{name}", SAFE_IDS, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown safe task safe:{name}.{hint} Valid: {', '.join(SAFE_IDS)}")


def make_safe_env(
    name: str, options: RobosuiteOptions, step_limit: int | None, seed: int | None
) -> FamilyEnv:
    """Build `safe:<name>`: the task's env wrapped in `CostSignal` with its predicate."""
    _check_name(name)
    if name == "point-goal":
        limit = POINT_GOAL_STEPS if step_limit is None else step_limit
        env = CostSignal(PointGoalEnv(limit, seed), point_goal_unsafe)
        return FamilyEnv(env=env, obs_keys=None, has_success=True, step_limit=limit)
    if name.endswith("-velocity"):
        from distrl.envs.gym_envs import make_gym_env

        robot = name.removesuffix("-velocity")
        built = make_gym_env(f"{robot}-v5", step_limit, seed)
        obs_dim = int(built.env.observation_space.shape[0])
        built.env = CostSignal(built.env, velocity_unsafe(robot, obs_dim))
        return built
    from distrl.envs.robosuite_envs import make_robosuite_env

    built = make_robosuite_env("Lift", options, step_limit, seed)
    try:
        eef = _eef_slice(built.obs_keys or [], built.env)
    except ValueError:
        built.env.close()
        raise
    obs_dim = int(built.env.observation_space.shape[0])
    predicate = box_unsafe(eef, obs_dim, LIFT_KEEPOUT_LOW, LIFT_KEEPOUT_HIGH, "safe:Lift-keepout")
    built.env = CostSignal(built.env, predicate)
    return built
