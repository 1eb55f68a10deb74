"""The experiment config: one typed document per run, from YAML plus dotted overrides.

`load_config("configs/sac_halfcheetah.yaml", ["learner.batch_size=512"])` reads
the file, applies each override (the value parsed as YAML, so `true`, `3e-4`
and `[256, 256]` mean what they say) and validates. A bad key or value fails
here, naming its dotted path and what was expected.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from distrl.envs.config import EnvConfig
from distrl.replay.config import TableConfig
from distrl.wire.security import KeepaliveConfig, SecurityConfig


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlgoConfig(_Strict):
    """Which algorithm, and its hyperparameters (validated by the algorithm's own schema)."""

    model_config = ConfigDict(extra="allow")

    name: str = "sac"
    plugin: str | None = Field(
        None,
        description="a module every process imports before building the algorithm; it registers "
        "algorithms of its own with distrl.algos.register_algorithm",
    )

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _validate_params(self) -> AlgoConfig:
        from distrl.algos import algorithm_config

        if self.plugin is not None:
            try:
                importlib.import_module(self.plugin)
            except ImportError as exc:
                raise ValueError(f"plugin {self.plugin!r} cannot be imported: {exc}") from None
        algorithm_config(self.name, self.params())
        return self


class ActorsConfig(_Strict):
    num_actors: int = Field(2, ge=1)
    envs_per_actor: int = Field(1, ge=1, description="envs stepped in lock-step with one batched forward")
    warmup_steps: int = Field(
        5_000, ge=0, description="uniform random actions for this many env steps, in all"
    )
    insert_batch_size: int = Field(64, ge=1, description="transitions per batch sent to replay")
    max_in_flight: int = Field(8, ge=1, description="unacked batches before an actor waits")
    weight_sync: Literal["immediate", "episode"] = Field(
        "immediate", description="swap in new weights as they arrive, or only at episode boundaries"
    )
    compression: Literal["none", "lz4", "zstd"] = "none"
    restart_backoff_s: float = Field(
        1.0, gt=0, description="first restart delay of a crashed actor (doubles)"
    )
    max_restarts: int = Field(20, ge=0)


class ReplayConfig(_Strict):
    num_shards: int = Field(1, ge=1)
    table: TableConfig = Field(
        default_factory=lambda: TableConfig(
            capacity=1_000_000, samples_per_insert=256.0, error_buffer=25_600.0
        )
    )
    prefetch: int = Field(4, ge=1, description="learner batches fetched ahead")
    checkpoint_every_s: float | None = Field(600.0, gt=0)
    ack_delay_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="an insert ack waits this long to cover later batches too"
    )


class LearnerConfig(_Strict):
    batch_size: int = Field(256, ge=1)
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:N")
    publish_every: int = Field(10, ge=1, description="publish policy weights every N updates")
    checkpoint_every: int = Field(10_000, ge=1, description="checkpoint every N updates")
    keep_checkpoints: int = Field(2, ge=1)
    log_every_s: float = Field(2.0, gt=0)
    threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads; 1 keeps a CPU learner from fighting actors for cores "
        "(None: torch's default, one per core, best on a machine of its own)",
    )


class DemosConfig(_Strict):
    """Demonstrations mixed into learning (RLPD's symmetric sampling by default)."""

    path: Path | None = Field(None, description="a Zarr demonstration store (distrl demos import/collect)")
    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="share of every learner batch drawn from the demos")
    placement: Literal["learner", "replay"] = Field(
        "learner",
        description="learner: a demo table on the learner's device, mixed into every batch; "
        "replay: inserted once into the replay table and sampled like online data",
    )
    allow_env_mismatch: bool = Field(
        False,
        description="use demos recorded on another env than env.id (refused by default: two envs "
        "with the same sizes, e.g. gym:HalfCheetah-v5 and dmc:cheetah-run, would mix silently)",
    )


class PretrainConfig(_Strict):
    bc_steps: int = Field(0, ge=0, description="behaviour-cloning steps on the demos before RL starts")
    bc_batch_size: int = Field(256, ge=1)


class EvalVideoConfig(_Strict):
    """Clips of the deterministic policy, recorded by the evaluator into RUN_DIR/videos/.

    Rendering needs a headless GL backend (MUJOCO_GL=egl on a GPU machine, MUJOCO_GL=osmesa on a
    CPU one; unset: the evaluator picks one it finds); without one the evaluator logs one warning
    and records none.
    """

    every: int = Field(
        5, ge=0, description="record a clip every N evaluations, the first one included (0: never)"
    )
    frames: int = Field(300, ge=1, description="frames per clip: the reset and one per env step")
    fps: int = Field(30, ge=1, description="playback frames per second")
    width: int = Field(320, ge=2, description="frame width in pixels (even)")
    height: int = Field(240, ge=2, description="frame height in pixels (even)")

    @model_validator(mode="after")
    def _even_size(self) -> EvalVideoConfig:
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even (H.264 yuv420p), got {self.width}x{self.height}")
        return self


class EvalConfig(_Strict):
    enabled: bool = True
    every_updates: int = Field(10_000, ge=1)
    episodes: int = Field(10, ge=1)
    video: EvalVideoConfig = Field(default_factory=EvalVideoConfig)


class WandbConfig(_Strict):
    enabled: bool = False
    project: str = "distrl"
    entity: str | None = None
    mode: Literal["auto", "online", "offline"] = Field(
        "auto", description="auto: online when logged in, offline otherwise"
    )


class TelemetryConfig(_Strict):
    console: bool = Field(True, description="live progress display")
    report_every_s: float = Field(
        1.0, gt=0, description="how often components report and metrics.jsonl grows"
    )
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    prometheus_port: int | None = Field(None, ge=0, description="serve /metrics for Prometheus on this port")
    dashboard_port: int | None = Field(None, ge=0, description="serve the live web dashboard on this port")
    run_name: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="the `run` label of Prometheus series (default: the run directory's name)",
    )
    reader_token_file: Path | None = Field(
        None,
        description="file holding the token that reading the dashboard and /metrics then requires "
        "(Authorization: Bearer, or /login?token= in a browser); none: open to anyone who can connect",
    )

    @model_validator(mode="after")
    def _check_reader_token(self) -> TelemetryConfig:
        if self.reader_token_file is not None:
            from distrl.telemetry.http import read_reader_token

            read_reader_token(self.reader_token_file)  # missing or empty: a config error now
        return self


class NetworkConfig(_Strict):
    host: str = Field("127.0.0.1", description="interface every local component binds")
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    keepalive: KeepaliveConfig = Field(default_factory=KeepaliveConfig)


class LocalRayConfig(_Strict):
    """The Ray instance the ray launcher starts itself when it is given no cluster to join."""

    num_cpus: int | None = Field(
        None, ge=1, description="logical CPUs (default: the machine's cores, or enough for every component)"
    )
    num_gpus: int | None = Field(None, ge=0, description="GPUs Ray may hand out (default: detected)")
    object_store_mb: int | None = Field(
        None, ge=75, description="shared-memory object store (default: Ray's, 30% of memory)"
    )
    temp_dir: str | None = Field(
        None,
        max_length=40,
        description="Ray's session directory (default /tmp/ray); short, because Ray's unix sockets "
        "live under it and a socket path may not exceed 107 bytes",
    )
    dashboard: bool = Field(False, description="start Ray's web dashboard (port 8265)")


class RayConfig(_Strict):
    """Placement of the components as Ray actors (`distrl train --launcher ray`)."""

    learner_gpus: float = Field(0.0, ge=0, description="num_gpus of the learner (0: a CPU learner)")
    learner_cpus: float = Field(1.0, ge=0)
    actor_cpus: float = Field(1.0, ge=0)
    replay_cpus: float = Field(1.0, ge=0)
    params_cpus: float = Field(0.5, ge=0)
    evaluator_cpus: float = Field(0.5, ge=0)
    max_restarts: int = Field(
        20, ge=-1, description="Ray restarts a component that died this many times (-1: without limit)"
    )
    replay_resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each replay shard and the parameter server need "
        "(e.g. {replay: 1} for nodes started with --resources='{\"replay\": 4}')",
    )
    replay_labels: dict[str, str] = Field(
        default_factory=dict,
        description="node labels the replay shards and the parameter server must run on "
        "(a Ray label_selector, e.g. {ray.io/node-group: replay})",
    )
    actor_strategy: Literal["SPREAD", "DEFAULT"] = Field(
        "SPREAD", description="SPREAD places actors across nodes; DEFAULT packs them"
    )
    fit_actors: bool = Field(
        True,
        description="start as many actors as the cluster's free CPUs hold (saying so) instead of failing",
    )
    start_timeout_s: float = Field(
        300.0, gt=0, description="fail the run when a component Ray has not placed starts no sooner than this"
    )
    local: LocalRayConfig = Field(default_factory=LocalRayConfig)


class TrainConfig(_Strict):
    total_env_steps: int = Field(1_000_000, ge=1)
    max_updates: int | None = Field(None, ge=1, description="stop after this many learner updates")
    target_eval_return: float | None = Field(
        None, description="stop early once an evaluation's mean return reaches this"
    )


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 0
    env: EnvConfig
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    demos: DemosConfig = Field(default_factory=DemosConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _check_demos(self) -> ExperimentConfig:
        if self.pretrain.bc_steps and self.demos.path is None:
            raise ValueError("pretrain.bc_steps needs demos.path (the demonstrations to clone)")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def redacted_dump(self) -> dict[str, Any]:
        """The config as a JSON-able dict fit to write down or send to W&B: no inline token."""
        out = self.model_dump(mode="json")
        out["network"]["security"] = self.network.security.redacted()
        return out

    def with_token_file(self, token_file: Path) -> ExperimentConfig:
        """This config with its inline token replaced by `token_file` (which must hold it)."""
        security = self.network.security.model_copy(update={"token": None, "token_file": Path(token_file)})
        network = self.network.model_copy(update={"security": security})
        return self.model_copy(update={"network": network})


def redact_overrides(words: list[str]) -> list[str]:
    """Command-line words with the value of any `...token=VALUE` override replaced by `<redacted>`."""
    out = []
    for word in words:
        key, sep, _ = word.partition("=")
        secret = sep and (key == "token" or key.endswith(".token"))
        out.append(f"{key}=<redacted>" if secret else word)
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `a.b.c=value` entries in a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment config; raises ConfigError naming bad keys."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        raw = loaded or {}
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source=str(path) if path else "config")


def validate_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config\n{format_errors(exc)}") from None


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(
            f"  {where}: {msg}"
            + (
                f" (got {err['input']!r})"
                if err["type"] != "extra_forbidden" and not isinstance(err.get("input"), dict)
                else ""
            )
        )
    return "\n".join(lines)
