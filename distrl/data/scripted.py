"""Scripted pick (and place) controllers for robosuite `Lift` and `PickPlaceCan`.

Each controller is a small state machine driven by poses read from the simulator every step
(the end effector's grip site and the task object's body), not by the flat observation:

    approach -> descend -> grasp -> lift                                   (Lift)
    approach -> descend -> grasp -> lift -> carry -> lower -> release -> retreat   (PickPlaceCan)

`approach` hovers above the object with the gripper open while turning the hand to point
straight down (and, for the cube, to the nearest yaw that faces its sides); `descend` moves to
the grasp point; `grasp` closes for a few steps; the later phases move the closed hand to
absolute targets. If the object slips out of the hand while carrying, the machine starts over
from `approach`, so one fumble does not lose the episode.

Targets become actions through proportional control in the world frame, converted to the
OSC_POSE controller's input: the controller scales an input in [input_min, input_max] to a
delta in [output_min, output_max] (robosuite's default: 0.05 m and 0.5 rad per step at full
scale) expressed in its reference frame (the robot base by default), and the env rescales the
policy's [-1, 1] onto the controller's input range. `OscPoseActions` inverts both maps from the
controller's own limits, so a robot or controller config with other limits still gets deltas
of the intended size.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from scipy.spatial.transform import Rotation

from distrl.envs.config import EnvConfig

# The GRIP controller closes the fingers at +1 and opens them at -1.
GRIPPER_OPEN = -1.0
GRIPPER_CLOSE = 1.0


class ScriptedPolicyError(ValueError):
    """A task or env setup the scripted controllers do not handle; the message says why."""


class Phase(enum.Enum):
    APPROACH = "approach"
    DESCEND = "descend"
    GRASP = "grasp"
    LIFT = "lift"
    CARRY = "carry"
    LOWER = "lower"
    RELEASE = "release"
    RETREAT = "retreat"


@dataclass(frozen=True)
class Gains:
    """Proportional gains and per-step limits of the pose servo (world frame)."""

    pos: float = 2.0  # delta = pos * error, before the per-step cap
    max_step: float = 0.05  # m per control step
    rot: float = 1.0
    max_rot: float = 0.4  # rad per control step


@dataclass(frozen=True)
class TaskPlan:
    """The geometry of one task, in metres (the object's body origin is the reference point).

    Whether the object is placed somewhere comes from the task itself (PickPlace tasks have a
    target bin quadrant; Lift only holds the object up).
    """

    task: str
    grasp_offset: float  # grasp point above the object's body origin
    hover: float  # approach height above the grasp point
    # Hand height while carrying: above the object's starting grasp point (Lift), or above the
    # place target, clearing the bin walls (PickPlace).
    carry: float
    # The object looks the same after this yaw turn (pi/2 for a cube); None: round, keep yaw.
    yaw_period: float | None
    place_offset: tuple[float, float] = (0.0, 0.0)  # (x, y) from the task's target to where it goes
    release_height: float = 0.0  # hand height above the target when letting go
    grasp_steps: int = 6
    release_steps: int = 4
    reach_tolerance: float = 0.012  # m, position error that counts as arrived
    descend_tolerance: float = 0.008
    rot_tolerance: float = 0.12  # rad
    slip_distance: float = 0.04  # grasp point this far from the fingers = dropped


LIFT = TaskPlan(task="Lift", grasp_offset=0.0, hover=0.08, carry=0.15, yaw_period=math.pi / 2)
# The can's body origin sits 6 cm above its base and 4 cm below its top. robosuite's target is
# the centre of the can's bin quadrant, which lies at the edge of the Panda's reach from its
# mount, so the can goes down nearer the robot, still at least 2.5 cm clear of the dividers.
PICK_PLACE_CAN = TaskPlan(
    task="PickPlaceCan",
    grasp_offset=0.02,
    hover=0.08,
    carry=0.22,
    yaw_period=None,
    place_offset=(-0.035, -0.05),
    release_height=0.1,
)
SCRIPTED_TASKS: dict[str, TaskPlan] = {plan.task: plan for plan in (LIFT, PICK_PLACE_CAN)}


def robosuite_env(env: gymnasium.Env) -> Any:
    """The robosuite environment behind a `robosuite:` env from `make_env`."""
    from distrl.envs.robosuite_envs import RobosuiteEnv

    inner = env.unwrapped
    if not isinstance(inner, RobosuiteEnv):
        raise ScriptedPolicyError(
            f"scripted controllers need a robosuite: env, got {type(inner).__name__}; "
            f"supported: {', '.join('robosuite:' + t for t in SCRIPTED_TASKS)}"
        )
    # RobosuiteEnv keeps the robosuite env it wraps here (see distrl/envs/robosuite_envs.py).
    return inner._env


class OscPoseActions:
    """World-frame pose deltas -> a policy action in [-1, 1] for one arm on OSC_POSE (delta)."""

    def __init__(self, suite_env: Any) -> None:
        from robosuite.controllers.parts.arm.osc import OperationalSpaceController

        if len(suite_env.robots) != 1 or len(suite_env.robots[0].arms) != 1:
            raise ScriptedPolicyError("scripted controllers drive a single one-armed robot")
        robot = suite_env.robots[0]
        self._robot = robot
        self._arm = robot.arms[0]
        controller = robot.part_controllers[self._arm]
        if (
            not isinstance(controller, OperationalSpaceController)
            or controller.input_type != "delta"
            or not controller.use_ori
            or controller.impedance_mode != "fixed"
        ):
            raise ScriptedPolicyError(
                "scripted controllers need robosuite.controller OSC_POSE (delta inputs, fixed impedance); "
                f"this env's arm uses {type(controller).__name__}"
            )
        self._controller = controller
        grippers = list(robot.composite_controller.grippers)
        if len(grippers) != 1:
            raise ScriptedPolicyError(f"scripted controllers need one gripper, found {grippers}")
        self._gripper = grippers[0]
        # Controller input -> delta: scale_action's affine map, from the controller's limits.
        in_min, in_max = np.asarray(controller.input_min), np.asarray(controller.input_max)
        out_min, out_max = np.asarray(controller.output_min), np.asarray(controller.output_max)
        self._delta_per_input = np.abs(out_max - out_min) / np.abs(in_max - in_min)
        self._input_mid = (in_max + in_min) / 2.0
        self._output_mid = (out_max + out_min) / 2.0
        self._delta_low, self._delta_high = out_min, out_max
        # Policy action -> env action: the env's ActionScaler over robosuite's action_spec.
        low, high = (np.asarray(b, dtype=np.float64) for b in suite_env.action_spec)
        self._env_mid = (high + low) / 2.0
        self._env_half = (high - low) / 2.0

    @property
    def max_step(self) -> float:
        """The largest position delta one action can ask for on every axis (m)."""
        return float(np.min(np.abs(np.concatenate([self._delta_low[:3], self._delta_high[:3]]))))

    @property
    def max_rot(self) -> float:
        return float(np.min(np.abs(np.concatenate([self._delta_low[3:], self._delta_high[3:]]))))

    def __call__(self, dpos: np.ndarray, drot: np.ndarray, gripper: float) -> np.ndarray:
        """`dpos` (m) and `drot` (axis-angle, rad) in the world frame; gripper -1 open .. +1 closed."""
        c = self._controller
        if c.input_ref_frame == "base":
            # Deltas are read in the base frame: rotate world vectors by the base's inverse.
            to_ref = np.asarray(c.origin_ori).T
            dpos, drot = to_ref @ dpos, to_ref @ drot
        delta = np.concatenate([dpos, drot])
        controller_input = (delta - self._output_mid) / self._delta_per_input + self._input_mid
        action = self._robot.create_action_vector(
            {self._arm: controller_input, self._gripper: np.array([gripper])}
        )
        policy = (action - self._env_mid) / self._env_half
        return np.clip(policy, -1.0, 1.0).astype(np.float32)


def _cap(vector: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector if norm <= limit else vector * (limit / norm)


def _yaw(rotation: np.ndarray) -> float:
    return math.atan2(rotation[1, 0], rotation[0, 0])


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _point_down(rotation: np.ndarray) -> np.ndarray:
    """`rotation` turned by the smallest rotation that points its z axis (the approach axis of
    robosuite's grip site) straight down, keeping its yaw."""
    z = rotation[:, 2]
    down = np.array([0.0, 0.0, -1.0])
    axis = np.cross(z, down)
    sin, cos = float(np.linalg.norm(axis)), float(np.dot(z, down))
    if sin < 1e-9:
        # already down, or straight up: then half a turn about world x
        return rotation.copy() if cos > 0 else np.diag([1.0, -1.0, -1.0]) @ rotation
    return Rotation.from_rotvec(axis / sin * math.atan2(sin, cos)).as_matrix() @ rotation


class ScriptedPolicy:
    """One task's state machine; `reset()` at every episode start, then `act(obs)` every step."""

    # The hand counts as stopped after this many steps moving less than STALL_SPEED (m/step);
    # a stopped hand near its target has arrived (contact or the servo's steady-state error
    # would otherwise keep it a few millimetres short forever).
    STALL_STEPS = 4
    STALL_SPEED = 0.001

    def __init__(self, env: gymnasium.Env, plan: TaskPlan, gains: Gains | None = None) -> None:
        self.plan = plan
        self._suite = robosuite_env(env)
        self._to_action = OscPoseActions(self._suite)
        gains = gains or Gains()
        self._gains = Gains(
            pos=gains.pos,
            max_step=min(gains.max_step, self._to_action.max_step),
            rot=gains.rot,
            max_rot=min(gains.max_rot, self._to_action.max_rot),
        )
        robot = self._suite.robots[0]
        self._eef_site = robot.eef_site_id[robot.arms[0]]
        self._object_body, self._target_body = _task_bodies(self._suite, plan.task)
        self.phase = Phase.APPROACH
        self._steps_in_phase = 0
        self._stalled = 0
        self._last_eef: np.ndarray | None = None
        self._hand: np.ndarray | None = None  # target hand orientation (world)
        self._hold = np.zeros(3)  # where the hand stopped to grasp or release
        self._carry_z = 0.0
        self._place: np.ndarray | None = None

    def reset(self) -> None:
        """Start a new episode (call after the env's reset: it reads the new object pose)."""
        plan = self.plan
        self._enter(Phase.APPROACH)
        self._last_eef = None
        self._hand = None
        if self._target_body is None:
            self._place = None
            self._carry_z = float(self._grasp_point()[2]) + plan.carry
        else:
            target = self._target_body()
            self._place = target + np.array([*plan.place_offset, plan.release_height])
            self._carry_z = float(target[2]) + plan.carry

    # -- reading the scene -----------------------------------------------------------------------

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        data = self._suite.sim.data
        rotation = np.array(data.site_xmat[self._eef_site]).reshape(3, 3)
        return np.array(data.site_xpos[self._eef_site]), rotation

    def _object_rot(self) -> np.ndarray:
        return np.array(self._suite.sim.data.body_xmat[self._object_body]).reshape(3, 3)

    def _grasp_point(self) -> np.ndarray:
        position = np.array(self._suite.sim.data.body_xpos[self._object_body])
        return position + np.array([0.0, 0.0, self.plan.grasp_offset])

    def _target_hand(self, eef_rot: np.ndarray) -> np.ndarray:
        down = _point_down(eef_rot)
        if self.plan.yaw_period is None:
            return down
        period = self.plan.yaw_period
        turn = _yaw(self._object_rot()) - _yaw(down)
        turn = (turn + period / 2) % period - period / 2  # the nearest face: within half a period
        return _rot_z(turn) @ down

    # -- the state machine -----------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self._steps_in_phase = 0
        self._stalled = 0

    def _arrived(self, target: np.ndarray, eef: np.ndarray, tolerance: float) -> bool:
        error = float(np.linalg.norm(target - eef))
        return error < tolerance or (self._stalled >= self.STALL_STEPS and error < 3 * tolerance)

    def act(self, obs: np.ndarray | None = None) -> np.ndarray:
        """The next action in [-1, 1]; `obs` is unused (poses come from the simulator)."""
        plan = self.plan
        eef, eef_rot = self._eef()
        moved = np.inf if self._last_eef is None else float(np.linalg.norm(eef - self._last_eef))
        self._stalled = self._stalled + 1 if moved < self.STALL_SPEED else 0
        self._last_eef = eef
        grasp = self._grasp_point()
        if self._hand is None or self.phase is Phase.APPROACH:
            self._hand = self._target_hand(eef_rot)
        carrying = self.phase in (Phase.LIFT, Phase.CARRY, Phase.LOWER)
        if carrying and np.linalg.norm(grasp - eef) > plan.slip_distance:
            self._enter(Phase.APPROACH)  # dropped: start over with an open hand
        target, gripper = self._step_phase(eef, eef_rot, grasp)
        self._steps_in_phase += 1
        g = self._gains
        dpos = _cap(g.pos * (target - eef), g.max_step)
        drot = _cap(g.rot * self._rot_error(eef_rot), g.max_rot)
        return self._to_action(dpos, drot, gripper)

    def _step_phase(
        self, eef: np.ndarray, eef_rot: np.ndarray, grasp: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """This step's hand target and gripper command, moving to the next phase on arrival."""
        plan, phase = self.plan, self.phase
        if phase is Phase.APPROACH:
            target = grasp + np.array([0.0, 0.0, plan.hover])
            aligned = float(np.linalg.norm(self._rot_error(eef_rot))) < plan.rot_tolerance
            if aligned and self._arrived(target, eef, plan.reach_tolerance):
                self._enter(Phase.DESCEND)
            return target, GRIPPER_OPEN
        if phase is Phase.DESCEND:
            if self._arrived(grasp, eef, plan.descend_tolerance):
                self._hold = eef.copy()
                self._enter(Phase.GRASP)
            return grasp, GRIPPER_OPEN
        if phase is Phase.GRASP:
            if self._steps_in_phase >= plan.grasp_steps:
                self._enter(Phase.LIFT)
            return self._hold, GRIPPER_CLOSE
        if phase is Phase.LIFT:
            target = np.array([self._hold[0], self._hold[1], self._carry_z])
            if self._place is not None and self._arrived(target, eef, 2 * plan.reach_tolerance):
                self._enter(Phase.CARRY)
            return target, GRIPPER_CLOSE
        assert self._place is not None  # the remaining phases only happen when placing
        if phase is Phase.CARRY:
            target = np.array([self._place[0], self._place[1], self._carry_z])
            if self._arrived(target, eef, 2 * plan.reach_tolerance):
                self._enter(Phase.LOWER)
            return target, GRIPPER_CLOSE
        if phase is Phase.LOWER:
            if self._arrived(self._place, eef, plan.reach_tolerance):
                self._hold = eef.copy()
                self._enter(Phase.RELEASE)
            return self._place, GRIPPER_CLOSE
        if phase is Phase.RELEASE:
            if self._steps_in_phase >= plan.release_steps:
                self._enter(Phase.RETREAT)
            return self._hold, GRIPPER_OPEN
        return np.array([self._hold[0], self._hold[1], self._carry_z]), GRIPPER_OPEN  # RETREAT

    def _rot_error(self, eef_rot: np.ndarray) -> np.ndarray:
        assert self._hand is not None
        return Rotation.from_matrix(self._hand @ eef_rot.T).as_rotvec()


def _task_bodies(suite_env: Any, task: str) -> tuple[int, Callable[[], np.ndarray] | None]:
    """The body id of the object to pick and, for placing tasks, where it goes (world)."""
    if task == "Lift":
        return int(suite_env.cube_body_id), None
    # PickPlace<Object>: single-object mode keeps one active object and its bin quadrant.
    index = int(suite_env.object_id)
    body = suite_env.obj_body_id[suite_env.objects[index].name]
    return int(body), lambda: np.array(suite_env.target_bin_placements[index], dtype=np.float64)


def scripted_task(env_config: EnvConfig) -> TaskPlan:
    """The plan for an env id, or a ScriptedPolicyError listing the supported ones."""
    supported = ", ".join("robosuite:" + t for t in SCRIPTED_TASKS)
    if env_config.family != "robosuite" or env_config.name not in SCRIPTED_TASKS:
        raise ScriptedPolicyError(
            f"no scripted controller for {env_config.id!r}; --policy scripted supports {supported}"
        )
    return SCRIPTED_TASKS[env_config.name]


def make_scripted_policy(env_config: EnvConfig, env: gymnasium.Env) -> ScriptedPolicy:
    """The scripted controller for `env` (built from `env_config` by `make_env`)."""
    return ScriptedPolicy(env, scripted_task(env_config))
