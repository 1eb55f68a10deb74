"""Offscreen frames of any `make_env` env: RGB uint8 [height, width, 3] of its current state.

    with EnvRenderer(env, width=320, height=240) as renderer:
        frame = renderer.frame()

MuJoCo-based envs (`gym:` MuJoCo ids, `dmc:`, `robosuite:`, the MuJoCo `safe:` tasks) render
through `mujoco.Renderer` on the env's own model and data, from a fixed camera per family: the
model's `track` camera (Gymnasium locomotion; else the env's default free camera), camera 0
(dm_control, a tracking side view), `frontview` (robosuite, collision geoms hidden).
`safe:point-goal` is drawn with numpy (arena, hazard disc, goal, agent) and needs no GL.

MuJoCo renders through the GL backend that MUJOCO_GL names when mujoco is first imported:
`egl` where a GPU renders, `osmesa` on a CPU machine (Debian: `apt-get install libosmesa6`).
With MUJOCO_GL=disable (what actors, tests and CI run with) or the library missing, building a
renderer raises RenderUnavailable saying what to install or set.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import gymnasium

DEFAULT_WIDTH = 320
DEFAULT_HEIGHT = 240
# Values of MUJOCO_GL with which mujoco builds no GL context at all.
GL_OFF = ("disable", "disabled", "off", "false", "0")
# Ids drawn without GL, so they render whatever MUJOCO_GL says.
NUMPY_RENDERED_IDS = ("safe:point-goal",)
_HOW = (
    "set MUJOCO_GL=osmesa (CPU; Debian/Ubuntu: apt-get install libosmesa6) or MUJOCO_GL=egl (GPU) "
    "before the process starts"
)
ROBOSUITE_CAMERA = "frontview"
GYM_CAMERA = "track"


class RenderUnavailable(RuntimeError):
    """Frames cannot be rendered in this process; the message says what to install or set."""


def _gpu_present() -> bool:
    return Path("/dev/nvidia0").exists() or any(Path("/dev/dri").glob("renderD*"))


def headless_gl_backend() -> str | None:
    """The headless MUJOCO_GL this machine offers: `egl` where a GPU and libEGL are present, else
    `osmesa` when libOSMesa is installed, else `egl` through Mesa's software renderer when only
    libEGL is there; None when there is none."""
    has_egl = ctypes.util.find_library("EGL") is not None
    if has_egl and _gpu_present():
        return "egl"
    if ctypes.util.find_library("OSMesa") is not None:
        return "osmesa"
    return "egl" if has_egl else None


def prefer_headless_gl() -> str | None:
    """Set MUJOCO_GL to `headless_gl_backend()` when it is unset and mujoco is not imported yet;
    returns the value now in force (None: unset).

    For processes that render (the evaluator, `distrl eval --video`); a MUJOCO_GL the user set,
    `disable` included, is left alone.
    """
    current = os.environ.get("MUJOCO_GL")
    if "mujoco" in sys.modules:
        return current
    if current is not None:
        if current.strip().lower() in ("egl", "osmesa"):
            os.environ["PYOPENGL_PLATFORM"] = current.strip().lower()
        return current
    backend = headless_gl_backend()
    if backend is not None:
        os.environ["MUJOCO_GL"] = backend
        os.environ["PYOPENGL_PLATFORM"] = backend  # MuJoCo's GL context goes through PyOpenGL
    return backend


def gl_problem() -> str | None:
    """Why MuJoCo cannot render offscreen in this process, or None when it can (as far as can be
    told without building a context)."""
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if backend in GL_OFF:
        return f"offscreen rendering is off (MUJOCO_GL={backend}): {_HOW}"
    import mujoco

    if hasattr(mujoco, "GLContext"):
        return None
    if backend == "osmesa" and ctypes.util.find_library("OSMesa") is None:
        return "MUJOCO_GL=osmesa but libOSMesa is not installed: apt-get install libosmesa6 (Debian/Ubuntu)"
    if backend == "egl" and ctypes.util.find_library("EGL") is None:
        return "MUJOCO_GL=egl but libEGL is not installed: install the GPU driver's EGL or libegl1"
    platform = os.environ.get("PYOPENGL_PLATFORM")
    if backend in ("egl", "osmesa") and platform and platform != backend:
        return f"MUJOCO_GL={backend} but PYOPENGL_PLATFORM={platform}: set both to {backend}"
    return (
        "MuJoCo has no GL backend in this process (MUJOCO_GL is read when mujoco is first imported; "
        f"it is now {backend or 'unset'}): {_HOW}"
    )


class EnvRenderer:
    """Renders frames of `env` (an env from `make_env`, wrapped or not), `width` x `height`.

    Keep one for many frames: each holds a GL context. Raises RenderUnavailable when this
    process cannot render the env, ValueError for a bad size.
    """

    def __init__(self, env: gymnasium.Env, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        self.width, self.height = int(width), int(height)
        self._source = _frame_source(env.unwrapped, self.width, self.height)

    def frame(self) -> np.ndarray:
        """The env's current state as RGB uint8 [height, width, 3]."""
        return self._source.frame()

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> EnvRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def render_frame(env: gymnasium.Env, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> np.ndarray:
    """One frame of `env`'s current state (builds and frees a renderer: use EnvRenderer for many)."""
    with EnvRenderer(env, width, height) as renderer:
        return renderer.frame()


# -- frame sources ------------------------------------------------------------------------------


def _frame_source(base: gymnasium.Env, width: int, height: int) -> Any:
    from distrl.envs.dmc import DmControlEnv
    from distrl.envs.robosuite_envs import RobosuiteEnv
    from distrl.envs.safety import PointGoalEnv

    if isinstance(base, PointGoalEnv):
        return _PointGoalPicture(base, width, height)
    if isinstance(base, RobosuiteEnv):
        sim = base._env.sim
        return _MujocoScene(
            sim.model._model, sim.data._data, width, height, ROBOSUITE_CAMERA, hide_collision=True
        )
    if isinstance(base, DmControlEnv):
        physics = base._env.physics
        return _MujocoScene(physics.model.ptr, physics.data.ptr, width, height, 0)
    model, data = getattr(base, "model", None), getattr(base, "data", None)
    if type(model).__name__ == "MjModel" and type(data).__name__ == "MjData":  # Gymnasium's MujocoEnv
        renderer = getattr(base, "mujoco_renderer", None)
        free_camera = getattr(renderer, "default_cam_config", None)
        return _MujocoScene(model, data, width, height, GYM_CAMERA, free_camera=free_camera)
    raise RenderUnavailable(
        f"no offscreen renderer for {type(base).__name__} envs: frames cover the MuJoCo-based ids "
        f"(gym: MuJoCo, dmc:, robosuite:, safe:) and {', '.join(NUMPY_RENDERED_IDS)}"
    )


class _MujocoScene:
    """`mujoco.Renderer` on an env's model and data, from `camera` (a name or index; the free
    camera, set from `free_camera`, when the model has no such camera)."""

    def __init__(
        self,
        model: Any,
        data: Any,
        width: int,
        height: int,
        camera: str | int,
        free_camera: dict[str, Any] | None = None,
        hide_collision: bool = False,
    ) -> None:
        problem = gl_problem()
        if problem is not None:
            raise RenderUnavailable(problem)
        import mujoco

        self._data = data
        # The offscreen buffer is sized by the model; a larger frame needs a larger buffer.
        visual = model.vis.global_
        visual.offwidth, visual.offheight = max(visual.offwidth, width), max(visual.offheight, height)
        try:
            self._renderer = mujoco.Renderer(model, height, width)
        except Exception as exc:  # the GL library loads but no context can be made (no device, ...)
            raise RenderUnavailable(
                f"MuJoCo cannot render with MUJOCO_GL={os.environ.get('MUJOCO_GL', 'unset')}: "
                f"{type(exc).__name__}: {exc}; {_HOW}"
            ) from None
        self._option = mujoco.MjvOption()
        if hide_collision:
            self._option.geomgroup[0] = 0  # robosuite's collision meshes sit in group 0
        self._camera: Any
        if isinstance(camera, int):
            found = camera < model.ncam
        else:
            found = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) >= 0
        if found:
            self._camera = camera
        else:
            self._camera = mujoco.MjvCamera()
            mujoco.mjv_defaultFreeCamera(model, self._camera)
            for key, value in (free_camera or {}).items():
                if isinstance(value, np.ndarray):
                    getattr(self._camera, key)[:] = value
                else:
                    setattr(self._camera, key, value)

    def frame(self) -> np.ndarray:
        self._renderer.update_scene(self._data, camera=self._camera, scene_option=self._option)
        return self._renderer.render()

    def close(self) -> None:
        self._renderer.close()


class _PointGoalPicture:
    """`safe:point-goal` from above: the [-1, 1]^2 arena in a centred square, the hazard disc, the
    goal disc and the agent."""

    BACKGROUND = (40, 40, 48)
    ARENA = (235, 235, 228)
    HAZARD = (226, 92, 80)
    GOAL = (86, 180, 96)
    AGENT = (40, 90, 200)
    AGENT_RADIUS = 0.04

    def __init__(self, env: Any, width: int, height: int) -> None:
        from distrl.envs.safety import HAZARD_CENTRE, HAZARD_RADIUS, POINT_GOAL, POINT_GOAL_RADIUS

        self._env = env
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        # World coordinates of every pixel centre; y points up.
        cols = (np.arange(width) - left + 0.5) / side * 2.0 - 1.0
        rows = 1.0 - (np.arange(height) - top + 0.5) / side * 2.0
        self._x, self._y = np.meshgrid(cols, rows)
        picture = np.empty((height, width, 3), dtype=np.uint8)
        picture[:] = self.BACKGROUND
        picture[(np.abs(self._x) <= 1.0) & (np.abs(self._y) <= 1.0)] = self.ARENA
        picture[self._disc(HAZARD_CENTRE, HAZARD_RADIUS)] = self.HAZARD
        picture[self._disc(POINT_GOAL, POINT_GOAL_RADIUS)] = self.GOAL
        self._picture = picture

    def _disc(self, centre: tuple[float, float] | np.ndarray, radius: float) -> np.ndarray:
        return (self._x - centre[0]) ** 2 + (self._y - centre[1]) ** 2 <= radius * radius

    def frame(self) -> np.ndarray:
        out = self._picture.copy()
        position = self._env._pos
        if position is not None:  # None before the first reset
            out[self._disc(position, self.AGENT_RADIUS)] = self.AGENT
        return out

    def close(self) -> None:
        pass
