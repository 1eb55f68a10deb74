"""What runs inside each Ray actor of the ray launcher: the real component, started in-process.

One class per component, so `ray list actors` and the Ray dashboard say what each
actor is. The servers (replay shard, parameter server) listen on the node's IP;
the loops (learner, actor, evaluator) run in a thread with a stop event. Every
class answers `ping()` with a `ComponentStatus` and stops cleanly on `stop()`
(actors flush, the learner writes a final checkpoint, a shard checkpoints).

Ray restarts a dead component by running `__init__` again with the same
arguments, in a new process and maybe on another node. So each one rebuilds
its state from the run directory: a shard restores its newest checkpoint, the
learner its newest checkpoint, and a server first tries the port it had before
(from RUN_DIR/ray/NAME.address) so that, on the same node, its clients find it
where they left it. A loop that raises ends its process, so Ray restarts it
like any other crash.

The classes are plain Python (the launcher wraps them with `ray.remote`), and
import the heavy component modules only when constructed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("distrl.runtime.ray")

COMPONENT_STATE_DIR = "ray"
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ComponentStatus:
    """What a component says when pinged; a new `pid` or `started_unix_s` means it was restarted."""

    name: str
    pid: int
    node_ip: str
    started_unix_s: float
    state: Literal["running", "finished", "stopped"]
    address: str | None = None
    # False when the run directory (checkpoints, config) is not visible from this node.
    sees_run_dir: bool = True
    detail: str = ""


@dataclass(frozen=True)
class ComponentAddresses:
    """Where a loop component finds the servers."""

    replay: list[str]
    params: str
    telemetry: str | None


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class _Component:
    def __init__(self, name: str, config_data: dict[str, Any], run_dir: str) -> None:
        from distrl.config import ExperimentConfig

        self.name = name
        self.run_dir = Path(run_dir)
        self.config = ExperimentConfig.model_validate(config_data)
        self.node_ip = node_ip()
        self.started_unix_s = time.time()
        self._log_to_run_dir()
        log.info("--- start %s: pid %d on %s", time.strftime("%Y-%m-%d %H:%M:%S"), os.getpid(), self.node_ip)

    def _log_to_run_dir(self) -> None:
        # The same RUN_DIR/logs/NAME.log as under the local launcher (when the run dir is visible here).
        try:
            path = self.run_dir / "logs" / f"{self.name}.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path)
        except OSError:
            return
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("distrl")
        root.addHandler(handler)
        root.setLevel(logging.INFO)

    def _status(self, state, address: str | None = None, detail: str = "") -> ComponentStatus:
        return ComponentStatus(
            name=self.name,
            pid=os.getpid(),
            node_ip=self.node_ip,
            started_unix_s=self.started_unix_s,
            state=state,
            address=address,
            sees_run_dir=(self.run_dir / "config.yaml").is_file(),
            detail=detail,
        )


# -- servers --------------------------------------------------------------------------------------


def _free(host: str, port: int) -> bool:
    """Whether nothing listens on `port`. The connections of a killed server linger in TIME_WAIT on it
    for a minute; like gRPC's own bind, the probe ignores them (SO_REUSEADDR), so a restarted server
    gets its port back. A listener still refuses it (the probe does not ask for SO_REUSEPORT, which
    would let it share a gRPC server's port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class _ServerComponent(_Component):
    def _port_file(self) -> Path:
        return self.run_dir / COMPONENT_STATE_DIR / f"{self.name}.address"

    def _port(self) -> int:
        """The port this server had before a restart, when it is on the same node and still free; else 0."""
        try:
            host, _, port = self._port_file().read_text().strip().rpartition(":")
        except OSError:
            return 0
        if host == self.node_ip and port.isdigit() and _free(host, int(port)):
            return int(port)
        return 0

    def _remember(self, address: str) -> None:
        try:
            path = self._port_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(address)
        except OSError:
            pass  # no shared run dir here: a restart just gets a new port and the launcher re-wires

    def address(self) -> str:
        return self._address

    def ping(self) -> ComponentStatus:
        return self._status("running", self._address)


class ReplayShardComponent(_ServerComponent):
    """A replay shard; restores RUN_DIR/replay/shard-K's newest checkpoint on every (re)start."""

    def __init__(self, name: str, config_data: dict[str, Any], run_dir: str, shard_data: dict[str, Any]):
        super().__init__(name, config_data, run_dir)
        from distrl.replay.config import ReplayShardConfig
        from distrl.replay.server import serve_replay_shard

        net = self.config.network
        shard_config = ReplayShardConfig.model_validate(shard_data)
        self._shard, self._running = serve_replay_shard(
            shard_config, host=self.node_ip, port=self._port(), security=net.security, keepalive=net.keepalive
        )
        self._address = self._running.address
        self._remember(self._address)
        restored = self._shard.last_checkpoint
        log.info("listening on %s (%s)", self._address, f"restored {restored}" if restored else "fresh")

    def stop(self) -> bool:
        self._running.stop(2.0)
        self._shard.close()  # final checkpoint
        log.info("stopped")
        return True


class ParamServerComponent(_ServerComponent):
    """The parameter server (it keeps nothing on disk: the learner republishes after a restart)."""

    def __init__(self, name: str, config_data: dict[str, Any], run_dir: str) -> None:
        super().__init__(name, config_data, run_dir)
        from distrl.params.server import start_params_server

        net = self.config.network
        self._server = start_params_server(
            host=self.node_ip, port=self._port(), security=net.security, keepalive=net.keepalive
        )
        self._address = self._server.address
        self._remember(self._address)
        log.info("listening on %s", self._address)

    def stop(self) -> bool:
        self._server.stop(1.0)
        log.info("stopped")
        return True


# -- loops ----------------------------------------------------------------------------------------


class _LoopComponent(_Component):
    """Runs `self.runner.run(stop)` in a thread; a loop that raises takes its process down for Ray."""

    runner: Any

    def _start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.runner.run(self._stop)
        except BaseException:
            log.exception("%s crashed; exiting so that Ray restarts it", self.name)
            logging.shutdown()
            os._exit(1)
        log.info("finished" if not self._stop.is_set() else "stopped")

    def ping(self) -> ComponentStatus:
        if self._thread.is_alive():
            return self._status("running")
        return self._status("stopped" if self._stop.is_set() else "finished")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the loop (it flushes / checkpoints on the way out); False if it is still running."""
        self._stop.set()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def _actor_addresses(addresses: ComponentAddresses):
    from distrl.actors.actor import ActorAddresses

    a = addresses
    return ActorAddresses(replay=list(a.replay), params=a.params, telemetry=a.telemetry)


class LearnerComponent(_LoopComponent):
    """The learner; resumes from RUN_DIR/checkpoints on every (re)start."""

    def __init__(self, name: str, config_data: dict[str, Any], run_dir: str, addresses: ComponentAddresses):
        super().__init__(name, config_data, run_dir)
        from distrl.learners.learner import Learner

        a = addresses
        self.runner = Learner(self.config, self.run_dir, list(a.replay), a.params, a.telemetry)
        where = f"resumed from {self.runner.resumed_from}" if self.runner.resumed_from else "fresh"
        log.info(
            "learner: %s on %s, %s, %d updates",
            self.config.algo.name,
            self.runner.algo.device,
            where,
            self.runner.updates,
        )
        self._start()


class ActorComponent(_LoopComponent):
    def __init__(
        self,
        name: str,
        config_data: dict[str, Any],
        run_dir: str,
        addresses: ComponentAddresses,
        index: int,
    ) -> None:
        super().__init__(name, config_data, run_dir)
        from distrl.actors.actor import Actor

        self.runner = Actor(self.config, index, _actor_addresses(addresses))
        log.info("%s: %s, replay %s", self.runner.actor_id, self.config.env.id, addresses.replay)
        self._start()


class EvaluatorComponent(_LoopComponent):
    def __init__(self, name: str, config_data: dict[str, Any], run_dir: str, addresses: ComponentAddresses):
        super().__init__(name, config_data, run_dir)
        from distrl.actors.evaluator import Evaluator

        # Clips go to RUN_DIR/videos when the run directory is visible from this node.
        visible = (self.run_dir / "config.yaml").is_file()
        self.runner = Evaluator(self.config, _actor_addresses(addresses), self.run_dir if visible else None)
        self._start()
