"""What every launcher shares: the run directory, the coordinator, signals and when a run is done.

A launcher is a placement policy: it places components and supervises them inside
`coordinated_run`, which owns everything around them (the coordinator and its gRPC server,
SIGINT/SIGTERM handling, the console display) and tears it down in order.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distrl.config import ExperimentConfig
from distrl.runtime import scaling
from distrl.telemetry import Coordinator
from distrl.telemetry.aggregate import TelemetrySnapshot
from distrl.wire import start_server
from distrl.wire.security import write_private

CONFIG_FILE = "config.yaml"
PROGRESS_FILE = "progress.json"
SECRETS_DIR = "secrets"


@dataclass
class RunResult:
    run_dir: Path
    env_steps: int
    updates: int
    reason: str


def prepare_run_dir(config: ExperimentConfig, run_dir: Path) -> dict | None:
    """Create the run directory, save the resolved config; returns saved progress when resuming.

    An inline token is not written into RUN_DIR/config.yaml: it goes to RUN_DIR/secrets/token
    (readable by the owner only) and the saved config names that file.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(saved_config(config, run_dir).to_yaml())
    scaling.discard_scale_request(run_dir)
    progress = run_dir / PROGRESS_FILE
    return json.loads(progress.read_text()) if progress.exists() else None


def saved_config(config: ExperimentConfig, run_dir: Path) -> ExperimentConfig:
    """`config` as RUN_DIR/config.yaml holds it: an inline token moved to RUN_DIR/secrets/token."""
    token = config.network.security.token
    if token is None:
        return config
    secrets_dir = run_dir / SECRETS_DIR
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    secrets_dir.chmod(0o700)
    path = secrets_dir / "token"
    write_private(path, token + "\n")
    return config.with_token_file(path.resolve())


def finished_reason(config: ExperimentConfig, snap: TelemetrySnapshot) -> str | None:
    """Why the run is done (its env-step budget, or its target eval return), or None."""
    if snap.env_steps >= config.train.total_env_steps:
        return f"reached {config.train.total_env_steps} env steps"
    target = config.train.target_eval_return
    solved = snap.last.get("eval/return_mean")
    if target is not None and solved is not None and solved >= target:
        return f"solved: eval return {solved:.1f} >= {target:g} at {snap.env_steps} env steps"
    return None


@dataclass
class Coordination:
    coordinator: Coordinator
    address: str
    _display: object | None

    def start_display(self) -> None:
        if self._display is not None:
            self._display.start()


@contextmanager
def coordinated_run(
    config: ExperimentConfig,
    run_dir: Path,
    resume_from: dict | None,
    host: str,
    console: bool,
    on_signal: Callable[[], None],
) -> Iterator[Coordination]:
    """The coordinator (in this process) and its server on `host`, signal handlers, the console."""
    coordinator = Coordinator(
        run_dir,
        config.telemetry,
        total_env_steps=config.train.total_env_steps,
        run_config=config.redacted_dump(),
        resume_from=resume_from,
    )
    server = start_server(
        [coordinator.register],
        coordinator.service_names,
        host=host,
        port=0,
        security=config.network.security,
        keepalive=config.network.keepalive,
    )
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, lambda *_: on_signal()) for s in (signal.SIGINT, signal.SIGTERM)}
    display = coordinator.console() if console else None
    try:
        yield Coordination(coordinator, server.address, display)
    finally:
        if display is not None:
            display.stop()
        coordinator.close()
        server.stop(1.0)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
