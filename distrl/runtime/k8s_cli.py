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
    tls_secret: Annotated[
        str,
        typer.Option(
            "--tls-secret", help="Secret with tls.crt, tls.key, ca.crt (when the config has no TLS files)"
        ),
    ] = "distrl-tls",
    cert_manager_issuer: Annotated[
        str | None,
        typer.Option("--cert-manager-issuer", help="have cert-manager issue --tls-secret from this issuer"),
    ] = None,
    cluster_issuer: Annotated[
        bool, typer.Option("--cluster-issuer", help="the cert-manager issuer is a ClusterIssuer")
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="no TLS: tokens cross the pod network in the clear")
    ] = False,
) -> None:
    """Write the manifests that run CONFIG as pods: apply them with `kubectl apply -k OUT`.

    Also writes the generated Secret's files: OUT/token-<role> (admin, learner, actor, reader;
    random unless the config sets the admin token; kept on re-render), their digests, and the
    config's TLS files; OUT/.gitignore keeps them out of git. TLS is on: from the config's TLS
    files, else from Secret --tls-secret (made by you, or by cert-manager), unless --insecure.
    """
    from distrl.config import ConfigError, load_config, redact_overrides
    from distrl.runtime.k8s import DEFAULT_IMAGE, TLS_DNS_NAMES, RenderOptions, tls_source, write_manifests

    overrides = list(overrides or [])
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # The header of every file says how to reproduce it (without --out: it is where the file is).
    words = ["distrl", "k8s", "render", str(config), *redact_overrides(overrides)]
    for flag, value in (("--image", image), ("--actors", actors), ("--shards", shards)):
        if value is not None:
            words += [flag, str(value)]
    if insecure and cert_manager_issuer is not None:
        typer.echo("error: give --insecure or --cert-manager-issuer, not both", err=True)
        raise typer.Exit(2)
    for flag, value in (("--tls-secret", tls_secret if tls_secret != "distrl-tls" else None),):
        if value is not None:
            words += [flag, value]
    if cert_manager_issuer is not None:
        words += ["--cert-manager-issuer", cert_manager_issuer] + (
            ["--cluster-issuer"] if cluster_issuer else []
        )
    if insecure:
        words.append("--insecure")
    options = RenderOptions(
        image=image or DEFAULT_IMAGE,
        actors=actors,
        shards=shards,
        command=shlex.join(words),
        tls="off" if insecure else "cert-manager" if cert_manager_issuer else "secret",
        tls_secret=tls_secret,
        cert_manager_issuer=cert_manager_issuer,
        cert_manager_issuer_kind="ClusterIssuer" if cluster_issuer else "Issuer",
    )
    try:
        written = write_manifests(cfg, out, options)
    except OSError as exc:
        typer.echo(f"error: cannot write the manifests to {out}: {exc}", err=True)
        raise typer.Exit(1) from None
    for path in written:
        typer.echo(f"wrote {path}")
    source = tls_source(cfg, options)
    if source == "secret":
        typer.echo(
            f"TLS: the pods mount Secret {tls_secret} (tls.crt, tls.key, ca.crt; the certificate must name "
            f"{', '.join(TLS_DNS_NAMES)}); create it first, e.g.\n"
            f"  kubectl create secret generic {tls_secret} --from-file=tls.crt --from-file=tls.key "
            "--from-file=ca.crt"
        )
    elif source == "cert-manager":
        typer.echo(f"TLS: cert-manager issues Secret {tls_secret} from {cert_manager_issuer} (tls.yaml)")
    elif source == "off":
        typer.echo("warning: --insecure: tokens and weights cross the pod network unencrypted", err=True)
    typer.echo(f"apply with: kubectl apply -k {out}")
