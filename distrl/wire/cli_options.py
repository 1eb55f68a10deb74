"""Command-line options shared by the component commands.

Security and networking for every server and client, and where a component
finds its experiment config and its peers (actors, evaluator and learner alike).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from distrl.wire.security import KeepaliveConfig, SecurityConfig

TOKEN_ENV = "DISTRL_TOKEN"


def _token_from_environment(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """The token, from DISTRL_TOKEN only: a token on the command line shows in `ps`."""
    source = ctx.get_parameter_source(param.name)
    if getattr(source, "name", None) == "COMMANDLINE":  # typer may bring its own click
        raise typer.BadParameter(
            f"a token on the command line is visible to every user of the machine (ps); "
            f"set {TOKEN_ENV} or use --token-file",
            param_hint="--token",
        )
    if value is None and os.environ.get(TOKEN_ENV) is not None and not os.environ[TOKEN_ENV].strip():
        message = f"{TOKEN_ENV} is set but empty; unset it to turn auth off"
        raise typer.BadParameter(message, param_hint=TOKEN_ENV)
    return value


TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        callback=_token_from_environment,
        hidden=True,
        help="bearer token: from env DISTRL_TOKEN only",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option("--token-file", envvar="DISTRL_TOKEN_FILE", help="file holding the bearer token"),
]
RoleTokensDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--role-tokens-dir",
        envvar="DISTRL_ROLE_TOKENS_DIR",
        help="server: one token per role, from files admin, learner, actor, reader here",
    ),
]
TlsCertOpt = Annotated[
    Path | None, typer.Option("--tls-cert", help="PEM certificate (server, or client for mTLS)")
]
TlsKeyOpt = Annotated[Path | None, typer.Option("--tls-key", help="PEM private key for --tls-cert")]
TlsClientCaOpt = Annotated[
    Path | None, typer.Option("--tls-client-ca", help="server: require client certificates signed by this CA")
]
TlsCaOpt = Annotated[
    Path | None, typer.Option("--tls-ca", help="client: CA that signed the server certificate")
]
KeepaliveOpt = Annotated[float, typer.Option("--keepalive-s", help="HTTP/2 keepalive ping interval")]
KeepaliveTimeoutOpt = Annotated[float, typer.Option("--keepalive-timeout-s", help="keepalive ping timeout")]
HostOpt = Annotated[str, typer.Option("--host", help="interface to bind (0.0.0.0 for all)")]
PortOpt = Annotated[int, typer.Option("--port", help="port to listen on; 0 picks a free one")]

# A launcher passes these as flags; a Kubernetes pod gets them from its environment.
ConfigOpt = Annotated[Path, typer.Option("--config", help="experiment config (YAML)", envvar="DISTRL_CONFIG")]
ReplayOpt = Annotated[
    str, typer.Option("--replay", help="comma-separated replay shard addresses", envvar="DISTRL_REPLAY")
]
ParamsOpt = Annotated[str, typer.Option("--params", help="parameter server address", envvar="DISTRL_PARAMS")]
TelemetryOpt = Annotated[
    str | None, typer.Option("--telemetry", help="coordinator address", envvar="DISTRL_TELEMETRY")
]


def replay_addresses(replay: str) -> list[str]:
    """The shard addresses of a `--replay` value; BadParameter when it names none."""
    shards = [a.strip() for a in replay.split(",") if a.strip()]
    if not shards:
        raise typer.BadParameter("give at least one replay shard address", param_hint="--replay")
    return shards


def security_from_options(
    token: str | None = None,
    token_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_client_ca: Path | None = None,
    tls_ca: Path | None = None,
    role_tokens_dir: Path | None = None,
) -> SecurityConfig:
    try:
        return SecurityConfig(
            role_tokens_dir=role_tokens_dir,
            token=token,
            token_file=token_file,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            tls_ca=tls_ca,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def keepalive_from_options(time_s: float, timeout_s: float) -> KeepaliveConfig:
    return KeepaliveConfig(time_s=time_s, timeout_s=timeout_s)
