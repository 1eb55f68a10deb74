"""Kubernetes placement: the manifests that run one experiment as pods.

`render_manifests(config)` turns an `ExperimentConfig` into plain Kubernetes objects (dicts),
grouped into files for a kustomize base; `write_manifests` dumps them with PyYAML. Nothing is
templated by hand, so the YAML follows the config schema: the shard count, actor count,
ports and addresses all come from one place.

What runs where (every container runs `distrl serve ...`, the same commands the local launcher
starts):

- replay shards: a StatefulSet behind a headless Service, so shard k is `replay-k.replay`; each
  shard checkpoints into its own PersistentVolumeClaim and restores from it on start.
- params server, coordinator: Deployments behind ClusterIP Services. The coordinator keeps
  metrics.jsonl / progress.json on its own PVC, so a restarted coordinator continues the run.
- learner: a Deployment of one pod asking for `nvidia.com/gpu: 1`, RUN_DIR on a PVC (checkpoints,
  resumed from on restart).
- actors: a Deployment whose replica count is the actor count (`kubectl scale` changes it);
  each pod's index hashes its name and its pod UID is logged beside the process's replay
  incarnation (`distrl.actors.identity`); an evaluator Deployment when `eval.enabled`.
- the experiment config: a ConfigMap, mounted at /etc/distrl/config/config.yaml. The bearer
  token (and TLS files when the config uses TLS) come from a Secret that kustomize generates from
  files beside the manifests, mounted at /etc/distrl/secrets; servers also read the token from
  env DISTRL_TOKEN. Secret files are never written into the YAML.
"""

from __future__ import annotations

import math
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distrl import __version__
from distrl.config import ExperimentConfig
from distrl.wire.security import SecurityConfig

DEFAULT_IMAGE = f"distrl:{__version__}"
CONFIGMAP_NAME = "distrl-config"
SECRET_NAME = "distrl-secrets"
CONFIG_MOUNT = "/etc/distrl/config"
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_MOUNT}/{CONFIG_FILE}"
SECRETS_MOUNT = "/etc/distrl/secrets"
DATA_MOUNT = "/data"

REPLAY_PORT = 50051
PARAMS_PORT = 50052
COORDINATOR_PORT = 50053
DASHBOARD_PORT = 8080
PROMETHEUS_PORT = 9090

REPLAY = "replay"
PARAMS = "params"
COORDINATOR = "coordinator"
LEARNER = "learner"
ACTORS = "actors"
EVALUATOR = "evaluator"

TOKEN_FILE = "token"
# Config field -> file name in the Secret (and under SECRETS_MOUNT).
TLS_FILES = {
    "tls_cert": "tls.crt",
    "tls_key": "tls.key",
    "tls_ca": "ca.crt",
    "tls_client_ca": "client-ca.crt",
}
# Every file render may write; stale ones (e.g. evaluator.yaml once eval is disabled) are removed.
MANIFEST_FILES = (
    "kustomization.yaml",
    "configmap.yaml",
    f"{REPLAY}.yaml",
    f"{PARAMS}.yaml",
    f"{COORDINATOR}.yaml",
    f"{LEARNER}.yaml",
    f"{ACTORS}.yaml",
    f"{EVALUATOR}.yaml",
)

# The image's user (deploy/Dockerfile); fsGroup makes the volumes writable for it.
RUN_AS = 10001
# Replay memory is sized from the table capacity; without a fixed spec we assume this much per
# item (a 100-float observation pair plus action, reward, flags, keys and priorities).
DEFAULT_REPLAY_BYTES_PER_ITEM = 1024
GIB = 1024**3


@dataclass(frozen=True)
class RenderOptions:
    """What `distrl k8s render` may change besides the config itself."""

    image: str = DEFAULT_IMAGE
    actors: int | None = None
    shards: int | None = None
    command: str = "distrl k8s render"


@dataclass(frozen=True)
class Resources:
    """Requests and limits of one container (Kubernetes quantity strings)."""

    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str
    gpus: int = 0

    def to_k8s(self) -> dict[str, Any]:
        limits: dict[str, Any] = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        if self.gpus:
            # Extended resources are set as limits; Kubernetes copies them to requests.
            limits["nvidia.com/gpu"] = self.gpus
        return {"requests": {"cpu": self.cpu_request, "memory": self.memory_request}, "limits": limits}


@dataclass(frozen=True)
class ManifestFile:
    """One YAML file of the kustomize base: its name and the objects it holds."""

    name: str
    objects: list[dict[str, Any]]


def shard_addresses(num_shards: int) -> list[str]:
    """Stable DNS names of the replay StatefulSet's pods (`pod.headless-service:port`).

    The short form resolves from any pod in the same namespace through the cluster's DNS search
    path (`replay-0.replay.<namespace>.svc.cluster.local`).
    """
    return [f"{REPLAY}-{k}.{REPLAY}:{REPLAY_PORT}" for k in range(num_shards)]


def params_address() -> str:
    return f"{PARAMS}:{PARAMS_PORT}"


def coordinator_address() -> str:
    return f"{COORDINATOR}:{COORDINATOR_PORT}"


def cluster_config(config: ExperimentConfig, options: RenderOptions) -> ExperimentConfig:
    """The experiment config as the pods see it: counts from the options, secrets as mounted files."""
    sec = config.network.security
    mounted = {
        "token_file": f"{SECRETS_MOUNT}/{TOKEN_FILE}",
        **{field: f"{SECRETS_MOUNT}/{name}" for field, name in TLS_FILES.items() if getattr(sec, field)},
    }
    if sec.tls_server_name is not None:
        mounted["tls_server_name"] = sec.tls_server_name
    # model_construct: the mounted files exist only inside the pods, so skip the existence check.
    security = SecurityConfig.model_construct(**mounted)
    network = config.network.model_copy(update={"host": "0.0.0.0", "security": security})
    telemetry = config.telemetry.model_copy(
        update={
            "console": False,
            "dashboard_port": DASHBOARD_PORT,
            "prometheus_port": PROMETHEUS_PORT,
            # Every coordinator's run dir is /data/run: label its Prometheus series by the experiment.
            "run_name": config.telemetry.run_name or config.name[:128] or None,
        }
    )
    actors = config.actors.model_copy(update={"num_actors": options.actors or config.actors.num_actors})
    replay = config.replay.model_copy(update={"num_shards": options.shards or config.replay.num_shards})
    return config.model_copy(
        update={"network": network, "telemetry": telemetry, "actors": actors, "replay": replay}
    )


def render_manifests(config: ExperimentConfig, options: RenderOptions | None = None) -> list[ManifestFile]:
    """Every object of the kustomize base for `config`, grouped by file."""
    options = options or RenderOptions()
    cfg = cluster_config(config, options)
    return _Renderer(cfg, options).files()


def write_manifests(
    config: ExperimentConfig, out_dir: Path, options: RenderOptions | None = None
) -> list[Path]:
    """Write the kustomize base into `out_dir`; returns the files written.

    Also writes the Secret's source files, which `.gitignore` keeps out of git: `token` (the
    config's token, or a fresh random one if the file is missing, so a re-render keeps the
    token a running job uses) and copies of the config's TLS files.
    """
    options = options or RenderOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render_manifests(config, options)
    header = (
        f"# Rendered by `{options.command}` (distrl {__version__}).\n"
        "# Do not edit: change the experiment config and render again.\n"
    )
    written = []
    for manifest in files:
        path = out_dir / manifest.name
        path.write_text(header + dump_yaml(manifest.objects))
        written.append(path)
    rendered = {m.name for m in files}
    for stale in MANIFEST_FILES:
        if stale not in rendered and (out_dir / stale).exists():
            (out_dir / stale).unlink()
    gitignore = out_dir / ".gitignore"
    gitignore.write_text(
        "# Secret material read by kustomize's secretGenerator; never commit it.\n"
        + "".join(f"/{name}\n" for name in (TOKEN_FILE, *TLS_FILES.values()))
    )
    written.append(gitignore)
    written += _write_secret_files(config.network.security, out_dir)
    return written


def _write_secret_files(sec: SecurityConfig, out_dir: Path) -> list[Path]:
    written = []
    token_path = out_dir / TOKEN_FILE
    token = sec.resolved_token()
    if token is not None or not token_path.exists():
        token_path.touch(mode=0o600)
        token_path.write_text((token or secrets.token_hex(32)) + "\n")
        written.append(token_path)
    for field, name in TLS_FILES.items():
        source = getattr(sec, field)
        if source is not None:
            shutil.copyfile(source, out_dir / name)
            written.append(out_dir / name)
    return written


class _LiteralDumper(yaml.SafeDumper):
    """Plain YAML for humans: multi-line strings (the config in the ConfigMap) as `|` blocks, and
    no anchors or aliases where a piece (a probe, a label set) is shared between objects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def dump_yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False)


def _quantity_gi(num_bytes: float) -> str:
    return f"{max(1, math.ceil(num_bytes / GIB))}Gi"


def _label_value(text: str) -> str:
    # Label values: at most 63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric.
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")
    return value or "experiment"


class _Renderer:
    def __init__(self, cfg: ExperimentConfig, options: RenderOptions) -> None:
        self.cfg = cfg
        self.options = options
        self.tls = cfg.network.security.tls_cert is not None

    # -- shared pieces -------------------------------------------------------------------------

    def labels(self, component: str) -> dict[str, str]:
        return {**self.selector(component), "app.kubernetes.io/instance": _label_value(self.cfg.name)}

    @staticmethod
    def selector(component: str) -> dict[str, str]:
        return {"app.kubernetes.io/name": "distrl", "app.kubernetes.io/component": component}

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        return {"name": name, "labels": self.labels(component)}

    def env(
        self, server: bool, extra: dict[str, str] | None = None, pod_uid: bool = False
    ) -> list[dict[str, Any]]:
        env: list[dict[str, Any]] = [
            # The actor index and the replay shard's seed come from the pod name.
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
        if pod_uid:
            # Which pod an actor incarnation ran in (a container restart keeps it; a new pod does not).
            env.append({"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}})
        env += [
            {"name": "MUJOCO_GL", "value": "disable"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
        ]
        if server:
            token = {"secretKeyRef": {"name": SECRET_NAME, "key": TOKEN_FILE}}
            env.append({"name": "DISTRL_TOKEN", "valueFrom": token})
        env += [{"name": k, "value": v} for k, v in (extra or {}).items()]
        return env

    def client_env(self) -> dict[str, str]:
        return {
            "DISTRL_REPLAY": ",".join(shard_addresses(self.cfg.replay.num_shards)),
            "DISTRL_PARAMS": params_address(),
            "DISTRL_TELEMETRY": coordinator_address(),
        }

    def server_args(self, port: int) -> list[str]:
        net = self.cfg.network
        args = ["--host", "0.0.0.0", "--port", str(port)]
        args += [
            "--keepalive-s",
            f"{net.keepalive.time_s:g}",
            "--keepalive-timeout-s",
            f"{net.keepalive.timeout_s:g}",
        ]
        sec = net.security
        for flag, field in (
            ("--tls-cert", "tls_cert"),
            ("--tls-key", "tls_key"),
            ("--tls-client-ca", "tls_client_ca"),
        ):
            if getattr(sec, field) is not None:
                args += [flag, f"{SECRETS_MOUNT}/{TLS_FILES[field]}"]
        return args

    def probes(self, port: int) -> dict[str, Any]:
        # Kubelet's gRPC probe speaks plaintext grpc.health.v1 (exempt from the token); with TLS
        # it cannot, so those servers are probed for an open port instead.
        check: dict[str, Any] = {"tcpSocket": {"port": port}} if self.tls else {"grpc": {"port": port}}
        return {
            # Generous: a replay shard restores its checkpoint before it listens.
            "startupProbe": {**check, "periodSeconds": 5, "failureThreshold": 120},
            "readinessProbe": {**check, "periodSeconds": 10, "timeoutSeconds": 5},
            "livenessProbe": {**check, "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
        }

    def container(
        self,
        args: list[str],
        resources: Resources,
        *,
        server: bool = False,
        env: dict[str, str] | None = None,
        ports: dict[str, int] | None = None,
        probe_port: int | None = None,
        data_volume: str | None = None,
        pod_uid: bool = False,
    ) -> dict[str, Any]:
        mounts = [
            {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "secrets", "mountPath": SECRETS_MOUNT, "readOnly": True},
        ]
        if data_volume is not None:
            mounts.append({"name": data_volume, "mountPath": DATA_MOUNT})
        container: dict[str, Any] = {
            "name": "distrl",
            "image": self.options.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["distrl"],
            "args": args,
            "env": self.env(server, env, pod_uid),
        }
        if ports:
            container["ports"] = [
                {"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()
            ]
        container["resources"] = resources.to_k8s()
        if probe_port is not None:
            container.update(self.probes(probe_port))
        container["volumeMounts"] = mounts
        container["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        return container

    def pod_template(
        self,
        component: str,
        container: dict[str, Any],
        grace_s: int,
        volumes: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        return {
            "metadata": {"labels": self.labels(component)},
            "spec": {
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": RUN_AS,
                    "runAsGroup": RUN_AS,
                    "fsGroup": RUN_AS,
                },
                # SIGTERM makes shards and the learner write a final checkpoint; give them time.
                "terminationGracePeriodSeconds": grace_s,
                "containers": [container],
                "volumes": [
                    {
                        "name": "config",
                        "configMap": {
                            "name": CONFIGMAP_NAME,
                            "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}],
                        },
                    },
                    {"name": "secrets", "secret": {"secretName": SECRET_NAME, "defaultMode": 0o440}},
                    *(volumes or []),
                ],
            },
        }

    def deployment(
        self, name: str, replicas: int, template: dict[str, Any], recreate: bool = False
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "replicas": replicas,
            "selector": {"matchLabels": self.selector(name)},
        }
        if recreate:
            # A ReadWriteOnce volume cannot be attached to the old and the new pod at once.
            spec["strategy"] = {"type": "Recreate"}
        spec["template"] = template
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.metadata(name, name),
            "spec": spec,
        }

    def service(self, name: str, ports: dict[str, int], headless: bool = False) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if headless:
            spec["clusterIP"] = "None"
        spec["selector"] = self.selector(name)
        spec["ports"] = [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports.items()]
        return {"apiVersion": "v1", "kind": "Service", "metadata": self.metadata(name, name), "spec": spec}

    def pvc_spec(self, size: str) -> dict[str, Any]:
        # No storageClassName: the cluster's default class (kind's local-path, a cloud's disks).
        return {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}

    def pvc(self, name: str, component: str, size: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self.metadata(name, component),
            "spec": self.pvc_spec(size),
        }

    # -- components ----------------------------------------------------------------------------

    def replay_bytes(self) -> int:
        table = self.cfg.replay.table
        per_item = DEFAULT_REPLAY_BYTES_PER_ITEM
        if table.spec:
            import numpy as np

            # obs-like fields plus keys, priorities and bookkeeping per item.
            per_item = 64 + sum(math.prod(f.shape) * np.dtype(f.dtype).itemsize for f in table.spec.values())
        return table.capacity * per_item

    def replay(self) -> list[dict[str, Any]]:
        data = self.replay_bytes()
        memory = _quantity_gi(data * 1.25 + 0.5 * GIB)  # + the interpreter, grpc buffers
        container = self.container(
            [
                "serve",
                "replay",
                *self.server_args(REPLAY_PORT),
                "--experiment",
                CONFIG_PATH,
                "--checkpoint-dir",
                f"{DATA_MOUNT}/replay",
            ],
            Resources("500m", memory, "2", memory),
            server=True,
            ports={"grpc": REPLAY_PORT},
            probe_port=REPLAY_PORT,
            data_volume="data",
        )
        statefulset = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": self.metadata(REPLAY, REPLAY),
            "spec": {
                "serviceName": REPLAY,
                "replicas": self.cfg.replay.num_shards,
                # Shards do not depend on each other: start and replace them all at once.
                "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": self.selector(REPLAY)},
                "template": self.pod_template(REPLAY, container, grace_s=120),
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data", "labels": self.labels(REPLAY)},
                        # Room for the newest checkpoints (kept 2) plus the one being written.
                        "spec": self.pvc_spec(_quantity_gi(data * 3)),
                    }
                ],
            },
        }
        return [self.service(REPLAY, {"grpc": REPLAY_PORT}, headless=True), statefulset]

    def params(self) -> list[dict[str, Any]]:
        container = self.container(
            ["serve", "params", *self.server_args(PARAMS_PORT)],
            Resources("250m", "512Mi", "1", "1Gi"),
            server=True,
            ports={"grpc": PARAMS_PORT},
            probe_port=PARAMS_PORT,
        )
        template = self.pod_template(PARAMS, container, grace_s=30)
        return [self.service(PARAMS, {"grpc": PARAMS_PORT}), self.deployment(PARAMS, 1, template)]

    def coordinator(self) -> list[dict[str, Any]]:
        ports = {"grpc": COORDINATOR_PORT, "dashboard": DASHBOARD_PORT, "metrics": PROMETHEUS_PORT}
        container = self.container(
            [
                "serve",
                "coordinator",
                *self.server_args(COORDINATOR_PORT),
                "--config",
                CONFIG_PATH,
                "--run-dir",
                f"{DATA_MOUNT}/run",
                "--dashboard-port",
                str(DASHBOARD_PORT),
                "--prometheus-port",
                str(PROMETHEUS_PORT),
                "--no-console",
            ],
            Resources("250m", "512Mi", "1", "1Gi"),
            server=True,
            ports=ports,
            probe_port=COORDINATOR_PORT,
            data_volume="data",
        )
        volume = {"name": "data", "persistentVolumeClaim": {"claimName": f"{COORDINATOR}-data"}}
        template = self.pod_template(COORDINATOR, container, grace_s=30, volumes=[volume])
        template["metadata"]["annotations"] = {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(PROMETHEUS_PORT),
            "prometheus.io/path": "/metrics",
        }
        return [
            self.pvc(f"{COORDINATOR}-data", COORDINATOR, "1Gi"),
            self.service(COORDINATOR, ports),
            self.deployment(COORDINATOR, 1, template, recreate=True),
        ]

    def learner(self) -> list[dict[str, Any]]:
        container = self.container(
            ["serve", "learner", "--config", CONFIG_PATH, "--run-dir", f"{DATA_MOUNT}/run"],
            Resources("4", "8Gi", "8", "16Gi", gpus=1),
            # torch would otherwise start a thread per node core, not per core it may use.
            env={**self.client_env(), "OMP_NUM_THREADS": "4"},
            data_volume="data",
        )
        volume = {"name": "data", "persistentVolumeClaim": {"claimName": f"{LEARNER}-run"}}
        template = self.pod_template(LEARNER, container, grace_s=120, volumes=[volume])
        return [
            self.pvc(f"{LEARNER}-run", LEARNER, "10Gi"),
            self.deployment(LEARNER, 1, template, recreate=True),
        ]

    def actors(self) -> list[dict[str, Any]]:
        container = self.container(
            ["serve", "actor", "--config", CONFIG_PATH],
            Resources("500m", "1Gi", "2", "2Gi"),
            env=self.client_env(),
            pod_uid=True,
        )
        template = self.pod_template(ACTORS, container, grace_s=30)
        return [self.deployment(ACTORS, self.cfg.actors.num_actors, template)]

    def evaluator(self) -> list[dict[str, Any]]:
        container = self.container(
            ["serve", "evaluator", "--config", CONFIG_PATH],
            Resources("500m", "1Gi", "2", "2Gi"),
            env=self.client_env(),
        )
        return [self.deployment(EVALUATOR, 1, self.pod_template(EVALUATOR, container, grace_s=30))]

    def configmap(self) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": self.metadata(CONFIGMAP_NAME, "config"),
                # What the experiment sets, not every default: the image's distrl fills those in,
                # so the file reads like the user's own and survives new config fields.
                "data": {
                    CONFIG_FILE: yaml.safe_dump(
                        self.cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False
                    )
                },
            }
        ]

    def kustomization(self, resources: list[str]) -> dict[str, Any]:
        secret_files = [TOKEN_FILE] + [
            name for field, name in TLS_FILES.items() if getattr(self.cfg.network.security, field)
        ]
        return {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": resources,
            # Generated from files beside this one (see .gitignore), so no secret is ever committed.
            "secretGenerator": [{"name": SECRET_NAME, "files": secret_files}],
        }

    def files(self) -> list[ManifestFile]:
        files = [
            ManifestFile("configmap.yaml", self.configmap()),
            ManifestFile(f"{REPLAY}.yaml", self.replay()),
            ManifestFile(f"{PARAMS}.yaml", self.params()),
            ManifestFile(f"{COORDINATOR}.yaml", self.coordinator()),
            ManifestFile(f"{LEARNER}.yaml", self.learner()),
            ManifestFile(f"{ACTORS}.yaml", self.actors()),
        ]
        if self.cfg.eval.enabled:
            files.append(ManifestFile(f"{EVALUATOR}.yaml", self.evaluator()))
        kustomization = self.kustomization([f.name for f in files])
        return [ManifestFile("kustomization.yaml", [kustomization]), *files]
