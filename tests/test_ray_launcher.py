"""The Ray launcher, `distrl scale`, and the Ray deployment files.

The slow tests start a real local Ray instance (its session directory a short path under /tmp,
removed afterwards) running the real components: gRPC servers, MuJoCo actors, a SAC learner.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes_validate
import pytest
import typer
import yaml
from run_helpers import last, wait_for

from distrl.cli import app as distrl_app
from distrl.config import ConfigError, load_config
from distrl.replay.checkpoint import list_checkpoints
from distrl.runtime import scaling

# Per test, not for the module: the scale, config and local-launcher tests here need no Ray.
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install -e '.[ray]')"
)

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "sac_smoke.yaml"
RAYJOB = ROOT / "k8s" / "ray" / "rayjob.yaml"
RAY_CLUSTER = ROOT / "deploy" / "ray-cluster.yaml"
# The image copies the repository's configs/ here (deploy/Dockerfile).
IMAGE_CONFIGS = "/opt/distrl/configs/"
ENV = {
    **os.environ,
    "MUJOCO_GL": "disable",
    # Keep Ray's files inside the test's directories: no token in ~/.ray, no usage report attempts.
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def distrl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distrl.cli", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_run_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(load_config(SMOKE).to_yaml())
    return path


# -- scale requests ------------------------------------------------------------------------------


def test_scale_request_is_taken_once(tmp_path: Path):
    scaling.request_scale(tmp_path, 5)
    assert scaling.pending(tmp_path)
    request = scaling.take_scale_request(tmp_path)
    assert request is not None and request.actors == 5
    assert not scaling.pending(tmp_path)
    assert scaling.take_scale_request(tmp_path) is None


@pytest.mark.parametrize("content", ['{"actors": 0}', "not json", '{"actors": 3, "shards": 2}'])
def test_bad_scale_request_is_refused_and_dropped(tmp_path: Path, content: str):
    (tmp_path / scaling.SCALE_FILE).write_text(content)
    with pytest.raises(scaling.ScaleRequestError, match=r"scale\.json"):
        scaling.take_scale_request(tmp_path)
    assert not scaling.pending(tmp_path)  # not retried on every poll


def test_recorded_actor_count_is_what_resume_reads(tmp_path: Path):
    run_dir = write_run_dir(tmp_path / "run")
    updated = scaling.record_actor_count(run_dir, load_config(SMOKE), 7)
    assert updated.actors.num_actors == 7
    assert load_config(run_dir / "config.yaml").actors.num_actors == 7


def test_scale_command_needs_a_run_directory(tmp_path: Path):
    out = distrl("scale", str(tmp_path), "--actors", "3")
    assert out.returncode == 2
    assert "not a distrl run directory" in out.stderr
    out = distrl("scale", str(tmp_path), "--actors", "0")
    assert out.returncode == 2 and "--actors" in out.stderr


def test_scale_command_warns_when_fewer_actors_than_shards(tmp_path: Path):
    run_dir = write_run_dir(tmp_path / "run")  # the smoke config: 2 shards
    out = distrl("scale", str(run_dir), "--actors", "1", "--wait-s", "0.2")
    assert "note: 1 actors for 2 replay shards: 1 shard(s) get no new data" in out.stderr
    assert out.returncode == 1 and "no launcher took the request" in out.stderr  # still asked for
    assert not scaling.pending(run_dir)
    assert scaling.actor_count_warning(load_config(SMOKE), 2) is None


def test_scale_command_without_a_launcher_changes_nothing(tmp_path: Path):
    run_dir = write_run_dir(tmp_path / "run")
    out = distrl("scale", str(run_dir), "--actors", "3", "--wait-s", "0.5")
    assert out.returncode == 1
    assert "no launcher took the request" in out.stderr
    assert not scaling.pending(run_dir)


def test_scale_command_returns_once_the_launcher_takes_the_request(tmp_path: Path):
    run_dir = write_run_dir(tmp_path / "run")
    taken = []

    def launcher_poll() -> None:  # what both launchers do each tick
        deadline = time.monotonic() + 60
        while not taken and time.monotonic() < deadline:
            request = scaling.take_scale_request(run_dir)
            if request is not None:
                taken.append(request.actors)
            time.sleep(0.1)

    poller = threading.Thread(target=launcher_poll)
    poller.start()
    try:
        out = distrl("scale", str(run_dir), "--actors", "4", "--wait-s", "60")
    finally:
        poller.join()
    assert out.returncode == 0, out.stderr
    assert taken == [4]
    assert "scaling to 4 actors" in out.stdout


# -- configuration and placement ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("ray.local.temp_dir=/tmp/" + "x" * 60, "ray.local.temp_dir"),
        ("ray.actor_strategy=PACK", "ray.actor_strategy"),
        ("ray.learner_gpus=-1", "ray.learner_gpus"),
        ("ray.num_gpu=1", "ray.num_gpu"),
    ],
)
def test_bad_ray_settings_fail_with_their_path(override: str, key: str):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(SMOKE, [override])


def test_train_rejects_an_unknown_launcher_and_a_stray_address(tmp_path: Path):
    out = distrl("train", str(SMOKE), "--run-dir", str(tmp_path / "r"), "--launcher", "slurm")
    assert out.returncode == 2 and "unknown launcher 'slurm'" in out.stderr
    out = distrl("train", str(SMOKE), "--run-dir", str(tmp_path / "r"), "--address", "auto")
    assert out.returncode == 2 and "--address is for --launcher ray" in out.stderr


@needs_ray
def test_train_fails_fast_when_the_ray_cluster_is_unreachable(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    out = distrl(
        "train",
        str(SMOKE),
        "--run-dir",
        str(tmp_path / "r"),
        "--launcher",
        "ray",
        "--address",
        f"127.0.0.1:{port}",
    )
    assert out.returncode == 1
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in out.stderr


@needs_ray
def test_placement_options_are_valid_ray_options():
    import ray

    from distrl.runtime.ray import placement_options
    from distrl.runtime.ray_components import ActorComponent, LearnerComponent, ReplayShardComponent

    cfg = load_config(
        SMOKE,
        [
            "ray.learner_gpus=1",
            "ray.replay_resources={replay: 1}",
            "ray.replay_labels={distrl.io/role: replay}",
            "ray.max_restarts=5",
        ],
    )
    learner = placement_options(cfg.ray, "learner")
    actor = placement_options(cfg.ray, "actor")
    replay = placement_options(cfg.ray, "replay")
    params = placement_options(cfg.ray, "params")
    assert learner["num_gpus"] == 1
    assert actor["scheduling_strategy"] == "SPREAD"
    for server in (replay, params):
        assert server["resources"] == {"replay": 1}
        assert server["label_selector"] == {"distrl.io/role": "replay"}
    assert {o["max_restarts"] for o in (learner, actor, replay, params)} == {5}
    # Ray checks option names and values here, without a cluster.
    ray.remote(LearnerComponent).options(name="learner", **learner)
    ray.remote(ActorComponent).options(name="actor-0", **actor)
    ray.remote(ReplayShardComponent).options(name="replay-0", **replay)
    with pytest.raises(ValueError, match="kind"):
        placement_options(cfg.ray, "coordinator")


# -- deployment files ----------------------------------------------------------------------------


def _parse_train(args: list[str]):
    """Parse `distrl train ...` arguments with the real CLI, without running it."""
    command = typer.main.get_command(distrl_app)
    return command.commands["train"].make_context("train", list(args))


def _entrypoint_config(args: list[str]):
    ctx = _parse_train(args)
    config_path = str(ctx.params["config"])
    assert config_path.startswith(IMAGE_CONFIGS), config_path
    return ctx, load_config(ROOT / "configs" / config_path[len(IMAGE_CONFIGS) :], ctx.params["overrides"])


@needs_ray
def test_rayjob_runs_the_ray_launcher_on_a_cluster_that_fits_it():
    import ray

    docs = [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]
    job = next(d for d in docs if d["kind"] == "RayJob")
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert job["apiVersion"] == "ray.io/v1"
    for doc in docs:
        if doc["kind"] != "RayJob":
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:2] == ["distrl", "train"]
    ctx, cfg = _entrypoint_config(args[2:])
    assert ctx.params["launcher"] == "ray"
    run_dir = str(ctx.params["run_dir"])

    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head runs the driver only
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu["nvidia.com/gpu"]) >= cfg.ray.learner_gpus >= 1
    cpu_resources = json.loads(json.loads(groups["cpu"]["rayStartParams"]["resources"]))
    assert set(cfg.ray.replay_resources) <= set(cpu_resources)

    for group in [head, *groups.values()]:
        template = group["template"]
        pod = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)
        spec = template["spec"]
        mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        # Every node sees the run directory (checkpoints are restored wherever Ray restarts a component).
        runs = next(name for name, path in mounts.items() if run_dir.startswith(path + "/"))
        assert volumes[runs]["persistentVolumeClaim"]["claimName"] in claims


@needs_ray
def test_ray_cluster_config_is_valid_for_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(RAY_CLUSTER.read_text())
    validate_config(prepare_config(raw))  # what `ray up` checks before it starts a node
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"]["CPU"] == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    assert any("replay" in t["resources"] for t in types.values())
    assert any(":/runs" in option for option in raw["docker"]["run_options"])
    # The job command in the header comment parses with the real CLI.
    lines = RAY_CLUSTER.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "ray job submit" in line)
    command = ""
    for line in lines[start:]:
        command += " " + line.lstrip("# ").rstrip("\\").strip()
        if not line.rstrip().endswith("\\"):
            break
    args = shlex.split(command)
    ctx, cfg = _entrypoint_config(args[args.index("train") + 1 :])
    assert ctx.params["launcher"] == "ray" and cfg.ray.learner_gpus >= 1


# -- real runs -----------------------------------------------------------------------------------


def components(run_dir: Path) -> dict[str, dict]:
    try:
        data = json.loads((run_dir / "components.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {c["name"]: c for c in data["components"]}


def pids_using(directory: Path) -> list[int]:
    """Processes whose command line names `directory` or that hold files open in it.

    Ray's agents rename themselves (`ray::DashboardAgent`), so the open files are what finds them.
    """
    text = str(directory)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if text in (proc / "cmdline").read_bytes().decode(errors="replace") or any(
                os.readlink(fd).startswith(text) for fd in (proc / "fd").iterdir()
            ):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture
def ray_temp_dir():
    # Short: Ray's unix sockets live under it (107-byte limit), so not pytest's long tmp_path.
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield path
    for pid in pids_using(path):  # only what this test's Ray instance left behind
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def start_run(run_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distrl.cli",
            "train",
            str(SMOKE),
            "--run-dir",
            str(run_dir),
            "--no-console",
            "train.total_env_steps=100000",
            *args,
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_run(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output


@pytest.mark.slow
@needs_ray
def test_ray_run_restarts_a_killed_actor_and_scales_without_stopping_the_learner(
    tmp_path: Path, ray_temp_dir: Path
):
    """2 shards, 2 actors on a local Ray instance; SIGKILL actor-0; then scale to 3 actors."""
    run_dir = tmp_path / "ray-run"
    proc = start_run(
        run_dir,
        "--launcher",
        "ray",
        f"ray.local.temp_dir={ray_temp_dir}",
        "ray.local.object_store_mb=100",
        "ray.local.num_cpus=8",
    )
    try:
        names = {"replay-0", "replay-1", "params", "learner", "actor-0", "actor-1", "evaluator"}

        def all_running() -> bool:
            found = components(run_dir)
            return set(found) == names and all(c["state"] == "running" for c in found.values())

        wait_for(all_running, 150, "every component to run", proc)
        wait_for(lambda: (last(run_dir, "env_steps") or 0) > 300, 60, "the run to make progress", proc)
        before = components(run_dir)
        assert len({before["replay-0"]["address"], before["replay-1"]["address"]}) == 2
        old_pid, learner_pid = before["actor-0"]["pid"], before["learner"]["pid"]
        os.kill(old_pid, signal.SIGKILL)

        restarted = wait_for(
            lambda: (c := components(run_dir).get("actor-0")) and c["restarts"] == 1 and c,
            60,
            "Ray to restart actor-0",
            proc,
        )
        assert restarted["pid"] != old_pid
        steps, updates = last(run_dir, "env_steps"), last(run_dir, "updates")
        wait_for(lambda: last(run_dir, "env_steps") > steps + 200, 60, "env steps after the restart", proc)
        wait_for(lambda: last(run_dir, "updates") > updates, 60, "updates after the restart", proc)

        out = distrl("scale", str(run_dir), "--actors", "3", "--wait-s", "30")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: (last(run_dir, "live_actors") or 0) >= 3, 60, "a third actor to report", proc)
        after = components(run_dir)
        assert after["learner"]["pid"] == learner_pid and after["learner"]["restarts"] == 0
        assert load_config(run_dir / "config.yaml").actors.num_actors == 3
    finally:
        output = stop_run(proc)
    assert proc.returncode == 0, output
    assert "actor-0 was restarted by Ray" in output
    assert "scaled actors 2 -> 3" in output
    assert list((run_dir / "checkpoints").glob("learner-*.pt"))
    for k in range(2):
        assert list_checkpoints(run_dir / "replay" / f"shard-{k}"), f"shard {k} wrote no checkpoint"
    assert "resumed from" not in (run_dir / "logs" / "learner.log").read_text()
    # The launcher shut down the Ray instance it started.
    wait_for(lambda: not pids_using(ray_temp_dir), 30, "Ray's processes to exit")


@pytest.mark.slow
@needs_ray
def test_ray_servers_restart_in_place_or_get_their_dependants_rewired(tmp_path: Path, ray_temp_dir: Path):
    """A killed shard comes back on its port with its checkpoint; a params server that cannot have
    its port back comes back elsewhere, and the learner and actors are recreated with its new address."""
    run_dir = tmp_path / "ray-servers"
    proc = start_run(
        run_dir,
        "--launcher",
        "ray",
        f"ray.local.temp_dir={ray_temp_dir}",
        "ray.local.object_store_mb=100",
        "ray.local.num_cpus=8",
        "eval.enabled=false",
        "replay.checkpoint_every_s=1",
    )

    def progress(min_steps: int, min_updates: int, what: str) -> None:
        steps, updates = last(run_dir, "env_steps") or 0, last(run_dir, "updates") or 0
        wait_for(
            lambda: (
                last(run_dir, "env_steps") > steps + min_steps
                and last(run_dir, "updates") > updates + min_updates
            ),
            90,
            what,
            proc,
        )

    try:
        wait_for(
            lambda: len(c := components(run_dir)) == 6 and all(x["state"] == "running" for x in c.values()),
            150,
            "every component to run",
            proc,
        )
        wait_for(lambda: list_checkpoints(run_dir / "replay" / "shard-0"), 60, "a shard checkpoint", proc)
        before = components(run_dir)
        os.kill(before["replay-0"]["pid"], signal.SIGKILL)
        shard = wait_for(
            lambda: (c := components(run_dir)["replay-0"])["restarts"] == 1 and c,
            60,
            "replay-0's restart",
            proc,
        )
        assert shard["address"] == before["replay-0"]["address"]
        assert "restored" in (run_dir / "logs" / "replay-0.log").read_text()
        progress(200, 20, "progress after the shard's restart")
        assert components(run_dir)["learner"]["pid"] == before["learner"]["pid"]

        host, port = before["params"]["address"].rsplit(":", 1)
        os.kill(before["params"]["pid"], signal.SIGKILL)
        with socket.socket() as squatter:  # the restarted server must find its port taken
            if not _squat(squatter, host, int(port)):
                pytest.skip("Ray restarted the parameter server on its port before the test could take it")
            params = wait_for(
                lambda: (c := components(run_dir)["params"])["restarts"] == 1 and c,
                60,
                "params' restart",
                proc,
            )
            assert params["address"] != before["params"]["address"]
            wait_for(
                lambda: (
                    (c := components(run_dir)["learner"])["ray_name"] == "learner@1"
                    and c["state"] == "running"
                ),
                120,
                "the learner to be recreated",
                proc,
            )
            progress(200, 20, "progress after re-wiring")
    finally:
        output = stop_run(proc)
    assert proc.returncode == 0, output
    assert "restarting 3 components" in output  # learner, actor-0, actor-1
    assert "resumed from" in (run_dir / "logs" / "learner.log").read_text()


def _squat(sock: socket.socket, host: str, port: int) -> bool:
    """Listen on a port a killed process held, before its restart (seconds away) can take it.

    False when the restart won the race (on a busy machine it can).
    """
    deadline = time.monotonic() + 5
    while True:
        try:
            sock.bind((host, port))
            sock.listen()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


@pytest.mark.slow
def test_local_launcher_scales_actors_without_stopping_the_learner(tmp_path: Path):
    run_dir = tmp_path / "local-run"
    proc = start_run(run_dir)
    try:
        wait_for(lambda: (last(run_dir, "env_steps") or 0) > 300, 120, "the run to make progress", proc)
        out = distrl("scale", str(run_dir), "--actors", "3")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: (last(run_dir, "live_actors") or 0) >= 3, 60, "a third actor to report", proc)
        out = distrl("scale", str(run_dir), "--actors", "2")
        assert out.returncode == 0, out.stderr
        assert load_config(run_dir / "config.yaml").actors.num_actors == 2
        steps, updates = last(run_dir, "env_steps"), last(run_dir, "updates")
        wait_for(lambda: last(run_dir, "env_steps") > steps + 300, 60, "env steps with two actors", proc)
        wait_for(lambda: last(run_dir, "updates") > updates + 100, 60, "updates with two actors", proc)
    finally:
        output = stop_run(proc)
    assert proc.returncode == 0, output
    assert "scaled actors 2 -> 3" in output and "scaled actors 3 -> 2" in output
    assert (run_dir / "logs" / "actor-2.log").read_text().count("--- start") == 1
    assert (run_dir / "logs" / "learner.log").read_text().count("--- start") == 1
