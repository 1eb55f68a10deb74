"""`distrl envs list` and `distrl envs check ID`."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Environments: list the known ids, build and step one.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object instead of text")]


@app.command("list")
def list_command(json_out: JsonOpt = False) -> None:
    """Print every env family and its known ids."""
    from distrl.envs.factory import list_envs

    ids = list_envs()
    if json_out:
        typer.echo(json.dumps(ids))
        return
    for family, family_ids in ids.items():
        typer.echo(f"{family} ({len(family_ids)} ids)")
        for env_id in family_ids:
            typer.echo(f"  {env_id}")
    typer.echo("gym: also accepts any other registered Gymnasium id with a Box action space")


@app.command("check")
def check_command(
    env_id: Annotated[str, typer.Argument(help="e.g. gym:HalfCheetah-v5, dmc:cheetah-run, robosuite:Lift")],
    steps: Annotated[int, typer.Option("--steps", min=1, help="random-action steps to take")] = 2000,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    max_episode_steps: Annotated[int | None, typer.Option("--max-episode-steps", min=1)] = None,
    action_repeat: Annotated[int, typer.Option("--action-repeat", min=1)] = 1,
    robot: Annotated[str | None, typer.Option("--robot", help="robosuite robot")] = None,
    controller: Annotated[str | None, typer.Option("--controller", help="robosuite controller")] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", min=1, help="robosuite horizon")] = None,
    reward_shaping: Annotated[
        bool | None, typer.Option("--reward-shaping/--sparse-reward", help="robosuite dense reward")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Build ENV_ID, step random actions (resetting at episode ends) and report its spec and speed."""
    from pydantic import ValidationError

    from distrl.envs.check import check_env
    from distrl.envs.config import EnvConfig

    robosuite: dict[str, Any] = {
        key: value
        for key, value in {
            "robot": robot,
            "controller": controller,
            "horizon": horizon,
            "reward_shaping": reward_shaping,
        }.items()
        if value is not None
    }
    fields: dict[str, Any] = {
        "id": env_id,
        "max_episode_steps": max_episode_steps,
        "action_repeat": action_repeat,
    }
    if robosuite:
        fields["robosuite"] = robosuite
    try:
        result = check_env(EnvConfig(**fields), steps=steps, seed=seed)
    except (ValidationError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if json_out:
        typer.echo(json.dumps(asdict(result)))
    else:
        _print_check(result)
    if result.problems:
        raise typer.Exit(1)


def _print_check(result: Any) -> None:
    typer.echo(f"env            {result.id}  (built in {result.build_s:.2f} s)")
    typer.echo(f"observation    Box({result.obs_dim},) {result.obs_dtype}")
    if result.obs_keys:
        typer.echo(f"obs keys       {', '.join(result.obs_keys)}")
    typer.echo(f"action         Box({result.action_dim},) in [{result.action_low:g}, {result.action_high:g}]")
    typer.echo(f"max steps      {result.max_episode_steps}")
    typer.echo(f"success info   {'yes' if result.has_success else 'no'}")
    mean = "n/a" if result.mean_return is None else f"{result.mean_return:.2f}"
    typer.echo(
        f"stepped        {result.steps} steps, {result.episodes} episodes "
        f"({result.terminated} terminated, {result.truncated} truncated, {result.successes} successful), "
        f"mean return {mean}"
    )
    typer.echo(f"speed          {result.steps_per_s:.0f} steps/s (random actions, resets included)")
    for problem in result.problems:
        typer.echo(f"PROBLEM        {problem}", err=True)


if __name__ == "__main__":
    app()
