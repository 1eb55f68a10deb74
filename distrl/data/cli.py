"""`distrl demos import FORMAT SRC OUT.zarr [options]` and `distrl demos inspect OUT.zarr`.

Heavy imports (h5py, pyarrow, zarr) stay inside the command bodies so `distrl --help` stays fast.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Demonstration datasets (Zarr): import from robomimic/D4RL/Minari/LeRobot, collect, inspect.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
import_app = typer.Typer(
    help="Convert a dataset to distrl's Zarr format: distrl demos import FORMAT SRC OUT.zarr.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(import_app, name="import")

Src = Annotated[Path, typer.Argument(help="the source file or directory")]
Out = Annotated[Path, typer.Argument(help="the Zarr store to create (e.g. demos.zarr)")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="replace OUT if it is an existing Zarr store")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")]
EnvIdOpt = Annotated[
    str | None, typer.Option("--env-id", help="the distrl env id the data comes from, e.g. gym:Hopper-v5")
]


def _run(run: Callable[[], Any]) -> None:
    from distrl.data.format import DatasetError

    try:
        result = run()
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {result.path}: {result.episodes:,} episodes, {result.steps:,} steps "
        f"in {result.seconds:.1f} s ({result.steps_per_s:,.0f} steps/s)"
    )


@import_app.command("robomimic")
def import_robomimic_command(
    src: Src,
    out: Out,
    obs_key: Annotated[
        list[str] | None,
        typer.Option(
            "--obs-key",
            help="observation key for obs, in order (repeat); default robomimic's low-dim keys, "
            "e.g. robot0_eef_pos robot0_eef_quat robot0_gripper_qpos object",
        ),
    ] = None,
    raw_key: Annotated[
        list[str] | None,
        typer.Option(
            "--raw-key", help="also store this observation key as is (repeat), e.g. agentview_image"
        ),
    ] = None,
    filter_key: Annotated[
        str | None, typer.Option("--filter", help="only the demos of mask/<FILTER>, e.g. train or valid")
    ] = None,
    reward: Annotated[
        str,
        typer.Option(
            "--reward",
            help="sparse (task success) or dense (robosuite's shaped reward); the kind the file was not "
            "made with is recomputed from its states in robosuite",
        ),
    ] = "sparse",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """robomimic / MimicGen HDF5 (data/demo_<i>/...)."""
    from distrl.data.importers.robomimic import import_robomimic

    _run(
        lambda: import_robomimic(
            src,
            out,
            obs_keys=obs_key or None,
            raw_obs_keys=raw_key or (),
            filter_key=filter_key,
            reward=reward,  # type: ignore[arg-type]  (checked by the importer)
            overwrite=overwrite,
            progress=not quiet,
        )
    )


@import_app.command("d4rl")
def import_d4rl_command(
    src: Src, out: Out, env_id: EnvIdOpt = None, overwrite: OverwriteOpt = False, quiet: QuietOpt = False
) -> None:
    """D4RL-style flat HDF5 (observations, actions, rewards, terminals, timeouts)."""
    from distrl.data.importers.d4rl import import_d4rl

    _run(lambda: import_d4rl(src, out, env_id=env_id, overwrite=overwrite, progress=not quiet))


@import_app.command("minari")
def import_minari_command(
    src: Src,
    out: Out,
    obs_key: Annotated[
        list[str] | None,
        typer.Option("--obs-key", help="Dict observation key for obs, in order (repeat); default all"),
    ] = None,
    env_id: EnvIdOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """A Minari dataset directory (data/main_data.hdf5)."""
    from distrl.data.importers.minari import import_minari

    _run(
        lambda: import_minari(
            src, out, obs_keys=obs_key or None, env_id=env_id, overwrite=overwrite, progress=not quiet
        )
    )


@import_app.command("lerobot")
def import_lerobot_command(
    src: Src,
    out: Out,
    state_key: Annotated[
        list[str] | None,
        typer.Option(
            "--state-key", help="state column(s) for obs, in order (repeat); default observation.state"
        ),
    ] = None,
    action_key: Annotated[str, typer.Option("--action-key", help="the action column")] = "action",
    env_id: EnvIdOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """A LeRobot dataset directory (v2.x or v3.0 parquet layout)."""
    from distrl.data.importers.lerobot import import_lerobot

    _run(
        lambda: import_lerobot(
            src,
            out,
            state_keys=state_key or ("observation.state",),
            action_key=action_key,
            env_id=env_id,
            overwrite=overwrite,
            progress=not quiet,
        )
    )


@app.command("inspect")
def inspect_command(
    path: Annotated[Path, typer.Argument(help="a dataset store, or a replay checkpoint's table group")],
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object instead of text")] = False,
) -> None:
    """Episodes, steps, keys with shapes/dtypes, return and length statistics, success rate."""
    from distrl.data.format import DatasetError
    from distrl.data.inspect import format_report, inspect_dataset

    try:
        report = inspect_dataset(path)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(report.to_json()) if json_out else format_report(report))


@app.command("collect")
def collect_command(
    env_id: Annotated[str, typer.Argument(help="the env to collect in, e.g. robosuite:Lift")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the Zarr store to create (e.g. lift.zarr)")],
    episodes: Annotated[int, typer.Option("--episodes", "-n", min=1, help="episodes to keep")] = 10,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="'scripted' (robosuite Lift, PickPlaceCan) or a run directory (its newest checkpoint)",
        ),
    ] = "scripted",
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="a learner-*.pt to use instead of the run's newest")
    ] = None,
    noise: Annotated[
        float, typer.Option("--noise", min=0.0, help="std of Gaussian noise added to every action")
    ] = 0.0,
    keep_failures: Annotated[
        bool, typer.Option("--keep-failures", help="also keep episodes that did not succeed")
    ] = False,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts",
            min=1,
            help="stop after this many episodes run "
            "(default: 3 x --episodes, or --episodes with --keep-failures)",
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps",
            min=1,
            help="episode length "
            "(default: 80 for scripted Lift, 200 for scripted PickPlaceCan, else the env's or the run's)",
        ),
    ] = None,
    stop_on_success: Annotated[
        bool, typer.Option("--stop-on-success", help="end each episode at its first successful step")
    ] = False,
    terminate_on_success: Annotated[
        bool,
        typer.Option(
            "--terminate-on-success",
            help="end each episode at its first successful step as terminal "
            "(the env option env.terminate_on_success; for runs that use it)",
        ),
    ] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="rollout processes")] = 1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="attempt i resets with seed + i")] = 0,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Roll out a scripted controller or a trained run's policy and write the episodes (success kept)."""
    from distrl.data.collect import collect, plan_collection
    from distrl.data.format import DatasetError

    try:
        plan = plan_collection(
            env_id,
            episodes=episodes,
            policy=policy,
            checkpoint=checkpoint,
            max_steps=max_steps,
            max_attempts=max_attempts,
            seed=seed,
            noise=noise,
            keep_failures=keep_failures,
            stop_on_success=stop_on_success,
            terminate_on_success=terminate_on_success,
        )
        result = collect(plan, out, workers=workers, overwrite=overwrite, progress=not quiet)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    rate = (
        ""
        if result.success_rate is None
        else (f"; success rate {result.success_rate:.0%} ({result.successes}/{result.attempts})")
    )
    typer.echo(
        f"wrote {result.path}: {result.episodes} episodes, {result.steps:,} steps from {result.attempts} "
        f"attempts in {result.seconds:.1f} s{rate}"
    )
    if result.interrupted:
        typer.echo("interrupted: the store holds the episodes kept so far", err=True)
        raise typer.Exit(130)
    if not result.complete:
        typer.echo(
            f"warning: kept only {result.episodes} of {result.wanted} episodes in "
            f"{result.attempts} attempts (--max-attempts)",
            err=True,
        )
        raise typer.Exit(1)
