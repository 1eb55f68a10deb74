"""Evaluation videos: offscreen frames of real envs, MP4 clips that decode, the evaluator's
recorder, `distrl eval --video` and the clips' way to W&B.

MuJoCo reads MUJOCO_GL once, at import, and this process renders nothing (MUJOCO_GL=disable, as
in CI): clips of MuJoCo envs are recorded by the real CLI in a subprocess with MUJOCO_GL=osmesa,
skipped where libOSMesa is not installed (Debian: apt-get install libosmesa6).
`safe:point-goal` is drawn with numpy and records whatever MUJOCO_GL says.
"""

from __future__ import annotations

import ctypes.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "disable")

from distrl.actors import video
from distrl.actors.video import EvalVideoRecorder, Mp4Writer, clip_path, record_episode
from distrl.algos import SpaceSpec, make_algorithm, make_policy
from distrl.config import EvalVideoConfig, ExperimentConfig
from distrl.envs import EnvConfig, make_env
from distrl.envs.render import RenderUnavailable, render_frame
from distrl.learners import checkpoint as ckpt
from distrl.runtime.run import CONFIG_FILE
from distrl.telemetry.clips import NewClips, list_clips

ROOT = Path(__file__).resolve().parent.parent
HAS_OSMESA = ctypes.util.find_library("OSMesa") is not None
needs_osmesa = pytest.mark.skipif(
    not HAS_OSMESA, reason="libOSMesa not installed (apt-get install libosmesa6)"
)
POINT = "safe:point-goal"
# obs_dim, action_dim, signals, max_episode_steps: what the learner would save in its checkpoint.
SPACES = {
    "gym:HalfCheetah-v5": SpaceSpec(17, 6, (), 1000),
    POINT: SpaceSpec(2, 2, ("cost",), 100),
    "robosuite:Lift": SpaceSpec(19, 7, (), 500),
}


def decode(path: Path) -> tuple[dict, np.ndarray]:
    """The clip's metadata and frames [n, h, w, 3], read back by the library that wrote it."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    return meta, np.stack(frames)


def assert_moving_picture(frames: np.ndarray) -> None:
    """Not blank, and the picture changes over the clip."""
    assert frames.std() > 10.0, f"a blank clip (pixel std {frames.std():.1f})"
    first, last = frames[0].astype(np.int16), frames[-1].astype(np.int16)
    changed = int((np.abs(first - last).max(axis=-1) > 40).sum())
    assert changed > 20, f"only {changed} pixels changed between the first and the last frame"


def make_run_dir(tmp_path: Path, env_id: str, updates: int = 7) -> Path:
    """A run directory as the learner leaves it: config.yaml and a checkpoint of a fresh SAC."""
    run_dir = tmp_path / "run"
    config = ExperimentConfig(env=EnvConfig(id=env_id))
    run_dir.mkdir()
    (run_dir / CONFIG_FILE).write_text(config.to_yaml())
    space = SPACES[env_id]
    algo = make_algorithm(config.algo.name, space, config.algo.params(), "cpu")
    payload = {
        "algo": algo.state_dict(),
        "updates": updates,
        "version": 1,
        "rng": ckpt.rng_state(),
        "space": [space.obs_dim, space.action_dim],
        "signals": list(space.signals),
        "max_episode_steps": space.max_episode_steps,
    }
    ckpt.save_checkpoint(run_dir / "checkpoints", updates, payload)
    return run_dir


def eval_video(run_dir: Path, out: Path, gl: str | None, *args: str) -> tuple[int, str, str]:
    """`distrl eval RUN_DIR --video OUT --json ARGS`: (exit code, stdout, stderr). With `gl` in a
    subprocess with MUJOCO_GL=gl; with None in this process (MUJOCO_GL=disable)."""
    argv = ["eval", str(run_dir), "--video", str(out), "--json", *args]
    if gl is None:
        from typer.testing import CliRunner

        from distrl.cli import app

        result = CliRunner().invoke(app, argv)
        return result.exit_code, result.stdout, result.stderr
    done = subprocess.run(
        [sys.executable, "-m", "distrl.cli", *argv],
        cwd=ROOT,
        env={**os.environ, "MUJOCO_GL": gl},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout, done.stderr


# -- frames -----------------------------------------------------------------------------------------


def test_point_goal_is_drawn_without_gl():
    env = make_env(POINT, seed=0)
    env.reset()
    frame = render_frame(env, 160, 120)
    env.close()
    assert frame.shape == (120, 160, 3) and frame.dtype == np.uint8
    agent = (frame[..., 2] > 150) & (frame[..., 0] < 100)  # the blue dot
    assert agent.any(), "the agent is not in the picture"
    # it starts near (-0.7, -0.7): the lower left of the arena
    rows, cols = np.nonzero(agent)
    assert rows.mean() > 80 and cols.mean() < 80


def test_a_mujoco_env_without_gl_names_the_fix(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "disable")
    env = make_env("gym:HalfCheetah-v5", seed=0)
    env.reset()
    try:
        with pytest.raises(RenderUnavailable, match=r"MUJOCO_GL=osmesa.*libosmesa6.*MUJOCO_GL=egl"):
            render_frame(env)
    finally:
        env.close()


def test_a_headless_backend_is_picked_only_where_mujoco_gl_is_unset(tmp_path, monkeypatch):
    from distrl.envs import render
    from distrl.runtime import local

    libraries = {"EGL": "libEGL.so.1", "OSMesa": "libOSMesa.so.8"}
    monkeypatch.setattr(render.ctypes.util, "find_library", lambda name: libraries.get(name))
    monkeypatch.setattr(render, "_gpu_present", lambda: True)
    assert render.headless_gl_backend() == "egl"
    monkeypatch.setattr(render, "_gpu_present", lambda: False)
    assert render.headless_gl_backend() == "osmesa"  # a CPU machine
    del libraries["OSMesa"]
    assert render.headless_gl_backend() == "egl"  # Mesa's software EGL
    del libraries["EGL"]
    assert render.headless_gl_backend() is None

    # The local launcher hands the evaluator the backend when the user set none, else leaves it.
    monkeypatch.setattr(local, "headless_gl_backend", lambda: "osmesa")
    config = ExperimentConfig(env=EnvConfig(id=POINT))
    monkeypatch.delenv("MUJOCO_GL")
    assert local.LocalLauncher(config, tmp_path)._evaluator_gl == {"MUJOCO_GL": "osmesa"}
    monkeypatch.setenv("MUJOCO_GL", "disable")
    assert local.LocalLauncher(config, tmp_path)._evaluator_gl == {}


# -- the MP4 writer ---------------------------------------------------------------------------------


def test_mp4_writer_writes_h264_that_decodes(tmp_path):
    path = tmp_path / "clip.mp4"
    x = np.linspace(0, 255, 64, dtype=np.float32)
    with Mp4Writer(path, 64, 48, fps=10) as writer:
        for k in range(12):  # a gradient that slides to the right
            frame = np.empty((48, 64, 3), np.uint8)
            frame[:] = np.roll(x, 5 * k).astype(np.uint8)[None, :, None]
            writer.write(frame)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # the temporary file is gone
    meta, frames = decode(path)
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert frames.shape == (12, 48, 64, 3)
    assert_moving_picture(frames)


def test_mp4_writer_rejects_odd_sizes_and_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "odd.mp4", 65, 48)
    with pytest.raises(ValueError, match="shape"), Mp4Writer(tmp_path / "bad.mp4", 64, 48) as writer:
        writer.write(np.zeros((48, 64), np.uint8))
    assert list(tmp_path.iterdir()) == []


# -- recording --------------------------------------------------------------------------------------


def test_record_episode_of_the_point_task(tmp_path):
    config = EnvConfig(id=POINT)
    policy = make_policy("sac", SPACES[POINT], {})
    clip = record_episode(
        policy, config, tmp_path / "point.mp4", seed=3, max_frames=40, width=160, height=120
    )
    assert clip.frames == 40 and clip.env_steps == 39 and not clip.finished
    _, frames = decode(clip.path)
    assert frames.shape == (40, 120, 160, 3)
    assert_moving_picture(frames)


def test_evaluator_recorder_writes_clips_and_turns_off_on_failure(tmp_path, monkeypatch, caplog):
    policy = make_policy("sac", SPACES[POINT], {})
    settings = EvalVideoConfig(every=2, frames=10, width=64, height=48)
    recorder = EvalVideoRecorder(settings, EnvConfig(id=POINT), tmp_path)
    assert [recorder.due(k) for k in range(4)] == [True, False, True, False]
    for updates in (20, 100):
        assert recorder.record(policy, updates, seed=1) is not None
    assert [p.name for p in list_clips(tmp_path / "videos")] == [
        "eval_000000000020.mp4",
        "eval_000000000100.mp4",
    ]
    assert clip_path(tmp_path, 100) == tmp_path / "videos" / "eval_000000000100.mp4"

    def broken(*args, **kwargs):
        raise RenderUnavailable("no GL here")

    monkeypatch.setattr(video, "record_episode", broken)
    with caplog.at_level(logging.WARNING, logger="distrl.actors.video"):
        assert recorder.record(policy, 200, seed=1) is None  # never raises into the evaluator
    assert not recorder.enabled and not recorder.due(4)
    assert [r.getMessage() for r in caplog.records] == [
        "evaluation videos are off: RenderUnavailable: no GL here"
    ]


def test_evaluator_recorder_is_off_without_gl_or_run_dir(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MUJOCO_GL", "disable")
    with caplog.at_level(logging.WARNING, logger="distrl.actors.video"):
        recorder = EvalVideoRecorder(EvalVideoConfig(), EnvConfig(id="gym:HalfCheetah-v5"), tmp_path)
    assert not recorder.enabled
    assert len(caplog.records) == 1 and "MUJOCO_GL=disable" in caplog.records[0].getMessage()
    assert not EvalVideoRecorder(EvalVideoConfig(), EnvConfig(id=POINT), None).enabled
    assert not EvalVideoRecorder(EvalVideoConfig(every=0), EnvConfig(id=POINT), tmp_path).enabled
    with pytest.raises(ValueError, match="even"):
        EvalVideoConfig(width=321)


# -- distrl eval --video ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_id", "frames", "gl"),
    [
        pytest.param("gym:HalfCheetah-v5", 30, "osmesa", marks=needs_osmesa),
        pytest.param("robosuite:Lift", 8, "osmesa", marks=needs_osmesa),
        (POINT, 40, None),  # drawn with numpy: no GL needed, so in this process
    ],
)
def test_eval_command_records_a_clip(tmp_path, env_id, frames, gl):
    run_dir = make_run_dir(tmp_path, env_id)
    out = tmp_path / "clip.mp4"
    code, stdout, stderr = eval_video(run_dir, out, gl, "--frames", str(frames), "--seed", "5")
    assert code == 0, stdout + stderr
    result = json.loads(stdout)
    assert result["frames"] == frames and result["updates"] == 7 and result["path"] == str(out)
    meta, decoded = decode(out)
    assert meta["codec"] == "h264" and meta["fps"] == 30
    assert decoded.shape == (frames, 240, 320, 3)
    assert_moving_picture(decoded)


def test_eval_command_without_gl_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "disable")
    run_dir = make_run_dir(tmp_path, "gym:HalfCheetah-v5")
    code, _, stderr = eval_video(run_dir, tmp_path / "clip.mp4", None)
    assert code == 1
    assert "MUJOCO_GL=osmesa" in stderr and "libosmesa6" in stderr
    assert not (tmp_path / "clip.mp4").exists()


# -- W&B --------------------------------------------------------------------------------------------


def test_new_clips_are_each_taken_once(tmp_path):
    videos = tmp_path / "videos"
    assert NewClips(videos).take() == []  # no folder yet
    videos.mkdir()
    (videos / "eval_000000000010.mp4").write_bytes(b"old")
    clips = NewClips(videos)
    assert clips.take() == []  # there before: an earlier session's
    (videos / ".eval_000000000020.mp4.123.tmp").write_bytes(b"half")  # being written
    (videos / "eval_000000000030.mp4").write_bytes(b"x")
    (videos / "eval_000000000020.mp4").write_bytes(b"x")
    assert [p.name for p in clips.take()] == ["eval_000000000020.mp4", "eval_000000000030.mp4"]
    assert clips.take() == []


def test_wandb_sink_logs_new_clips_as_videos(tmp_path, monkeypatch):
    from distrl.telemetry.aggregate import MetricsRow
    from distrl.telemetry.sinks import WandbSink

    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    policy = make_policy("sac", SPACES[POINT], {})
    sink = WandbSink(project="distrl-test", mode="offline", run_dir=run_dir)

    def row(k: int) -> MetricsRow:
        return MetricsRow(
            index=k,
            env_steps=100 * k,
            updates=k,
            wall_time=float(k),
            unix_time=0.0,
            env_steps_per_s=0.0,
            updates_per_s=0.0,
            live_actors=1,
            metrics={"eval/return_mean": float(k)},
        )

    sink.write(row(1))
    record_episode(
        policy, EnvConfig(id=POINT), clip_path(run_dir, 2), seed=0, max_frames=8, width=64, height=48
    )
    sink.write(row(2))
    sink.close(timeout=60.0)
    assert sink.run_path is not None, "W&B did not start"
    logged = list((run_dir / "wandb").glob("offline-run-*/files/media/videos/eval/video_*.mp4"))
    assert len(logged) == 1, list(run_dir.rglob("*"))
    assert logged[0].read_bytes() == clip_path(run_dir, 2).read_bytes()
