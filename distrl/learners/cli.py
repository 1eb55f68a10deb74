"""`distrl serve learner`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from distrl.wire.cli_options import ConfigOpt, ParamsOpt, ReplayOpt, TelemetryOpt, replay_addresses


def serve_learner(
    config: ConfigOpt,
    replay: ReplayOpt,
    params: ParamsOpt,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="checkpoints go to RUN_DIR/checkpoints")],
    telemetry: TelemetryOpt = None,
    max_updates: Annotated[int | None, typer.Option("--max-updates", help="stop after this many")] = None,
) -> None:
    """Sample replay, update the algorithm, publish weights, checkpoint; resumes from RUN_DIR."""
    from distrl.config import load_config
    from distrl.learners.learner import Learner
    from distrl.wire.lifecycle import stop_on_signals, watch_parent

    cfg = load_config(config)
    stop = threading.Event()
    stop_on_signals(stop)
    watch_parent(stop)
    learner = Learner(cfg, run_dir, replay_addresses(replay), params, telemetry or None)
    where = f"resumed from {learner.resumed_from}" if learner.resumed_from else "fresh"
    typer.echo(f"learner: {cfg.algo.name} on {learner.algo.device}, {where}, {learner.updates} updates")
    learner.run(stop, max_updates=max_updates)
    typer.echo(f"learner: stopped at {learner.updates} updates")
