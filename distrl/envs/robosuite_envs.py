"""`robosuite:<Env>`: robosuite 1.5 manipulation tasks, low-dimensional observations only.

Built headless (no renderer, no offscreen renderer, `use_camera_obs=False`) with
`ignore_done=True`: the episode is cut here after `horizon` steps (or the config's
`max_episode_steps`) with `truncated=True`; robosuite tasks never terminate on their own.
`info["success"]` is the task's `_check_success()` after every step.

Observation order (`EnvSpec.obs_keys`). The default is robomimic's low-dim set, so policies
and demos from robomimic / MimicGen datasets line up with these envs: for each robot `i` in
turn, `robot{i}_eef_pos` (3), `robot{i}_eef_quat` (4), `robot{i}_gripper_qpos` (2 for the
Panda gripper; a bimanual robot gives `robot{i}_right_*` then `robot{i}_left_*`), then the
task's object observables in robosuite's registration order. The object part is exactly
robosuite's `object-state` (robomimic's `object` key). With the default Panda per arm, where
"robot0" stands for `robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos` and the number is
the flat size:

- Door (23): robot0, door_pos, handle_pos, hinge_qpos, door_to_eef_pos, handle_to_eef_pos,
  handle_qpos
- Lift (19): robot0, cube_pos, cube_quat, gripper_to_cube_pos
- NutAssembly (37): robot0, SquareNut_to_robot0_eef_pos, SquareNut_to_robot0_eef_quat,
  SquareNut_pos, SquareNut_quat, RoundNut_to_robot0_eef_pos, RoundNut_to_robot0_eef_quat,
  RoundNut_pos, RoundNut_quat
- NutAssemblyRound (23): robot0, RoundNut_to_robot0_eef_pos, RoundNut_to_robot0_eef_quat,
  RoundNut_pos, RoundNut_quat
- NutAssemblySingle (24): robot0, object-state
- NutAssemblySquare (23): robot0, SquareNut_to_robot0_eef_pos, SquareNut_to_robot0_eef_quat,
  SquareNut_pos, SquareNut_quat
- PickPlace (65): robot0, Milk_to_robot0_eef_pos, Milk_to_robot0_eef_quat, Milk_pos, Milk_quat,
  Bread_to_robot0_eef_pos, Bread_to_robot0_eef_quat, Bread_pos, Bread_quat,
  Cereal_to_robot0_eef_pos, Cereal_to_robot0_eef_quat, Cereal_pos, Cereal_quat,
  Can_to_robot0_eef_pos, Can_to_robot0_eef_quat, Can_pos, Can_quat
- PickPlaceBread (23): robot0, Bread_to_robot0_eef_pos, Bread_to_robot0_eef_quat, Bread_pos,
  Bread_quat
- PickPlaceCan (23): robot0, Can_to_robot0_eef_pos, Can_to_robot0_eef_quat, Can_pos, Can_quat
- PickPlaceCereal (23): robot0, Cereal_to_robot0_eef_pos, Cereal_to_robot0_eef_quat,
  Cereal_pos, Cereal_quat
- PickPlaceMilk (23): robot0, Milk_to_robot0_eef_pos, Milk_to_robot0_eef_quat, Milk_pos,
  Milk_quat
- PickPlaceSingle (24): robot0, object-state
- Stack (32): robot0, cubeA_pos, cubeA_quat, cubeB_pos, cubeB_quat, cubeA_to_cubeB,
  gripper_to_cubeA, gripper_to_cubeB
- ToolHang (53): robot0, base_to_robot0_eef_pos, base_to_robot0_eef_quat, base_pos, base_quat,
  frame_to_robot0_eef_pos, frame_to_robot0_eef_quat, frame_pos, frame_quat, tool_to_robot0_eef_pos,
  tool_to_robot0_eef_quat, tool_pos, tool_quat, frame_is_assembled, tool_on_frame
- TwoArmHandover (34): robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos, robot1_eef_pos,
  robot1_eef_quat, robot1_gripper_qpos, hammer_pos, hammer_quat, handle_xpos, gripper0_to_handle,
  gripper1_to_handle
- TwoArmLift (37): robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos, robot1_eef_pos,
  robot1_eef_quat, robot1_gripper_qpos, pot_pos, pot_quat, handle0_xpos, handle1_xpos,
  gripper0_to_handle0, gripper1_to_handle1
- TwoArmPegInHole (31): robot0_eef_pos, robot0_eef_quat, robot1_eef_pos, robot1_eef_quat, hole_pos,
  hole_quat, peg_to_hole, peg_quat, angle, t, d
- TwoArmTransport (59): robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos, robot1_eef_pos,
  robot1_eef_quat, robot1_gripper_qpos, payload_pos, payload_quat, trash_pos, trash_quat,
  lid_handle_pos, lid_handle_quat, target_bin_pos, trash_bin_pos, payload_in_target_bin,
  trash_in_trash_bin, gripper0_to_payload, gripper0_to_lid_handle, gripper1_to_payload,
  gripper1_to_trash
- Wipe (15): robot0, proportion_wiped, wipe_radius, wipe_centroid, gripper_to_wipe_centroid

PickPlaceSingle and NutAssemblySingle observe a different object each episode, so their object
part is the single key `object-state` (15 values incl. the object id). robosuite picks that
object by iterating a set of names, so it is reproducible from a seed only under a fixed
PYTHONHASHSEED. A single robot name is used for both arms of the `TwoArm*` tasks; give a
list (`robot: [Baxter]`) for one bimanual robot. `RobosuiteOptions.obs_keys` picks any other
set of robosuite observation keys (e.g. `robot0_joint_pos`).
"""

from __future__ import annotations

import copy
import difflib
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from distrl.envs.config import RobosuiteOptions
from distrl.envs.spec import FamilyEnv
from distrl.envs.wrappers import ActionScaler, flat_observation_space, unit_action_space

_PROPRIO_SUFFIXES = ("eef_pos", "eef_quat", "gripper_qpos")
# Printed on every import: optional extras (robosuite_models, mink IK) that single-arm tasks
# never use, and the advice to write a private macro file. Dropping them keeps the logs of N
# actor processes readable.
_IMPORT_NOISE = (
    "Could not import robosuite_models",
    "Could not load the mink-based",
    "No private macro file",
    "It is recommended to use a private macro file",
    "To setup, run:",
)


class _QuietRobosuite(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        return not any(record.getMessage().startswith(prefix) for prefix in _IMPORT_NOISE)


def _robosuite() -> Any:
    os.environ.setdefault("MUJOCO_GL", "disable")
    logger = logging.getLogger("robosuite_logs")
    if not any(isinstance(f, _QuietRobosuite) for f in logger.filters):
        logger.addFilter(_QuietRobosuite())
    import robosuite

    return robosuite


def robosuite_ids() -> list[str]:
    """Registered robosuite environment names."""
    return sorted(_robosuite().environments.REGISTERED_ENVS)


def _check_name(name: str) -> type:
    registered = _robosuite().environments.REGISTERED_ENVS
    if name in registered:
        return registered[name]
    known = sorted(registered)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join('robosuite:' + c for c in close)}?" if close else ""
    raise ValueError(f"unknown robosuite env robosuite:{name}.{hint} Valid: {', '.join(known)}")


def _robots(env_class: type, robot: str | list[str]) -> list[str]:
    from robosuite.environments.manipulation.two_arm_env import TwoArmEnv
    from robosuite.robots import ROBOT_CLASS_MAPPING

    robots = [robot] if isinstance(robot, str) else list(robot)
    for name in robots:
        if name not in ROBOT_CLASS_MAPPING:
            raise ValueError(
                f"robosuite.robot: unknown robot {name!r}; valid: {', '.join(ROBOT_CLASS_MAPPING)}"
            )
    if isinstance(robot, str) and issubclass(env_class, TwoArmEnv):
        robots = [robot, robot]
    return robots


def _flatten_arms(config: dict[str, Any]) -> dict[str, Any]:
    # Composite JSON files nest arms as body_parts.arms.{right,left}; robosuite flattens them on load.
    config = copy.deepcopy(config)
    parts = config.get("body_parts", {})
    arms = parts.pop("arms", {})
    parts.update(arms)
    return config


def controller_config(controller: str | dict[str, Any], robot: str) -> dict[str, Any]:
    """A robosuite 1.5 composite controller config for `robot` (see `RobosuiteOptions`)."""
    _robosuite()
    from robosuite.controllers import (
        ALL_PART_CONTROLLERS,
        load_composite_controller_config,
        load_part_controller_config,
    )
    from robosuite.controllers.composite.composite_controller import REGISTERED_COMPOSITE_CONTROLLERS_DICT

    if isinstance(controller, dict):
        if "type" not in controller or "body_parts" not in controller:
            raise ValueError("robosuite.controller: an inline composite config needs 'type' and 'body_parts'")
        return _flatten_arms(controller)
    if controller.upper() in ALL_PART_CONTROLLERS:
        # The robot's default composite config with each arm's controller swapped, keeping
        # the robot's gripper (what robosuite's demos do for a part-controller name).
        part = load_part_controller_config(default_controller=controller.upper())
        composite = load_composite_controller_config(robot=robot)
        for arm in ("right", "left"):
            if arm in composite["body_parts"]:
                gripper = composite["body_parts"][arm].get("gripper", {"type": "GRIP"})
                composite["body_parts"][arm] = {**copy.deepcopy(part), "gripper": gripper}
        return composite
    if controller.upper() in REGISTERED_COMPOSITE_CONTROLLERS_DICT:
        return load_composite_controller_config(controller=controller.upper(), robot=robot)
    if controller.endswith(".json"):
        if not Path(controller).is_file():
            raise ValueError(f"robosuite.controller: no such file: {controller}")
        return load_composite_controller_config(controller=controller, robot=robot)
    raise ValueError(
        f"robosuite.controller: unknown controller {controller!r}; give a part controller "
        f"({', '.join(ALL_PART_CONTROLLERS)}), a composite controller "
        f"({', '.join(REGISTERED_COMPOSITE_CONTROLLERS_DICT)}), a .json path or an inline config"
    )


def default_obs_keys(observation: dict[str, Any], num_robots: int, object_keys: list[str]) -> list[str]:
    """robomimic's low-dim order: per robot eef_pos, eef_quat, gripper_qpos (per arm), then objects."""
    keys: list[str] = []
    for i in range(num_robots):
        for suffix in _PROPRIO_SUFFIXES:
            pattern = re.compile(rf"robot{i}_(?:[a-z]+_)?{suffix}")
            keys.extend(k for k in observation if pattern.fullmatch(k))
    return keys + object_keys


class RobosuiteEnv(gymnasium.Env):
    """One robosuite task behind the Gymnasium API with a flat low-dim observation."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self, name: str, options: RobosuiteOptions, step_limit: int | None, seed: int | None
    ) -> None:
        suite = _robosuite()
        env_class = _check_name(name)
        robots = _robots(env_class, options.robot)
        controllers = [controller_config(options.controller, robot) for robot in robots]
        self.step_limit: int = step_limit if step_limit is not None else options.horizon
        self._env = suite.make(
            name,
            robots=robots,
            controller_configs=controllers,
            has_renderer=False,
            has_offscreen_renderer=False,
            use_camera_obs=False,
            use_object_obs=True,
            reward_shaping=options.reward_shaping,
            horizon=self.step_limit,
            ignore_done=True,
            control_freq=options.control_freq,
            hard_reset=options.hard_reset,
            seed=seed,
        )
        observation = self._env.observation_spec()
        if getattr(self._env, "single_object_mode", 0) == 1:
            # PickPlaceSingle / NutAssemblySingle observe a different object each episode; the
            # concatenated object-state keeps one size and layout across them.
            object_keys = ["object-state"]
        else:
            # Mirrors how robosuite builds "object-state", so the object part equals it exactly.
            object_keys = [
                key
                for key, observable in self._env._observables.items()
                if observable.modality == "object" and observable.is_enabled() and observable.is_active()
            ]
        if options.obs_keys is not None:
            missing = [k for k in options.obs_keys if k not in observation]
            if missing:
                raise ValueError(
                    f"robosuite.obs_keys: {missing} not observed by robosuite:{name}; "
                    f"available: {', '.join(observation)}"
                )
            self.obs_keys = list(options.obs_keys)
        else:
            self.obs_keys = default_obs_keys(observation, len(robots), object_keys)
        self._layout: list[tuple[str, slice]] = []
        start = 0
        for key in self.obs_keys:
            size = int(np.size(observation[key]))
            self._layout.append((key, slice(start, start + size)))
            start += size
        self._obs_dim = start
        low, high = self._env.action_spec
        self._scale_action = ActionScaler(low, high, f"robosuite:{name}")
        self.observation_space = flat_observation_space(self._obs_dim)
        self.action_space = unit_action_space(self._scale_action.dim)
        self._pending_seed = seed
        if seed is not None:
            self.action_space.seed(seed)
        self._t = 0
        self._limit = self.step_limit if self.step_limit is not None else math.inf

    def _flat(self, observation: dict[str, Any]) -> np.ndarray:
        out = np.empty(self._obs_dim, dtype=np.float32)
        for key, where in self._layout:
            out[where] = np.ravel(observation[key])
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None:
            seed, self._pending_seed = self._pending_seed, None
        if seed is not None:
            # The placement samplers and robot hold references to env.rng: reseed it in place.
            self._env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
        observation = self._env.reset()
        self._t = 0
        return self._flat(observation), {"success": bool(self._env._check_success())}

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, _, info = self._env.step(self._scale_action(action))
        self._t += 1
        info = dict(info)
        info["success"] = bool(self._env._check_success())
        return self._flat(observation), float(reward), False, self._t >= self._limit, info

    def close(self) -> None:
        self._env.close()


def make_robosuite_env(
    name: str, options: RobosuiteOptions, step_limit: int | None, seed: int | None
) -> FamilyEnv:
    env = RobosuiteEnv(name, options, step_limit, seed)
    return FamilyEnv(env=env, obs_keys=env.obs_keys, has_success=True, step_limit=env.step_limit)
