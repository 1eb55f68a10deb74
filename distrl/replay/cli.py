"""`distrl serve replay` and `distrl replay ...` commands.

Heavy imports (grpc, numpy, zarr) stay inside the command bodies so `distrl --help` stays fast.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

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

app = typer.Typer(help="Inspect and control a replay shard.", no_args_is_help=True)

DEFAULT_PORT = 50051


def load_shard_config(
    config_file: Path | None = None,
    *,
    table: str | None = None,
    table_overrides: dict[str, Any] | None = None,
    shard_overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    base_source: str = "command line",
):
    """A ReplayShardConfig from an optional YAML file (or `base` values) plus command-line overrides.

    Table flags apply to the table named `table` (the only table when there is one;
    a new table of that name when the file has none). Raises ValueError naming the
    offending key.
    """
    import yaml
    from pydantic import ValidationError

    from distrl.replay.config import ReplayShardConfig

    data: dict[str, Any] = dict(base or {})
    source = base_source
    if config_file is not None:
        source = str(config_file)
        try:
            loaded = yaml.safe_load(Path(config_file).read_text())
        except OSError as exc:
            raise ValueError(f"{config_file}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"{config_file}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(
                f"{config_file}: expected a mapping of ReplayShardConfig keys, got {type(loaded).__name__}"
            )
        data = dict(loaded)
    data.update({k: v for k, v in (shard_overrides or {}).items() if v is not None})
    flags = {k: v for k, v in (table_overrides or {}).items() if v is not None}
    if flags or table is not None:
        tables = data.get("tables")
        if tables is None:
            tables = [{}]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ValueError(f"{source}: tables: expected a list of table mappings")
        tables = [dict(t) for t in tables]
        if table is None:
            if len(tables) != 1:
                names = [t.get("name", "default") for t in tables]
                raise ValueError(
                    f"{source}: several tables ({names}): name the one the flags apply to with --table"
                )
            target = tables[0]
        else:
            matches = [t for t in tables if t.get("name", "default") == table]
            if matches:
                target = matches[0]
            elif data.get("tables") is None:
                target = tables[0]
            else:
                target = {}
                tables.append(target)
            target["name"] = table
        target.update(flags)
        data["tables"] = tables
    try:
        return ReplayShardConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"{source}: {problems}") from None


def _pod_ordinal() -> int:
    """A StatefulSet pod's ordinal (`replay-3` -> 3) from POD_NAME/HOSTNAME; 0 elsewhere."""
    tail = (os.environ.get("POD_NAME") or os.environ.get("HOSTNAME", "")).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def shard_values_from_experiment(path: Path, checkpointing: bool) -> dict[str, Any]:
    """ReplayShardConfig values from an experiment config's `replay` section.

    The seed differs per shard as under the local launcher (seed * 1000 + shard index, the index
    taken from the pod name). `checkpoint_every_s` only applies when the shard has a checkpoint
    directory. Raises ValueError (a ConfigError) naming the bad key.
    """
    from distrl.config import load_config
    from distrl.experiment import replay_table_config

    experiment = load_config(path)
    return {
        "tables": [replay_table_config(experiment).model_dump(mode="json")],
        "checkpoint_every_s": experiment.replay.checkpoint_every_s if checkpointing else None,
        "seed": experiment.seed * 1000 + _pod_ordinal(),
        "ack_delay_ms": experiment.replay.ack_delay_ms,
    }


def serve_replay(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = DEFAULT_PORT,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file of a ReplayShardConfig (tables, checkpointing)")
    ] = None,
    experiment: Annotated[
        Path | None,
        typer.Option(
            "--experiment",
            help="experiment config YAML: take the table, checkpoint interval and seed from its replay "
            "section (instead of --config; the flags below still override)",
        ),
    ] = None,
    table: Annotated[str | None, typer.Option("--table", help="table the table flags below apply to")] = None,
    capacity: Annotated[int | None, typer.Option("--capacity", help="items the table holds (FIFO)")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="uniform | prioritized")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="priority exponent (prioritized)")] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="importance-weight exponent (prioritized)")
    ] = None,
    samples_per_insert: Annotated[
        float | None, typer.Option("--samples-per-insert", help="rate limit: sampled items per inserted item")
    ] = None,
    min_size: Annotated[
        int | None, typer.Option("--min-size", help="items needed before sampling starts")
    ] = None,
    error_buffer: Annotated[
        float | None, typer.Option("--error-buffer", help="rate-limiter slack, in samples")
    ] = None,
    max_wait_s: Annotated[
        float | None,
        typer.Option("--max-wait-s", help="longest an insert or sample waits for the rate limiter"),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option("--checkpoint-dir", help="restore from / write checkpoints here")
    ] = None,
    checkpoint_every_s: Annotated[
        float | None,
        typer.Option("--checkpoint-every-s", help="checkpoint periodically (needs --checkpoint-dir)"),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="sampling seed")] = None,
    ack_delay_ms: Annotated[
        float | None,
        typer.Option(
            "--ack-delay-ms", help="an insert ack waits this long to cover later batches (0: at once)"
        ),
    ] = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    role_tokens_dir: RoleTokensDirOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    tls_client_ca: TlsClientCaOpt = None,
    keepalive_s: KeepaliveOpt = 30.0,
    keepalive_timeout_s: KeepaliveTimeoutOpt = 10.0,
) -> None:
    """Serve a replay shard: named tables that actors insert into and learners sample from.

    Prints `listening on HOST:PORT` first; SIGTERM writes a final checkpoint (with
    --checkpoint-dir) and exits 0.
    """
    if config is not None and experiment is not None:
        typer.echo("error: give --config or --experiment, not both", err=True)
        raise typer.Exit(2)
    try:
        base = None
        if experiment is not None:
            base = shard_values_from_experiment(experiment, checkpointing=checkpoint_dir is not None)
        shard_config = load_shard_config(
            config,
            base=base,
            base_source=str(experiment) if experiment is not None else "command line",
            table=table,
            table_overrides={
                "capacity": capacity,
                "sampler": sampler,
                "priority_exponent": alpha,
                "importance_exponent": beta,
                "samples_per_insert": samples_per_insert,
                "min_size_to_sample": min_size,
                "error_buffer": error_buffer,
                "max_wait_s": max_wait_s,
            },
            shard_overrides={
                "checkpoint_dir": checkpoint_dir,
                "checkpoint_every_s": checkpoint_every_s,
                "seed": seed,
                "ack_delay_ms": ack_delay_ms,
            },
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if shard_config.checkpoint_every_s is not None and shard_config.checkpoint_dir is None:
        typer.echo("error: --checkpoint-every-s needs --checkpoint-dir", err=True)
        raise typer.Exit(2)

    from distrl.replay.checkpoint import CheckpointError
    from distrl.replay.server import serve_replay_shard
    from distrl.wire.lifecycle import serve_until_signalled

    security = security_from_options(
        token, token_file, tls_cert, tls_key, tls_client_ca, role_tokens_dir=role_tokens_dir
    )
    keepalive = keepalive_from_options(keepalive_s, keepalive_timeout_s)
    try:
        shard, running = serve_replay_shard(
            shard_config, host=host, port=port, security=security, keepalive=keepalive
        )
    except CheckpointError as exc:
        typer.echo(f"error: cannot restore the replay shard: {exc}", err=True)
        raise typer.Exit(1) from None
    except (OSError, RuntimeError, ValueError) as exc:
        typer.echo(f"error: cannot start the replay shard on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None
    serve_until_signalled(running, on_shutdown=shard.close)


def _client(address: str, token, token_file, tls_ca, tls_cert, tls_key, timeout_s: float):
    from distrl.replay.client import ReplayClient

    security = security_from_options(token, token_file, tls_cert, tls_key, tls_ca=tls_ca)
    return ReplayClient([address], security=security, rpc_timeout_s=timeout_s)


@app.command("info")
def info(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the replay shard")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a summary")] = False,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="give up after this long")] = 10.0,
) -> None:
    """Show a shard's tables: sizes, insert/sample counts, rate limiter, spec, last checkpoint."""
    with _client(address, token, token_file, tls_ca, tls_cert, tls_key, timeout_s) as client:
        shard = client.info(timeout=timeout_s)[0]
    if not shard.up:
        typer.echo(f"error: {address}: {shard.error}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(asdict(shard), indent=2))
        return
    lines = [
        f"replay shard {address} (up {shard.uptime_s:.0f}s, "
        f"last checkpoint: {shard.last_checkpoint or 'none'})"
    ]
    for t in shard.tables:
        target = f"{t.target_samples_per_insert:g}" if t.target_samples_per_insert else "unlimited"
        spec = ", ".join(f"{n}: {f.dtype}{f.shape}" for n, f in t.spec.items()) or "not fixed yet"
        lines += [
            f"  table {t.name!r} ({t.sampler})",
            f"    size            {t.size:,} / {t.capacity:,}",
            f"    inserts         {t.inserts:,} items in {t.inserted_batches:,} batches "
            f"({t.duplicate_batches:,} resends, {t.rejected_batches:,} rejected)",
            f"    samples         {t.samples:,} items ({t.samples_per_insert:.3g} per insert, "
            f"target {target}; min size {t.min_size_to_sample:,})",
            f"    rate limiter    inserts waited {t.insert_wait_s:.1f}s, "
            f"samples waited {t.sample_wait_s:.1f}s",
            f"    spec            {spec}",
        ]
    typer.echo("\n".join(lines))


@app.command("checkpoint")
def checkpoint(
    address: Annotated[str, typer.Argument(help="HOST:PORT of the replay shard")],
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    timeout_s: Annotated[float, typer.Option("--timeout-s", help="give up after this long")] = 600.0,
) -> None:
    """Ask a shard to write a checkpoint now; prints its path."""
    from distrl.replay.client import ReplayClientError

    with _client(address, token, token_file, tls_ca, tls_cert, tls_key, timeout_s) as client:
        try:
            result = client.checkpoint(0, timeout=timeout_s)[0]
        except ReplayClientError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"checkpoint {result.path} ({result.duration_s:.2f}s)")
