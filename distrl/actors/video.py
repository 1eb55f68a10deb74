"""Evaluation videos: one episode of the deterministic policy, rendered offscreen, as an MP4.

`record_episode` steps the env through the same `Rollout` as `evaluate` and renders a frame
after the reset and after every env step (inside an action chunk too) with `EnvRenderer`;
`Mp4Writer` encodes them as H.264 yuv420p (what browsers play) with the ffmpeg that the
`imageio-ffmpeg` package bundles. The evaluator writes its clips to `RUN_DIR/videos/` as
`eval_<updates>.mp4` (zero-padded: sorted by name, the newest is last); `distrl eval --video`
records one on demand.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium
import numpy as np

from distrl.actors.rollout import Rollout
from distrl.algos import Policy
from distrl.envs import EnvConfig, make_env
from distrl.envs.render import DEFAULT_HEIGHT, DEFAULT_WIDTH, NUMPY_RENDERED_IDS, EnvRenderer, gl_problem
from distrl.telemetry.clips import VIDEO_DIR

if TYPE_CHECKING:
    from distrl.config import EvalVideoConfig

log = logging.getLogger(__name__)

DEFAULT_FRAMES = 300
DEFAULT_FPS = 30


def clip_path(run_dir: Path, updates: int) -> Path:
    """Where the evaluator puts the clip of the policy after `updates` learner updates."""
    return Path(run_dir) / VIDEO_DIR / f"eval_{updates:012d}.mp4"


def check_frame_size(width: int, height: int) -> None:
    """H.264 in yuv420p needs even sides; ValueError otherwise."""
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"video frames need an even width and height (H.264 yuv420p), got {width}x{height}")


class Mp4Writer:
    """Writes RGB uint8 frames to an H.264 yuv420p MP4 at `path`, through the ffmpeg binary that
    `imageio-ffmpeg` bundles.

    ffmpeg writes a hidden temporary file beside `path`; `close()` renames it into place, so a
    reader (the W&B sink, the dashboard) never sees half a clip. `abort()`, or leaving a `with`
    block by an exception, removes it instead.
    """

    def __init__(self, path: Path, width: int, height: int, fps: float = DEFAULT_FPS, crf: int = 23) -> None:
        import imageio_ffmpeg

        check_frame_size(width, height)
        self.path = Path(path)
        self.width, self.height = width, height
        self.frames = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        # ffmpeg is started directly, not through imageio_ffmpeg.write_frames: that one forks with a
        # preexec_fn, which can hang a process whose other threads hold locks (gRPC's, in the evaluator).
        # stderr goes to a file: a pipe nobody reads could fill up and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close() or abort()
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-y", "-loglevel", "error",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps}", "-i", "-",
            "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(crf),
            # -f: the temporary name has no .mp4 suffix; faststart: a browser plays it while loading.
            "-f", "mp4", "-movflags", "+faststart", str(self._tmp),
        ]  # fmt: skip
        self._ffmpeg = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        self._open = True

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected an RGB uint8 frame of shape {(self.height, self.width, 3)}, "
                f"got {frame.dtype} {frame.shape}"
            )
        assert self._ffmpeg.stdin is not None
        try:
            self._ffmpeg.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            raise self._failure("ffmpeg stopped taking frames") from None
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and move it to `path`; a clip with no frames is an error."""
        if not self._open:
            return self.path
        self._open = False
        try:
            assert self._ffmpeg.stdin is not None
            try:
                self._ffmpeg.stdin.close()
            except BrokenPipeError:
                pass  # the exit code below says what happened
            if self._ffmpeg.wait() != 0:
                raise self._failure(f"ffmpeg exited with code {self._ffmpeg.returncode}")
            if not self.frames:
                raise ValueError(f"{self.path}: no frames were written")
            os.replace(self._tmp, self.path)
        finally:
            self._tmp.unlink(missing_ok=True)
            self._stderr.close()
        return self.path

    def abort(self) -> None:
        if self._open:
            self._open = False
            self._ffmpeg.kill()
            self._ffmpeg.wait()
            self._tmp.unlink(missing_ok=True)
            self._stderr.close()

    def _failure(self, what: str) -> RuntimeError:
        self._stderr.seek(0)
        said = self._stderr.read().decode(errors="replace").strip()
        return RuntimeError(f"{self.path}: {what}" + (f": {said}" if said else ""))

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class RecordedEpisode:
    path: Path
    frames: int
    env_steps: int
    episode_return: float
    finished: bool  # the episode ended (else the clip stopped at max_frames)
    render_s: float  # time spent rendering frames
    encode_s: float  # time spent handing frames to the encoder


class _FrameTap:
    """Renders a frame into `writer` each time it is called, once `armed`, up to `max_frames`."""

    def __init__(self, renderer: EnvRenderer, writer: Mp4Writer, max_frames: int) -> None:
        self.renderer, self.writer, self.max_frames = renderer, writer, max_frames
        self.armed = False
        self.render_s = self.encode_s = 0.0

    def full(self) -> bool:
        return self.writer.frames >= self.max_frames

    def __call__(self) -> None:
        if not self.armed or self.full():
            return
        t0 = time.perf_counter()
        frame = self.renderer.frame()
        t1 = time.perf_counter()
        self.writer.write(frame)
        self.render_s += t1 - t0
        self.encode_s += time.perf_counter() - t1


class _AfterEveryStep(gymnasium.Wrapper):
    """Calls `hook()` after each reset and step: every env step is seen, inside a chunk too."""

    def __init__(self, env: gymnasium.Env, hook: Callable[[], None]) -> None:
        super().__init__(env)
        self._hook = hook

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        out = self.env.reset(**kwargs)
        self._hook()
        return out

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        out = self.env.step(action)
        self._hook()
        return out


def record_episode(
    policy: Policy,
    env_config: EnvConfig,
    path: Path,
    seed: int,
    max_frames: int = DEFAULT_FRAMES,
    fps: float = DEFAULT_FPS,
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
    stop: threading.Event | None = None,
) -> RecordedEpisode:
    """Record the deterministic policy's episode from `seed` (evaluate's first episode with that
    seed) as an MP4 at `path`: the reset frame and one per env step, at most `max_frames`.

    Raises RenderUnavailable when this process cannot render the env; nothing is left at `path`
    when recording fails. `stop` ends the clip early (what was recorded is kept).
    """
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    check_frame_size(width, height)
    env = make_env(env_config, seed=seed)
    renderer: EnvRenderer | None = None
    writer: Mp4Writer | None = None
    try:
        renderer = EnvRenderer(env, width, height)
        writer = Mp4Writer(path, width, height, fps)
        tap = _FrameTap(renderer, writer, max_frames)
        rollout = Rollout([_AfterEveryStep(env, tap)], policy, auto_reset=False)
        tap.armed = True  # from the seeded reset on, as evaluate's first episode
        rollout.reset([seed])
        episode_return, env_steps, finished = 0.0, 0, False
        while not tap.full() and not (stop is not None and stop.is_set()):
            step = rollout.step(deterministic=True)
            env_steps += step.env_steps
            episode_return += float(step.transitions["reward"].sum())
            if step.finished:
                finished = True
                break
        t0 = time.perf_counter()
        writer.close()
        tap.encode_s += time.perf_counter() - t0
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if renderer is not None:
            renderer.close()
        env.close()
    return RecordedEpisode(
        path=Path(path),
        frames=writer.frames,
        env_steps=env_steps,
        episode_return=episode_return,
        finished=finished,
        render_s=tap.render_s,
        encode_s=tap.encode_s,
    )


class EvalVideoRecorder:
    """The evaluator's clips: one episode every `config.every` evaluations, into RUN_DIR/videos/.

    Never stops the evaluator: when this process cannot render (MUJOCO_GL=disable, no GL
    library) or a recording fails, it logs one warning and records nothing more.
    """

    def __init__(self, config: EvalVideoConfig, env_config: EnvConfig, run_dir: Path | None) -> None:
        self.config = config
        self.env_config = env_config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.enabled = config.every > 0
        if self.enabled and self.run_dir is None:
            log.info("eval.video: no run directory (--run-dir) to write clips to; recording none")
            self.enabled = False
        if self.enabled and env_config.id not in NUMPY_RENDERED_IDS:
            problem = gl_problem()
            if problem is not None:
                self._turn_off(problem)

    def due(self, evaluation: int) -> bool:
        """Whether evaluation number `evaluation` (0 for the first) gets a clip."""
        return self.enabled and evaluation % self.config.every == 0

    def record(
        self, policy: Policy, updates: int, seed: int, stop: threading.Event | None = None
    ) -> RecordedEpisode | None:
        """Record the clip of the policy after `updates` updates; None when it failed (then off)."""
        assert self.run_dir is not None
        c = self.config
        try:
            clip = record_episode(
                policy,
                self.env_config,
                clip_path(self.run_dir, updates),
                seed,
                max_frames=c.frames,
                fps=c.fps,
                width=c.width,
                height=c.height,
                stop=stop,
            )
        except Exception as exc:  # rendering is optional: the evaluation goes on without it
            if stop is not None and stop.is_set():
                log.info("clip at %d updates abandoned: stopping (%s)", updates, exc)
            else:
                self._turn_off(f"{type(exc).__name__}: {exc}")
            return None
        log.info(
            "clip %s: %d frames, rendered at %.1f frames/s",
            clip.path,
            clip.frames,
            clip.frames / max(clip.render_s, 1e-9),
        )
        return clip

    def _turn_off(self, reason: str) -> None:
        self.enabled = False
        log.warning("evaluation videos are off: %s", reason)
