"""`distrl pretrain ...`: models trained on demos before any RL (the base policy DSRL steers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Train a model on demonstrations before RL.", no_args_is_help=True)


@app.command("diffusion")
def diffusion_command(
    demos: Annotated[Path, typer.Option("--demos", help="a distrl Zarr demo store")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for policy.safetensors and pretrain.json")
    ],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="key=value settings: the model's (chunk, network=mlp|unet, hidden, blocks, "
            "inference_steps, ...) and the training's (steps, batch_size, lr, ema, ...)"
        ),
    ] = None,
    eval_episodes: Annotated[
        int, typer.Option("--eval-episodes", min=0, help="episodes of the plain policy on the demos' env")
    ] = 10,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1, ...")] = "auto",
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", min=0, help="save every N steps (0: only at the end)")
    ] = 1000,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Behaviour-clone a diffusion policy over action chunks; DSRL loads it as `algo.base_policy`."""
    from distrl.algos.diffusion import DiffusionModelError
    from distrl.data import DatasetError
    from distrl.learners.diffusion_pretrain import PretrainConfigError, parse_overrides, pretrain_diffusion

    try:
        spec, train = parse_overrides(list(overrides or []))
        result = pretrain_diffusion(
            demos,
            out,
            spec,
            train,
            eval_episodes=eval_episodes,
            device=device,
            checkpoint_every=checkpoint_every,
            progress=not quiet,
            seed=seed,
        )
    except (PretrainConfigError, DatasetError, DiffusionModelError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {result.out}: {result.steps:,} steps on {result.chunks:,} chunks from {result.episodes} "
        f"episodes in {result.seconds:.1f} s (final loss {result.final_loss:.4f}); "
        f"{result.decision_ms:.2f} ms per decision on {result.device} "
        f"({result.spec['inference_steps']} x {result.denoiser_ms:.2f} ms denoiser)"
    )
    if result.eval_success_rate is not None:
        typer.echo(
            f"plain policy (w ~ N(0, I)) on {result.eval_env}: success {result.eval_success_rate:.2f} "
            f"over {result.eval_episodes} episodes (return {result.eval_return_mean:.1f})"
        )
    elif result.eval_env is not None:
        typer.echo(f"plain policy on {result.eval_env}: return {result.eval_return_mean:.1f}")
