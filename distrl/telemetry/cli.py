"""`distrl serve coordinator`: the telemetry coordinator as its own server process.

Heavy imports (grpc, rich, wandb) stay inside the command body so `distrl --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from distrl.wire.cli_options import (
    HostOpt,
    KeepaliveOpt,
    KeepaliveTimeoutOpt,
    PortOpt,
    RoleTokensDirOpt,
    TlsCertOpt,
    TlsClientCaOpt,
    TlsKeyOpt,
    TokenFileOpt,
    TokenOpt,
    keepalive_from_options,
    security_from_options,
)

# Duplicated from distrl.telemetry.coordinator so importing the CLI does not import grpc.
_DEFAULT_PORT = 50053

# A file, never the token itself: a command line shows in `ps`.
ReaderTokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--reader-token-file",
        envvar="DISTRL_READER_TOKEN_FILE",
        help="file holding the reader token the dashboard and /metrics then require "
        "(env DISTRL_READER_TOKEN_FILE)",
    ),
]


def serve_coordinator(
    run_dir: Annotated[
        Path, typer.Option("--run-dir", help="where metrics.jsonl, progress.json (and W&B files) go")
    ],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="experiment config YAML; its telemetry and train sections are used"),
    ] = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = _DEFAULT_PORT,
    prometheus_port: Annotated[
        int | None, typer.Option("--prometheus-port", min=0, help="serve Prometheus /metrics on this port")
    ] = None,
    dashboard_port: Annotated[
        int | None, typer.Option("--dashboard-port", min=0, help="serve the web dashboard on this port")
    ] = None,
    console: Annotated[
        bool | None, typer.Option("--console/--no-console", help="live progress display (default: config)")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="ignore RUN_DIR/progress.json instead of continuing from it")
    ] = False,
    reader_token_file: ReaderTokenFileOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    role_tokens_dir: RoleTokensDirOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    keepalive_s: KeepaliveOpt = 30.0,
    keepalive_timeout_s: KeepaliveTimeoutOpt = 10.0,
) -> None:
    """Collect every component's metrics: console progress, metrics.jsonl, W&B, Prometheus, dashboard.

    A restarted coordinator continues the run from RUN_DIR/progress.json (unless --fresh).
    """
    from rich.console import Console

    from distrl.config import ConfigError, TelemetryConfig, load_config
    from distrl.telemetry.coordinator import Coordinator, load_progress, start_coordinator_server
    from distrl.wire.lifecycle import serve_until_signalled

    security = security_from_options(
        token, token_file, tls_cert, tls_key, tls_client_ca, role_tokens_dir=role_tokens_dir
    )
    keepalive = keepalive_from_options(keepalive_s, keepalive_timeout_s)
    telemetry, total_env_steps, run_config = TelemetryConfig(), None, None
    if config is not None:
        try:
            experiment = load_config(config)
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        telemetry = experiment.telemetry
        total_env_steps = experiment.train.total_env_steps
        run_config = experiment.redacted_dump()
    overrides = {
        key: value
        for key, value in (
            ("prometheus_port", prometheus_port),
            ("dashboard_port", dashboard_port),
            ("console", console),
            ("reader_token_file", reader_token_file),
        )
        if value is not None
    }
    telemetry = telemetry.model_copy(update=overrides)
    try:
        resume_from = None if fresh else load_progress(run_dir)
        coordinator = Coordinator(
            run_dir,
            telemetry,
            total_env_steps=total_env_steps,
            run_config=run_config,
            resume_from=resume_from,
            http_host=host,
        )
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        running = start_coordinator_server(coordinator, host, port, security, keepalive)
    except (OSError, RuntimeError) as exc:
        coordinator.close()
        typer.echo(f"error: cannot start the coordinator on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None
    # The display goes to stderr: stdout's first line is `listening on HOST:PORT` for launchers.
    display = coordinator.console(Console(stderr=True)) if telemetry.console else None
    for what, bound in (
        ("dashboard", coordinator.dashboard_port),
        ("prometheus", coordinator.prometheus_port),
    ):
        if bound is not None:
            typer.echo(f"{what} on http://{host}:{bound}/", err=True)
    if display is not None:
        display.start()

    def _shutdown() -> None:
        if display is not None:
            display.stop()
        coordinator.close()

    serve_until_signalled(running, on_shutdown=_shutdown)


def dashboard(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="run directories (each with a metrics.jsonl), finished or running")
    ],
    host: Annotated[
        str, typer.Option("--host", help="address to serve on (127.0.0.1: this machine only)")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="port to serve on (0: any free)")
    ] = 8080,
    reader_token_file: ReaderTokenFileOpt = None,
) -> None:
    """Serve the web dashboard for one or more runs, side by side, from their RUN_DIR/metrics.jsonl.

    Running runs keep updating (the files are followed); compare seeds and configs without W&B.
    """
    import signal
    import threading

    from distrl.telemetry.dashboard import Dashboard
    from distrl.telemetry.dashboard_runs import FileRun, unique_names
    from distrl.telemetry.http import read_reader_token

    reader_token = None
    if reader_token_file is not None:
        try:
            reader_token = read_reader_token(reader_token_file)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    runs = []
    try:
        for k, (run_dir, name) in enumerate(zip(run_dirs, unique_names(run_dirs), strict=True)):
            runs.append(FileRun(str(k), run_dir, name))
        server = Dashboard(runs, host, port, reader_token=reader_token)
    except (OSError, ValueError) as exc:
        for run in runs:
            run.close()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2 if isinstance(exc, FileNotFoundError) else 1) from None
    typer.echo(f"dashboard of {len(runs)} run(s) on {server.url}  (Ctrl-C to stop)", err=True)
    if reader_token is not None:
        typer.echo(f"it needs the reader token: log in at {server.url}login", err=True)
    # stdout's line is for launchers and tests, as `distrl serve` does.
    typer.echo(f"listening on {server.host}:{server.port}", err=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.close()
