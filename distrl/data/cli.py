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
    help="Demonstration datasets (Zarr): import from robomimic/D4RL/Minari/LeRobot, inspect.",
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
