"""`distrl serve params` and `distrl params ...` commands.

Heavy imports (grpc, numpy) stay inside the command bodies so `distrl --help` stays fast.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated

import typer

from distrl.params.names import DEFAULT_PARAM_SET
from distrl.wire.cli_options import (
    HostOpt,
    KeepaliveOpt,
    KeepaliveTimeoutOpt,
    PortOpt,
    RoleTokensDirOpt,
    TlsCaOpt,
    TlsCertOpt,
    TlsClientCaOpt,
    TlsKeyOpt,
    TokenFileOpt,
    TokenOpt,
    keepalive_from_options,
    security_from_options,
)

app = typer.Typer(help="Inspect a parameter server.", no_args_is_help=True)

# Duplicated from distrl.params.server so importing the CLI does not import grpc.
_DEFAULT_PORT = 50052


def serve_params(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = _DEFAULT_PORT,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    role_tokens_dir: RoleTokensDirOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    keepalive_s: KeepaliveOpt = 30.0,
    keepalive_timeout_s: KeepaliveTimeoutOpt = 10.0,
    max_subscribers: Annotated[
        int, typer.Option("--max-subscribers", min=1, help="open Subscribe streams allowed at once")
    ] = 1024,
    max_version_mib: Annotated[
        float, typer.Option("--max-version-mib", min=0.001, help="largest version a publisher may send")
    ] = 16 * 1024,
    max_sets: Annotated[
        int, typer.Option("--max-sets", min=1, help="distinct parameter sets the server holds at most")
    ] = 16,
    max_publishers: Annotated[
        int, typer.Option("--max-publishers", min=1, help="publishes in progress at once, at most")
    ] = 8,
    publish_idle_s: Annotated[
        float, typer.Option("--publish-idle-s", min=0.001, help="end a publish that sends nothing this long")
    ] = 30.0,
) -> None:
    """Serve named parameter sets (policy weights, ...): learners publish versions, actors subscribe."""
    from distrl.params.server import start_params_server
    from distrl.wire.lifecycle import serve_until_signalled

    security = security_from_options(
        token, token_file, tls_cert, tls_key, tls_client_ca, role_tokens_dir=role_tokens_dir
    )
    keepalive = keepalive_from_options(keepalive_s, keepalive_timeout_s)
    try:
        server = start_params_server(
            host=host,
            port=port,
            security=security,
            keepalive=keepalive,
            max_subscribers=max_subscribers,
            max_version_bytes=int(max_version_mib * 1024 * 1024),
            max_sets=max_sets,
            max_publishers=max_publishers,
            publish_idle_s=publish_idle_s,
        )
    except (OSError, RuntimeError) as exc:
        typer.echo(f"error: cannot start the parameter server on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None
    # RunningParamServer has the address/stop of a RunningServer; its stop() ends the
    # subscriber streams first, so shutdown does not wait out the grace period on them.
    serve_until_signalled(server)  # type: ignore[arg-type]


@app.command("info")
def info(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the parameter server")],
    param_set: Annotated[
        str, typer.Option("--set", help="the parameter set to describe (all held sets are listed)")
    ] = DEFAULT_PARAM_SET,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a summary")] = False,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="give up after this long")] = 10.0,
) -> None:
    """Show the sets a parameter server holds, and one set's version, tensors and subscribers."""
    import grpc

    from distrl.params.client import ParamsClient
    from distrl.params.names import resolve_param_set

    try:
        resolve_param_set(param_set)
    except ValueError as exc:
        typer.echo(f"error: --set: {exc}", err=True)
        raise typer.Exit(2) from None
    security = security_from_options(token, token_file, tls_cert, tls_key, tls_ca=tls_ca)
    try:
        with ParamsClient(address, security, timeout_s=timeout_s) as client:
            details = client.info(param_set)
    except grpc.RpcError as exc:
        typer.echo(f"error: {address}: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({"address": address, **asdict(details)}, indent=2))
        return
    age = f", last {time.time() - details.last_publish_unix_s:.1f}s ago" if details.publishes else ""
    lines = [
        f"parameter server {address}",
        f"  sets         {', '.join(details.sets) or 'none published yet'}",
        f"  set          {details.param_set}",
        f"  version      {details.version or 'none published yet'}",
        f"  tensors      {details.num_tensors} ({details.num_bytes / 2**20:.2f} MiB)",
        f"  subscribers  {details.subscribers}",
        f"  publishes    {details.publishes}{age}",
    ]
    if details.names:
        shown = ", ".join(details.names[:8]) + (
            f", ... (+{len(details.names) - 8})" if len(details.names) > 8 else ""
        )
        lines.append(f"  names        {shown}")
    typer.echo("\n".join(lines))
