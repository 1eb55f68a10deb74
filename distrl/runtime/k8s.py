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
- the experiment config: a ConfigMap, mounted at /etc/distrl/config/config.yaml.
- credentials: one bearer token per role (`distrl.wire.roles`): a Secret that kustomize generates
  from files beside the manifests (`token-<role>`, kept across renders). Each pod mounts only
  its own role's token, as /etc/distrl/secrets/token: actors and the evaluator the actor token,
  the learner the learner token, servers the reader token (they call nobody). Servers check
  callers against the SHA-256 digests of every role's token, so no server holds another role's
  token. Secret files are never written into the YAML.
- TLS is on unless rendered `--insecure`: from the config's TLS files (copied into the generated
  Secret), else from a Secret the user provides (`--tls-secret`, default `distrl-tls`: keys
  tls.crt, tls.key, ca.crt), optionally made by cert-manager (`--cert-manager-issuer` renders a
  Certificate for it). Server pods alone get the private key.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distrl import __version__
from distrl.config import ExperimentConfig
from distrl.wire.roles import DIGEST_SUFFIX, ROLES, digest
from distrl.wire.security import SecurityConfig, write_private

DEFAULT_IMAGE = f"distrl:{__version__}"
CONFIGMAP_NAME = "distrl-config"
SECRET_NAME = "distrl-secrets"
CONFIG_MOUNT = "/etc/distrl/config"
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_MOUNT}/{CONFIG_FILE}"
SECRETS_MOUNT = "/etc/distrl/secrets"
TLS_MOUNT = "/etc/distrl/tls"
ROLES_DIR = f"{SECRETS_MOUNT}/roles"
DEFAULT_TLS_SECRET = "distrl-tls"
# Names the server certificate must hold: every address the clients dial.
TLS_DNS_NAMES = ("replay", "*.replay", "params", "coordinator")
TLS_MODES = ("secret", "cert-manager", "off")
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

# Each pod's own token, under SECRETS_MOUNT; beside the manifests, each role's as token-<role>.
TOKEN_FILE = "token"
ROLE_TOKEN_FILES = {role: f"token-{role}" for role in ROLES}
DIGEST_FILES = {role: f"{role}{DIGEST_SUFFIX}" for role in ROLES}
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
    "tls.yaml",
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
    # Where the TLS certificate comes from when the config names no TLS files (see TLS_MODES).
    tls: str = "secret"
    tls_secret: str = DEFAULT_TLS_SECRET
    cert_manager_issuer: str | None = None
    cert_manager_issuer_kind: str = "Issuer"

    def __post_init__(self) -> None:
        if self.tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, got {self.tls!r}")
        if (self.tls == "cert-manager") != (self.cert_manager_issuer is not None):
            raise ValueError("a cert-manager issuer goes with tls 'cert-manager', and only with it")


def tls_source(config: ExperimentConfig, options: RenderOptions) -> str:
    """Where the pods' TLS files come from: 'config', 'secret', 'cert-manager' or 'off'."""
    return "config" if config.network.security.tls_cert is not None else options.tls


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
    mounted: dict[str, Any] = {"token_file": f"{SECRETS_MOUNT}/{TOKEN_FILE}"}
    source = tls_source(config, options)
    if source == "config":
        if sec.tls_ca is not None:
            mounted["tls_ca"] = f"{SECRETS_MOUNT}/{TLS_FILES['tls_ca']}"
        if sec.tls_client_ca is not None:  # mutual TLS: clients present the certificate too
            mounted["tls_cert"] = f"{SECRETS_MOUNT}/{TLS_FILES['tls_cert']}"
            mounted["tls_key"] = f"{SECRETS_MOUNT}/{TLS_FILES['tls_key']}"
    elif source != "off":
        mounted["tls_ca"] = f"{TLS_MOUNT}/ca.crt"
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
    return _Renderer(cfg, options, config.network.security).files()


def write_manifests(
    config: ExperimentConfig, out_dir: Path, options: RenderOptions | None = None
) -> list[Path]:
    """Write the kustomize base into `out_dir`; returns the files written.

    Also writes the Secret's source files, which `.gitignore` keeps out of git, all readable by
    their owner only: a token per role (`token-<role>`: the config's token is the admin token;
    the others are random, and a re-render keeps those a running job uses), their digests, and
    copies of the config's TLS files.
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
        + "".join(f"/{name}\n" for name in SECRET_SOURCE_FILES)
    )
    written.append(gitignore)
    written += _write_secret_files(config.network.security, out_dir)
    return written


# Every file of the generated Secret (TOKEN_FILE: what renders before per-role tokens wrote).
SECRET_SOURCE_FILES = (TOKEN_FILE, *ROLE_TOKEN_FILES.values(), *DIGEST_FILES.values(), *TLS_FILES.values())


def _write_secret_files(sec: SecurityConfig, out_dir: Path) -> list[Path]:
    written = []
    for role, name in ROLE_TOKEN_FILES.items():
        path = out_dir / name
        given = sec.resolved_token() if role == "admin" else None
        if given is not None or not path.exists() or not path.read_text().strip():
            write_private(path, (given or secrets.token_hex(32)) + "\n")
            written.append(path)
        else:
            path.chmod(0o600)  # an older render, or a copy, may have left it readable
        digest_path = out_dir / DIGEST_FILES[role]
        digest_path.write_text(digest(path.read_text().strip()).hex() + "\n")
        written.append(digest_path)
    for field, name in TLS_FILES.items():
        source = getattr(sec, field)
        if source is not None:
            write_private(out_dir / name, Path(source).read_bytes())
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
    def __init__(self, cfg: ExperimentConfig, options: RenderOptions, security: SecurityConfig) -> None:
        self.cfg = cfg
        self.options = options
        # The config's own security settings (cfg's are the files as mounted in the pods).
        self.security = security
        self.tls_source = "config" if security.tls_cert is not None else options.tls
        self.tls = self.tls_source != "off"

    # -- shared pieces -------------------------------------------------------------------------

    def labels(self, component: str) -> dict[str, str]:
        return {**self.selector(component), "app.kubernetes.io/instance": _label_value(self.cfg.name)}

    @staticmethod
    def selector(component: str) -> dict[str, str]:
        return {"app.kubernetes.io/name": "distrl", "app.kubernetes.io/component": component}

    def metadata(self, name: str, component: str) -> dict[str, Any]:
        return {"name": name, "labels": self.labels(component)}

    def env(self, extra: dict[str, str] | None = None, pod_uid: bool = False) -> list[dict[str, Any]]:
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
        args += ["--role-tokens-dir", ROLES_DIR]
        sec = self.security
        if self.tls_source == "config":
            for flag, field in (
                ("--tls-cert", "tls_cert"),
                ("--tls-key", "tls_key"),
                ("--tls-client-ca", "tls_client_ca"),
            ):
                if getattr(sec, field) is not None:
                    args += [flag, f"{SECRETS_MOUNT}/{TLS_FILES[field]}"]
        elif self.tls:
            args += ["--tls-cert", f"{TLS_MOUNT}/tls.crt", "--tls-key", f"{TLS_MOUNT}/tls.key"]
        return args

    def secret_volumes(self, role: str, server: bool) -> list[dict[str, Any]]:
        """The pod's credentials: its own role's token; for servers the digests of every role's
        token and the TLS key; the CA for everyone."""
        items = [{"key": ROLE_TOKEN_FILES[role], "path": TOKEN_FILE}]
        if server:
            items += [{"key": name, "path": f"roles/{name}"} for name in DIGEST_FILES.values()]
        sec = self.security
        if self.tls_source == "config":
            mtls = sec.tls_client_ca is not None
            for field, name in TLS_FILES.items():
                wanted = field == "tls_ca" or server or (mtls and field in ("tls_cert", "tls_key"))
                if getattr(sec, field) is not None and wanted:
                    items.append({"key": name, "path": name})
        volumes = [
            {"name": "secrets", "secret": {"secretName": SECRET_NAME, "defaultMode": 0o440, "items": items}}
        ]
        if self.tls_source in ("secret", "cert-manager"):
            tls_items = [{"key": "ca.crt", "path": "ca.crt"}]
            if server:
                tls_items += [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]
            secret = {"secretName": self.options.tls_secret, "defaultMode": 0o440, "items": tls_items}
            volumes.append({"name": "tls", "secret": secret})
        return volumes

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
        if self.tls_source in ("secret", "cert-manager"):
            mounts.append({"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True})
        if data_volume is not None:
            mounts.append({"name": data_volume, "mountPath": DATA_MOUNT})
        container: dict[str, Any] = {
            "name": "distrl",
            "image": self.options.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["distrl"],
            "args": args,
            "env": self.env(env, pod_uid),
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
        *,
        role: str,
        server: bool = False,
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
                    *self.secret_volumes(role, server),
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
                "template": self.pod_template(REPLAY, container, grace_s=120, role="reader", server=True),
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
        template = self.pod_template(PARAMS, container, grace_s=30, role="reader", server=True)
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
                # The dashboard and /metrics ask for the reader token: the pod's own.
                "--reader-token-file",
                f"{SECRETS_MOUNT}/{TOKEN_FILE}",
                "--no-console",
            ],
            Resources("250m", "512Mi", "1", "1Gi"),
            server=True,
            ports=ports,
            probe_port=COORDINATOR_PORT,
            data_volume="data",
        )
        volume = {"name": "data", "persistentVolumeClaim": {"claimName": f"{COORDINATOR}-data"}}
        template = self.pod_template(
            COORDINATOR, container, grace_s=30, volumes=[volume], role="reader", server=True
        )
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
        template = self.pod_template(LEARNER, container, grace_s=120, volumes=[volume], role="learner")
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
        template = self.pod_template(ACTORS, container, grace_s=30, role="actor")
        return [self.deployment(ACTORS, self.cfg.actors.num_actors, template)]

    def evaluator(self) -> list[dict[str, Any]]:
        container = self.container(
            ["serve", "evaluator", "--config", CONFIG_PATH],
            Resources("500m", "1Gi", "2", "2Gi"),
            env=self.client_env(),
        )
        template = self.pod_template(EVALUATOR, container, grace_s=30, role="actor")
        return [self.deployment(EVALUATOR, 1, template)]

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

    def certificate(self) -> dict[str, Any]:
        """A cert-manager Certificate that keeps the TLS Secret the pods mount issued and renewed."""
        return {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": self.metadata(self.options.tls_secret, "tls"),
            "spec": {
                "secretName": self.options.tls_secret,
                "dnsNames": list(TLS_DNS_NAMES),
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "issuerRef": {
                    "name": self.options.cert_manager_issuer,
                    "kind": self.options.cert_manager_issuer_kind,
                    "group": "cert-manager.io",
                },
            },
        }

    def kustomization(self, resources: list[str]) -> dict[str, Any]:
        secret_files = [*ROLE_TOKEN_FILES.values(), *DIGEST_FILES.values()]
        if self.tls_source == "config":
            secret_files += [name for field, name in TLS_FILES.items() if getattr(self.security, field)]
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
        if self.tls_source == "cert-manager":
            files.append(ManifestFile("tls.yaml", [self.certificate()]))
        kustomization = self.kustomization([f.name for f in files])
        return [ManifestFile("kustomization.yaml", [kustomization]), *files]
