"""`distrl serve actor` and `distrl serve evaluator`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from distrl.wire.cli_options import ConfigOpt, ParamsOpt, ReplayOpt, TelemetryOpt, replay_addresses


def _addresses(replay: str, params: str, telemetry: str | None):
    from distrl.actors.actor import ActorAddresses

    return ActorAddresses(replay=replay_addresses(replay), params=params, telemetry=telemetry or None)


def serve_actor(
    config: ConfigOpt,
    replay: ReplayOpt,
    params: ParamsOpt,
    telemetry: TelemetryOpt = None,
    index: Annotated[
        int | None,
        typer.Option("--index", help="actor index (default: a StatefulSet ordinal, else a pod-name hash)"),
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="stop after this many env steps")
    ] = None,
) -> None:
    """Step envs with the newest policy and stream transitions to the replay shards."""
    from distrl.actors.actor import Actor
    from distrl.actors.identity import ActorIdentity
    from distrl.config import load_config
    from distrl.wire.lifecycle import stop_on_signals, watch_parent

    cfg = load_config(config)
    stop = threading.Event()
    stop_on_signals(stop)
    watch_parent(stop)
    # A new incarnation per process start: see distrl/actors/identity.py.
    identity = ActorIdentity.from_environment(index)
    actor = Actor(cfg, identity, _addresses(replay, params, telemetry))
    typer.echo(
        f"{identity.describe()}: {cfg.env.id} x{cfg.actors.envs_per_actor}, replay {actor.addresses.replay}"
    )
    actor.run(stop, max_steps=max_steps)
    typer.echo(f"{actor.actor_id}: stopped after {actor.steps} env steps")


def serve_evaluator(
    config: ConfigOpt,
    replay: ReplayOpt,
    params: ParamsOpt,
    telemetry: TelemetryOpt = None,
    run_dir: Annotated[
        Path | None,
        typer.Option("--run-dir", help="evaluation videos go to RUN_DIR/videos (without it: none)"),
    ] = None,
) -> None:
    """Evaluate the deterministic policy every `eval.every_updates` learner updates (and record a
    clip every `eval.video.every` evaluations)."""
    from distrl.actors.evaluator import Evaluator
    from distrl.config import load_config
    from distrl.wire.lifecycle import stop_on_signals, watch_parent

    cfg = load_config(config)
    stop = threading.Event()
    stop_on_signals(stop)
    watch_parent(stop)
    Evaluator(cfg, _addresses(replay, params, telemetry), run_dir).run(stop)
