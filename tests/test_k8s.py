"""Kubernetes placement: rendered and committed manifests, overlays, images, and the pods run as processes.

No cluster runs here, so the manifests are checked the ways that do not need one: every object
against the Kubernetes OpenAPI schema (kubernetes-validate, the newest version it ships), the
overlays with their JSON patches applied (by this file, and by `kubectl kustomize` where kubectl
is installed), every container command run with `--help`, and finally every pod started as a
local process with its manifest's argv, env and mounts, addresses by name mapped to loopback.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import kubernetes_validate
import numpy as np
import pytest
import typer
import yaml
from prometheus_client.parser import text_string_to_metric_families

from distrl.cli import app as distrl_app
from distrl.config import load_config
from distrl.runtime import k8s
from distrl.runtime.k8s import RenderOptions, render_manifests

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "k8s" / "base"
OVERLAYS = ROOT / "k8s" / "overlays"
HALFCHEETAH = "configs/sac_halfcheetah.yaml"
SMOKE = ROOT / "configs" / "sac_smoke.yaml"
# The newest Kubernetes version kubernetes-validate ships schemas for.
K8S_VERSION = kubernetes_validate.latest_version()
ENV = {**os.environ, "MUJOCO_GL": "disable", "COLUMNS": "200"}
DISTRL = Path(sys.executable).with_name("distrl")


def distrl(*args: str, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(DISTRL), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def objects_of(files: list[k8s.ManifestFile]) -> list[dict[str, Any]]:
    return [o for f in files if f.name != "kustomization.yaml" for o in f.objects]


def load_base(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization's `resources` list, read from disk (the Secret is generated)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects += [o for o in yaml.safe_load_all((directory / name).read_text()) if o]
    return objects


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def container_of(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def validate_all(objects: list[dict]) -> None:
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message}") from None


@pytest.fixture(scope="module")
def halfcheetah_files() -> list[k8s.ManifestFile]:
    return render_manifests(load_config(ROOT / HALFCHEETAH))


@pytest.fixture(scope="module")
def smoke_objects() -> list[dict]:
    return objects_of(render_manifests(load_config(SMOKE), RenderOptions(actors=3, shards=2)))


# -- rendering -----------------------------------------------------------------------------------


def test_schema_version_is_a_current_kubernetes():
    major, minor = (int(x) for x in K8S_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 37)


def test_committed_base_equals_a_fresh_render(tmp_path: Path):
    out = distrl("k8s", "render", HALFCHEETAH, "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert f"kubectl apply -k {tmp_path}" in out.stdout
    fresh = {p.name for p in tmp_path.iterdir()} - set(k8s.SECRET_SOURCE_FILES)
    committed = {p.name for p in BASE.iterdir()} - set(k8s.SECRET_SOURCE_FILES)
    assert fresh == committed
    for name in sorted(fresh):
        assert (BASE / name).read_text() == (tmp_path / name).read_text(), (
            f"k8s/base/{name} drifted from the config: run `distrl k8s render {HALFCHEETAH} --out k8s/base`"
        )


def test_committed_base_validates(halfcheetah_files):
    objects = load_base(BASE)
    validate_all(objects)
    assert objects == objects_of(halfcheetah_files)
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in objects)
    assert kinds == [
        ("ConfigMap", "distrl-config"),
        ("Deployment", "actors"),
        ("Deployment", "coordinator"),
        ("Deployment", "evaluator"),
        ("Deployment", "learner"),
        ("Deployment", "params"),
        ("PersistentVolumeClaim", "coordinator-data"),
        ("PersistentVolumeClaim", "learner-run"),
        ("Service", "coordinator"),
        ("Service", "params"),
        ("Service", "replay"),
        ("StatefulSet", "replay"),
    ]


def test_rendered_objects_validate(smoke_objects):
    validate_all(smoke_objects)


def test_validation_catches_a_bad_object(smoke_objects):
    """The schema check is real: a misspelt field and a wrong type are both rejected."""
    bad = copy.deepcopy(find(smoke_objects, "StatefulSet", "replay"))
    bad["spec"]["replica"] = bad["spec"].pop("replicas")
    with pytest.raises(AssertionError, match="replica"):
        validate_all([bad])
    bad = copy.deepcopy(find(smoke_objects, "Deployment", "actors"))
    container_of(bad)["ports"] = [{"containerPort": "http"}]
    with pytest.raises(AssertionError):
        validate_all([bad])


def test_counts_come_from_the_options_and_the_config(smoke_objects):
    assert find(smoke_objects, "StatefulSet", "replay")["spec"]["replicas"] == 2
    assert find(smoke_objects, "Deployment", "actors")["spec"]["replicas"] == 3
    config = yaml.safe_load(find(smoke_objects, "ConfigMap", "distrl-config")["data"]["config.yaml"])
    assert config["actors"]["num_actors"] == 3 and config["replay"]["num_shards"] == 2
    # Everything else is the experiment's own config.
    assert config["replay"]["table"]["capacity"] == 10000 and config["learner"]["batch_size"] == 32
    defaults = objects_of(render_manifests(load_config(SMOKE)))
    assert find(defaults, "Deployment", "actors")["spec"]["replicas"] == 2  # actors.num_actors
    assert "evaluator" in {o["metadata"]["name"] for o in defaults}
    no_eval = objects_of(render_manifests(load_config(SMOKE, ["eval.enabled=false"])))
    assert "evaluator" not in {o["metadata"]["name"] for o in no_eval}


def test_learner_asks_for_a_gpu_and_keeps_its_run_dir_on_a_volume(smoke_objects):
    learner = find(smoke_objects, "Deployment", "learner")
    container = container_of(learner)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert learner["spec"]["strategy"] == {"type": "Recreate"}
    run_dir = container["args"][container["args"].index("--run-dir") + 1]
    mount = next(m for m in container["volumeMounts"] if run_dir.startswith(m["mountPath"] + "/"))
    volume = next(v for v in learner["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    find(smoke_objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    for workload in workloads(smoke_objects):
        resources = container_of(workload)["resources"]
        assert set(resources) == {"requests", "limits"}, workload["metadata"]["name"]


def test_coordinator_pod_carries_the_prometheus_scrape_annotations(smoke_objects):
    """Prometheus' pod discovery (`prometheus.io/*` annotations) finds the coordinator's /metrics, on
    the port the container serves it; no other pod asks to be scraped. Its series are labelled with
    the experiment's name, not the pod's run dir (`/data/run` in every experiment)."""
    coordinator = find(smoke_objects, "Deployment", "coordinator")
    annotations = coordinator["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    port = int(annotations["prometheus.io/port"])
    container = container_of(coordinator)
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    assert container["args"][container["args"].index("--prometheus-port") + 1] == str(port)
    for workload in workloads(smoke_objects):
        if workload is not coordinator:
            assert "annotations" not in workload["spec"]["template"]["metadata"], workload["metadata"]
    config = yaml.safe_load(find(smoke_objects, "ConfigMap", "distrl-config")["data"]["config.yaml"])
    assert config["telemetry"]["prometheus_port"] == port
    assert config["telemetry"]["run_name"] == "sac-smoke"  # the experiment's name
    named = objects_of(render_manifests(load_config(SMOKE, ["telemetry.run_name=seed-3"])))
    config = yaml.safe_load(find(named, "ConfigMap", "distrl-config")["data"]["config.yaml"])
    assert config["telemetry"]["run_name"] == "seed-3"


def test_actor_pods_get_their_name_and_uid_from_the_downward_api(smoke_objects):
    """An actor's index comes from its pod name and its pod UID is logged beside its replay
    incarnation (distrl.actors.identity); only actors need the UID."""
    for objects in (smoke_objects, load_base(BASE)):
        for workload in workloads(objects):
            env = env_of(container_of(workload))
            assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
            if workload["metadata"]["name"] == "actors":
                assert env["POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
            else:
                assert "POD_UID" not in env, workload["metadata"]["name"]


def test_secrets_stay_out_of_the_manifests(tmp_path: Path):
    """The config's token (the admin token) goes to a file only its owner reads, never into the
    YAML, not even the header's command line."""
    out = tmp_path / "out"
    result = distrl(
        "k8s", "render", str(SMOKE), "network.security.token=s3cret-token-value", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    for path in out.glob("*.yaml"):
        assert "s3cret-token-value" not in path.read_text(), path.name
    assert "network.security.token=<redacted>" in (out / "replay.yaml").read_text()
    assert (out / "token-admin").read_text().strip() == "s3cret-token-value"
    ignored = (out / ".gitignore").read_text().split()
    for name in (*k8s.ROLE_TOKEN_FILES.values(), "tls.key"):
        assert f"/{name}" in ignored
        if (out / name).exists():
            assert (out / name).stat().st_mode & 0o777 == 0o600, name
    config = yaml.safe_load(
        yaml.safe_load_all((out / "configmap.yaml").read_text()).__next__()["data"]["config.yaml"]
    )
    assert config["network"]["security"]["token_file"] == f"{k8s.SECRETS_MOUNT}/token"
    assert "token" not in config["network"]["security"]


def test_render_keeps_the_generated_tokens_and_removes_stale_files(tmp_path: Path):
    cfg = load_config(SMOKE)
    k8s.write_manifests(cfg, tmp_path)
    tokens = {role: (tmp_path / name).read_text() for role, name in k8s.ROLE_TOKEN_FILES.items()}
    assert all(re.fullmatch(r"[0-9a-f]{64}\n", t) for t in tokens.values())
    assert len(set(tokens.values())) == len(tokens)  # one token per role
    for role, token in tokens.items():
        digest = (tmp_path / k8s.DIGEST_FILES[role]).read_text().strip()
        assert digest == hashlib.sha256(token.strip().encode()).hexdigest()
    # A token file left readable by others (a copy, an older render) is made private again.
    (tmp_path / "token-actor").chmod(0o644)
    assert (tmp_path / "evaluator.yaml").exists()
    k8s.write_manifests(load_config(SMOKE, ["eval.enabled=false"]), tmp_path)
    assert {r: (tmp_path / n).read_text() for r, n in k8s.ROLE_TOKEN_FILES.items()} == tokens
    assert (tmp_path / "token-actor").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "evaluator.yaml").exists()
    assert "evaluator.yaml" not in (tmp_path / "kustomization.yaml").read_text()


def _secret_items(workload: dict) -> dict[str, dict[str, str]]:
    """Each secret volume of a workload's pods: Secret name -> {key: path}."""
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    return {
        v["secret"]["secretName"]: {i["key"]: i["path"] for i in v["secret"]["items"]}
        for v in volumes
        if "secret" in v
    }


def test_each_pod_holds_only_its_own_role_s_token_and_servers_only_digests(smoke_objects):
    roles = {"actors": "actor", "evaluator": "actor", "learner": "learner"}
    servers = ("replay", "params", "coordinator")
    for workload in workloads(smoke_objects):
        name = workload["metadata"]["name"]
        items = _secret_items(workload)
        ours = items[k8s.SECRET_NAME]
        tokens = [key for key in ours if key.startswith("token-")]
        assert tokens == [f"token-{roles.get(name, 'reader')}"], name
        assert ours[tokens[0]] == k8s.TOKEN_FILE
        args = container_of(workload)["args"]
        tls = items[k8s.DEFAULT_TLS_SECRET]  # TLS is on by default
        assert "ca.crt" in tls, name
        if name in servers:
            assert {k for k in ours if k.endswith(".sha256")} == set(k8s.DIGEST_FILES.values())
            assert args[args.index("--role-tokens-dir") + 1] == k8s.ROLES_DIR
            assert args[args.index("--tls-key") + 1] == f"{k8s.TLS_MOUNT}/tls.key"
            assert "tls.key" in tls
        else:
            assert not any(k.endswith(".sha256") for k in ours), name
            assert "tls.key" not in tls, name  # only servers get the private key
        assert "DISTRL_TOKEN" not in env_of(container_of(workload))
    config = yaml.safe_load(find(smoke_objects, "ConfigMap", "distrl-config")["data"]["config.yaml"])
    assert config["network"]["security"] == {
        "token_file": f"{k8s.SECRETS_MOUNT}/token",
        "tls_ca": f"{k8s.TLS_MOUNT}/ca.crt",
    }


def test_insecure_render_has_no_tls_and_cert_manager_renders_a_certificate(tmp_path: Path):
    out = distrl("k8s", "render", str(SMOKE), "--insecure", "--out", str(tmp_path / "plain"))
    assert out.returncode == 0 and "--insecure" in out.stderr
    objects = load_base(tmp_path / "plain")
    validate_all(objects)
    replay = find(objects, "StatefulSet", "replay")
    assert (
        "--tls-cert" not in container_of(replay)["args"] and "grpc" in container_of(replay)["readinessProbe"]
    )
    assert set(_secret_items(replay)) == {k8s.SECRET_NAME}
    out = distrl(
        "k8s", "render", str(SMOKE), "--cert-manager-issuer", "lab-ca", "--cluster-issuer", "--out",
        str(tmp_path / "cm"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (certificate,) = yaml.safe_load_all((tmp_path / "cm" / "tls.yaml").read_text())
    assert (
        certificate["kind"] == "Certificate" and certificate["spec"]["secretName"] == k8s.DEFAULT_TLS_SECRET
    )
    assert certificate["spec"]["issuerRef"] == {
        "name": "lab-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert set(certificate["spec"]["dnsNames"]) >= {"replay", "*.replay", "params", "coordinator"}
    assert "tls.yaml" in yaml.safe_load((tmp_path / "cm" / "kustomization.yaml").read_text())["resources"]
    out = distrl(
        "k8s", "render", str(SMOKE), "--insecure", "--cert-manager-issuer", "x", "--out", str(tmp_path / "x")
    )
    assert out.returncode == 2 and "not both" in out.stderr


def test_tls_material_goes_into_the_secret(tmp_path: Path):
    from certs import make_tls_files  # tests/certs.py: a throwaway CA and certificates

    tls = make_tls_files(tmp_path)
    cfg = load_config(
        SMOKE,
        [
            f"network.security.tls_cert={tls.server_cert}",
            f"network.security.tls_key={tls.server_key}",
            f"network.security.tls_ca={tls.ca_cert}",
            "network.security.tls_server_name=distrl",
        ],
    )
    out = tmp_path / "out"
    k8s.write_manifests(cfg, out)
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text())
    files = kustomization["secretGenerator"][0]["files"]
    expected = [*k8s.ROLE_TOKEN_FILES.values(), *k8s.DIGEST_FILES.values(), "tls.crt", "tls.key", "ca.crt"]
    assert sorted(files) == sorted(expected)
    for name in files:
        assert (out / name).is_file()
    assert (out / "tls.key").read_bytes() == tls.server_key.read_bytes()
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600
    objects = load_base(out)
    validate_all(objects)
    replay = container_of(find(objects, "StatefulSet", "replay"))
    args = replay["args"]
    assert args[args.index("--tls-cert") + 1] == f"{k8s.SECRETS_MOUNT}/tls.crt"
    # kubelet's gRPC probe cannot speak TLS: the port is probed instead.
    assert "tcpSocket" in replay["readinessProbe"] and "grpc" not in replay["readinessProbe"]
    assert "tls.key" not in _secret_items(find(objects, "Deployment", "actors"))[k8s.SECRET_NAME]
    config = yaml.safe_load(find(objects, "ConfigMap", "distrl-config")["data"]["config.yaml"])
    assert config["network"]["security"]["tls_ca"] == f"{k8s.SECRETS_MOUNT}/ca.crt"
    assert config["network"]["security"]["tls_server_name"] == "distrl"
    assert "tls_key" not in config["network"]["security"]  # clients need no key without mutual TLS


def test_render_rejects_a_bad_config(tmp_path: Path):
    out = distrl("k8s", "render", str(SMOKE), "learner.batch_sise=3", "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "learner.batch_sise" in out.stderr and "unknown key" in out.stderr
    out = distrl("k8s", "render", str(SMOKE), "--out", str(tmp_path / "o"), "--actors", "0")
    assert out.returncode == 2 and "--actors" in out.stderr
    assert not (tmp_path / "o").exists()


# -- addresses -----------------------------------------------------------------------------------


def service_address(objects: list[dict], service: dict) -> tuple[str, dict, int]:
    """`name:port` of a ClusterIP Service with one port, the workload it selects, its container port."""
    selector = service["spec"]["selector"]
    selected = [
        w
        for w in workloads(objects)
        if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(selected) == 1, f"service {service['metadata']['name']} selects {len(selected)} workloads"
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    ports = {p["name"]: p["containerPort"] for p in container_of(selected[0])["ports"]}
    return f"{service['metadata']['name']}:{port['port']}", selected[0], ports[port["targetPort"]]


def listen_port(workload: dict) -> int:
    args = container_of(workload)["args"]
    return int(args[args.index("--port") + 1])


@pytest.mark.parametrize("source", ["committed", "smoke"])
def test_statefulset_dns_names_match_the_clients_addresses(source, smoke_objects):
    objects = load_base(BASE) if source == "committed" else smoke_objects
    sts = find(objects, "StatefulSet", "replay")
    headless = find(objects, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    address, selected, container_port = service_address(objects, headless)
    assert selected is sts and listen_port(sts) == container_port
    port = address.rsplit(":", 1)[1]
    # A StatefulSet pod's DNS name is <statefulset>-<ordinal>.<headless service>.
    expected = [
        f"{sts['metadata']['name']}-{i}.{headless['metadata']['name']}:{port}"
        for i in range(sts["spec"]["replicas"])
    ]
    assert expected == k8s.shard_addresses(sts["spec"]["replicas"])
    params_addr, params, params_port = service_address(objects, find(objects, "Service", "params"))
    coord_addr, coord, coord_port = service_address(objects, find(objects, "Service", "coordinator"))
    assert listen_port(params) == params_port and listen_port(coord) == coord_port
    clients = [w for w in workloads(objects) if w["metadata"]["name"] in ("actors", "learner", "evaluator")]
    assert len(clients) == 3
    for workload in clients:
        env = env_of(container_of(workload))
        assert env["DISTRL_REPLAY"].split(",") == expected, workload["metadata"]["name"]
        assert env["DISTRL_PARAMS"] == params_addr
        assert env["DISTRL_TELEMETRY"] == coord_addr
        assert "--replay" not in container_of(workload)["args"]


# -- overlays ------------------------------------------------------------------------------------
#
# The overlays use only JSON patches (RFC 6902) on named targets: their meaning is exact, so this
# file applies them itself and validates the patched objects as whole objects (a patch file alone
# is not a valid object). Where kubectl is installed, `kubectl kustomize` must agree.


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _child(node: Any, key: str) -> Any:
    return node[int(key)] if isinstance(node, list) else node[key]


def apply_json_patch(obj: dict, ops: list[dict]) -> dict:
    obj = copy.deepcopy(obj)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node = obj
        for key in parents:
            node = _child(node, key)
        kind = op["op"]
        if kind == "test":
            assert _child(node, last) == op["value"], f"patch test failed at {op['path']}"
        elif kind == "add":
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[last] = op["value"]
        elif kind in ("replace", "remove"):
            _child(node, last)  # the path must exist
            if kind == "remove":
                del node[int(last) if isinstance(node, list) else last]
            elif isinstance(node, list):
                node[int(last)] = op["value"]
            else:
                node[last] = op["value"]
        else:
            raise AssertionError(f"unsupported patch op {kind!r}")
    return obj


def build_overlay(name: str) -> list[dict]:
    directory = OVERLAYS / name
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "patches"}, (
        "keep overlays to JSON patches"
    )
    assert kustomization["resources"] == ["../../base"]
    objects = load_base(BASE)
    for patch in kustomization["patches"]:
        target = patch["target"]
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        assert isinstance(ops, list), "patches are JSON patches (a list of operations)"
        hits = 0
        for i, obj in enumerate(objects):
            group, _, version = obj["apiVersion"].rpartition("/")
            if (obj["kind"], obj["metadata"]["name"], group, version) == (
                target["kind"],
                target["name"],
                target.get("group", ""),
                target["version"],
            ):
                objects[i] = apply_json_patch(obj, ops)
                hits += 1
        assert hits == 1, f"{patch['path']} matched {hits} objects"
    return objects


def test_cpu_only_overlay_asks_for_no_gpu():
    objects = build_overlay("cpu-only")
    validate_all(objects)
    assert "nvidia.com/gpu" not in json.dumps(objects)
    learner = container_of(find(objects, "Deployment", "learner"))
    assert learner["resources"]["requests"]["cpu"] == "1"
    # The rest of the base is untouched.
    base = load_base(BASE)
    assert [o for o in objects if o["metadata"]["name"] != "learner"] == [
        o for o in base if o["metadata"]["name"] != "learner"
    ]


def test_gpu_overlay_runs_the_learner_on_the_cuda_image():
    objects = build_overlay("gpu")
    validate_all(objects)
    learner = find(objects, "Deployment", "learner")
    container = container_of(learner)
    assert container["image"] == f"{k8s.DEFAULT_IMAGE}-cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in learner["spec"][
        "template"
    ]["spec"]["tolerations"]
    assert container_of(find(objects, "Deployment", "actors"))["image"] == k8s.DEFAULT_IMAGE


def test_patch_applier_rejects_a_patch_that_no_longer_fits():
    learner = find(load_base(BASE), "Deployment", "learner")
    with pytest.raises(AssertionError, match="patch test failed"):
        apply_json_patch(learner, [{"op": "test", "path": "/spec/replicas", "value": 3}])
    with pytest.raises(KeyError):
        apply_json_patch(learner, [{"op": "remove", "path": "/spec/template/spec/tolerations"}])


def _strip_secret_hash(objects: list[dict]) -> list[dict]:
    text = re.sub(rf"{k8s.SECRET_NAME}-[a-z0-9]{{10}}", k8s.SECRET_NAME, json.dumps(objects))
    return [o for o in json.loads(text) if o["kind"] != "Secret"]


def _key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def kubectl() -> str:
    """kubectl's path. Where it is missing the test below has nothing to compare against: a skip on a
    developer's machine, but a failure under CI (CI=true), which must not pass the check by skipping it.
    The machine image CI runs on ships kubectl; .ci/run installs none."""
    path = shutil.which("kubectl")
    if path is None:
        reason = "kubectl is not installed: the overlays were not built with the real `kubectl kustomize`"
        if os.environ.get("CI"):
            pytest.fail(
                f"{reason} (CI must run this check: install kubectl >= 1.21, whose kustomize has `patches`)"
            )
        pytest.skip(reason)
    return path


@pytest.mark.parametrize("overlay", ["cpu-only", "gpu", None])
def test_kubectl_kustomize_agrees(overlay, tmp_path: Path):
    """The overlays as `kubectl kustomize` builds them are what `build_overlay` (every other overlay
    test here) builds: the only check of this file's patch applier against the real one."""
    kubectl_path = kubectl()
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s", ignore=shutil.ignore_patterns("token*", "*.sha256"))
    k8s.write_manifests(load_config(ROOT / HALFCHEETAH), tmp_path / "scratch")
    for name in (*k8s.ROLE_TOKEN_FILES.values(), *k8s.DIGEST_FILES.values()):
        shutil.copy(tmp_path / "scratch" / name, tmp_path / "k8s" / "base" / name)
    target = tmp_path / "k8s" / ("base" if overlay is None else f"overlays/{overlay}")
    out = subprocess.run([kubectl_path, "kustomize", str(target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [o for o in yaml.safe_load_all(out.stdout) if o]
    secret = next(o for o in built if o["kind"] == "Secret")
    assert secret["metadata"]["name"].startswith(k8s.SECRET_NAME + "-")
    assert set(secret["data"]) == {*k8s.ROLE_TOKEN_FILES.values(), *k8s.DIGEST_FILES.values()}
    ours = build_overlay(overlay) if overlay else load_base(BASE)
    assert sorted(_strip_secret_hash(built), key=_key) == sorted(ours, key=_key)
    validate_all(built)


# -- commands and images ---------------------------------------------------------------------------


def _subcommand(args: list[str]) -> list[str]:
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words


def _cli_command(words: list[str]) -> Any:
    """The (click) command object behind `distrl WORDS`."""
    command = typer.main.get_command(distrl_app)
    for word in words:
        subcommands = getattr(command, "commands", None)
        assert subcommands is not None and word in subcommands, f"`distrl {' '.join(words)}`: no such command"
        command = subcommands[word]
    return command


def test_every_container_runs_a_real_distrl_command(smoke_objects):
    commands: dict[tuple[str, ...], list[dict]] = {}
    for workload in workloads(smoke_objects) + workloads(load_base(BASE)):
        container = container_of(workload)
        assert container["command"] == ["distrl"]
        commands.setdefault(tuple(_subcommand(container["args"])), []).append(container)
    assert set(commands) == {
        ("serve", name) for name in ("replay", "params", "coordinator", "learner", "actor", "evaluator")
    }
    for words, containers in sorted(commands.items()):
        out = distrl(*words, "--help")
        assert out.returncode == 0, out.stderr
        assert f"Usage: distrl {' '.join(words)}" in out.stdout
        command = _cli_command(list(words))
        flags = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        envvars = {p.envvar for p in command.params if p.envvar}
        for container in containers:
            for arg in container["args"][len(words) :]:
                if arg.startswith("--"):
                    assert arg in flags, f"`distrl {' '.join(words)}` has no option {arg}"
                    assert arg in out.stdout, f"{arg} missing from --help"
            for name in env_of(container):
                if name.startswith("DISTRL_"):
                    assert name in envvars, f"`distrl {' '.join(words)}` does not read ${name}"
            # Every required option is given, as a flag or through its env var.
            for param in command.params:
                if param.required:
                    given = any(o in container["args"] for o in param.opts) or param.envvar in env_of(
                        container
                    )
                    assert given, f"`distrl {' '.join(words)}` needs {param.opts[0]}"


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(?:\s*#[^\n]*\n)*", " ", path.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_entry_point_is_the_distrl_cli(name, smoke_objects):
    instructions = dockerfile_instructions(ROOT / "deploy" / name)
    entrypoints = [json.loads(rest) for word, rest in instructions if word == "ENTRYPOINT"]
    assert entrypoints == [["distrl"]]
    assert all(container_of(w)["command"] == entrypoints[0] for w in workloads(smoke_objects))
    froms = [rest for word, rest in instructions if word == "FROM"]
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[-1])
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    if name == "Dockerfile":
        assert base == "python:3.11-slim"
        assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in runs
    else:
        assert base.startswith("nvidia/cuda:") and "runtime" in base
        assert "python3.11" in runs
        assert "torch==2.13.0 --index-url ${TORCH_INDEX}" in runs
    assert "pip install ." in runs
    # torch is installed before the project, so the project's pin keeps that build.
    assert runs.index("torch==2.13.0") < runs.index("pip install .")
    # The image's user is the one the pods run as.
    users = [rest for word, rest in instructions if word == "USER"]
    pod = find(smoke_objects, "Deployment", "actors")["spec"]["template"]["spec"]["securityContext"]
    assert users == [str(pod["runAsUser"])]
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert re.search(r"MUJOCO_GL=(egl|disable)\b", env)
    # What the image copies exists and is not excluded from the build context.
    ignore = (ROOT / "deploy" / f"{name}.dockerignore").read_text().split()
    for word, rest in instructions:
        if word == "COPY":
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert f"!{source.rstrip('/')}" in [i.rstrip("/") for i in ignore], source


# -- replay shards read the experiment config ------------------------------------------------------


def test_serve_replay_takes_its_table_from_the_experiment(tmp_path: Path):
    from replay_helpers import start_cli_shard, stop_process

    from distrl.replay.client import ReplayClient

    proc, address = start_cli_shard(
        "--experiment", str(SMOKE), "--checkpoint-dir", str(tmp_path / "ckpt"), env={"POD_NAME": "replay-1"}
    )
    try:
        with ReplayClient([address], rpc_timeout_s=5) as client:
            (table,) = client.info(timeout=5)[0].tables
        assert (table.name, table.capacity, table.min_size_to_sample) == ("default", 10000, 100)
        assert table.target_samples_per_insert == 16
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        stop_process(proc)


def test_serve_replay_experiment_values(tmp_path: Path, monkeypatch):
    from distrl.replay.cli import shard_values_from_experiment

    monkeypatch.setenv("POD_NAME", "replay-3")
    values = shard_values_from_experiment(SMOKE, checkpointing=True)
    assert values["seed"] == 0 * 1000 + 3 and values["checkpoint_every_s"] == 5
    assert shard_values_from_experiment(SMOKE, checkpointing=False)["checkpoint_every_s"] is None
    monkeypatch.setenv("POD_NAME", "replay-7f9c-x")
    assert shard_values_from_experiment(SMOKE, checkpointing=False)["seed"] == 0


def test_serve_replay_rejects_config_and_experiment_together(tmp_path: Path):
    out = distrl("serve", "replay", "--config", str(SMOKE), "--experiment", str(SMOKE))
    assert out.returncode == 2 and "not both" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("capacity: 10000", "capacity: -1"))
    out = distrl("serve", "replay", "--experiment", str(bad), "--port", "0")
    assert out.returncode == 2 and "replay.table.capacity" in out.stderr


# -- the pods, run as processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Pod:
    """One pod of a rendered workload, run as a local process the way the kubelet would run it."""

    name: str
    workload: dict
    root: Path  # stands in for the pod's filesystem: mounts live under it
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> loopback port
    proc: subprocess.Popen | None = None
    starts: int = 0
    # metadata.uid: kept across container restarts, as the kubelet does.
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def container(self) -> dict:
        return container_of(self.workload)

    @property
    def log(self) -> Path:
        return self.root / "log.txt"

    def local_path(self, text: str) -> str:
        for mount in sorted(self.container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
            text = text.replace(mount["mountPath"], f"{self.root}{mount['mountPath']}")
        return text


class PodRunner:
    """Turns rendered workloads into processes: same argv, env and mounted files; DNS names and
    ports mapped to loopback, mount paths to a directory per pod."""

    def __init__(self, objects: list[dict], tmp: Path, secrets: dict[str, dict[str, bytes]]) -> None:
        self.objects = objects
        self.secrets = secrets  # Secret name -> key -> value
        self.pods: list[Pod] = []
        for workload in workloads(objects):
            name = workload["metadata"]["name"]
            for i in range(workload["spec"]["replicas"]):
                # Deployment pods get a hashed suffix, StatefulSet pods their ordinal.
                pod = (
                    f"{name}-{i}"
                    if workload["kind"] == "StatefulSet"
                    else f"{name}-{zlib.crc32(b'%d' % i):x}-x{i}"
                )
                ports = {p["containerPort"]: free_port() for p in container_of(workload).get("ports", [])}
                self.pods.append(Pod(pod, workload, tmp / pod, ports))
        self.addresses = self._dns()

    def _dns(self) -> dict[str, str]:
        """Every in-cluster address the manifests can name -> the loopback address serving it."""
        names = {}
        for service in (o for o in self.objects if o["kind"] == "Service"):
            selected = [
                p
                for p in self.pods
                if service["spec"]["selector"].items()
                <= p.workload["spec"]["template"]["metadata"]["labels"].items()
            ]
            for port in service["spec"]["ports"]:
                for pod in selected:
                    named = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
                    local = f"127.0.0.1:{pod.ports[named[port['targetPort']]]}"
                    if service["spec"].get("clusterIP") == "None":
                        names[f"{pod.name}.{service['metadata']['name']}:{port['port']}"] = local
                    else:
                        names[f"{service['metadata']['name']}:{port['port']}"] = local
        return names

    def resolve(self, text: str) -> str:
        for name, local in self.addresses.items():
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])", local, text)
        return text

    def argv(self, pod: Pod) -> list[str]:
        args = list(pod.container["args"])
        for i, arg in enumerate(args[:-1]):
            if arg == "--host":
                args[i + 1] = "127.0.0.1"
            if arg.endswith("-port") or arg == "--port":
                args[i + 1] = str(pod.ports[int(args[i + 1])])
        command = [str(DISTRL) if word == "distrl" else word for word in pod.container["command"]]
        return command + [self.resolve(pod.local_path(a)) for a in args]

    def env(self, pod: Pod) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "HOME": str(pod.root)}
        for item in pod.container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = self.resolve(pod.local_path(item["value"]))
            elif "fieldRef" in source:
                field_path = source["fieldRef"]["fieldPath"]
                assert field_path in ("metadata.name", "metadata.uid"), field_path
                env[item["name"]] = pod.name if field_path == "metadata.name" else pod.uid
            else:
                ref = source["secretKeyRef"]
                env[item["name"]] = self.secrets[ref["name"]][ref["key"]].decode().strip()
        return env

    def mount(self, pod: Pod) -> None:
        volumes = {v["name"]: v for v in pod.workload["spec"]["template"]["spec"]["volumes"]}
        claims = {t["metadata"]["name"] for t in pod.workload["spec"].get("volumeClaimTemplates", [])}
        for mount in pod.container["volumeMounts"]:
            where = pod.root / mount["mountPath"].lstrip("/")
            where.mkdir(parents=True, exist_ok=True)
            volume = volumes.get(mount["name"])
            if volume is not None and "configMap" in volume:
                configmap = find(self.objects, "ConfigMap", volume["configMap"]["name"])
                for item in volume["configMap"]["items"]:
                    (where / item["path"]).write_text(pod.local_path(configmap["data"][item["key"]]))
            elif volume is not None and "secret" in volume:
                data = self.secrets[volume["secret"]["secretName"]]
                for item in volume["secret"]["items"]:
                    (where / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                    (where / item["path"]).write_bytes(data[item["key"]])
            else:
                assert mount["name"] in claims or "persistentVolumeClaim" in volume, mount["name"]

    def start(self, pod: Pod) -> None:
        if pod.starts == 0:
            self.mount(pod)
        pod.starts += 1
        with open(pod.log, "ab") as log:
            pod.proc = subprocess.Popen(
                self.argv(pod),
                env=self.env(pod),
                cwd=pod.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, *pods: Pod) -> dict[str, int]:
        """SIGTERM to every pod at once, as the kubelet sends on deletion; SIGKILL after the grace period."""
        for pod in pods:
            assert pod.proc is not None
            if pod.proc.poll() is None:
                pod.proc.send_signal(signal.SIGTERM)
        codes = {}
        for pod in pods:
            assert pod.proc is not None
            try:
                codes[pod.name] = pod.proc.wait(
                    pod.workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                )
            except subprocess.TimeoutExpired:
                pod.proc.kill()
                codes[pod.name] = pod.proc.wait(10)
        return codes

    def kill_all(self) -> None:
        for pod in self.pods:
            if pod.proc is not None and pod.proc.poll() is None:
                pod.proc.kill()
                pod.proc.wait(10)

    def named(self, prefix: str) -> list[Pod]:
        return [p for p in self.pods if p.workload["metadata"]["name"] == prefix]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log.read_text()[-3000:]}" for p in self.pods if p.log.exists())


def metrics_rows(pod: Pod) -> list[dict]:
    run_dir = pod.local_path(next(a for a in pod.container["args"] if a.startswith(k8s.DATA_MOUNT)))
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_until(predicate, timeout: float, runner: PodRunner, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [p.name for p in runner.pods if p.proc is not None and p.proc.poll() is not None]
        assert not dead, f"pods exited while waiting for {what}: {dead}\n{runner.logs()}"
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{runner.logs()}")


@pytest.mark.slow
def test_pods_run_as_processes(tmp_path: Path):
    """Every pod of the smoke experiment, started at once as Kubernetes would (no ordering), talks to
    the others by their in-cluster names; then the learner pod is deleted and comes back resumed."""
    from certs import make_tls_files

    from distrl.params import ParamsClient
    from distrl.replay.client import ReplayClient
    from distrl.wire.security import SecurityConfig

    cfg = load_config(SMOKE, ["eval.every_updates=50", "learner.checkpoint_every=20"])
    base = tmp_path / "base"
    k8s.write_manifests(cfg, base, RenderOptions(actors=2, shards=2))
    objects = load_base(base)
    generated = yaml.safe_load((base / "kustomization.yaml").read_text())["secretGenerator"][0]["files"]
    # The TLS Secret the user provides: a certificate the pods' loopback addresses match.
    tls = make_tls_files(tmp_path / "tls")
    secrets = {
        k8s.SECRET_NAME: {name: (base / name).read_bytes() for name in generated},
        k8s.DEFAULT_TLS_SECRET: {
            "tls.crt": tls.server_cert.read_bytes(),
            "tls.key": tls.server_key.read_bytes(),
            "ca.crt": tls.ca_cert.read_bytes(),
        },
    }
    runner = PodRunner(objects, tmp_path / "pods", secrets)
    admin = (base / "token-admin").read_text().strip()
    security = SecurityConfig(token=admin, tls_ca=tls.ca_cert)
    t0 = time.monotonic()

    def stage(what: str) -> None:  # shown with -s, and in the report of a failure
        print(f"{time.monotonic() - t0:6.1f}s  {what}")

    try:
        for pod in runner.pods:
            runner.start(pod)
        (coordinator,) = runner.named("coordinator")
        (learner,) = runner.named("learner")

        def progressed(min_updates: int) -> bool:
            rows = metrics_rows(coordinator)
            return any(
                r.get("updates", 0) >= min_updates and r.get("env_steps", 0) > 0 for r in rows
            ) and any(r.get("actor/policy_version", 0) > 1 for r in rows)

        wait_until(lambda: progressed(30), 120, runner, "learner updates and new weights at the actors")
        stage("learner updating, actors on new weights")
        # Prometheus scrapes the coordinator pod where its annotations say; every component is labelled.
        scrape = coordinator.workload["spec"]["template"]["metadata"]["annotations"]
        port = coordinator.ports[int(scrape["prometheus.io/port"])]
        url = f"http://127.0.0.1:{port}{scrape['prometheus.io/path']}"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(url, timeout=5)  # the reader token is asked for
        reader = (base / "token-reader").read_text().strip()
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {reader}"})
        body = urllib.request.urlopen(request, timeout=5)
        samples = [s for f in text_string_to_metric_families(body.read().decode()) for s in f.samples]
        assert {s.labels["run"] for s in samples} == {"sac-smoke"}
        actors = {s.labels["index"] for s in samples if s.labels.get("component") == "actor"}
        assert len(actors) == 2, actors
        assert any(s.name == "distrl_updates" and s.labels.get("component") == "learner" for s in samples)
        shards = [runner.addresses[a] for a in k8s.shard_addresses(2)]
        with ReplayClient(shards, security=security, rpc_timeout_s=5) as client:
            infos = client.info(timeout=5)
        assert all(s.up for s in infos), [s.error for s in infos]
        assert sum(t.inserts for s in infos for t in s.tables) > 0
        with ParamsClient(runner.addresses["params:50052"], security) as params:
            assert params.info().version > 1
        # Without a token, or with the actor's token for a learner's call, the servers refuse.
        with ReplayClient(shards[:1], security=SecurityConfig(tls_ca=tls.ca_cert), rpc_timeout_s=5) as client:
            assert client.info(timeout=5)[0].error.startswith("UNAUTHENTICATED")
        actor = SecurityConfig(token=(base / "token-actor").read_text().strip(), tls_ca=tls.ca_cert)
        with (
            ParamsClient(runner.addresses["params:50052"], actor) as params,
            pytest.raises(grpc.RpcError, match="PERMISSION_DENIED"),
        ):
            params.publish({"w": np.zeros(2, dtype=np.float32)})

        # The learner pod is deleted (SIGTERM: final checkpoint) and the Deployment starts a new one
        # on the same volume.
        assert runner.stop(learner) == {learner.name: 0}
        before = max(r.get("updates", 0) for r in metrics_rows(coordinator))
        assert list((learner.root / "data" / "run" / "checkpoints").glob("learner-*.pt"))
        stage("learner pod deleted")
        runner.start(learner)
        wait_until(lambda: "resumed from" in learner.log.read_text(), 60, runner, "the learner to resume")
        stage("learner resumed")
        wait_until(lambda: progressed(before + 10), 60, runner, "updates after the resume")
        stage("updates continue")

        # Deleting everything: clients first, then the learner, then the servers; all exit cleanly.
        for group in (["actors", "evaluator"], ["learner"], ["replay", "params", "coordinator"]):
            codes = runner.stop(*(pod for name in group for pod in runner.named(name)))
            assert set(codes.values()) == {0}, f"{codes}\n{runner.logs()}"
            stage(f"{', '.join(group)} stopped")
        for pod in runner.named("replay"):
            assert any((pod.root / "data" / "replay").iterdir()), f"{pod.name} wrote no checkpoint"
    finally:
        runner.kill_all()
