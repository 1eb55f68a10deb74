"""The `distrl` command line. Each component contributes its own commands."""

from __future__ import annotations

import os
import sys

import typer

from distrl import __version__

app = typer.Typer(
    name="distrl",
    help="Distributed actor-learner reinforcement learning for robot control.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
serve_app = typer.Typer(help="Run one component as a long-lived server.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"distrl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True),
) -> None:
    """Distributed actor-learner reinforcement learning for robot control."""


def _register() -> None:
    # Component modules keep their heavy imports inside the command bodies, so
    # `distrl --help` stays fast.
    from distrl.actors import cli as actors_cli
    from distrl.data import cli as data_cli
    from distrl.envs import cli as envs_cli
    from distrl.learners import cli as learners_cli
    from distrl.learners import pretrain_cli
    from distrl.params import cli as params_cli
    from distrl.replay import cli as replay_cli
    from distrl.runtime import cli as runtime_cli
    from distrl.runtime import k8s_cli
    from distrl.telemetry import cli as telemetry_cli

    serve_app.command("replay")(replay_cli.serve_replay)
    serve_app.command("params")(params_cli.serve_params)
    serve_app.command("coordinator")(telemetry_cli.serve_coordinator)
    serve_app.command("learner")(learners_cli.serve_learner)
    serve_app.command("actor")(actors_cli.serve_actor)
    serve_app.command("evaluator")(actors_cli.serve_evaluator)
    app.command("train")(runtime_cli.train)
    app.command("eval")(runtime_cli.evaluate_run)
    app.command("scale")(runtime_cli.scale)
    app.command("dashboard")(telemetry_cli.dashboard)
    app.add_typer(replay_cli.app, name="replay")
    app.add_typer(params_cli.app, name="params")
    app.add_typer(envs_cli.app, name="envs")
    app.add_typer(k8s_cli.app, name="k8s")
    app.add_typer(data_cli.app, name="demos")
    app.add_typer(pretrain_cli.app, name="pretrain")


_register()


def _match_gl_platform() -> None:
    """PyOpenGL must use the platform MuJoCo renders with: a PYOPENGL_PLATFORM inherited from a
    parent process (importing robosuite sets one) leaves MuJoCo without a GL context."""
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if backend in ("egl", "osmesa") and "mujoco" not in sys.modules:
        os.environ["PYOPENGL_PLATFORM"] = backend


def main() -> None:
    _match_gl_platform()
    app()


if __name__ == "__main__":
    main()
