"""`distrl k8s render`: Kubernetes manifests (a kustomize base) for an experiment config."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Run an experiment on Kubernetes.", no_args_is_help=True)


@app.command("render")
def render(
    config: Annotated[Path, typer.Argument(help="experiment config (YAML)")],
    out: Annotated[Path, typer.Option("--out", help="directory for the kustomize base")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted.key=value overrides")] = None,
    image: Annotated[
        str | None, typer.Option("--image", help="container image (default distrl:VERSION)")
    ] = None,
    actors: Annotated[
        int | None, typer.Option("--actors", min=1, help="actor replicas (default: actors.num_actors)")
    ] = None,
    shards: Annotated[
        int | None, typer.Option("--shards", min=1, help="replay shards (default: replay.num_shards)")
    ] = None,
) -> None:
    """Write the manifests that run CONFIG as pods: apply them with `kubectl apply -k OUT`.

    Also writes OUT/token (a random bearer token unless the config sets one; kept on re-render)
    for the generated Secret; OUT/.gitignore keeps it out of git.
    """
    from distrl.config import ConfigError, load_config
    from distrl.runtime.k8s import DEFAULT_IMAGE, RenderOptions, write_manifests

    overrides = list(overrides or [])
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # The header of every file says how to reproduce it (without --out: it is where the file is).
    words = ["distrl", "k8s", "render", str(config), *overrides]
    for flag, value in (("--image", image), ("--actors", actors), ("--shards", shards)):
        if value is not None:
            words += [flag, str(value)]
    options = RenderOptions(
        image=image or DEFAULT_IMAGE, actors=actors, shards=shards, command=shlex.join(words)
    )
    try:
        written = write_manifests(cfg, out, options)
    except OSError as exc:
        typer.echo(f"error: cannot write the manifests to {out}: {exc}", err=True)
        raise typer.Exit(1) from None
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"apply with: kubectl apply -k {out}")
