"""The servers the fuzz properties attack, in a process of their own.

`python tests/fuzz_servers.py` starts, on loopback, a replay shard (table `default`: a
fixed spec, where Insert examples go; table `prio`: prioritized and pre-filled, where
UpdatePriorities examples go), a params server and a coordinator; prints their addresses
as one JSON line; then answers commands read from stdin, one JSON line each:

- `state`: what the servers have accepted (see `accepted_state`);
- `quit`.

A process of its own, so a crash is the process dying and its memory is its RSS.
`FuzzServers` starts it and talks to it (JSON lines only: nothing is unpickled).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The table Insert examples target, and its spec (packed rows: 12 + 8 + 4 + 1 bytes, padded to 32).
SPEC = {
    "obs": ("float32", (3,)),
    "action": ("float32", (2,)),
    "reward": ("float32", ()),
    "done": ("bool", ()),
}
INSERT_TABLE = "default"
INSERT_CAPACITY = 256
# The prioritized table UpdatePriorities examples target: keys 0..PRIO_ITEMS-1 are stored at start.
PRIO_TABLE = "prio"
PRIO_CAPACITY = 64
PRIO_ITEMS = 32
# Windows close only when `state` asks, so a refused batch that slipped into one shows up there.
_NEVER_S = 10**6
# Counters a refusal may move (the shard counts what it refused); everything else must stay.
REFUSAL_COUNTERS = frozenset({"rejected_batches"})


def accepted_state(shard, params_address: str, coordinator) -> dict[str, Any]:
    """Everything the servers hold that a refused message must leave as it was.

    Replay: each table's items (a digest of fields, keys, versions and priorities), its keys,
    writer sequences and counters. Params: each set's Info and a digest of its Fetch stream.
    Coordinator: its totals, rows and last values after closing the open window (a window
    that took anything adds a row).
    """
    return {
        "replay": {name: _table_state(table) for name, table in sorted(shard.tables.items())},
        "params": _params_state(params_address),
        "telemetry": _telemetry_state(coordinator),
    }


def _table_state(table) -> dict[str, Any]:
    snap = table.snapshot()
    digest = hashlib.sha256()
    for name in sorted(snap.fields):
        digest.update(name.encode() + b"\0" + snap.fields[name].tobytes())
    for array in (snap.keys, snap.policy_version, snap.learner_version, snap.priorities):
        digest.update(array.tobytes())
    incarnations = sorted((s.actor_id, s.incarnation.hex(), s.sequence) for s in snap.incarnation_sequences)
    return {
        "size": len(snap.keys),
        "keys": snap.keys.tolist(),
        "next_key": snap.next_key,
        "items": digest.hexdigest(),
        "counters": snap.counters.to_dict(),
        "sequences": sorted(snap.last_sequence.items()),
        "incarnations": hashlib.sha256(repr(incarnations).encode()).hexdigest(),
        "learner_version": snap.latest_learner_version,
    }


def _params_state(address: str) -> dict[str, Any]:
    import grpc

    from distrl.proto.v1 import params_pb2, params_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = params_pb2_grpc.ParametersStub(channel)
        sets = list(stub.Info(params_pb2.ParamsInfoRequest(), timeout=10).sets)
        out = {}
        for name in sets:
            info = stub.Info(params_pb2.ParamsInfoRequest(param_set=name), timeout=10)
            digest = hashlib.sha256()
            for chunk in stub.Fetch(params_pb2.FetchRequest(param_set=name), timeout=10):
                digest.update(chunk.SerializeToString(deterministic=True))
            out[name] = {
                "version": info.version,
                "names": list(info.names),
                "num_bytes": info.num_bytes,
                "publishes": info.publishes,
                "last_publish_unix_s": info.last_publish_unix_s,
                "chunks": digest.hexdigest(),
            }
        return out


def _telemetry_state(coordinator) -> dict[str, Any]:
    coordinator.flush_window()
    snap = coordinator.snapshot()
    return {
        "env_steps": snap.env_steps,
        "updates": snap.updates,
        "rows": snap.rows,
        "last": snap.last,
        "sources": list(snap.live_sources),
    }


def main() -> None:
    import numpy as np

    from distrl.config import TelemetryConfig
    from distrl.params.server import start_params_server
    from distrl.replay.config import FieldSpecConfig, ReplayShardConfig, TableConfig
    from distrl.replay.server import serve_replay_shard
    from distrl.telemetry.coordinator import Coordinator, start_coordinator_server

    spec = {name: FieldSpecConfig(dtype=dtype, shape=list(shape)) for name, (dtype, shape) in SPEC.items()}
    config = ReplayShardConfig(
        tables=[
            TableConfig(name=INSERT_TABLE, capacity=INSERT_CAPACITY, spec=spec),
            TableConfig(name=PRIO_TABLE, capacity=PRIO_CAPACITY, sampler="prioritized", spec=spec),
        ],
        seed=0,
    )
    shard, replay = serve_replay_shard(config)
    shard.tables[PRIO_TABLE].insert(
        valid_columns(PRIO_ITEMS, np.random.default_rng(0)), actor_id="seed", sequence=1
    )
    params = start_params_server()
    coordinator = Coordinator(None, TelemetryConfig(console=False, report_every_s=_NEVER_S))
    telemetry = start_coordinator_server(coordinator, port=0)
    print(
        json.dumps({"replay": replay.address, "params": params.address, "telemetry": telemetry.address}),
        flush=True,
    )
    for line in sys.stdin:
        command = line.strip()
        if command == "state":
            print(json.dumps(accepted_state(shard, params.address, coordinator)), flush=True)
        elif command == "quit":
            break
    telemetry.stop(0)
    coordinator.close()
    params.stop(0)
    replay.stop(0)
    shard.close(final_checkpoint=False)


def valid_columns(n: int, rng) -> dict:
    """`n` items that fit SPEC (finite floats)."""
    import numpy as np

    return {
        "obs": rng.standard_normal((n, 3)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        "reward": rng.standard_normal(n).astype(np.float32),
        "done": rng.random(n) < 0.1,
    }


@dataclass
class Memory:
    rss: int  # bytes resident now (VmRSS)
    peak: int  # the most ever resident (VmHWM)


class FuzzServers:
    """The process `main` runs: its addresses, its accepted state, its memory, whether it lives."""

    def __init__(self) -> None:
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (read by why_dead, closed by stop)
        env = {**os.environ, "MUJOCO_GL": "disable", "GRPC_VERBOSITY": "ERROR"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.addresses: dict[str, str] = self._reply()
        self.start_memory = self.memory()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def state(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("state\n")
        self.proc.stdin.flush()
        return self._reply()

    def memory(self) -> Memory:
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
        return Memory(fields["VmRSS"], fields["VmHWM"])

    def why_dead(self) -> str:
        """The exit status and the end of stderr of a process that has died."""
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace")[-3000:]
        return f"fuzz servers exited with {self.proc.returncode}; stderr:\n{tail}"

    def stop(self) -> None:
        if self.alive():
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise RuntimeError(self.why_dead())
        return json.loads(line)


if __name__ == "__main__":
    main()
