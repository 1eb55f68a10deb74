"""Typed environment configuration: the `env:` section of an experiment config."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FAMILY_PREFIXES = ("gym", "dmc", "robosuite", "safe")


class RobosuiteOptions(BaseModel):
    """Options that only apply to `robosuite:` ids (and the robosuite-based `safe:Lift-keepout`).

    `controller` is a part-controller name for the arm(s) (`OSC_POSE`, `OSC_POSITION`,
    `JOINT_POSITION`, `JOINT_VELOCITY`, `JOINT_TORQUE`, `IK_POSE`), a robosuite 1.5 composite
    controller name (`BASIC`, `WHOLE_BODY_IK`, ...), a path to a composite-controller JSON
    file, or a composite controller config given inline as a mapping. The default, OSC_POSE
    with delta inputs and a GRIP gripper, is the controller robomimic datasets were recorded
    with.
    """

    model_config = ConfigDict(extra="forbid")

    robot: str | list[str] = Field(
        "Panda", description="robot name; two-arm tasks repeat a single name for both arms"
    )
    controller: str | dict[str, Any] = Field("OSC_POSE", description="see the class docstring")
    reward_shaping: bool = Field(
        False, description="dense shaped reward instead of the sparse success reward"
    )
    horizon: int = Field(500, gt=0, description="episode length in control steps (truncation)")
    control_freq: float = Field(20.0, gt=0, description="policy steps per simulated second")
    hard_reset: bool = Field(False, description="rebuild the MuJoCo model on every reset (slow)")
    obs_keys: list[str] | None = Field(
        None, description="observation keys to flatten, in order; None = the documented default order"
    )

    @field_validator("robot")
    @classmethod
    def _robot_not_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("robot: give at least one robot name")
        return value


class EnvConfig(BaseModel):
    """Which environment to build and how.

    `id` is `gym:<Gymnasium id>`, `dmc:<domain>-<task>`, `robosuite:<Env>` or `safe:<task>`
    (a cost-aware task, see `distrl.envs.safety`).
    `max_episode_steps` counts steps of the returned env (after action repeat); None keeps the
    family's default (Gymnasium's registered limit, dm_control's time limit, robosuite's
    `horizon`). `terminate_on_success` ends an episode with `terminated=True` at its first step
    with `info["success"]` (an error for envs that report no success).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1)
    max_episode_steps: int | None = Field(None, gt=0)
    action_repeat: int = Field(1, ge=1, description="repeat each action this many env steps, summing rewards")
    seed: int | None = Field(None, ge=0, description="seed of the first reset (and the action space)")
    terminate_on_success: bool = Field(
        False,
        description="end an episode as terminal at its first successful step (tasks with a success signal)",
    )
    wrappers: list[str] = Field(
        default_factory=list,
        description="extra wrappers applied in order, each 'package.module:callable' taking and returning "
        "a gymnasium env (e.g. one that reports a per-step cost in info and names it in distrl_signals)",
    )
    robosuite: RobosuiteOptions = Field(default_factory=RobosuiteOptions)

    @field_validator("wrappers")
    @classmethod
    def _wrapper_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            module, sep, attr = path.partition(":")
            if not sep or not module or not attr:
                raise ValueError(f"wrapper {path!r}: expected 'package.module:callable'")
        return value

    @field_validator("id")
    @classmethod
    def _strip_id(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _robosuite_options_only_for_robosuite(self) -> EnvConfig:
        # Options silently ignored are a common source of "why didn't my change do anything".
        # Defaults are fine (a saved, fully resolved config spells them out).
        if self.robosuite == RobosuiteOptions() or self.id.startswith("robosuite:"):
            return self
        from distrl.envs.safety import ROBOSUITE_SAFE_IDS  # imported late: it pulls in gymnasium

        if self.id not in ROBOSUITE_SAFE_IDS:
            raise ValueError(
                f"robosuite: options only apply to robosuite: ids and {', '.join(ROBOSUITE_SAFE_IDS)}, "
                f"not {self.id!r}"
            )
        return self

    @property
    def family(self) -> str:
        """The id's prefix (`gym`, `dmc`, `robosuite`, `safe`), or '' if it has none."""
        prefix, sep, _ = self.id.partition(":")
        return prefix if sep else ""

    @property
    def name(self) -> str:
        """The id without its prefix."""
        _, sep, rest = self.id.partition(":")
        return rest if sep else self.id
