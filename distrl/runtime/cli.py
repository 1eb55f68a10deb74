"""`distrl train` and `distrl eval`."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from distrl.runtime.run import CONFIG_FILE

if TYPE_CHECKING:
    from distrl.algos import Policy
    from distrl.config import ExperimentConfig


def train(
    config: Annotated[Path | None, typer.Argument(help="experiment config (YAML)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value overrides")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="default: runs/<name>-<time>")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the run in this directory where it stopped")
    ] = None,
    launcher: Annotated[
        str, typer.Option("--launcher", help="local (subprocesses) or ray (Ray actors on a Ray cluster)")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            help="ray: the cluster to join (HOST:6379, ray://HOST:10001, auto); default RAY_ADDRESS, "
            "else a Ray instance started on this machine",
        ),
    ] = None,
    no_console: Annotated[
        bool, typer.Option("--no-console", help="plain log lines, no live display")
    ] = False,
) -> None:
    """Train: start replay shards, a parameter server, a learner, actors and an evaluator."""
    from distrl.config import ConfigError, load_config, redact_overrides
    from distrl.experiment import check_experiment
    from distrl.runtime.local import LocalLauncher
    from distrl.runtime.process import ComponentFailed

    overrides = list(overrides or [])
    if resume is not None:
        saved = resume / CONFIG_FILE
        if not saved.is_file():
            raise typer.BadParameter(f"{saved} not found: not a distrl run directory", param_hint="--resume")
        if config is not None and config.suffix not in (".yaml", ".yml"):
            overrides.insert(0, str(config))  # `--resume DIR key=value` reads the key as an override
        config, run_dir = saved, resume
    elif config is None:
        raise typer.BadParameter("give a config file or --resume RUN_DIR", param_hint="CONFIG")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # What records the command line (W&B's run metadata) must not record a token override.
    sys.argv[:] = redact_overrides(sys.argv)
    if run_dir is None:
        run_dir = Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if launcher not in ("local", "ray"):
        typer.echo(f"error: unknown launcher {launcher!r} (available: local, ray)", err=True)
        raise typer.Exit(2)
    if address is not None and launcher != "ray":
        typer.echo("error: --address is for --launcher ray", err=True)
        raise typer.Exit(2)
    typer.echo(f"run directory: {run_dir}")
    console = False if no_console else None
    if launcher == "ray":
        try:
            from distrl.runtime.ray import RayLauncher
        except ModuleNotFoundError as exc:
            if exc.name != "ray" and not (exc.name or "").startswith("ray."):
                raise
            typer.echo(f"error: the ray launcher needs Ray: pip install 'distrl[ray]' ({exc})", err=True)
            raise typer.Exit(2) from None
        run = RayLauncher(cfg, run_dir, address=address, console=console).run
    else:
        run = LocalLauncher(cfg, run_dir, console=console).run
    try:
        # After the launcher is made: building the env sets MUJOCO_GL, which it reads first.
        check_experiment(cfg, demos_here=launcher == "local")
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        result = run()
    except ComponentFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        typer.echo(f"resume with: distrl train --resume {run_dir}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"stopped ({result.reason}) at {result.env_steps} env steps, {result.updates} updates; "
        f"resume with: distrl train --resume {result.run_dir}"
    )


def scale(
    run_dir: Annotated[Path, typer.Argument(help="the directory of a running run")],
    actors: Annotated[int, typer.Option("--actors", min=1, help="the number of actors wanted")],
    wait_s: Annotated[
        float, typer.Option("--wait-s", min=0.1, help="how long to wait for the launcher to take the request")
    ] = 30.0,
) -> None:
    """Change the number of actors of a running run (local or ray launcher); the learner keeps going."""
    from distrl.config import ConfigError, load_config
    from distrl.runtime import scaling

    if not (run_dir / CONFIG_FILE).is_file():
        typer.echo(f"error: {run_dir / CONFIG_FILE} not found: not a distrl run directory", err=True)
        raise typer.Exit(2)
    try:
        warning = scaling.actor_count_warning(load_config(run_dir / CONFIG_FILE), actors)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if warning:
        typer.echo(f"note: {warning}", err=True)
    scaling.request_scale(run_dir, actors)
    deadline = time.monotonic() + wait_s
    while scaling.pending(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    if scaling.pending(run_dir):
        try:
            (run_dir / scaling.SCALE_FILE).unlink()
        except FileNotFoundError:
            pass  # taken just now
        else:
            typer.echo(
                f"error: no launcher took the request within {wait_s:g}s; is the run in {run_dir} going? "
                "Nothing changed. (A stopped run: "
                f"distrl train --resume {run_dir} actors.num_actors={actors})",
                err=True,
            )
            raise typer.Exit(1)
    typer.echo(f"{run_dir}: scaling to {actors} actors")


def evaluate_run(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
    episodes: Annotated[int, typer.Option("--episodes", min=1)] = 10,
    seed: Annotated[int, typer.Option("--seed")] = 12345,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    video: Annotated[
        Path | None,
        typer.Option(
            "--video",
            help="record one episode to this MP4 instead of evaluating (needs MUJOCO_GL=egl or osmesa, "
            "picked when unset)",
        ),
    ] = None,
    frames: Annotated[
        int | None,
        typer.Option("--frames", min=1, help="--video: at most this many frames (default: eval.video)"),
    ] = None,
    fps: Annotated[int | None, typer.Option("--fps", min=1, help="--video: frames per second")] = None,
    width: Annotated[int | None, typer.Option("--width", min=2, help="--video: frame width (even)")] = None,
    height: Annotated[
        int | None, typer.Option("--height", min=2, help="--video: frame height (even)")
    ] = None,
) -> None:
    """Evaluate the newest checkpoint's deterministic policy, or record an episode of it (--video)."""
    if video is not None:
        from distrl.envs.render import prefer_headless_gl

        prefer_headless_gl()  # before anything imports mujoco, which reads MUJOCO_GL once
    from distrl.actors.evaluator import evaluate
    from distrl.algos import make_algorithm
    from distrl.config import load_config
    from distrl.learners import checkpoint as ckpt

    cfg = load_config(run_dir / CONFIG_FILE)
    latest = ckpt.load_latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        typer.echo(f"error: no readable learner checkpoint in {run_dir / 'checkpoints'}", err=True)
        raise typer.Exit(1)
    path, state = latest
    algo = make_algorithm(cfg.algo.name, ckpt.checkpoint_space(state), cfg.algo.params(), "cpu")
    algo.load_state_dict(state["algo"])
    if video is not None:
        about = {"checkpoint": str(path), "updates": int(state["updates"])}
        sizes = {"frames": frames, "fps": fps, "width": width, "height": height}
        _record_video(algo.make_policy(), cfg, video, seed, sizes, about, as_json)
        return
    result = evaluate(algo.make_policy(), cfg.env, episodes, seed=seed)
    out = {"checkpoint": str(path), "updates": int(state["updates"]), **result.to_dict()}
    if as_json:
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        return
    success = "" if result.success_rate is None else f", success {100 * result.success_rate:.0f}%"
    signals = "".join(f", {name} {value:.2f}" for name, value in result.signals_mean.items())
    typer.echo(
        f"{path.name} ({out['updates']} updates): return {result.return_mean:.1f} +- {result.return_std:.1f} "
        f"over {result.episodes} episodes, length {result.length_mean:.0f}{success}{signals}"
    )


def _record_video(
    policy: Policy,
    cfg: ExperimentConfig,
    path: Path,
    seed: int,
    options: dict[str, int | None],
    about: dict[str, Any],
    as_json: bool,
) -> None:
    """`distrl eval --video`: one episode to `path`; the options not given (None) are the run's
    `eval.video` settings."""
    from distrl.actors.video import check_frame_size, record_episode
    from distrl.envs.render import RenderUnavailable

    settings = cfg.eval.video.model_copy(update={k: v for k, v in options.items() if v is not None})
    frames, fps, width, height = settings.frames, settings.fps, settings.width, settings.height
    try:
        check_frame_size(width, height)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--width/--height") from None
    try:
        clip = record_episode(policy, cfg.env, path, seed, frames, fps, width, height)
    except RenderUnavailable as exc:
        typer.echo(f"error: cannot render {cfg.env.id}: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        json.dump({**about, **asdict(clip), "path": str(clip.path)}, sys.stdout)
        sys.stdout.write("\n")
        return
    ended = "the episode ended" if clip.finished else "cut at --frames"
    typer.echo(
        f"{clip.path}: {clip.frames} frames, {width}x{height} at {fps} fps ({ended}, return "
        f"{clip.episode_return:.1f}); rendered at {clip.frames / max(clip.render_s, 1e-9):.1f} frames/s"
    )
