"""Chaos on the Ray launcher: how benchmarks/chaos.py finds a Ray component's process and reads what a
Ray-restarted component restored, and (slow) a real Ray run with a shard and the learner killed at once."""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import pytest

from distrl.replay.checkpoint import list_checkpoints
from distrl.runtime.process import START_MARK
from distrl.runtime.ray_components import _free

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import chaos as bench  # noqa: E402

# Per test, as in tests/test_ray_launcher.py: the log-reading tests here need no Ray.
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install -e '.[ray]')"
)


def _ray_log(run_dir: Path, name: str, incarnations: list[tuple[float, str]]) -> None:
    """RUN_DIR/logs/NAME.log as Ray components write it: log records, a start mark for each process."""
    lines = []
    for started, message in incarnations:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
        prefix = f"{stamp},123 INFO distrl.runtime.ray: "
        lines += [f"{prefix}{START_MARK}{stamp}: pid 42 on 10.0.0.1", f"{prefix}{message}"]
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "logs" / f"{name}.log").write_text("\n".join(lines) + "\n")


def test_a_ray_learner_log_gives_each_start_and_the_checkpoint_it_resumed(tmp_path: Path):
    t = 1_800_000_000.0
    ckpt = "/r/checkpoints/learner-0000000500.pt"
    _ray_log(
        tmp_path,
        "learner",
        [
            (t, "learner: sac on cpu, fresh, 0 updates"),
            (t + 10, f"learner: sac on cpu, resumed from {ckpt}, 500 updates"),
        ],
    )
    starts = bench.incarnations(tmp_path / "logs" / "learner.log")
    assert [(s.started, s.updates, s.resumed_from) for s in starts] == [(t, 0, None), (t + 10, 500, ckpt)]
    rows = [(t + 5, 100, 600), (t + 12, 300, 520), (t + 13, 400, 560)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"time": a, "env_steps": e, "updates": u}) + "\n" for a, e, u in rows)
    )
    assert bench.check_counters(tmp_path) == []


def test_a_ray_shard_restart_says_what_it_restored(tmp_path: Path):
    t = 1_800_000_000.0
    ckpt = f"{tmp_path}/replay/shard-0/ckpt-0000000003"
    kill = bench.ShardKill(0, killed_at=t + 10.5, checkpoint=ckpt, snapshot_time=t + 9)
    _ray_log(tmp_path, "replay-0", [(t, "listening on 10.0.0.1:5000 (fresh)")])
    assert bench._restored_from_log(tmp_path, kill) is None  # not restarted yet
    _ray_log(
        tmp_path,
        "replay-0",
        [
            (t, "listening on 10.0.0.1:5000 (fresh)"),
            (t + 11, f"listening on 10.0.0.1:5000 (restored {ckpt})"),
        ],
    )
    assert bench._restored_from_log(tmp_path, kill) == ckpt
    _ray_log(
        tmp_path,
        "replay-0",
        [(t, "listening on 10.0.0.1:5000 (fresh)"), (t + 11, "listening on 10.0.0.1:5000 (fresh)")],
    )
    assert bench._restored_from_log(tmp_path, kill) == "fresh"


def test_ray_components_are_found_in_components_json(tmp_path: Path):
    assert bench.child_pid(tmp_path, "replay-0", "ray") is None  # no file yet
    entries = [
        {"name": "replay-0", "kind": "replay", "pid": 1234, "address": "10.0.0.1:5000", "state": "running"},
        {"name": "learner", "kind": "learner", "pid": None, "address": None, "state": "starting"},
    ]
    (tmp_path / bench.COMPONENTS_FILE).write_text(json.dumps({"launcher": "ray", "components": entries}))
    assert bench.child_pid(tmp_path, "replay-0", "ray") == 1234
    assert bench.component(tmp_path, "replay-0", "ray")["address"] == "10.0.0.1:5000"
    assert bench.child_pid(tmp_path, "learner", "ray") is None  # not answered a ping yet
    assert bench.child_pid(tmp_path, "actor-0", "ray") is None
    with pytest.raises(ValueError, match="params"):
        bench.run_fault("params", tmp_path, launcher="ray")  # not a Ray fault: nothing started


def test_a_killed_servers_port_is_free_again_for_its_restart_despite_its_lingering_connections():
    host = "127.0.0.1"
    with socket.socket() as server:
        # As gRPC's listener (its connections inherit it: Linux lets a bind past their TIME_WAIT only
        # when both sides ask for SO_REUSEADDR).
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((host, 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection((host, port))
        conn, _ = server.accept()
        assert not _free(host, port)  # a listener holds it
        conn.close()  # the server's end closes first, as when it is killed: TIME_WAIT on `port`
        client.recv(1)
        client.close()
    # What Ray's restart of the server probes: the port is free (gRPC's own bind would take it).
    assert _free(host, port)
    with socket.socket() as squatter:  # another process listening there: not free
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the TIME_WAIT, as gRPC
        squatter.bind((host, port))
        squatter.listen()
        assert not _free(host, port)


@pytest.mark.slow
@needs_ray
def test_a_ray_run_recovers_from_a_shard_and_the_learner_killed_at_once(tmp_path: Path):
    outcome = bench.run_fault("shard+learner", tmp_path, quick=True, launcher="ray")
    assert outcome.completed, outcome.problems
    assert outcome.problems == []  # the counters, the restored checkpoints, lost <= lost_bound
    assert outcome.losses.acked > 0 and outcome.losses.lost <= outcome.losses.lost_bound
    [kill] = outcome.shard_kills
    assert kill.restored_from == kill.checkpoint and kill.snapshot_time is not None
    # Ray restarted the learner, which resumed from the newest checkpoint it had written.
    assert outcome.learner_resumed_at[1] == outcome.learner_checkpoint_at_kill > 0
    run_dir = tmp_path / "ray-shard-learner"
    restarts = {
        c["name"]: c["restarts"] for c in json.loads((run_dir / "components.json").read_text())["components"]
    }
    assert restarts["replay-0"] >= 1 and restarts["learner"] >= 1  # by Ray, not re-created by the launcher
    # The shard came back on its port, so nothing was re-wired.
    listening = (run_dir / "logs" / "replay-0.log").read_text().split("listening on ")[1:]
    assert len(listening) == 2 and listening[0].split()[0] == listening[1].split()[0]
    assert len(list_checkpoints(run_dir / "replay" / "shard-0")) >= 1
